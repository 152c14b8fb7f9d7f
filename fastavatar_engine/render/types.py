"""Torch-side Gaussian parameters (the differentiable twin of :class:`fastavatar_engine.gaussians.GaussianSet`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..gaussians import SH_COEFFS, GaussianSet


@dataclass
class GaussianTensors:
    """N Gaussians as torch tensors on one device, same layout and units as ``GaussianSet``.

    ``means`` [N,3] metres (y-up world); ``log_scales`` [N,3] log std-dev (metres);
    ``rotations`` [N,4] quaternions (w,x,y,z), any length > 0; ``opacity_logits`` [N];
    ``sh`` [N,K,3] with K = (d+1)^2 for SH degree d in 0..3, DC first.
    Any of them may require grad: the renderers differentiate through all five.
    """

    means: torch.Tensor
    log_scales: torch.Tensor
    rotations: torch.Tensor
    opacity_logits: torch.Tensor
    sh: torch.Tensor

    @classmethod
    def from_numpy(cls, g: GaussianSet, device="cpu", dtype=None, requires_grad: bool = False) -> "GaussianTensors":
        """Copy a validated ``GaussianSet`` to ``device`` (float32 unless ``dtype`` is given)."""
        g.validate()
        dtype = dtype or torch.float32
        mk = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device).requires_grad_(requires_grad)  # noqa: E731
        return cls(mk(g.means), mk(g.log_scales), mk(g.rotations), mk(g.opacity_logits), mk(g.sh))

    def to_numpy(self) -> GaussianSet:
        """Detach to a float32 ``GaussianSet`` (SH padded with zeros to degree 3)."""
        n = self.means.shape[0]
        sh = np.zeros((n, SH_COEFFS, 3), np.float32)
        k = self.sh.shape[1]
        sh[:, :k] = self.sh.detach().cpu().float().numpy()
        f = lambda t: t.detach().cpu().float().numpy()  # noqa: E731
        return GaussianSet(f(self.means), f(self.log_scales), f(self.rotations), f(self.opacity_logits), sh)

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def count(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        """SH degree implied by the number of coefficients (0..3)."""
        k = int(self.sh.shape[1])
        d = int(round(k ** 0.5)) - 1
        if (d + 1) ** 2 != k or not 0 <= d <= 3:
            raise ValueError(f"sh: {k} coefficients per channel is not (d+1)^2 for d in 0..3")
        return d

    def validate(self) -> "GaussianTensors":
        """Check shapes and that every value is finite; raises ValueError naming the field."""
        n = self.means.shape[0]
        shapes = {"means": (n, 3), "log_scales": (n, 3), "rotations": (n, 4), "opacity_logits": (n,)}
        for name, shape in shapes.items():
            t = getattr(self, name)
            if tuple(t.shape) != shape:
                raise ValueError(f"{name}: expected shape {list(shape)}, got {list(t.shape)}")
        if self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise ValueError(f"sh: expected shape [N, K, 3] with N={n}, got {list(self.sh.shape)}")
        self.sh_degree  # noqa: B018  (raises for a bad K)
        for name in ("means", "log_scales", "rotations", "opacity_logits", "sh"):
            t = getattr(self, name)
            if not torch.isfinite(t.detach()).all():
                raise ValueError(f"{name}: contains non-finite values")
        return self
