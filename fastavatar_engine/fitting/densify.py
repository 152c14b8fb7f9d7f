"""Splitting Gaussians too coarse for the photo's detail: 3DGS's gradient-based densification.

Kerbl et al., *3D Gaussian Splatting for Real-Time Radiance Field Rendering* (SIGGRAPH 2023, §5):
a Gaussian whose view-space positional gradient stays large over the steps sits where the image
has detail that the current Gaussians cannot represent; a large one there is *split* into two
smaller ones. Here, during the refinement's per-Gaussian detail stage (:class:`~.stages.DetailStage`):

* **The view-space gradient** ``||dL/d mu_2D||`` (pixels of the fit's image) of each Gaussian is
  recovered from the gradient of its 3D mean: the mean reaches the image only through its
  projection mu_2D = pi(mu) (to first order; its covariance's dependence on the mean is second
  order), so ``dL/d mu = J^T dL/d mu_2D`` with J the 2x3 projection Jacobian, and
  ``dL/d mu_2D = (J J^T)^-1 J dL/d mu`` (:func:`view_space_gradient`). This keeps the renderer a
  black box: the same code works with gsplat and with our CPU rasteriser.
* **Which**: :class:`GradientStats` averages that norm over the steps in which a view saw the
  Gaussian (non-zero gradient), as 3DGS does. :func:`split_candidates` picks, among the
  Gaussians whose projected 3-sigma radius is at least ``min_radius_px`` pixels (coarse at the
  fit's resolution; 3DGS's "large" test, made in pixels because a single photo sets the scale
  that matters), the ``budget`` with the largest average gradient above ``min_grad``.
* **How** (:func:`split`): as 3DGS, each into two with every scale divided by 1.6 and the same
  rotation, opacity and colour. 3DGS samples the two means from the Gaussian; here they sit at
  +-0.8 sigma along its longest axis, so a fit is reproducible and the pair keeps the parent's
  extent along that axis (a mixture of two N(+-0.8 s, (s/1.6)^2) has variance 1.03 s^2).
  One child keeps the parent's row (template rows stay where clients expect them); the other is
  appended, recording the template Gaussian it descends from (``parents``), as grown Gaussians
  do (:mod:`.grow`).

Our own code because no library densifies a Gaussian set on the CPU: gsplat's
``DefaultStrategy`` does the same bookkeeping but reads the 2D gradients from its CUDA
rasteriser's ``means2d`` and mutates its own optimiser layout.
"""

from __future__ import annotations

import numpy as np
import torch

from ..render import GaussianTensors
from ..render.torch_rasterizer import quat_to_rotmat

#: children's scale = parent's / SPLIT_SHRINK (3DGS: 0.8 N with N = 2)
SPLIT_SHRINK = 1.6
#: children's offset from the parent's mean along its longest axis, in that axis' sigma
SPLIT_OFFSET = 0.8


def view_space_gradient(means: torch.Tensor, grad: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """[N] norm of dL/d mu_2D (loss per pixel of the image ``K`` describes) from dL/d mu.

    ``means`` [N,3] head frame (metres), ``grad`` [N,3] their gradient, ``viewmat`` 4x4 OpenCV
    world-to-camera, ``K`` 3x3 (pixels). Gaussians behind the camera get 0.
    """
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    pc = means @ R.T + t
    x, y, z = pc.unbind(-1)
    ok = z > 1e-3
    zs = torch.where(ok, z, torch.ones_like(z))
    fx, fy = K[0, 0], K[1, 1]
    zero = torch.zeros_like(zs)
    Jc = torch.stack([fx / zs, zero, -fx * x / zs**2, zero, fy / zs, -fy * y / zs**2], -1).reshape(-1, 2, 3)
    J = Jc @ R  # d mu_2D / d mu (world)
    JJt = J @ J.transpose(1, 2)
    g2 = torch.linalg.solve(JJt, (J @ grad[:, :, None]))[..., 0]
    return torch.where(ok, g2.norm(dim=-1), zero)


def projected_radius(g: GaussianTensors, viewmat: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """[N] 3-sigma radius (pixels) of each Gaussian's largest axis seen from ``viewmat`` / ``K``
    (the axis' length over the camera depth; 0 behind the camera)."""
    z = g.means @ viewmat[2, :3] + viewmat[2, 3]
    s = torch.exp(g.log_scales).amax(-1)
    return torch.where(z > 1e-3, 3.0 * s * K[0, 0] / z.clamp_min(1e-3), torch.zeros_like(z))


class GradientStats:
    """Running mean of each Gaussian's view-space positional gradient norm over the steps that saw it.

    ``n`` Gaussians; :meth:`add` after a backward pass; :attr:`mean` [n] (0 where never seen)."""

    def __init__(self, n: int, device):
        self.total = torch.zeros(n, device=device)
        self.count = torch.zeros(n, device=device)

    def add(self, means: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor) -> None:
        """Accumulate from ``means`` (the leaf, its ``.grad`` set) seen through ``viewmat`` / ``K``."""
        if means.grad is None:
            return
        with torch.no_grad():
            seen = means.grad.abs().sum(-1) > 0
            g2 = view_space_gradient(means.detach(), means.grad, viewmat, K)
            self.total += torch.where(seen, g2, torch.zeros_like(g2))
            self.count += seen.float()

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.count.clamp_min(1)


def split_candidates(mean_grad: torch.Tensor, radius_px: torch.Tensor, budget: int, min_radius_px: float = 3.0,
                     min_grad: float = 0.0) -> torch.Tensor:
    """Indices (long [M], M <= ``budget``) of the Gaussians to split: projected radius at least
    ``min_radius_px``, average gradient above ``min_grad``, the largest gradients first."""
    ok = (radius_px >= min_radius_px) & (mean_grad > min_grad)
    idx = torch.nonzero(ok).squeeze(1)
    if budget <= 0 or idx.numel() == 0:
        return idx[:0]
    order = torch.argsort(mean_grad[idx], descending=True)[:budget]
    return torch.sort(idx[order]).values


def split(leaves: dict, rots: torch.Tensor, rest: torch.Tensor, index: torch.Tensor):
    """Split the Gaussians ``index`` in two (see the module docstring), in place for the first child.

    ``leaves``: dict of ``means`` [N,3], ``log_scales`` [N,3], ``opacity_logits`` [N], ``dc``
    [N,1,3] (detached tensors); ``rots`` [N,4] (w,x,y,z), ``rest`` [N,B,3] (higher SH bands).
    Returns ``(leaves, rots, rest)`` with ``len(index)`` rows appended: row ``index[j]`` is the
    first child, row ``N + j`` the second.
    """
    out = {k: v.detach().clone() for k, v in leaves.items()}
    if index.numel() == 0:
        return out, rots, rest
    R = quat_to_rotmat(rots[index])  # [M,3,3], columns = the Gaussian's axes
    s = torch.exp(out["log_scales"][index])
    axis = torch.argmax(s, -1)
    ar = torch.arange(index.numel(), device=index.device)
    step = (R[ar, :, axis] * (SPLIT_OFFSET * s[ar, axis])[:, None])
    mu = out["means"][index]
    out["means"][index] = mu + step
    out["log_scales"][index] = out["log_scales"][index] - float(np.log(SPLIT_SHRINK))
    second = {"means": mu - step, "log_scales": out["log_scales"][index].clone(),
              "opacity_logits": out["opacity_logits"][index].clone(), "dc": out["dc"][index].clone()}
    for k in out:
        out[k] = torch.cat([out[k], second[k]])
    return out, torch.cat([rots, rots[index]]), torch.cat([rest, rest[index]])
