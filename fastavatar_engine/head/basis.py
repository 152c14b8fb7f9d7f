"""The morphable head model: ICT-FaceKit's neutral head, 100 identity modes and 53 ARKit expressions.

The data file (``fastavatar_engine/data/ict_head.safetensors``, card ``ICT_HEAD.md``, built by
``tools/build_head_model.py``) holds ICT-FaceKit's skin surface (face + head and neck, 11,248
vertices, 22,288 triangles) in **ICT's own frame: centimetres, y up, the face towards +z**.
ICT-FaceKit: Li et al., "Learning Formation of Physically-Based Face Attributes", CVPR 2020;
github.com/ICT-VGL/ICT-FaceKit, MIT licence, Copyright (c) 2020 USC Institute for Creative
Technologies.

A head is ``v = neutral + sum_i id_i * identity_i + sum_j ex_j * expression_j`` (linear
blendshapes). Identity coefficients are ~N(0, 1) (the modes are scaled by their standard
deviation); expression coefficients lie in [0, 1] (ARKit semantics).

:class:`HeadModel` also carries the similarity that maps ICT's frame into the engine's head frame
(the FLAME head frame in metres, :mod:`fastavatar_engine.cameras`), found once by
``tools/build_head_registration.py`` and stored in ``ict_head_registration.json``;
:meth:`HeadModel.vertices` returns engine-frame metres.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
BASIS_PATH = DATA_DIR / "ict_head.safetensors"
REGISTRATION_PATH = DATA_DIR / "ict_head_registration.json"
NUM_IDENTITY = 100
NUM_EXPRESSION = 53


class HeadModel:
    """ICT-FaceKit's linear head model in the engine's head frame.

    Attributes:
        neutral_cm: [V,3] float32, ICT frame, centimetres (V = 11,248).
        triangles: [F,3] int64 vertex indices (F = 22,288), counter-clockwise seen from outside.
        identity_cm: [100,V,3] float32 identity deltas (ICT frame, cm, per unit coefficient).
        expression_cm: [53,V,3] float32 expression deltas (ICT frame, cm, per unit coefficient).
        expression_names: the 53 ARKit names in the order of ``expression_cm``.
        landmarks68: [68] int64 Multi-PIE landmark vertices.
        scale, R, t: the similarity ICT (cm) -> engine head frame (m): ``x_e = scale * R @ x + t``;
            ``scale`` float, ``R`` [3,3] float64 rotation, ``t`` [3] float64 metres.
        registration: the registration JSON's other entries (rest identity, landmark binding).
    """

    def __init__(self, basis_path=None, registration_path=None):
        from safetensors.numpy import load_file

        basis_path = Path(basis_path or BASIS_PATH)
        if not basis_path.is_file():
            raise FileNotFoundError(f"head model basis missing: {basis_path} (run tools/build_head_model.py)")
        arrays = load_file(str(basis_path))
        with open(basis_path, "rb") as fh:  # safetensors header: 8-byte length, then JSON
            n = int.from_bytes(fh.read(8), "little")
            meta = json.loads(fh.read(n)).get("__metadata__", {})
        self.neutral_cm = arrays["neutral"].astype(np.float32)
        self.triangles = arrays["triangles"].astype(np.int64)
        self.identity_cm = arrays["identity"].astype(np.float32)
        self.expression_cm = arrays["expression"].astype(np.float32)
        self.landmarks68 = arrays["landmarks68"].astype(np.int64)
        self.expression_names = json.loads(meta.get("expression_names", "[]"))
        v = self.neutral_cm.shape[0]
        if (self.neutral_cm.shape != (v, 3) or self.identity_cm.shape != (NUM_IDENTITY, v, 3)
                or self.expression_cm.shape != (NUM_EXPRESSION, v, 3) or len(self.expression_names) != NUM_EXPRESSION
                or self.triangles.ndim != 2 or self.triangles.shape[1] != 3
                or self.triangles.min() < 0 or self.triangles.max() >= v):
            raise ValueError(f"{basis_path}: malformed head model basis")
        self.meta = meta
        self.scale, self.R, self.t = 0.01, np.eye(3), np.zeros(3)
        self.registration: dict = {}
        reg = Path(registration_path or REGISTRATION_PATH)
        if reg.is_file():
            self.set_registration(json.loads(reg.read_text()))

    # ------------------------------------------------------------------ registration
    def set_registration(self, reg: dict) -> None:
        """Adopt a registration dict (``similarity``: scale, R [3][3], t [3]; other keys kept)."""
        sim = reg["similarity"]
        R = np.asarray(sim["R"], dtype=np.float64)
        t = np.asarray(sim["t"], dtype=np.float64)
        s = float(sim["scale"])
        if R.shape != (3, 3) or t.shape != (3,) or not (0 < s < 1) or abs(np.linalg.det(R) - 1) > 1e-4:
            raise ValueError("head registration: bad similarity")
        self.scale, self.R, self.t = s, R, t
        self.registration = dict(reg)

    def landmark_binding(self):
        """The 478 MediaPipe landmarks as points on this head's surface
        (:class:`~.landmarks.LandmarkBinding`): the registration's, with the lower inner lip on
        the lower lip (:func:`~.landmarks.separate_inner_lips`). Built once per registration."""
        from .landmarks import LandmarkBinding, separate_inner_lips

        cached = self.__dict__.get("_landmark_binding")
        if cached is None or cached[0] is not self.registration:
            lb = separate_inner_lips(LandmarkBinding.from_json(self.registration["landmarks"]), self)
            cached = self.__dict__["_landmark_binding"] = (self.registration, lb)
        return cached[1]

    @property
    def num_vertices(self) -> int:
        return int(self.neutral_cm.shape[0])

    def rest_identity(self) -> np.ndarray:
        """[100] float64 identity coefficients of the engine template's head (zeros if unregistered)."""
        return np.asarray(self.registration.get("rest_identity", np.zeros(NUM_IDENTITY)), dtype=np.float64)

    # ------------------------------------------------------------------ evaluation
    def vertices_cm(self, identity=None, expression=None) -> np.ndarray:
        """[V,3] float64 ICT-frame vertices (cm) for coefficients ``identity`` [<=100] and ``expression`` [<=53]."""
        v = self.neutral_cm.astype(np.float64)
        if identity is not None:
            a = np.asarray(identity, dtype=np.float64).ravel()
            v = v + np.tensordot(a, self.identity_cm[: a.size], axes=1)
        if expression is not None:
            b = np.asarray(expression, dtype=np.float64).ravel()
            v = v + np.tensordot(b, self.expression_cm[: b.size], axes=1)
        return v

    def to_engine(self, x_cm: np.ndarray) -> np.ndarray:
        """ICT-frame points [...,3] (cm) -> engine head frame (m)."""
        return self.scale * np.asarray(x_cm, dtype=np.float64) @ self.R.T + self.t

    def vertices(self, identity=None, expression=None) -> np.ndarray:
        """[V,3] float64 vertices in the engine head frame (metres, y up, facing +z)."""
        return self.to_engine(self.vertices_cm(identity, expression))

    def torch_basis(self, device="cpu", dtype=None):
        """``(mean [V*3], modes [153, V*3])`` torch tensors in engine metres (identity modes first),
        so that ``vertices = (mean + coeffs @ modes).view(V, 3)`` for coeffs ``[.., 153]``."""
        import torch

        key = (str(device), str(dtype))
        cache = self.__dict__.setdefault("_torch_cache", {})
        if key not in cache:
            dt = dtype or torch.float32
            mean = torch.as_tensor(self.vertices(), dtype=dt, device=device).reshape(-1)
            modes = np.concatenate([self.identity_cm, self.expression_cm]) * self.scale  # deltas rotate, no t
            modes = modes @ self.R.T.astype(np.float32)
            cache[key] = (mean, torch.as_tensor(modes.reshape(len(modes), -1), dtype=dt, device=device))
        return cache[key]


@lru_cache(maxsize=1)
def load_head_model() -> HeadModel:
    """The packaged head model (cached). Raises ``FileNotFoundError`` when the basis is missing."""
    return HeadModel()
