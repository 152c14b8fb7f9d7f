"""What a refinement fits: one photo (or its mirror) at its camera, with masks and landmarks.

:class:`RefineView` is one photo as the fit sees it; :func:`refine_target` resamples it to the
fitting resolution as torch tensors; :func:`face_mask` is the landmark hull used when no person
mask is given. The product-path masks themselves (person segmentation, body cut) are
:mod:`fastavatar_engine.photofit`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..cameras import scale_intrinsics
from ..images import resample


@dataclass
class RefineView:
    """One photo refinement fits: ``image`` [H,W,3] uint8 RGB, its camera ``c2w`` (4x4 OpenGL,
    head frame, metres) and ``K`` (3x3, pixels of ``image``), ``mask`` [H,W] float32 in [0,1] (the
    face hull, or a foreground mask with ``mask_is_foreground``), a ``name`` for messages and, when
    estimated from the photo's face, the ``camera`` (CameraEstimate) ``c2w``/``K`` came from."""

    image: np.ndarray
    c2w: np.ndarray
    K: np.ndarray
    mask: np.ndarray
    mask_is_foreground: bool = False
    name: str = ""
    camera: object = None  # the CameraEstimate ``c2w``/``K`` came from, when estimated from the photo
    #: [H,W] float32 in {0,1}: pixels the loss ignores (the body beyond the template), or None
    ignore: np.ndarray | None = None
    #: [478,2] float64 landmark targets in pixels of ``image`` (None: no landmark loss)
    landmarks: np.ndarray | None = None
    #: the left-right flipped photo at the mirrored camera (:func:`photofit.mirror_camera`)
    mirrored: bool = False
    #: loss weight of this view (the mirrored view: :data:`photofit.MIRROR_WEIGHT`)
    weight: float = 1.0
    #: views with the same group are fitted in the same step (a photo and its mirror); None:
    #: a group of its own
    group: int | None = None

    def flipped(self, weight: float | None = None) -> "RefineView":
        """The mirrored view of this one: the photo, masks and landmarks flipped left-right, the
        camera mirrored across the head frame's x = 0 plane (:func:`photofit.mirror_camera`)."""
        from ..photofit import MIRROR_WEIGHT, mirror_camera, mirror_landmarks

        w = self.image.shape[1]
        c2w, K = mirror_camera(self.c2w, self.K, w)
        return RefineView(np.ascontiguousarray(self.image[:, ::-1]), c2w, K, np.ascontiguousarray(self.mask[:, ::-1]),
                          self.mask_is_foreground, f"{self.name} (mirrored)", None,
                          None if self.ignore is None else np.ascontiguousarray(self.ignore[:, ::-1]),
                          None if self.landmarks is None else mirror_landmarks(self.landmarks, w),
                          not self.mirrored, MIRROR_WEIGHT if weight is None else float(weight), self.group)


def face_mask(shape_hw: tuple[int, int], landmarks: np.ndarray) -> np.ndarray:
    """[H,W] float32 mask: the convex hull of the 468 mesh landmarks (pixels, centres at +0.5)."""
    import cv2

    h, w = shape_hw
    hull = cv2.convexHull((landmarks[:468] - 0.5).astype(np.float32)).astype(np.int32)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    return mask.astype(np.float32)


#: the head box around the face's landmark box (size s: its longer side), as fractions of s:
#: (left, top, right, bottom). Hair above and beside the face is inside it, the shoulders are not.
HEAD_BOX = (0.6, 0.8, 0.6, 0.3)
#: margin around the fitted region (the mask's box) kept by :func:`crop_box`, as a fraction of its
#: longer side
CROP_MARGIN = 0.05


def crop_box(view: RefineView, margin: float = CROP_MARGIN) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) integer pixel box of ``view.image`` that the fit needs.

    The bounding box of the mask (pixels >= 0.5 of a foreground mask, > 0 of a loss region, less
    the ignored pixels) grown by ``margin`` x its longer side; with landmarks, limited to the head
    box around them (:data:`HEAD_BOX`: the shoulders and body, which the template does not have,
    are left out). Clipped to the image; the whole image when the mask is empty.

    Fitting this box at the refinement resolution, not the whole photo, keeps the head at about the
    same number of pixels whatever the photo's framing, so the detail the fit can recover and its
    cost no longer depend on how much of the photo is background or body."""
    h, w = view.image.shape[:2]
    m = np.asarray(view.mask) >= (0.5 if view.mask_is_foreground else 1e-6)
    if view.ignore is not None:
        m = m & (np.asarray(view.ignore) < 0.5)
    ys, xs = np.nonzero(m)
    if len(xs) == 0:
        return 0, 0, w, h
    lo = np.array([xs.min(), ys.min()], np.float64)
    hi = np.array([xs.max() + 1, ys.max() + 1], np.float64)
    pad = margin * float((hi - lo).max())
    lo, hi = lo - pad, hi + pad
    if view.landmarks is not None:
        lm = np.asarray(view.landmarks, np.float64)[:468, :2]
        lm = lm[np.isfinite(lm).all(1)]
        if len(lm):
            llo, lhi = lm.min(0), lm.max(0)
            size = float((lhi - llo).max())
            left, top, right, bottom = HEAD_BOX
            lo = np.maximum(lo, llo - size * np.array([left, top]))
            hi = np.minimum(hi, lhi + size * np.array([right, bottom]))
            lo, hi = np.minimum(lo, llo), np.maximum(hi, lhi)  # never cut the face itself
    x0, y0 = int(np.floor(max(0.0, lo[0]))), int(np.floor(max(0.0, lo[1])))
    x1, y1 = int(np.ceil(min(w, hi[0]))), int(np.ceil(min(h, hi[1])))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return 0, 0, w, h
    return x0, y0, x1, y1


def refine_target(view: RefineView, refine_size: int, device, crop: bool = True) -> dict:
    """The view as the fit uses it, as tensors on ``device``: cropped to :func:`crop_box` (with
    ``crop``; the principal point moves with the crop) and box-resampled so its longer side is
    ``refine_size`` pixels. Keys: ``image`` [h,w,3] float32 in [0,1], ``mask`` [h,w], ``valid``
    ([h,w] 1 where the loss counts, or None), ``K`` (numpy, pixels of the fitted image), ``K_t``,
    ``c2w`` (4x4 OpenGL), ``viewmat`` (OpenCV world-to-camera), ``landmarks`` ([N,2] pixels of the
    fitted image, or None), ``crop`` (x0, y0, x1, y1 in the photo), ``w``, ``h`` and the view's
    flags. Raises ``ValueError`` for masks or landmarks of the wrong shape."""
    from ..cameras import viewmat_from_c2w

    image = np.asarray(view.image)
    h_img, w_img = image.shape[:2]
    for what, m in (("mask", view.mask), ("ignore mask", view.ignore)):
        if m is not None and np.shape(m) != (h_img, w_img):
            raise ValueError(f"refinement {what} {list(np.shape(m))} does not match the photo {[h_img, w_img]}")
    x0, y0, x1, y1 = crop_box(view) if crop else (0, 0, w_img, h_img)
    h0, w0 = y1 - y0, x1 - x0
    s = refine_size / max(h0, w0)
    w1, h1 = max(8, round(w0 * s)), max(8, round(h0 * s))

    def area(m):
        m = np.ascontiguousarray(np.asarray(m, np.float32)[y0:y1, x0:x1])
        return torch.nn.functional.interpolate(torch.from_numpy(m).to(device)[None, None],
                                               size=(h1, w1), mode="area")[0, 0]

    Kc = np.array(view.K, np.float64, copy=True)
    Kc[0, 2] -= x0
    Kc[1, 2] -= y0
    K1 = scale_intrinsics(Kc, w1 / w0, h1 / h0)
    lm = None
    if view.landmarks is not None:
        lm = np.asarray(view.landmarks, np.float64)
        if lm.ndim != 2 or lm.shape[1] != 2 or not np.isfinite(lm).all():
            raise ValueError(f"refinement landmarks must be finite [N,2] pixels, got {lm.shape}")
        lm = torch.as_tensor((lm - [x0, y0]) * np.array([w1 / w0, h1 / h0]), dtype=torch.float32, device=device)
    return {
        "image": torch.from_numpy(resample(np.ascontiguousarray(image[y0:y1, x0:x1]), (w1, h1))
                                  .astype(np.float32) / 255.0).to(device),
        "mask": area(view.mask),
        "valid": None if view.ignore is None else 1.0 - (area(view.ignore) > 0.5).float(),
        "K": K1, "c2w": np.asarray(view.c2w, np.float64),
        "K_t": torch.as_tensor(K1, dtype=torch.float32, device=device),
        "viewmat": torch.as_tensor(viewmat_from_c2w(view.c2w), dtype=torch.float32, device=device),
        "landmarks": lm, "mirrored": bool(view.mirrored), "weight": float(view.weight),
        "crop": (x0, y0, x1, y1), "w": w1, "h": h1, "foreground": bool(view.mask_is_foreground)}
