"""Which Gaussians the photos see and what colour they see them in (read off autograd).

:func:`contributing_gaussians` finds the Gaussians whose compositing weight in a view is not
negligible (the refinement decodes only those); :func:`photo_colours` is the appearance transfer
that starts the per-Gaussian detail stage.
"""

from __future__ import annotations

import torch

from ..render import GaussianTensors, render


def select(g: GaussianTensors, index) -> GaussianTensors:
    """The Gaussians ``index`` (int64 tensor or slice) of ``g``."""
    return GaussianTensors(g.means[index], g.log_scales[index], g.rotations[index], g.opacity_logits[index], g.sh[index])


def contributing_gaussians(g, c2w, K, width: int, height: int, min_weight_px: float = 0.01) -> torch.Tensor:
    """Indices (int64 [M]) of the Gaussians whose total compositing weight sum_p alpha_i T_i over
    the image is at least ``min_weight_px`` pixels. The weight is read off autograd: with every
    colour pushed far above the clamp at 0, d(sum of red)/d(DC_i) = C0 * weight_i. A Gaussian
    below the threshold can change any pixel's colour by less than that fraction of a pixel, so
    its gradient in a photometric loss is negligible (zero when it reaches no pixel at all)."""
    from ..gaussians import SH_C0

    sh = g.sh.detach().clone()
    sh[:, 0, :] += 10.0
    sh.requires_grad_(True)
    rgb, _ = render(GaussianTensors(g.means.detach(), g.log_scales.detach(), g.rotations.detach(),
                                    g.opacity_logits.detach(), sh), c2w, K, width, height)
    rgb[..., 0].sum().backward()
    weight = sh.grad[:, 0, 0] / SH_C0
    return torch.nonzero(weight >= min_weight_px).squeeze(1)


def photo_colours(g, views: list, prior_px: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Appearance transfer: each Gaussian's colour as the photos see it.

    ``g``: GaussianTensors; ``views``: [(image [H,W,3] float in [0,1], c2w, K, weight, valid [H,W]
    or None)]. For Gaussian i and view v, compositing weights w_ip = alpha_i T_i at pixel p give
    ``C_i = sum_v weight_v sum_p w_ip photo_p / (sum_v weight_v sum_p w_ip + prior_px)``, the
    weighted mean photo colour over the pixels it covers, pulled towards its current colour by
    ``prior_px`` pixels of evidence. Both sums are read off autograd in one render per view
    (d(sum_p <photo_p, rgb_p>)/d(colour_i) and d(sum_p rgb_p)/d(colour_i), every colour pushed
    above the clamp at 0 as in :func:`contributing_gaussians`). Returns (colour [N,3] in [0,1],
    evidence [N] in pixels): the colour a Gaussian should show along the photos' rays."""
    from ..gaussians import SH_C0

    base = g.sh.detach().clone()
    num = torch.zeros(base.shape[0], 3, device=base.device)
    den = torch.zeros(base.shape[0], device=base.device)
    for image, c2w, K, weight, valid in views:
        sh = base.clone()
        sh[:, 0, :] += 10.0
        sh.requires_grad_(True)
        h, w = image.shape[:2]
        rgb, _ = render(GaussianTensors(g.means.detach(), g.log_scales.detach(), g.rotations.detach(),
                                        g.opacity_logits.detach(), sh), c2w, K, w, h)
        v = torch.ones(h, w, device=rgb.device) if valid is None else valid
        ((rgb * image).sum(-1) * v).sum().backward(retain_graph=True)
        num += weight * sh.grad[:, 0, :] / SH_C0
        sh.grad = None
        (rgb[..., 0] * v).sum().backward()
        den += weight * sh.grad[:, 0, 0] / SH_C0
    current = (SH_C0 * base[:, 0, :] + 0.5).clamp(0, 1)
    colour = (num + prior_px * current) / (den[:, None] + prior_px)
    return colour.clamp(0, 1), den
