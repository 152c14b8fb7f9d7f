"""ArcFace-style face alignment: a similarity transform of the 5 points onto a fixed template.

The template is insightface's ``arcface_dst`` (``insightface/utils/face_align.py``), the 5-point
layout every ArcFace / ``buffalo_l`` recognition model was trained on, for a 112x112 crop.
Other crop sizes scale it by ``size / 112`` (insightface's rule for multiples of 112).

Coordinates: landmarks come in the project's continuous pixel convention (pixel centres at
+0.5, see :mod:`fastavatar_engine.cameras`). The template, like OpenCV's ``warpAffine``, uses
integer pixel centres, so the points are shifted by -0.5 before the fit.

The similarity (uniform scale, rotation, translation; no reflection) is the least-squares fit
of ``[a -b tx; b a ty]`` to the 5 correspondences, i.e. the same Umeyama estimate that
insightface gets from ``skimage.transform.SimilarityTransform.estimate``; the crop is resampled
with ``cv2.warpAffine`` (bilinear, black border).
"""

from __future__ import annotations

import numpy as np

from ._deps import require

#: insightface's ArcFace template for a 112x112 crop, [5,2] float64, integer-pixel-centre
#: coordinates: image-left eye, image-right eye, nose tip, image-left / image-right mouth corner.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def arcface_template(size: int = 112) -> np.ndarray:
    """The ArcFace 5-point template for a ``size`` x ``size`` crop ([5,2] float64, scaled by size/112)."""
    if int(size) != size or size < 16:
        raise ValueError(f"crop size must be an integer >= 16, got {size!r}")
    return ARCFACE_TEMPLATE_112 * (float(size) / 112.0)


def similarity_lstsq(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform mapping ``src`` [N,2] onto ``dst`` [N,2] (N >= 2).

    Returns the 2x3 float64 matrix ``[[a, -b, tx], [b, a, ty]]`` (scale ``hypot(a, b)``,
    rotation ``atan2(b, a)``) minimising ``sum |M @ [src, 1] - dst|^2``. Raises ``ValueError``
    for fewer than two points, non-finite input or degenerate (coincident) source points.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"similarity_lstsq: need matching [N,2] arrays with N >= 2, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("similarity_lstsq: non-finite landmark coordinates")
    if np.ptp(src, axis=0).max() < 1e-9:
        raise ValueError("similarity_lstsq: source points coincide")
    n = src.shape[0]
    A = np.zeros((2 * n, 4))
    A[0::2] = np.column_stack([src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)])
    A[1::2] = np.column_stack([src[:, 1], src[:, 0], np.zeros(n), np.ones(n)])
    (a, b, tx, ty), *_ = np.linalg.lstsq(A, dst.reshape(-1), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def alignment_matrix(landmarks5: np.ndarray, size: int = 112) -> np.ndarray:
    """2x3 float64 matrix taking image pixels (OpenCV integer-centre coordinates) to crop pixels.

    ``landmarks5``: [5,2] ArcFace-order points in the project's continuous pixel convention.
    """
    pts = np.asarray(landmarks5, dtype=np.float64)
    if pts.shape != (5, 2):
        raise ValueError(f"expected landmarks5 of shape [5,2], got {pts.shape}")
    return similarity_lstsq(pts - 0.5, arcface_template(size))


def align_face(image: np.ndarray, landmarks5: np.ndarray, size: int = 112, return_matrix: bool = False):
    """Warp ``image`` so the 5 points land on the ArcFace template.

    Args:
        image: [H,W,3] uint8 (any channel order; the crop keeps it).
        landmarks5: [5,2] float, ArcFace order, continuous pixel coordinates.
        size: crop side in pixels (112 for ArcFace; other sizes scale the template).
        return_matrix: also return the 2x3 image->crop matrix (OpenCV pixel-centre convention).

    Returns ``crop`` [size,size,3] uint8, or ``(crop, M)``.
    """
    cv2 = require("cv2")
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"align_face: expected an [H,W,3] uint8 image, got {img.dtype} array of shape {img.shape}")
    M = alignment_matrix(landmarks5, size)
    crop = cv2.warpAffine(np.ascontiguousarray(img), M, (int(size), int(size)), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return (crop, M) if return_matrix else crop
