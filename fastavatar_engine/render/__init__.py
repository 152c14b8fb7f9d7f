"""Rendering 3D Gaussians: one interface, two backends.

``render(gaussians, c2w, K, width, height, background)`` returns ``(rgb [H,W,3], alpha [H,W])``
as torch tensors (differentiable with respect to every Gaussian parameter that requires grad):

* ``backend="gsplat"`` — gsplat's CUDA rasteriser (Gaussians on a CUDA device);
* ``backend="torch"`` — our pure-PyTorch rasteriser (:mod:`.torch_rasterizer`; CPU, MPS, CUDA);
* ``backend="auto"`` (default) — gsplat when the Gaussians are on CUDA and gsplat imports,
  otherwise torch.

Cameras follow :mod:`fastavatar_engine.cameras`: ``c2w`` is a 4x4 OpenGL camera-to-world,
``K`` a 3x3 intrinsics matrix in pixels. This package imports torch; the rest of the engine's
numpy-only modules do not import it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..cameras import viewmat_from_c2w
from ..gaussians import GaussianSet
from .types import GaussianTensors

BACKENDS = ("auto", "torch", "gsplat")


def _viewmat(c2w, dtype, device) -> torch.Tensor:
    if isinstance(c2w, torch.Tensor):
        c2w_cv = c2w.to(dtype) @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=dtype, device=c2w.device))
        return torch.linalg.inv(c2w_cv).to(device)
    return torch.as_tensor(viewmat_from_c2w(c2w), dtype=dtype, device=device)


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend ('torch' or 'gsplat') that ``backend`` selects for ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        from .gsplat_backend import gsplat_available

        return "gsplat" if device.type == "cuda" and gsplat_available() else "torch"
    return backend


def render(
    gaussians: GaussianSet | GaussianTensors,
    c2w,
    K,
    width: int,
    height: int,
    background=(1.0, 1.0, 1.0),
    backend: str = "auto",
    sh_degree: int | None = None,
    device=None,
    **kwargs,
):
    """Render ``gaussians`` seen from camera ``c2w`` (4x4 OpenGL c2w) with intrinsics ``K`` (3x3).

    ``width``/``height`` in pixels (1..16384); ``background`` linear RGB in [0, 1].
    A numpy ``GaussianSet`` is moved to ``device`` (default CPU) without gradients.
    Returns ``(rgb, alpha)``: torch tensors [H,W,3] and [H,W] on the Gaussians' device.
    Extra keyword arguments go to the backend (e.g. ``max_pairs`` for the torch rasteriser).
    Raises ValueError for bad sizes or parameters, RuntimeError when gsplat is requested but unusable.
    """
    width, height = int(width), int(height)
    if not (0 < width <= 16384 and 0 < height <= 16384):
        raise ValueError(f"image size {width}x{height} outside 1..16384")
    if isinstance(gaussians, GaussianSet):
        gaussians = GaussianTensors.from_numpy(gaussians, device=device or "cpu")
    gaussians.validate()
    dtype, dev = gaussians.means.dtype, gaussians.device
    K_t = torch.as_tensor(np.asarray(K) if not isinstance(K, torch.Tensor) else K, dtype=dtype, device=dev)
    if tuple(K_t.shape) != (3, 3):
        raise ValueError(f"K: expected a 3x3 matrix, got {list(K_t.shape)}")
    viewmat = _viewmat(c2w, dtype, dev)
    which = resolve_backend(backend, dev)
    if which == "gsplat":
        from .gsplat_backend import rasterize_gsplat

        rgb, alpha, _ = rasterize_gsplat(gaussians, viewmat, K_t, width, height, background, sh_degree, **kwargs)
    else:
        from .torch_rasterizer import rasterize

        rgb, alpha, _ = rasterize(gaussians, viewmat, K_t, width, height,
                                  torch.as_tensor(background, dtype=dtype, device=dev), sh_degree, **kwargs)
    return rgb, alpha


def render_to_uint8(gaussians, c2w, K, width, height, background=(1.0, 1.0, 1.0), backend="auto", device=None) -> np.ndarray:
    """Render without gradients and return ``[H,W,3] uint8`` (clipped to [0,1] then x255)."""
    with torch.no_grad():
        rgb, _ = render(gaussians, c2w, K, width, height, background, backend=backend, device=device)
    return (rgb.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


__all__ = ["render", "render_to_uint8", "resolve_backend", "GaussianTensors", "BACKENDS"]
