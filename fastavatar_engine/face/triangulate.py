"""3D positions of the 478 MediaPipe landmarks, triangulated from calibrated multi-view photos.

This builds the head-pose template of :mod:`fastavatar_engine.face.pose`:

1. Face Mesh runs on every view of a subject (:class:`~fastavatar_engine.face.FaceFrontEnd`,
   largest face); views without a face are skipped.
2. Each landmark is triangulated over those views: linear DLT in normalised camera coordinates
   (well conditioned), then Gauss-Newton on the pixel reprojection error.
3. Outlier views are rejected per landmark: while the worst view's reprojection error exceeds
   ``max_reproj_px`` (and more than ``min_views`` views remain), that view is dropped and the
   point re-triangulated. This removes, e.g., landmarks that Face Mesh guesses on the hidden
   side of a turned head.
4. Head frame: each subject's points are un-rotated by the subject's tracked FLAME head
   rotation ``R_head = R(global rotation) @ R(neck_pose)`` (``flame_param/00000.npz``), i.e.
   ``X_head = R_head^T X_world``. The sample data's world frame is the capture rig's: the
   three heads there are turned 7-18 degrees relative to each other (pairwise Procrustes of their
   triangulated landmarks); after un-rotating they agree to 0.9-1.6 degrees. Translation is
   kept (a per-subject constant offset does not blur an average).
5. :func:`triangulate_landmarks` averages the per-subject points over subjects.

World coordinates are the calibration's (engine's y-up world, metres, see
:mod:`fastavatar_engine.cameras`); head-frame coordinates are y up with the face towards +z.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cameras import CameraView, load_subject, viewmat_from_c2w


@dataclass
class Observation:
    """One calibrated view's landmarks: ``uv`` [N,2] continuous pixels, ``K`` 3x3, ``c2w`` 4x4 OpenGL."""

    uv: np.ndarray
    K: np.ndarray
    c2w: np.ndarray
    camera_index: int = -1


def axis_angle_to_matrix(v) -> np.ndarray:
    """Rotation matrix [3,3] of an axis-angle vector [3] (radians; Rodrigues' formula)."""
    v = np.asarray(v, dtype=np.float64).reshape(3)
    theta = float(np.linalg.norm(v))
    if theta < 1e-12:
        return np.eye(3)
    k = v / theta
    Kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(theta) * Kx + (1.0 - math.cos(theta)) * (Kx @ Kx)


def flame_head_rotation(subject_root, frame: int = 0) -> np.ndarray:
    """World rotation [3,3] of a sample subject's head: ``R(rotation) @ R(neck_pose)`` from its FLAME fit.

    Reads the ``flame_param_path`` of the first frame in ``transforms.json`` (default
    ``flame_param/00000.npz``). ``R_head^T @ c2w[:3,:3]`` is then a camera's rotation relative to
    the upright head. Raises ``FileNotFoundError`` / ``ValueError`` for missing or malformed files.
    """
    root = Path(subject_root)
    rel = f"flame_param/{frame:05d}.npz"
    tf = root / "transforms.json"
    if tf.is_file():
        frames = json.loads(tf.read_text()).get("frames") or []
        if frames and frames[0].get("flame_param_path"):
            rel = frames[0]["flame_param_path"]
    path = root / rel
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no FLAME parameters (needed for the head frame)")
    with np.load(path) as d:
        if "rotation" not in d or "neck_pose" not in d:
            raise ValueError(f"{path}: expected 'rotation' and 'neck_pose' arrays")
        return axis_angle_to_matrix(d["rotation"].reshape(-1)[:3]) @ axis_angle_to_matrix(d["neck_pose"].reshape(-1)[:3])


@dataclass
class SubjectLandmarks:
    """Triangulated landmarks of one subject.

    Attributes:
        name: subject folder name.
        points: [N,3] float64 world coordinates (metres); NaN where fewer than ``min_views`` views.
        reproj_rms_px: [N] float64 RMS reprojection error over the views kept (pixels).
        views_used: [N] int number of views kept per landmark.
        detected_cameras: camera indices where a face was detected.
        num_views: number of views in the subject folder.
        observations: the per-view 2D landmarks that were triangulated.
        head_rotation: [3,3] the subject's FLAME head rotation in the world (None if unknown).
    """

    name: str
    points: np.ndarray
    reproj_rms_px: np.ndarray
    views_used: np.ndarray
    detected_cameras: list[int]
    num_views: int
    observations: list[Observation]
    head_rotation: np.ndarray | None = None

    @property
    def head_points(self) -> np.ndarray:
        """Points in the subject's head frame, ``R_head^T X`` ([N,3]); raises if no head rotation."""
        if self.head_rotation is None:
            raise ValueError(f"{self.name}: no FLAME head rotation known")
        return self.points @ self.head_rotation


def _projection(obs: Observation) -> tuple[np.ndarray, np.ndarray]:
    """(Rt [3,4] OpenCV world->camera, K [3,3])."""
    vm = viewmat_from_c2w(obs.c2w)
    return vm[:3, :4], np.asarray(obs.K, dtype=np.float64)


def triangulate_observations(observations: list[Observation], max_reproj_px: float = 6.0, min_views: int = 3,
                             gn_iters: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Triangulate N points seen in V >= 2 calibrated views, with per-point outlier-view rejection.

    Args:
        observations: V views, each with ``uv`` [N,2] (NaN = not observed).
        max_reproj_px: a view whose reprojection error for a point exceeds this is dropped (the
            worst first, one at a time) while more than ``min_views`` views remain.
        min_views: fewest views a point must keep; points with fewer are NaN.
        gn_iters: Gauss-Newton iterations on the pixel reprojection error after the DLT.

    Returns ``(points [N,3], reproj_rms_px [N], views_used [N] int, kept [V,N] bool)``.
    Raises ``ValueError`` for fewer than two views or mismatched shapes.
    """
    V = len(observations)
    if V < 2:
        raise ValueError(f"triangulation needs at least 2 views, got {V}")
    uv = np.stack([np.asarray(o.uv, dtype=np.float64)[:, :2] for o in observations])  # [V,N,2]
    N = uv.shape[1]
    cams = [_projection(o) for o in observations]
    Rt = np.stack([c[0] for c in cams])  # [V,3,4]
    Ks = np.stack([c[1] for c in cams])  # [V,3,3]
    # normalised image coordinates x = K^-1 [u, v, 1]
    xn = (uv[..., 0] - Ks[:, None, 0, 2]) / Ks[:, None, 0, 0]
    yn = (uv[..., 1] - Ks[:, None, 1, 2]) / Ks[:, None, 1, 1]
    kept = np.isfinite(uv).all(axis=2)  # [V,N]

    def solve(kept):
        # DLT: rows x*P3 - P1 and y*P3 - P2 for each kept view; batched SVD over points.
        A = np.zeros((N, 2 * V, 4))
        A[:, 0::2] = (np.nan_to_num(xn).T[:, :, None] * Rt[None, :, 2, :] - Rt[None, :, 0, :])
        A[:, 1::2] = (np.nan_to_num(yn).T[:, :, None] * Rt[None, :, 2, :] - Rt[None, :, 1, :])
        w = np.repeat(kept.T.astype(np.float64), 2, axis=1)  # [N,2V]
        A *= w[:, :, None]
        _, _, vt = np.linalg.svd(A)
        Xh = vt[:, -1, :]
        X = Xh[:, :3] / Xh[:, 3:4]
        # Gauss-Newton on pixel reprojection error
        for _ in range(gn_iters):
            pc = np.einsum("vij,nj->vni", Rt[:, :, :3], X) + Rt[:, None, :, 3]  # [V,N,3]
            z = pc[..., 2]
            fx, fy = Ks[:, 0, 0][:, None], Ks[:, 1, 1][:, None]
            u = fx * pc[..., 0] / z + Ks[:, 0, 2][:, None]
            v = fy * pc[..., 1] / z + Ks[:, 1, 2][:, None]
            r = np.stack([u - uv[..., 0], v - uv[..., 1]], axis=-1)  # [V,N,2]
            # d(u)/d(pc) = fx/z * [1, 0, -x/z]; d(pc)/dX = R
            du = (fx / z)[..., None] * np.stack([np.ones_like(z), np.zeros_like(z), -pc[..., 0] / z], -1)
            dv = (fy / z)[..., None] * np.stack([np.zeros_like(z), np.ones_like(z), -pc[..., 1] / z], -1)
            R = Rt[:, None, :, :3]
            Ju = np.einsum("vnk,vnkj->vnj", du, np.broadcast_to(R, (V, N, 3, 3)))
            Jv = np.einsum("vnk,vnkj->vnj", dv, np.broadcast_to(R, (V, N, 3, 3)))
            m = kept[..., None].astype(np.float64)
            Ju, Jv = Ju * m, Jv * m
            rr = np.nan_to_num(r) * m
            JtJ = np.einsum("vni,vnj->nij", Ju, Ju) + np.einsum("vni,vnj->nij", Jv, Jv)
            Jtr = np.einsum("vni,vn->ni", Ju, rr[..., 0]) + np.einsum("vni,vn->ni", Jv, rr[..., 1])
            X = X - np.linalg.solve(JtJ + 1e-9 * np.eye(3), Jtr[..., None])[..., 0]
        pc = np.einsum("vij,nj->vni", Rt[:, :, :3], X) + Rt[:, None, :, 3]
        proj = np.stack([Ks[:, 0, 0][:, None] * pc[..., 0] / pc[..., 2] + Ks[:, 0, 2][:, None],
                         Ks[:, 1, 1][:, None] * pc[..., 1] / pc[..., 2] + Ks[:, 1, 2][:, None]], -1)
        err = np.linalg.norm(proj - uv, axis=-1)  # [V,N]
        err[~kept] = np.nan
        return X, err

    X, err = solve(kept)
    for _ in range(V):
        worst = np.nanargmax(np.where(kept, err, -1.0), axis=0)  # [N]
        worst_err = err[worst, np.arange(N)]
        drop = (worst_err > max_reproj_px) & (kept.sum(0) > min_views)
        if not drop.any():
            break
        kept[worst[drop], np.nonzero(drop)[0]] = False
        X, err = solve(kept)
    n_used = kept.sum(0)
    rms = np.sqrt(np.nanmean(np.where(kept, err, np.nan) ** 2, axis=0))
    bad = n_used < min_views
    X[bad] = np.nan
    rms[bad] = np.nan
    return X, rms, n_used, kept


def detect_view_landmarks(views: list[CameraView], front_end=None) -> list[Observation]:
    """Face Mesh landmarks ([478,2]) of the largest face in each view; views without a face are skipped."""
    from .detect import FaceFrontEnd

    own = front_end is None
    fe = FaceFrontEnd() if own else front_end
    try:
        obs = []
        for v in views:
            faces = fe.detect(v.load_image())
            if faces:
                obs.append(Observation(uv=faces[0].landmarks, K=v.K, c2w=v.c2w, camera_index=v.camera_index))
        return obs
    finally:
        if own:
            fe.close()


def triangulate_subject(root, front_end=None, observations: list[Observation] | None = None,
                        max_reproj_px: float = 6.0, min_views: int = 3) -> SubjectLandmarks:
    """Triangulate the 478 landmarks of one calibrated subject folder (see :func:`fastavatar_engine.cameras.load_subject`).

    ``observations`` (from :func:`detect_view_landmarks`) skips the detection step.
    Raises ``ValueError`` when fewer than ``min_views`` views have a face.
    """
    subject = load_subject(root)
    if observations is None:
        observations = detect_view_landmarks(subject.views, front_end)
    if len(observations) < min_views:
        raise ValueError(f"{root}: a face was found in only {len(observations)} of {len(subject.views)} views; "
                         f"triangulation needs {min_views}")
    X, rms, n_used, _ = triangulate_observations(observations, max_reproj_px=max_reproj_px, min_views=min_views)
    try:
        R_head = flame_head_rotation(root)
    except FileNotFoundError:
        R_head = None
    return SubjectLandmarks(
        name=Path(root).name, points=X, reproj_rms_px=rms, views_used=n_used,
        detected_cameras=[o.camera_index for o in observations], num_views=len(subject.views),
        observations=observations, head_rotation=R_head,
    )


def triangulate_landmarks(subject_roots, front_end=None, return_subjects: bool = False, head_frame: bool = True,
                          max_reproj_px: float = 6.0, min_views: int = 3):
    """Mean 3D landmark template over calibrated subjects.

    Args:
        subject_roots: folders readable by :func:`fastavatar_engine.cameras.load_subject`
            (e.g. the NeRSemble samples), all in one world frame.
        front_end: a :class:`~fastavatar_engine.face.FaceFrontEnd` to reuse (one is created
            otherwise).
        return_subjects: also return the per-subject :class:`SubjectLandmarks`.
        head_frame: average in the FLAME head frame (needs each subject's ``flame_param``);
            False averages the world-frame points.

    Returns ``points`` [478,3] float64 (metres; the mean over the subjects where each landmark
    was triangulated), or ``(points, subjects)``.
    Raises ``ValueError`` when no subject is given, a landmark is missing in every subject, or
    ``head_frame`` is set and a subject has no FLAME parameters.
    """
    roots = [Path(r) for r in subject_roots]
    if not roots:
        raise ValueError("triangulate_landmarks: no subject folders given")
    from .detect import FaceFrontEnd

    own = front_end is None
    fe = FaceFrontEnd() if own else front_end
    try:
        subjects = [triangulate_subject(r, fe, max_reproj_px=max_reproj_px, min_views=min_views) for r in roots]
    finally:
        if own:
            fe.close()
    points = mean_template(subjects, head_frame=head_frame)
    return (points, subjects) if return_subjects else points


def mean_template(subjects: list[SubjectLandmarks], head_frame: bool = True) -> np.ndarray:
    """Per-landmark mean of the subjects' points (head frame or world), ignoring NaN ([N,3] float64)."""
    stack = np.stack([s.head_points if head_frame else s.points for s in subjects])
    if np.isnan(stack).all(axis=0).any():
        missing = np.nonzero(np.isnan(stack).all(axis=0).any(axis=1))[0]
        raise ValueError(f"landmarks {missing[:10].tolist()}... could not be triangulated in any subject")
    return np.nanmean(stack, axis=0)



def build_template(subjects: list[SubjectLandmarks], head_frame: bool = True, spread_factor: float | None = None):
    """A :class:`~fastavatar_engine.face.pose.LandmarkTemplate` from triangulated subjects, with statistics.

    ``points`` is :func:`mean_template`. Per landmark, ``spread_mm`` is the RMS distance of the
    subjects' points from the mean after removing each subject's overall offset (head shape
    differences plus triangulation noise). PnP uses the 468 non-iris landmarks, or with
    ``spread_factor`` only those whose spread is at most that many times the median spread
    (on the sample views, leave-one-subject-out, a factor of 3 changed the mean rotation error
    from 3.74 to 3.78 degrees, so the default keeps them all).
    """
    from .landmarks import IRIS_LANDMARKS
    from .pose import LandmarkTemplate

    stack = np.stack([s.head_points if head_frame else s.points for s in subjects])  # [S,N,3]
    mean = mean_template(subjects, head_frame=head_frame)
    offsets = np.nanmean(stack - mean[None], axis=1)  # [S,3]
    spread = np.sqrt(np.nanmean(np.sum((stack - offsets[:, None] - mean[None]) ** 2, axis=2), axis=0))  # [N]
    non_iris = np.array([i not in IRIS_LANDMARKS for i in range(len(mean))])
    if spread_factor is None:
        pnp = np.nonzero(non_iris)[0]
        rule = "all 468 mesh landmarks (iris landmarks 468-477 follow the gaze and are excluded)"
    else:
        limit = spread_factor * float(np.median(spread[non_iris]))
        pnp = np.nonzero(non_iris & (spread <= limit))[0]
        rule = f"non-iris landmarks with spread_mm <= {spread_factor} x median ({1e3 * limit:.2f} mm)"
    rms = np.stack([s.reproj_rms_px for s in subjects])
    used = np.stack([s.views_used for s in subjects])
    meta = {
        "head_frame": bool(head_frame),
        "subjects": [
            {
                "name": s.name,
                "views_with_face": len(s.detected_cameras),
                "num_views": s.num_views,
                "detected_cameras": [int(c) for c in s.detected_cameras],
                "median_reproj_rms_px": round(float(np.nanmedian(s.reproj_rms_px)), 3),
                "offset_from_mean_mm": np.round(1e3 * offsets[i], 2).tolist(),
            }
            for i, s in enumerate(subjects)
        ],
        "pnp_rule": rule,
        "per_landmark": {
            "spread_mm": np.round(1e3 * spread, 3).tolist(),
            "reproj_rms_px": np.round(np.nanmean(rms, axis=0), 3).tolist(),
            "min_views_used": used.min(axis=0).astype(int).tolist(),
        },
    }
    return LandmarkTemplate.from_points(mean, pnp_indices=pnp, meta=meta)
