"""The refinement's loss for one view: photometric, silhouette and landmark terms.

Per view (weighted by :attr:`~.views.RefineView.weight`): (1 - ``ssim_weight``) L1 +
``ssim_weight`` (1 - SSIM) against the photo composited on white inside the foreground mask
(ignored pixels left out); ``silhouette_weight`` x mean |rendered alpha - mask|; and
``landmark_weight`` x the mean distance, in units of the image's longer side, between the visible
landmarks and the projections of their corresponding Gaussians
(:class:`fastavatar_engine.photofit.LandmarkCorrespondence`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..render import _viewmat, render
from ..train.losses import l1, ssim
from .camera import corrected_camera, project


@dataclass
class LossWeights:
    """Weights of the terms (see the module docstring)."""

    ssim: float = 0.2
    silhouette: float = 0.3
    landmark: float = 1.0


def attach_landmarks(targets: list, ff_means: torch.Tensor, landmark_weight: float, device) -> torch.Tensor:
    """Give each target with landmarks its visible landmark Gaussians (``lmk_index``,
    ``lmk_offset``, ``lmk_uv``), from correspondences built once on the feed-forward means
    ``ff_means`` [K,3]. Returns the ids [M] of every landmark Gaussian (long)."""
    from ..photofit import LandmarkCorrespondence

    lmk = {}
    for t in targets:
        if t["landmarks"] is not None and landmark_weight > 0:
            key = t["mirrored"]
            if key not in lmk:
                lmk[key] = LandmarkCorrespondence.build(ff_means.detach().cpu().numpy(), mirrored=key)
            corr = lmk[key]
            vis = np.nonzero(corr.visible(t["c2w"]))[0]
            t["lmk_index"] = torch.as_tensor(corr.index[vis], device=device)
            t["lmk_offset"] = torch.as_tensor(corr.offset[vis], device=device)
            t["lmk_uv"] = t["landmarks"][torch.as_tensor(vis, device=device)]
    if any("lmk_index" in t for t in targets):
        return torch.unique(torch.cat([t["lmk_index"] for t in targets if "lmk_index" in t]))
    return torch.zeros(0, dtype=torch.long, device=device)


def view_loss(g_now, view: dict, weights: LossWeights, cam_param: torch.Tensor | None = None, pos=None):
    """The weighted loss of one refinement target (:func:`~.views.refine_target`) for Gaussians
    ``g_now``; ``cam_param`` [7]: the view's camera correction (None: its camera as given);
    ``pos`` maps Gaussian ids to rows of ``g_now`` (None: all, in order)."""
    bg = torch.ones(3, device=g_now.means.device)
    target, m, m3 = view["image"], view["mask"], view["mask"][..., None]
    if cam_param is not None:
        c2w_t, K_t = corrected_camera(view, cam_param)
    else:
        c2w_t, K_t = view["c2w"], view["K"]
    rgb, alpha = render(g_now, c2w_t, K_t, view["w"], view["h"], bg)
    valid = view["valid"]
    if view["foreground"]:  # outside the foreground is background: white, like the renders
        tgt = target * m3 + bg * (1 - m3)
        if valid is not None:
            tgt = tgt * valid[..., None] + rgb.detach() * (1 - valid[..., None])
        li = (1 - weights.ssim) * l1(rgb, tgt, valid) + weights.ssim * (1 - ssim(rgb, tgt))
        if weights.silhouette > 0:
            d = (alpha - m).abs()
            li = li + weights.silhouette * (d.mean() if valid is None else (d * valid).sum() / valid.sum().clamp_min(1))
    else:  # outside the region the target is the render itself: no loss there
        tgt = target * m3 + rgb.detach() * (1 - m3)
        li = (1 - weights.ssim) * l1(rgb, target, m) + weights.ssim * (1 - ssim(rgb, tgt))
    if "lmk_index" in view and len(view["lmk_index"]):
        ids = view["lmk_index"] if pos is None else pos[view["lmk_index"]]
        if cam_param is not None:
            uv = project(g_now.means[ids] + view["lmk_offset"], _viewmat(c2w_t, torch.float32, g_now.means.device), K_t)
        else:
            uv = project(g_now.means[ids] + view["lmk_offset"], view["viewmat"], view["K_t"])
        err = (uv - view["lmk_uv"]).norm(dim=-1) / max(view["w"], view["h"])
        li = li + weights.landmark * err.mean()
    return view["weight"] * li
