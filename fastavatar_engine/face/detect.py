"""Face detection and dense landmarks with MediaPipe (Apache-2.0, models inside the wheel).

Pipeline of :meth:`FaceFrontEnd.detect`:

1. **Detection**: MediaPipe Face Detection (BlazeFace). The short-range model (faces within
   ~2 m, filling a good part of the photo: portraits, selfies) and the full-range model (small
   faces in group photos) both run; their detections are merged by non-maximum suppression
   (IoU > 0.3 keeps the higher score). BlazeFace sees the whole photo at 128 / 192 px and misses
   faces under ~8% of the image width, so a second pass runs both models on half-size tiles
   with 50% overlap (``tiles=True``).
2. **Dense landmarks per face**: a square crop, ``crop_scale`` times the detection box and
   centred on it, is cut out (black outside the image; resized into [``min_crop_side``,
   ``max_crop_side``] px with ``cv2.resize``) and MediaPipe Face Mesh
   (``refine_landmarks=True`` -> 478 points incl. irises) runs on that crop only. When the
   crop holds more than one face, the mesh whose extent best overlaps the detection box is
   taken, so the dense landmarks belong to that detection. Points are mapped back to
   full-image pixels. A detection on which Face Mesh finds no face is
   dropped (no dense landmarks, no usable face).
3. **5 points**: derived from the mesh in insightface's ArcFace order (see
   :mod:`fastavatar_engine.face.landmarks`).

All coordinates are in the project's continuous pixel convention (x right, y down, pixel
(row i, col j) covers [j, j+1) x [i, i+1), so its centre is (j + 0.5, i + 0.5)): MediaPipe's
normalised coordinates times the image size.

MediaPipe graphs are not thread-safe: use one :class:`FaceFrontEnd` per thread.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from ._deps import FaceDependencyError, require
from .landmarks import NUM_LANDMARKS, arcface5_from_mesh
from .pose import PoseEstimationError, estimate_camera
from .types import Face, FaceError, FaceIndexError, NoFaceError

__all__ = [
    "Face",
    "FaceError",
    "NoFaceError",
    "FaceIndexError",
    "FaceFrontEnd",
    "select_face",
    "as_rgb_image",
]


# --------------------------------------------------------------------------- helpers
def as_rgb_image(image) -> tuple[np.ndarray, str | None]:
    """Return ``([H,W,3] uint8 RGB, name)`` from an array, a path or encoded bytes.

    Paths and bytes go through :func:`fastavatar_engine.images.load_image` (which raises
    ``ImageLoadError``); arrays must already be ``[H,W,3] uint8`` RGB (``ValueError`` otherwise).
    ``name`` is the path for files, ``None`` for arrays.
    """
    if isinstance(image, (str, Path, bytes, bytearray)):
        from ..images import load_image

        name = "<bytes>" if isinstance(image, (bytes, bytearray)) else str(image)
        return load_image(image), name
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected an [H,W,3] uint8 RGB image, got a {a.dtype} array of shape {a.shape}")
    if a.shape[0] < 2 or a.shape[1] < 2:
        raise ValueError(f"image is too small ({a.shape[1]}x{a.shape[0]})")
    return np.ascontiguousarray(a), None


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / ua) if ua > 0 else 0.0


def _ios(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box's area."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    m = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(inter / m) if m > 0 else 0.0


def select_face(faces: list[Face], index: int | None = None, image_name: str | None = None) -> Face:
    """Pick one face: the largest (``faces[0]``, as :meth:`FaceFrontEnd.detect` sorts) or ``faces[index]``.

    Raises :class:`NoFaceError` when ``faces`` is empty and :class:`FaceIndexError` when
    ``index`` is out of range (negative indices are refused too); messages name ``image_name``
    when given.
    """
    where = f" in {image_name}" if image_name else " in the image"
    if not faces:
        raise NoFaceError(f"no face found{where}; use a photo with one clearly visible, roughly frontal face")
    if index is None:
        return faces[0]
    n = len(faces)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= int(index) < n:
        raise FaceIndexError(
            f"face index {index!r} is out of range: {n} face{'s' if n != 1 else ''} found{where} "
            f"(valid indices 0..{n - 1}, ordered largest first)"
        )
    return faces[int(index)]


# --------------------------------------------------------------------------- front end
def _face(mesh, box, score: float, W: int, H: int) -> Face:
    """A :class:`Face` from Face Mesh's ``(landmarks [478,2], depth [478])`` and a box clipped to the image."""
    xy, depth = mesh
    clipped = np.array([max(0.0, box[0]), max(0.0, box[1]), min(float(W), box[2]), min(float(H), box[3])])
    return Face(box=clipped, score=score, landmarks5=arcface5_from_mesh(xy), landmarks=xy, image_size=(W, H),
                landmarks_depth=depth)


class FaceFrontEnd:
    """MediaPipe face detection + 478-point Face Mesh per detection, and ArcFace alignment.

    Args:
        min_score: minimum detection confidence (0..1).
        detectors: which BlazeFace models run: ``"both"`` (default), ``"short"`` or ``"full"``.
        crop_scale: side of the square crop handed to Face Mesh, in units of the larger box side.
        max_crop_side: crops larger than this (pixels) are downscaled before Face Mesh.
        min_crop_side: crops smaller than this are upscaled (small faces in large photos).
        tiles: also detect on half-size overlapping tiles (finds faces down to ~3-4% of the image
            width, which BlazeFace misses on the whole photo; costs up to 9 tiles x the detector
            models, ~35 ms on a 2-core CPU).
        min_tile_side: no tile pass for images whose larger side is under twice this (px).

    Raises :class:`~fastavatar_engine.face.FaceDependencyError` at construction when mediapipe or
    OpenCV is missing. Call :meth:`close` (or use ``with``) to release the MediaPipe graphs.

    ``timings`` holds the last :meth:`detect` call's stage times in milliseconds
    (``detect_ms``, ``mesh_ms``).
    """

    def __init__(self, min_score: float = 0.5, detectors: str = "both", crop_scale: float = 1.8,
                 max_crop_side: int = 768, min_crop_side: int = 256, tiles: bool = True,
                 min_tile_side: int = 320):
        if detectors not in ("both", "short", "full"):
            raise ValueError(f"detectors must be 'both', 'short' or 'full', got {detectors!r}")
        if not 0.0 < min_score < 1.0:
            raise ValueError(f"min_score must be in (0, 1), got {min_score}")
        if crop_scale < 1.2:
            raise ValueError(f"crop_scale must be >= 1.2, got {crop_scale}")
        mp = require("mediapipe")
        self._cv2 = require("cv2")
        if not hasattr(mp, "solutions"):
            raise FaceDependencyError(
                f"mediapipe {getattr(mp, '__version__', '?')} has no mp.solutions (removed after 0.10.21); "
                "install the face extra: pip install 'fastavatar[face]'  (mediapipe==0.10.21)")
        self.min_score = float(min_score)
        self.crop_scale = float(crop_scale)
        self.max_crop_side = int(max_crop_side)
        self.min_crop_side = int(min_crop_side)
        self.tiles = bool(tiles)
        self.min_tile_side = int(min_tile_side)
        sel = {"short": (0,), "full": (1,), "both": (0, 1)}[detectors]
        self._detectors = [
            mp.solutions.face_detection.FaceDetection(model_selection=m, min_detection_confidence=self.min_score)
            for m in sel
        ]
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=3, refine_landmarks=True, min_detection_confidence=0.3
        )
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Release the MediaPipe graphs (the object cannot be used afterwards)."""
        for d in self._detectors:
            d.close()
        self._mesh.close()
        self._detectors = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ detection
    def _run_detectors(self, img: np.ndarray, x0: int, y0: int, level: int, out: list) -> None:
        H, W = img.shape[:2]
        for det in self._detectors:
            res = det.process(img)
            for d in res.detections or []:
                bb = d.location_data.relative_bounding_box
                if bb.width <= 0 or bb.height <= 0:
                    continue
                box = np.array([bb.xmin * W + x0, bb.ymin * H + y0,
                                (bb.xmin + bb.width) * W + x0, (bb.ymin + bb.height) * H + y0])
                out.append((level, float(d.score[0]), box))

    def _detect_boxes(self, img: np.ndarray, tiles: bool = True) -> list[tuple[float, np.ndarray]]:
        """Detections as (score, box) after merging the models and the tile pass."""
        H, W = img.shape[:2]
        cands: list[tuple[int, float, np.ndarray]] = []
        self._run_detectors(img, 0, 0, 0, cands)
        if tiles and max(H, W) >= 2 * self.min_tile_side:
            # BlazeFace sees the photo at 128 / 192 px, so faces under ~8% of the image width
            # are missed; a second pass over half-size tiles (50% overlap) finds them. A face
            # smaller than half a tile lies wholly inside some tile, so detections touching an
            # interior tile edge are dropped as truncated duplicates.
            t = max(self.min_tile_side, int(np.ceil(max(H, W) / 2)))
            xs = sorted({*range(0, max(W - t, 0) + 1, t // 2), max(W - t, 0)})
            ys = sorted({*range(0, max(H - t, 0) + 1, t // 2), max(H - t, 0)})
            for ty in ys:
                for tx in xs:
                    tile_dets: list = []
                    self._run_detectors(np.ascontiguousarray(img[ty:ty + t, tx:tx + t]), tx, ty, 1, tile_dets)
                    tw, th = min(t, W - tx), min(t, H - ty)
                    for lvl, sc, b in tile_dets:
                        m = 2.0
                        if ((tx > 0 and b[0] < tx + m) or (ty > 0 and b[1] < ty + m)
                                or (tx + tw < W and b[2] > tx + tw - m) or (ty + th < H and b[3] > ty + th - m)):
                            continue
                        cands.append((lvl, sc, b))
        cands.sort(key=lambda c: (c[0], -c[1]))  # full-image detections first, then by score
        kept: list[tuple[float, np.ndarray]] = []
        for _, s, b in cands:
            if all(_iou(b, kb) <= 0.3 and _ios(b, kb) <= 0.6 for _, kb in kept):
                kept.append((s, b))
        return kept

    def _mesh_in_box(self, img: np.ndarray, box: np.ndarray):
        """Run Face Mesh on a square crop around ``box``; return ([478,2], [478]) image px or None."""
        cv2 = self._cv2
        H, W = img.shape[:2]
        L = int(math.ceil(self.crop_scale * max(box[2] - box[0], box[3] - box[1])))  # crop side, image px
        ox = int(math.floor(0.5 * (box[0] + box[2]) - 0.5 * L))  # integer crop origin
        oy = int(math.floor(0.5 * (box[1] + box[3]) - 0.5 * L))
        region = img[max(oy, 0):max(min(oy + L, H), 0), max(ox, 0):max(min(ox + L, W), 0)]
        if region.shape[:2] != (L, L):  # the crop leaves the image: pad with black
            pt, pl = max(-oy, 0), max(-ox, 0)
            region = cv2.copyMakeBorder(region, pt, L - region.shape[0] - pt, pl, L - region.shape[1] - pl,
                                        cv2.BORDER_CONSTANT, value=(0, 0, 0))
        out_side = int(min(max(L, self.min_crop_side), self.max_crop_side))
        s = out_side / L  # crop px per image px; continuous coordinates map as u_crop = s * (u_img - o)
        crop = region if out_side == L else cv2.resize(
            region, (out_side, out_side), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        crop = np.ascontiguousarray(crop)
        res = self._mesh.process(crop)
        if not res.multi_face_landmarks:
            return None
        box_crop = np.array([(box[0] - ox) * s, (box[1] - oy) * s, (box[2] - ox) * s, (box[3] - oy) * s])
        best, best_iou = None, 0.0
        for lms in res.multi_face_landmarks:
            p = np.array([[q.x, q.y, q.z] for q in lms.landmark], dtype=np.float64) * out_side
            if p.shape[0] != NUM_LANDMARKS:
                continue
            ext = np.array([p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()])
            iou = _iou(ext, box_crop)
            if iou > best_iou:
                best, best_iou = p, iou
        if best is None or best_iou < 0.2:
            return None
        xy = best[:, :2] / s + np.array([ox, oy])
        return xy, best[:, 2] / s

    def detect(self, image, tiles: bool | None = None) -> list[Face]:
        """Detect faces in ``image`` and compute their dense landmarks.

        Args:
            image: [H,W,3] uint8 RGB array, or a path / encoded bytes (loaded with
                :func:`fastavatar_engine.images.load_image`).
            tiles: run the small-face tile pass (None: the front end's ``tiles`` setting). It
                only adds faces too small for the whole-image pass (and costs 58 ms on a
                1024x1024 photo, against 6 ms without), so a caller after the largest face may
                try without it first.

        Returns a list of :class:`Face`, largest box first (possibly empty).
        Raises ``ValueError`` for an unusable array, ``ImageLoadError`` for an unreadable file.
        """
        img, _ = as_rgb_image(image)
        H, W = img.shape[:2]
        t0 = time.perf_counter()
        boxes = self._detect_boxes(img, self.tiles if tiles is None else bool(tiles))
        t1 = time.perf_counter()
        faces: list[Face] = []
        for score, box in boxes:
            mesh = self._mesh_in_box(img, box)
            if mesh is None:
                continue
            faces.append(_face(mesh, box, score, W, H))
        t2 = time.perf_counter()
        faces.sort(key=lambda f: -f.area)
        self.timings = {"detect_ms": 1e3 * (t1 - t0), "mesh_ms": 1e3 * (t2 - t1)}
        return faces

    def track(self, image, previous: Face | None = None) -> Face | None:
        """The largest face of a video frame ``image`` ([H,W,3] uint8 RGB), or None. With the
        ``previous`` frame's face, Face Mesh runs in the box of its landmarks first (no detector:
        a face moves little between frames) and the full :meth:`detect` (without tiles) only
        when that finds none."""
        img, _ = as_rgb_image(image)
        H, W = img.shape[:2]
        if previous is not None:
            lm = np.asarray(previous.landmarks, np.float64)[:468]
            box = np.r_[lm.min(0), lm.max(0)]
            mesh = self._mesh_in_box(img, box)
            if mesh is not None:  # no detector box: the new landmarks' own box
                return _face(mesh, np.r_[mesh[0][:468].min(0), mesh[0][:468].max(0)], previous.score, W, H)
        faces = self.detect(img, tiles=False)
        return faces[0] if faces else None

    def detect_one(self, image, index: int | None = None) -> Face:
        """:meth:`detect` then :func:`select_face` (largest face, or ``index``); errors name the file."""
        img, name = as_rgb_image(image)
        return select_face(self.detect(img), index, image_name=name)

    def describe(self, image, with_camera: bool = True, K=None, dense: bool = True, faces=None,
                 camera_fn=None) -> dict:
        """Detect all faces and return a JSON-ready report (what ``fastavatar detect IMAGE`` prints).

        Returns ``{"image", "image_size_wh", "num_faces", "faces": [Face.to_json() + {"index",
        "camera": CameraEstimate.to_json() or None, "camera_error"}], "timings_ms"}``, faces
        largest first. ``K`` ([3,3], pixels) is used for every face; None = the default field
        of view (:func:`~fastavatar_engine.face.pose.estimate_camera`). An image without faces
        gives ``num_faces == 0`` (no exception); unreadable files raise ``ImageLoadError``.
        ``faces``: the result of :meth:`detect` on this image, to avoid detecting twice.
        ``camera_fn(face, K) -> (CameraEstimate, extra dict)`` replaces the PnP camera (the CLI
        passes the head fit, :func:`fastavatar_engine.head.fit.fit_head`); ``extra`` is merged
        into the face's entry.
        """
        img, name = as_rgb_image(image)
        if faces is None:
            faces = self.detect(img)
        timings = dict(self.timings)
        out_faces = []
        t0 = time.perf_counter()
        for i, f in enumerate(faces):
            d = {"index": i, **f.to_json(dense=dense)}
            if with_camera:
                try:
                    if camera_fn is None:
                        d["camera"] = estimate_camera(f, K=K).to_json()
                    else:
                        cam, extra = camera_fn(f, K)
                        d["camera"] = cam.to_json()
                        d.update(extra)
                except PoseEstimationError as exc:
                    d["camera"], d["camera_error"] = None, str(exc)
            out_faces.append(d)
        if with_camera:
            timings["pnp_ms" if camera_fn is None else "camera_ms"] = 1e3 * (time.perf_counter() - t0)
        return {
            "image": name,
            "image_size_wh": [int(img.shape[1]), int(img.shape[0])],
            "num_faces": len(faces),
            "faces": out_faces,
            "timings_ms": {k.removesuffix("_ms"): round(v, 2) for k, v in timings.items()},
        }

    def select_face(self, faces: list[Face], index: int | None = None, image_name: str | None = None) -> Face:
        """See :func:`select_face`."""
        return select_face(faces, index, image_name)

    def align(self, image, face: Face, size: int = 112) -> np.ndarray:
        """ArcFace-aligned crop ``[size,size,3]`` uint8 (same channel order as ``image``); see
        :func:`fastavatar_engine.face.align.align_face`."""
        from .align import align_face

        img, _ = as_rgb_image(image)
        return align_face(img, face.landmarks5, size)
