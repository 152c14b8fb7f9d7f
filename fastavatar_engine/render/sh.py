"""Real spherical harmonics up to degree 3, in the basis and sign convention of 3D Gaussian
Splatting (Kerbl et al. 2023) and gsplat, so SH coefficients are interchangeable with INRIA PLYs.

Colour = clamp_min(sum_k c_k Y_k(d) + 0.5, 0) with d the unit direction from the camera centre
to the Gaussian's mean.
"""

from __future__ import annotations

import torch

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (
    -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
    -0.4570457994644658, 1.445305721320277, -0.5900435899266435,
)


def sh_basis(dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """SH basis values Y_k(d), [N, (degree+1)^2], for unit directions ``dirs`` [N,3] (x, y, z)."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [C2[0] * xy, C2[1] * yz, C2[2] * (2.0 * zz - xx - yy), C2[3] * xz, C2[4] * (xx - yy)]
    if degree >= 3:
        out += [
            C3[0] * y * (3.0 * xx - yy),
            C3[1] * xy * z,
            C3[2] * y * (4.0 * zz - xx - yy),
            C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            C3[4] * x * (4.0 * zz - xx - yy),
            C3[5] * z * (xx - yy),
            C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh_colors(sh: torch.Tensor, means: torch.Tensor, cam_center: torch.Tensor, degree: int) -> torch.Tensor:
    """View-dependent RGB, [N,3], clamped at 0 (not at 1, as in 3DGS/gsplat).

    ``sh`` [N,K,3] with K >= (degree+1)^2; ``means`` [N,3] and ``cam_center`` [3] in world metres.
    """
    k = (degree + 1) ** 2
    dirs = means - cam_center
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    basis = sh_basis(dirs, degree)  # [N,k]
    rgb = (basis[:, :, None] * sh[:, :k, :]).sum(dim=1)
    return torch.clamp_min(rgb + 0.5, 0.0)
