"""The person mask's outline beside the face, as targets for the head fit's silhouette term.

The landmarks say where the face's features are; the person mask (segmentation, e.g.
:class:`~fastavatar_engine.face.segment.PersonSegmenter`) says where the head ends. Between the
eyes and the chin, scanning each image row outwards from the face's middle (the mean column of
the landmarks on that row), the first pixel that leaves the
mask is the head's outline there: the cheek, the jaw or an ear, or hair hanging beside them. The
fit (:func:`fastavatar_engine.head.fit.fit_head`) matches, row by row, the leftmost and rightmost
projected vertex of the posed head mesh to those outline points, and drops a row side whose
outline lies further from the mesh than a gate (hair, a hand, a collar), so only the skin's
outline pulls. This is the row-wise silhouette of face-model fitting from segmentation (as in
3DMM fitting with contour constraints, e.g. Zhu et al., "Face Alignment Across Large Poses",
CVPR 2016, which matches the 2D contour to the 3D silhouette instead of fixed vertices).

Image coordinates are continuous pixels (x right, y down; pixel centres at +0.5).
"""

from __future__ import annotations

import numpy as np

#: landmarks that bound the band of rows used: the eyes' outer corners (top) and the chin (bottom)
EYE_CORNERS = (33, 263)
CHIN = 152


def outline_rows(mask: np.ndarray, landmarks: np.ndarray, rows: int = 24, threshold: float = 0.5):
    """The person mask's left and right outline on ``rows`` rows from the eyes to the chin.

    Args:
        mask: [H,W] float person probability in [0,1] (or bool).
        landmarks: [478,2] (or [478,3]) MediaPipe landmarks in pixels of the same image.
        rows: how many rows, evenly spaced from the eyes' outer corners down to the chin.
        threshold: mask value above which a pixel is the person.
    Returns ``(ys, left, right)``: [R] float64 row centres (pixels) and [R] float64 x of the
    outline's left and right edge (pixel boundaries: the first pixel that is not the person,
    scanning outwards from the mean column of the landmarks near that row, or of all of them), NaN where the scan
    reaches the image's border without leaving the mask or the start pixel is not in the mask. Raises ``ValueError`` for a
    mask that is not 2D or landmarks that are not [478,2+].
    """
    m = np.asarray(mask)
    lm = np.asarray(landmarks, np.float64)
    if m.ndim != 2:
        raise ValueError(f"outline_rows: expected an [H,W] mask, got {m.shape}")
    if lm.ndim != 2 or lm.shape[0] < 468 or lm.shape[1] < 2:
        raise ValueError(f"outline_rows: expected [478,2] landmarks, got {lm.shape}")
    H, W = m.shape
    inside = m >= threshold
    y_top = float(np.mean(lm[list(EYE_CORNERS), 1]))
    y_bot = float(lm[CHIN, 1])
    ys = np.linspace(y_top, y_bot, rows)
    face = lm[:468, :2]
    half = max(1.0, 0.5 * abs(y_bot - y_top) / max(1, rows - 1))
    left = np.full(rows, np.nan)
    right = np.full(rows, np.nan)
    for i, y in enumerate(ys):
        r = int(np.floor(y))
        if not 0 <= r < H:
            continue
        near = face[np.abs(face[:, 1] - y) <= 2 * half, 0]
        x_mid = int(np.clip(np.floor(near.mean() if len(near) else face[:, 0].mean()), 0, W - 1))
        if not inside[r, x_mid]:
            continue
        row = inside[r]
        out_l = np.nonzero(~row[:x_mid])[0]
        out_r = np.nonzero(~row[x_mid:])[0]
        if len(out_l):
            left[i] = float(out_l[-1] + 1)      # boundary between the last outside pixel and the mask
        if len(out_r):
            right[i] = float(x_mid + out_r[0])  # boundary before the first outside pixel
    return ys, left, right


def extreme_vertices(uv: np.ndarray, ys: np.ndarray, half_height: float, candidates: np.ndarray | None = None):
    """Per row the mesh's leftmost and rightmost projected vertex.

    Args:
        uv: [V,2] projected vertices (pixels; NaN for vertices behind the camera).
        ys: [R] row centres (pixels).
        half_height: a vertex belongs to a row when |v - y| <= half_height.
        candidates: optional [C] int vertex ids to consider (default: all).
    Returns ``(left, right)``: [R] int64 vertex ids, -1 where no vertex falls in the row.
    """
    ids = np.arange(len(uv)) if candidates is None else np.asarray(candidates, np.int64)
    p = np.asarray(uv, np.float64)[ids]
    ok = np.isfinite(p).all(1)
    ids, p = ids[ok], p[ok]
    left = np.full(len(ys), -1, np.int64)
    right = np.full(len(ys), -1, np.int64)
    for i, y in enumerate(ys):
        sel = np.nonzero(np.abs(p[:, 1] - y) <= half_height)[0]
        if len(sel):
            left[i] = ids[sel[np.argmin(p[sel, 0])]]
            right[i] = ids[sel[np.argmax(p[sel, 0])]]
    return left, right
