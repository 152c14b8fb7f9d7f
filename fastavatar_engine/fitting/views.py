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


def refine_target(view: RefineView, refine_size: int, device) -> dict:
        """The view resampled for refinement: longer side ``refine_size`` px, tensors on the device."""
        from ..cameras import viewmat_from_c2w

        image = np.asarray(view.image)
        h0, w0 = image.shape[:2]
        s = refine_size / max(h0, w0)
        w1, h1 = max(8, round(w0 * s)), max(8, round(h0 * s))

        def area(m, what):
            m = np.asarray(m, np.float32)
            if m.shape != (h0, w0):
                raise ValueError(f"refinement {what} {list(m.shape)} does not match the photo {[h0, w0]}")
            return torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(m)).to(device)[None, None],
                                                   size=(h1, w1), mode="area")[0, 0]

        K1 = scale_intrinsics(view.K, w1 / w0, h1 / h0)
        lm = None
        if view.landmarks is not None:
            lm = np.asarray(view.landmarks, np.float64)
            if lm.ndim != 2 or lm.shape[1] != 2 or not np.isfinite(lm).all():
                raise ValueError(f"refinement landmarks must be finite [N,2] pixels, got {lm.shape}")
            lm = torch.as_tensor(lm * np.array([w1 / w0, h1 / h0]), dtype=torch.float32, device=device)
        return {
            "image": torch.from_numpy(resample(image, (w1, h1)).astype(np.float32) / 255.0).to(device),
            "mask": area(view.mask, "mask"),
            "valid": None if view.ignore is None else 1.0 - (area(view.ignore, "ignore mask") > 0.5).float(),
            "K": K1, "c2w": np.asarray(view.c2w, np.float64),
            "K_t": torch.as_tensor(K1, dtype=torch.float32, device=device),
            "viewmat": torch.as_tensor(viewmat_from_c2w(view.c2w), dtype=torch.float32, device=device),
            "landmarks": lm, "mirrored": bool(view.mirrored), "weight": float(view.weight),
            "w": w1, "h": h1, "foreground": bool(view.mask_is_foreground)}
