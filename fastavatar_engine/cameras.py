"""Cameras: the sample-data loader and every conversion between camera conventions (numpy only).

Conventions, stated once for the whole project:

* **Engine world**: y-up, metres (the NeRSemble sample data's world; the head sits near the
  origin and faces +z).
* **c2w (OpenGL / Blender camera)**: a 4x4 camera-to-world matrix whose camera looks down its
  local -z with +y up and +x right. This is what ``transforms*.json`` stores and what Blender's
  ``Camera.matrix_world`` means. All public functions take this form unless named ``*_cv``.
* **OpenCV / gsplat camera**: looks down +z with +y down. ``viewmat`` is the OpenCV
  world-to-camera matrix gsplat's ``rasterization(viewmats=...)`` expects.
  ``c2w_cv = c2w_gl @ diag(1, -1, -1, 1)``.
* **Intrinsics K**: 3x3 ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixels, continuous pixel
  coordinates with pixel (row i, col j) covering [j, j+1) x [i, i+1), so its centre is at
  (j + 0.5, i + 0.5) — gsplat's and the sample data's convention (cx ~ width / 2).
* **Blender world**: z-up. The one place the axis change is defined is :data:`YUP_TO_BLENDER`:
  (x, y, z)_engine -> (x, -z, y)_blender, a +90 degree rotation about x.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: diag(1, -1, -1, 1): flips the camera's y and z axes (OpenGL <-> OpenCV camera frame).
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])

#: 4x4 rotation taking engine (y-up) world coordinates to Blender (z-up): (x, y, z) -> (x, -z, y).
YUP_TO_BLENDER = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
BLENDER_TO_YUP = YUP_TO_BLENDER.T.copy()


class CameraError(ValueError):
    """A camera file or matrix is malformed."""


# --------------------------------------------------------------------------- matrices
def _as_mat4(m, name: str = "matrix") -> np.ndarray:
    a = np.asarray(m, dtype=np.float64)
    if a.shape != (4, 4):
        raise CameraError(f"{name}: expected a 4x4 matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise CameraError(f"{name}: contains non-finite values")
    return a


def intrinsics(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """The 3x3 pinhole intrinsics K (float64, pixels)."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def scale_intrinsics(K, sx: float, sy: float) -> np.ndarray:
    """K for the image resampled by ``sx`` horizontally and ``sy`` vertically (float64 3x3).

    Exact in continuous pixel coordinates (pixel centres at +0.5): fx, cx scale by sx; fy, cy by sy.
    """
    out = np.array(K, dtype=np.float64)
    out[0] *= sx
    out[1] *= sy
    return out


def intrinsics_from_fov(width: int, height: int, fov_x_rad: float) -> np.ndarray:
    """K for a centred principal point and a horizontal field of view ``fov_x_rad`` (radians), square pixels."""
    f = 0.5 * width / math.tan(0.5 * fov_x_rad)
    return intrinsics(f, f, 0.5 * width, 0.5 * height)


def c2w_gl_to_cv(c2w_gl) -> np.ndarray:
    """OpenGL/Blender camera-to-world -> OpenCV camera-to-world (4x4 float64)."""
    return _as_mat4(c2w_gl, "c2w") @ GL_TO_CV


def c2w_cv_to_gl(c2w_cv) -> np.ndarray:
    """OpenCV camera-to-world -> OpenGL/Blender camera-to-world (4x4 float64)."""
    return _as_mat4(c2w_cv, "c2w_cv") @ GL_TO_CV


def invert_rigid(m) -> np.ndarray:
    """Inverse of a 4x4 rigid transform [R|t] as [R^T | -R^T t] (float64)."""
    m = _as_mat4(m)
    out = np.eye(4)
    out[:3, :3] = m[:3, :3].T
    out[:3, 3] = -m[:3, :3].T @ m[:3, 3]
    return out


def viewmat_from_c2w(c2w_gl) -> np.ndarray:
    """OpenCV world-to-camera matrix (gsplat's ``viewmats`` entry) from an OpenGL c2w; 4x4 float64."""
    return invert_rigid(c2w_gl_to_cv(c2w_gl))


def c2w_from_viewmat(viewmat) -> np.ndarray:
    """OpenGL c2w from an OpenCV world-to-camera matrix (inverse of :func:`viewmat_from_c2w`)."""
    return c2w_cv_to_gl(invert_rigid(viewmat))


def c2w_to_blender(c2w_gl) -> np.ndarray:
    """Engine (y-up) camera-to-world -> Blender ``Camera.matrix_world`` (z-up world, same camera axes)."""
    return YUP_TO_BLENDER @ _as_mat4(c2w_gl, "c2w")


def c2w_from_blender(matrix_world) -> np.ndarray:
    """Blender camera ``matrix_world`` (z-up) -> engine c2w (y-up)."""
    return BLENDER_TO_YUP @ _as_mat4(matrix_world, "matrix_world")


def points_to_blender(points) -> np.ndarray:
    """Engine points [N,3] (y-up) -> Blender points [N,3] (z-up): (x, y, z) -> (x, -z, y)."""
    p = np.asarray(points, dtype=np.float64)
    return p @ YUP_TO_BLENDER[:3, :3].T


def points_from_blender(points) -> np.ndarray:
    """Blender points [N,3] (z-up) -> engine points [N,3] (y-up): (x, y, z) -> (x, z, -y)."""
    p = np.asarray(points, dtype=np.float64)
    return p @ BLENDER_TO_YUP[:3, :3].T


def look_at(eye, target, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """OpenGL c2w for a camera at ``eye`` looking at ``target`` (metres) with ``up`` roughly up."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    back = eye - target
    if np.linalg.norm(back) < 1e-12:
        raise CameraError("look_at: eye and target coincide")
    z = back / np.linalg.norm(back)
    x = np.cross(up, z)
    if np.linalg.norm(x) < 1e-9:
        raise CameraError("look_at: up is parallel to the viewing direction")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def orbit_c2w(yaw_deg: float, pitch_deg: float = 0.0, distance: float = 1.1, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    """OpenGL c2w on a sphere around ``target`` in the engine's y-up world.

    ``yaw_deg`` = 0 and ``pitch_deg`` = 0 put the camera on +z, in front of a face that looks
    along +z; positive yaw moves the camera towards +x (the subject's left), positive pitch
    moves it up. ``distance`` in metres.
    """
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    offset = distance * np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
    return look_at(np.asarray(target, dtype=np.float64) + offset, target)


def project_points(points, c2w_gl, K):
    """Pinhole projection of world points.

    Args: ``points`` [N,3] metres; ``c2w_gl`` 4x4 OpenGL c2w; ``K`` 3x3 intrinsics.
    Returns ``(uv, depth)``: ``uv`` [N,2] continuous pixel coordinates (x right, y down; pixel
    centres at +0.5) and ``depth`` [N], the distance along the viewing axis in metres (positive
    in front of the camera). Points behind the camera get uv = nan.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    K = np.asarray(K, dtype=np.float64)
    vm = viewmat_from_c2w(c2w_gl)
    pc = p @ vm[:3, :3].T + vm[:3, 3]
    z = pc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack([K[0, 0] * pc[:, 0] / z + K[0, 2], K[1, 1] * pc[:, 1] / z + K[1, 2]], axis=1)
    uv[z <= 0] = np.nan
    return uv, z


def rotation_angle_deg(Ra, Rb) -> float:
    """Geodesic angle in degrees between two 3x3 rotations (or the rotation parts of two 4x4s)."""
    Ra = np.asarray(Ra, dtype=np.float64)[:3, :3]
    Rb = np.asarray(Rb, dtype=np.float64)[:3, :3]
    c = (np.trace(Ra.T @ Rb) - 1.0) / 2.0
    return math.degrees(math.acos(float(np.clip(c, -1.0, 1.0))))


# --------------------------------------------------------------------------- sample data
@dataclass
class CameraView:
    """One calibrated view of a sample subject.

    ``c2w``: 4x4 OpenGL camera-to-world (float64, metres); ``K``: 3x3 intrinsics (pixels);
    ``width``/``height`` in pixels; ``camera_index``: the NeRSemble camera number (8 = frontal).
    """

    name: str
    camera_index: int
    c2w: np.ndarray
    K: np.ndarray
    width: int
    height: int
    image_path: Path
    mask_path: Path | None

    @property
    def viewmat(self) -> np.ndarray:
        """OpenCV world-to-camera 4x4 (gsplat convention)."""
        return viewmat_from_c2w(self.c2w)

    def load_image(self) -> np.ndarray:
        """The view's photo, [H,W,3] uint8 RGB (through the project's one image loader)."""
        from .images import load_image

        img = load_image(self.image_path)
        if img.shape[:2] != (self.height, self.width):
            raise CameraError(f"{self.image_path}: image is {img.shape[1]}x{img.shape[0]}, "
                              f"transforms.json says {self.width}x{self.height}")
        return img

    def load_mask(self) -> np.ndarray:
        """The foreground mask, [H,W] float32 in [0, 1] (grey-level masks are kept soft)."""
        from .images import load_mask

        if self.mask_path is None:
            raise CameraError(f"{self.name}: no foreground mask listed")
        mask = load_mask(self.mask_path)
        if mask.shape != (self.height, self.width):
            raise CameraError(f"{self.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, expected {self.width}x{self.height}")
        return mask


@dataclass
class Subject:
    """A sample subject folder: views from ``transforms.json`` plus the split files."""

    root: Path
    views: list[CameraView]
    splits: dict[str, list[int]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.root.name

    def view(self, camera_index: int) -> CameraView:
        """The view with NeRSemble camera number ``camera_index`` (KeyError if absent)."""
        for v in self.views:
            if v.camera_index == camera_index:
                return v
        raise KeyError(f"{self.root}: no view with camera_index {camera_index}")

    def split(self, name: str) -> list[CameraView]:
        """Views of split ``name`` ('train', 'val', 'test'); all views when no split file exists."""
        if name not in self.splits:
            return list(self.views)
        return [self.view(i) for i in self.splits[name]]

    def points(self) -> np.ndarray:
        """The subject's ``points3d.ply`` as [N,3] float64 metres (N = 10,144 for the samples)."""
        from .ply import read_point_cloud

        return read_point_cloud(self.root / "points3d.ply").means.astype(np.float64)


def _check_rigid(root: Path, c2w: np.ndarray, tol: float = 1e-3) -> None:
    R = c2w[:3, :3]
    if (np.abs(c2w[3] - [0.0, 0.0, 0.0, 1.0]).max() > tol or np.abs(R.T @ R - np.eye(3)).max() > tol
            or np.linalg.det(R) <= 0):
        raise CameraError(f"{root}: transform_matrix is not a rigid camera-to-world transform "
                          f"(rotation must be orthonormal with determinant +1, last row 0 0 0 1)")


def _parse_frame(root: Path, frame: dict, defaults: dict) -> CameraView:
    if not isinstance(frame, dict):
        raise CameraError(f"{root}: malformed frame entry (expected an object, got {type(frame).__name__})")
    get = lambda k: frame.get(k, defaults.get(k))  # noqa: E731
    try:
        fx, fy, cx, cy = (float(get(k)) for k in ("fl_x", "fl_y", "cx", "cy"))
        w, h = int(get("w")), int(get("h"))
        c2w = _as_mat4(frame["transform_matrix"], "transform_matrix")
        file_path = frame["file_path"]
        camera_index = int(frame.get("camera_index", -1))
        mask = frame.get("fg_mask_path")
        if not isinstance(file_path, str) or not file_path:
            raise TypeError(f"file_path must be a non-empty string, got {file_path!r}")
        if mask is not None and not isinstance(mask, str):
            raise TypeError(f"fg_mask_path must be a string, got {mask!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise CameraError(f"{root}: malformed frame entry ({type(exc).__name__}: {exc})") from exc
    if not (0 < w <= 65536 and 0 < h <= 65536 and 0 < fx < math.inf and 0 < fy < math.inf
            and math.isfinite(cx) and math.isfinite(cy)):
        raise CameraError(f"{root}: implausible camera size {w}x{h}, focal {fx}, {fy} or centre {cx}, {cy}")
    _check_rigid(root, c2w)
    image_path = root / file_path
    if image_path.suffix == "":
        image_path = image_path.with_suffix(".png")
    return CameraView(
        name=Path(file_path).stem,
        camera_index=camera_index,
        c2w=c2w,
        K=intrinsics(fx, fy, cx, cy),
        width=w,
        height=h,
        image_path=image_path,
        mask_path=(root / mask) if mask else None,
    )


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CameraError(f"{path}: cannot read ({exc})") from exc


def load_subject(root) -> Subject:
    """Load a sample-data subject folder (``transforms.json`` + optional ``transforms_{split}.json``).

    Raises :class:`CameraError` for a missing or malformed file.
    """
    root = Path(root)
    tf = root / "transforms.json"
    if not tf.is_file():
        raise CameraError(f"{root}: no transforms.json")
    data = _read_json(tf)
    if not isinstance(data, dict):
        raise CameraError(f"{tf}: expected a JSON object, got {type(data).__name__}")
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise CameraError(f"{tf}: no frames")
    views = [_parse_frame(root, f, data) for f in frames]
    known = {v.camera_index for v in views}
    splits = {}
    for split in ("train", "val", "test"):
        p = root / f"transforms_{split}.json"
        if p.is_file():
            sd = _read_json(p)
            split_frames = sd.get("frames", []) if isinstance(sd, dict) else None
            try:
                if not isinstance(split_frames, list):
                    raise TypeError("'frames' is not a list")
                indices = [int(f["camera_index"]) for f in split_frames]
            except (KeyError, TypeError, ValueError) as exc:
                raise CameraError(f"{p}: malformed split file ({type(exc).__name__}: {exc})") from exc
            unknown = sorted(set(indices) - known)
            if unknown:
                raise CameraError(f"{p}: camera_index {unknown} not among the views of transforms.json")
            splits[split] = indices
    return Subject(root=root, views=views, splits=splits)
