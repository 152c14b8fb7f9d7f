"""Photometric losses and metrics: L1, SSIM (pytorch-msssim), PSNR, optionally masked."""

from __future__ import annotations

import math

import torch


def _nchw(img: torch.Tensor) -> torch.Tensor:
    return img.permute(2, 0, 1).unsqueeze(0) if img.ndim == 3 else img


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM of two [H,W,3] images in [0,1] (11x11 Gaussian window, sigma 1.5; Wang et al. 2004)."""
    from pytorch_msssim import ssim as _ssim

    return _ssim(_nchw(a), _nchw(b), data_range=1.0, size_average=True)


def l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error over pixels (and channels); with ``mask`` [H,W], over the masked pixels."""
    d = (a - b).abs()
    if mask is None:
        return d.mean()
    m = mask[..., None].expand_as(d)
    return (d * m).sum() / m.sum().clamp_min(1e-8)


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB of [H,W,3] images in [0,1]; with ``mask`` [H,W] the MSE is over masked pixels."""
    d = (a.clamp(0, 1) - b.clamp(0, 1)) ** 2
    if mask is None:
        mse = float(d.mean())
    else:
        m = mask[..., None].expand_as(d)
        mse = float((d * m).sum() / m.sum().clamp_min(1e-8))
    return math.inf if mse <= 0 else 10.0 * math.log10(1.0 / mse)


def photometric_loss(rgb, alpha, target, mask, ssim_weight: float = 0.2, mask_weight: float = 0.1) -> torch.Tensor:
    """3DGS loss (1 - l) L1 + l (1 - SSIM), l = ``ssim_weight``, plus ``mask_weight`` x L1(alpha, mask)."""
    loss = (1 - ssim_weight) * l1(rgb, target) + ssim_weight * (1 - ssim(rgb, target))
    if mask is not None and mask_weight > 0:
        loss = loss + mask_weight * (alpha - mask).abs().mean()
    return loss
