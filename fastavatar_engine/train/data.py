"""Training views of a sample subject, in the FLAME head frame, as torch tensors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..cameras import Subject, load_subject, scale_intrinsics
from ..images import resample


@dataclass
class TrainView:
    """One calibrated view, resampled: ``image`` [H,W,3] float32 in [0,1] (white background),
    ``mask`` [H,W] float32 in [0,1], ``c2w`` 4x4 OpenGL c2w in the head frame, ``K`` 3x3 (pixels
    of the resampled image), ``camera_index`` the NeRSemble camera number."""

    camera_index: int
    image: torch.Tensor
    mask: torch.Tensor
    c2w: np.ndarray
    K: np.ndarray

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


def head_frame_transform(root) -> np.ndarray:
    """4x4 world -> head-frame transform of a sample subject: [[R_head^T, 0], [0, 1]]."""
    from ..face.triangulate import flame_head_rotation

    T = np.eye(4)
    T[:3, :3] = flame_head_rotation(root).T
    return T


def load_views(root, camera_indices=None, scale: float = 0.5, head_frame: bool = True, device="cpu") -> list[TrainView]:
    """Load views of the subject at ``root`` resampled by ``scale`` (0.5: 550x802 -> 275x401).

    ``camera_indices``: which cameras (default: the ``train`` split). K is scaled with the
    image (continuous pixel coordinates, so scaling is exact). Masks multiply nothing: images
    already have white backgrounds; masks are returned for the silhouette loss.
    """
    subject: Subject = load_subject(root)
    views = subject.split("train") if camera_indices is None else [subject.view(i) for i in camera_indices]
    T = head_frame_transform(root) if head_frame else np.eye(4)
    out = []
    for v in views:
        w, h = max(1, round(v.width * scale)), max(1, round(v.height * scale))
        img = resample(v.load_image(), (w, h)).astype(np.float32) / 255.0
        mask = resample((v.load_mask() * 255).round().astype(np.uint8), (w, h)).astype(np.float32) / 255.0
        K = scale_intrinsics(v.K, w / v.width, h / v.height)
        out.append(TrainView(v.camera_index, torch.from_numpy(np.ascontiguousarray(img)).to(device),
                             torch.from_numpy(np.ascontiguousarray(mask)).to(device), T @ v.c2w, K))
    return out


def subject_points(root, head_frame: bool = True) -> np.ndarray:
    """The subject's ``points3d.ply`` [N,3] float64 metres, in the head frame by default."""
    pts = load_subject(root).points()
    if head_frame:
        pts = pts @ head_frame_transform(root)[:3, :3].T
    return pts
