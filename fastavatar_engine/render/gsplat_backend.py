"""CUDA rendering through gsplat (Ye et al., "gsplat: An Open-Source Library for Gaussian
Splatting", JMLR 2025), ``rasterization(..., rasterize_mode="classic")``.

gsplat's PyPI wheel compiles its CUDA kernels on first use (needs nvcc; several minutes); set
``MAX_JOBS`` and keep ``TORCH_EXTENSIONS_DIR`` on a persistent disk to reuse the build.
"""

from __future__ import annotations

import torch

from .types import GaussianTensors


def gsplat_available() -> bool:
    """True when a CUDA device is present and ``gsplat`` imports."""
    if not torch.cuda.is_available():
        return False
    try:
        import gsplat  # noqa: F401
    except Exception:  # ImportError, or a broken build
        return False
    return True


def rasterize_gsplat(
    g: GaussianTensors, viewmat, K, width: int, height: int, background, sh_degree: int | None = None,
    eps2d: float = 0.3, near: float = 0.01,
):
    """Render one view with gsplat on ``g``'s CUDA device; same contract as the torch rasteriser.

    Returns ``(rgb [H,W,3], alpha [H,W], info)``. Raises RuntimeError when gsplat is unusable.
    """
    try:
        from gsplat import rasterization
    except Exception as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError(f"gsplat is not usable here ({exc}); install the 'cuda' extra on a CUDA machine") from exc
    if g.means.device.type != "cuda":
        raise RuntimeError("the gsplat backend needs the Gaussians on a CUDA device")
    device, dtype = g.means.device, g.means.dtype
    viewmat = torch.as_tensor(viewmat, dtype=dtype, device=device).reshape(1, 4, 4)
    K = torch.as_tensor(K, dtype=dtype, device=device).reshape(1, 3, 3)
    bg = torch.as_tensor(background, dtype=dtype, device=device).reshape(1, 3)
    degree = g.sh_degree if sh_degree is None else min(sh_degree, g.sh_degree)
    colors, alphas, meta = rasterization(
        means=g.means,
        quats=g.rotations,
        scales=torch.exp(g.log_scales),
        opacities=torch.sigmoid(g.opacity_logits),
        colors=g.sh[:, : (degree + 1) ** 2, :],
        viewmats=viewmat,
        Ks=K,
        width=int(width),
        height=int(height),
        sh_degree=degree,
        backgrounds=bg,
        near_plane=near,
        eps2d=eps2d,
        rasterize_mode="classic",
        packed=False,
    )
    radii = meta.get("radii")
    n_vis = int((radii.reshape(radii.shape[0], radii.shape[1], -1) > 0).any(-1).sum()) if radii is not None else -1
    return colors[0], alphas[0, ..., 0], {"n_visible": n_vis, "backend": "gsplat"}
