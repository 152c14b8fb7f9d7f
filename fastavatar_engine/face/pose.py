"""Camera (head-pose) estimation from dense face landmarks: PnP against a 3D landmark template.

**Template** (:class:`LandmarkTemplate`, default file ``fastavatar_engine/data/landmarks3d_template.json``,
built by ``tools/build_landmark_template.py``): the 478 MediaPipe landmarks triangulated from the
calibrated NeRSemble sample views (:mod:`fastavatar_engine.face.triangulate`) and averaged over
the subjects **in the FLAME canonical head frame**: each subject's points are un-rotated by its
tracked FLAME head rotation (global rotation x neck pose) before averaging. The frame is the
engine's y-up world in metres with the head upright, facing +z, +x towards the subject's left.
(The sample data's world frame itself is not head-aligned: the three subjects' heads are turned
7-18 degrees relative to each other there, so a world-frame average would blur the template and
bias every pose by the subject's own head tilt.)

**Estimate** (:func:`estimate_camera`):

1. ``cv2.solvePnP(..., SOLVEPNP_SQPNP)`` (globally optimal PnP) on the template's PnP landmarks
   (the 468 mesh points; the 10 iris points follow the gaze and are left out), then
   ``cv2.solvePnPRefineLM`` on the inliers (reprojection error < max(3 x median, 2 px)), twice.
2. Visibility: Face Mesh also places landmarks on the far side of a turned head, where they are
   guesses. Points whose template normal faces away from the estimated camera
   (``cos < visibility_cos``) are dropped and the pose re-solved (twice). On the sample views
   (leave-one-subject-out, known K) this lowered the mean rotation error from 3.9 to 3.7
   degrees and the number of views above 10 degrees from 3 to 1 of 48.
3. Unknown intrinsics (``K=None``): principal point at the image centre and a fixed
   :data:`DEFAULT_FOV_DEG` = 30 degree field of view across the longer image side. Searching
   the focal length for the smallest reprojection error was tried and rejected: with a mean
   template instead of the person's own face shape the error hardly depends on focal length, the
   search drifts to wide angles (tens of degrees off on the samples, whose true field of view is
   22 degrees) and the rotation gets worse. Rotation is insensitive to the focal length near the
   truth (sample data, leave-one-subject-out: 3.7 degrees mean error with the true K, 4.0 with
   the 30 degree default); the camera distance scales with the focal length. 30 degrees sits
   between a phone's main camera (~65-70 degrees across the long side) and the telephoto /
   cropped portraits typical of avatar photos (15-25 degrees; the sample rig has 22).

The returned ``c2w`` is the camera pose relative to the template head (OpenGL camera axes, see
:mod:`fastavatar_engine.cameras`). ``yaw``/``pitch``/``roll`` are the camera's orbit angles
around the head as in :func:`fastavatar_engine.cameras.orbit_c2w`: ``c2w[:3,:3] = Ry(yaw) @
Rx(-pitch) @ Rz(roll)``; yaw > 0 puts the camera towards the subject's left (+x), pitch > 0
above the head, roll > 0 turns the camera counter-clockwise about its viewing axis as seen from
behind the camera, so the head appears rotated clockwise in the photo.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..cameras import c2w_from_viewmat, intrinsics, viewmat_from_c2w
from ._deps import require
from .types import Face, FaceError
from .landmarks import IRIS_LANDMARKS, NUM_LANDMARKS

#: Default template shipped with the package.
DEFAULT_TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "data" / "landmarks3d_template.json"
#: Field of view (degrees) across the longer image side assumed when ``K`` is unknown.
DEFAULT_FOV_DEG = 30.0
#: Landmarks whose normal makes a cosine below this with the direction to the camera are dropped.
DEFAULT_VISIBILITY_COS = 0.3
TEMPLATE_FORMAT = "fastavatar.landmarks3d"


class PoseEstimationError(FaceError):
    """The camera could not be estimated from the landmarks (degenerate or implausible input)."""


# --------------------------------------------------------------------------- template
def landmark_normals(points: np.ndarray, k: int = 12) -> np.ndarray:
    """Outward unit normals [N,3] of a face-landmark cloud [N,3] (canonical frame, face towards +z).

    Local PCA over each point's ``k`` nearest neighbours; the sign is chosen to point away from
    a centre 8 cm behind the landmarks' centroid (inside the head).
    """
    P = np.asarray(points, dtype=np.float64)
    D = np.linalg.norm(P[:, None] - P[None], axis=2)
    nn = np.argsort(D, axis=1)[:, :k]
    Q = P[nn] - P[nn].mean(axis=1, keepdims=True)  # [N,k,3]
    _, _, vt = np.linalg.svd(Q)
    n = vt[:, -1, :]
    centre = P.mean(axis=0) - np.array([0.0, 0.0, 0.08])
    n *= np.sign(np.einsum("ij,ij->i", n, P - centre))[:, None]
    return n / np.linalg.norm(n, axis=1, keepdims=True)


@dataclass
class LandmarkTemplate:
    """3D positions of the 478 MediaPipe landmarks on a mean head.

    Attributes:
        points: [478,3] float64 metres, FLAME canonical head frame (y up, face towards +z).
        normals: [478,3] float64 outward unit normals (for the visibility test).
        pnp_indices: [M] int landmark indices used for PnP.
        meta: provenance and per-landmark statistics (free-form, JSON-serialisable).
    """

    points: np.ndarray
    normals: np.ndarray
    pnp_indices: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.points = np.asarray(self.points, dtype=np.float64)
        if self.points.shape != (NUM_LANDMARKS, 3) or not np.isfinite(self.points).all():
            raise ValueError(f"landmark template: expected finite [{NUM_LANDMARKS},3] points, got {self.points.shape}")
        if self.normals is None:
            self.normals = landmark_normals(self.points)
        self.normals = np.asarray(self.normals, dtype=np.float64)
        self.pnp_indices = np.asarray(self.pnp_indices, dtype=np.int64)
        if self.normals.shape != self.points.shape:
            raise ValueError(f"landmark template: normals shape {self.normals.shape} != points shape")
        if self.pnp_indices.ndim != 1 or len(self.pnp_indices) < 6 or self.pnp_indices.min() < 0 \
                or self.pnp_indices.max() >= NUM_LANDMARKS:
            raise ValueError("landmark template: pnp_indices must be >= 6 valid landmark indices")

    @classmethod
    def from_points(cls, points: np.ndarray, pnp_indices=None, meta: dict | None = None) -> "LandmarkTemplate":
        """Template from [478,3] points; PnP uses all non-iris landmarks unless ``pnp_indices`` is given."""
        if pnp_indices is None:
            pnp_indices = np.array([i for i in range(NUM_LANDMARKS) if i not in IRIS_LANDMARKS])
        return cls(points=points, normals=None, pnp_indices=pnp_indices, meta=dict(meta or {}))

    def to_json_dict(self, decimals: int = 6) -> dict:
        """The on-disk JSON form (points / normals rounded to ``decimals``)."""
        return {
            "format": TEMPLATE_FORMAT,
            "version": 1,
            "num_landmarks": NUM_LANDMARKS,
            "units": "metres",
            "frame": "FLAME canonical head frame: y up, face towards +z, +x = subject's left",
            **{k: v for k, v in self.meta.items() if k not in ("points", "normals", "pnp_indices")},
            "pnp_indices": self.pnp_indices.tolist(),
            "points": np.round(self.points, decimals).tolist(),
            "normals": np.round(self.normals, 4).tolist(),
        }

    def save(self, path) -> Path:
        """Write the template as JSON (atomically). Returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        # One top-level key per line and one landmark per line, so that rebuilds diff well.
        lines = []
        for k, v in self.to_json_dict().items():
            if isinstance(v, list) and v and isinstance(v[0], list):
                body = ",\n  ".join(json.dumps(row, separators=(",", ":")) for row in v)
                lines.append(f"{json.dumps(k)}: [\n  {body}\n ]")
            else:
                lines.append(f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}")
        tmp.write_text("{\n " + ",\n ".join(lines) + "\n}\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path) -> "LandmarkTemplate":
        """Read a template JSON written by :meth:`save`. Raises ``ValueError`` for a bad file."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read landmark template ({exc})") from exc
        if not isinstance(d, dict) or d.get("format") != TEMPLATE_FORMAT:
            raise ValueError(f"{path}: not a {TEMPLATE_FORMAT} file")
        meta = {k: v for k, v in d.items() if k not in ("points", "normals", "pnp_indices")}
        try:
            return cls(points=np.array(d["points"], dtype=np.float64),
                       normals=np.array(d["normals"], dtype=np.float64) if "normals" in d else None,
                       pnp_indices=np.array(d["pnp_indices"], dtype=np.int64), meta=meta)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: malformed landmark template ({exc})") from exc


@lru_cache(maxsize=4)
def _load_cached(path: str) -> LandmarkTemplate:
    return LandmarkTemplate.load(path)


def load_landmark_template(path=None) -> LandmarkTemplate:
    """Load (and cache) a landmark template; the packaged default when ``path`` is None."""
    return _load_cached(str(Path(path) if path is not None else DEFAULT_TEMPLATE_PATH))


# --------------------------------------------------------------------------- result
def camera_angles(c2w) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of an OpenGL c2w, with ``R = Ry(yaw) @ Rx(-pitch) @ Rz(roll)``.

    For :func:`fastavatar_engine.cameras.orbit_c2w(yaw, pitch)` this returns ``(yaw, pitch, 0)``.
    """
    R = np.asarray(c2w, dtype=np.float64)[:3, :3]
    pitch = math.degrees(math.asin(float(np.clip(R[1, 2], -1.0, 1.0))))
    yaw = math.degrees(math.atan2(R[0, 2], R[2, 2]))
    roll = math.degrees(math.atan2(R[1, 0], R[1, 1]))
    return yaw, pitch, roll


@dataclass
class CameraEstimate:
    """A camera estimated from one face.

    Attributes:
        c2w: [4,4] float64 OpenGL camera-to-world in the template head's frame (metres, y up,
            head facing +z).
        K: [3,3] float64 intrinsics (pixels, continuous convention, see ``cameras``).
        image_size: ``(width, height)`` in pixels.
        reprojection_error_px: mean distance (px) between the observed landmarks and the
            projected template landmarks, over the points used in the final solve.
        reprojection_rms_px: the RMS of the same distances.
        yaw_deg, pitch_deg, roll_deg: see :func:`camera_angles` and the module docstring.
        num_points: landmarks used in the final solve.
        focal_source: ``"given"`` (K passed in) or ``"default_fov"`` (:data:`DEFAULT_FOV_DEG`).
    """

    c2w: np.ndarray
    K: np.ndarray
    image_size: tuple[int, int]
    reprojection_error_px: float
    reprojection_rms_px: float
    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    num_points: int
    focal_source: str

    @property
    def viewmat(self) -> np.ndarray:
        """OpenCV world-to-camera 4x4 (gsplat convention)."""
        return viewmat_from_c2w(self.c2w)

    @property
    def fov_deg(self) -> tuple[float, float]:
        """Horizontal and vertical field of view in degrees."""
        w, h = self.image_size
        return (math.degrees(2 * math.atan(0.5 * w / self.K[0, 0])), math.degrees(2 * math.atan(0.5 * h / self.K[1, 1])))

    @property
    def distance_m(self) -> float:
        """Distance from the camera centre to the template's origin in metres."""
        return float(np.linalg.norm(self.c2w[:3, 3]))

    def to_json(self, decimals: int = 6) -> dict:
        """JSON-ready dict of the estimate (matrices as nested lists)."""
        fx, fy = self.fov_deg
        return {
            "c2w_opengl": np.round(self.c2w, decimals).tolist(),
            "K": np.round(self.K, 4).tolist(),
            "image_size_wh": [int(self.image_size[0]), int(self.image_size[1])],
            "fov_deg_xy": [round(fx, 3), round(fy, 3)],
            "yaw_deg": round(self.yaw_deg, 3),
            "pitch_deg": round(self.pitch_deg, 3),
            "roll_deg": round(self.roll_deg, 3),
            "distance_m": round(self.distance_m, 4),
            "reprojection_error_px": round(self.reprojection_error_px, 3),
            "reprojection_rms_px": round(self.reprojection_rms_px, 3),
            "num_points": int(self.num_points),
            "focal_source": self.focal_source,
            "frame": "template head frame: y up, metres, head facing +z; c2w uses OpenGL camera axes",
        }


# --------------------------------------------------------------------------- estimation
def default_intrinsics(width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG) -> np.ndarray:
    """K for an unknown camera: centred principal point, ``fov_deg`` across the longer side, square pixels."""
    f = 0.5 * max(width, height) / math.tan(math.radians(fov_deg) / 2)
    return intrinsics(f, f, 0.5 * width, 0.5 * height)


def _solve(cv2, obj, img, K, rvec=None, tvec=None):
    """SQPnP (or LM from a guess), then LM on inliers twice. Returns rvec, tvec, err [N], inlier mask."""
    obj = np.ascontiguousarray(obj, dtype=np.float64)
    img = np.ascontiguousarray(img, dtype=np.float64)
    if rvec is None:
        ok, rvec, tvec = cv2.solvePnP(obj, img, K, None, flags=cv2.SOLVEPNP_SQPNP)
        if not ok:
            raise PoseEstimationError("solvePnP found no pose for these landmarks")
    inl = np.ones(len(obj), dtype=bool)
    for _ in range(2):
        proj, _ = cv2.projectPoints(obj, rvec, tvec, K, None)
        err = np.linalg.norm(proj[:, 0] - img, axis=1)
        inl = err < max(3.0 * float(np.median(err)), 2.0)
        if inl.sum() < 6:
            inl = np.ones(len(obj), dtype=bool)
        rvec, tvec = cv2.solvePnPRefineLM(obj[inl], img[inl], K, None, rvec, tvec)
    proj, _ = cv2.projectPoints(obj, rvec, tvec, K, None)
    err = np.linalg.norm(proj[:, 0] - img, axis=1)
    return rvec, tvec, err, inl


def estimate_camera(face_or_landmarks, image_size=None, K=None, template: LandmarkTemplate | None = None,
                    visibility_cos: float | None = DEFAULT_VISIBILITY_COS,
                    fov_deg: float = DEFAULT_FOV_DEG) -> CameraEstimate:
    """Estimate the camera that took a face photo, relative to the template head.

    Args:
        face_or_landmarks: a :class:`~fastavatar_engine.face.Face`, or its dense landmarks
            [478,2] (or [468,2]) in continuous pixel coordinates.
        image_size: ``(width, height)`` in pixels; taken from the Face when omitted. Needed only
            when ``K`` is None.
        K: [3,3] intrinsics in the same pixel convention; None = unknown camera, use
            :func:`default_intrinsics` (``fov_deg`` across the longer side; see module docstring).
        template: the 3D landmarks; the packaged template by default.
        visibility_cos: drop landmarks facing away from the camera (None disables the test).

    Returns a :class:`CameraEstimate`. Raises ``ValueError`` for malformed input and
    :class:`PoseEstimationError` when no plausible pose is found (e.g. the head would be behind
    the camera).
    """
    cv2 = require("cv2", "head-pose estimation")
    if isinstance(face_or_landmarks, Face):
        uv = np.asarray(face_or_landmarks.landmarks, dtype=np.float64)
        if image_size is None:
            image_size = face_or_landmarks.image_size
    else:
        uv = np.asarray(face_or_landmarks, dtype=np.float64)
    if uv.ndim != 2 or uv.shape[1] < 2 or uv.shape[0] not in (468, NUM_LANDMARKS):
        raise ValueError(f"expected dense landmarks of shape [478,2] (or [468,2]), got {uv.shape}")
    uv = uv[:, :2]
    if not np.isfinite(uv).all():
        raise ValueError("landmarks contain non-finite values")
    tpl = template if template is not None else load_landmark_template()
    if K is None:
        if image_size is None:
            raise ValueError("estimate_camera: give image_size (width, height) or K")
        w, h = (int(v) for v in image_size)
        K = default_intrinsics(w, h, fov_deg)
        focal_source = "default_fov"
    else:
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"K must be a finite 3x3 intrinsics matrix with positive focal lengths, got {K!r}")
        focal_source = "given"
        if image_size is None:
            image_size = (int(round(2 * K[0, 2])), int(round(2 * K[1, 2])))
    idx = tpl.pnp_indices[tpl.pnp_indices < uv.shape[0]]
    obj_all, img_all = tpl.points, uv
    rvec, tvec, err, inl = _solve(cv2, obj_all[idx], img_all[idx], K)
    used = idx
    if visibility_cos is not None:
        for _ in range(2):
            R = cv2.Rodrigues(rvec)[0]
            cam = -R.T @ tvec[:, 0]  # camera centre in template coordinates
            v = cam[None] - tpl.points[idx]
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            vis = idx[np.einsum("ij,ij->i", tpl.normals[idx], v) > visibility_cos]
            if len(vis) < 30:
                break
            used = vis
            rvec, tvec, err, inl = _solve(cv2, obj_all[used], img_all[used], K, rvec, tvec)
    R = cv2.Rodrigues(rvec)[0]
    vm = np.eye(4)
    vm[:3, :3], vm[:3, 3] = R, tvec[:, 0]
    depth = (tpl.points[used] @ R.T + tvec[:, 0])[:, 2]
    if not (depth > 0).all():
        raise PoseEstimationError("no plausible camera: the template head would be behind the camera")
    c2w = c2w_from_viewmat(vm)
    yaw, pitch, roll = camera_angles(c2w)
    e = err[inl]
    return CameraEstimate(
        c2w=c2w, K=K, image_size=(int(image_size[0]), int(image_size[1])),
        reprojection_error_px=float(e.mean()), reprojection_rms_px=float(np.sqrt(np.mean(e ** 2))),
        yaw_deg=yaw, pitch_deg=pitch, roll_deg=roll, num_points=int(inl.sum()), focal_source=focal_source,
    )
