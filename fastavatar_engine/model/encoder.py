"""The FastAvatar encoder g = projector MLP o identity backbone (Liang et al. 2026, Sec. 3.3).

The backbone (offline; :mod:`fastavatar_engine.face`) turns the aligned face into an
L2-normalised identity embedding — pose-invariant by construction — and the projector maps it
to the decoder's latent code ``w``. Layout of the official release's ``encoder_neutral_flame.pth``:
``projector.{0,4,8,11}`` Linear in->1024->768->512->512, ``projector.{1,5,9}`` BatchNorm1d after
the first three (then ReLU, Dropout), and a scalar ``temperature`` multiplying the output. The
official backbone is 512-D ArcFace; our default backbone is dlib's 128-D ResNet, so ``in_dim``
is 128 for the default model and 512 for official weights.
"""

from __future__ import annotations

import torch
from torch import nn


class FastAvatarEncoder(nn.Module):
    """Projector MLP: identity embedding [B, in_dim] (unit norm) -> code w [B, code_dim]."""

    def __init__(self, in_dim: int = 512, code_dim: int = 512, dropout: float = 0.1):
        super().__init__()
        self.in_dim, self.code_dim = in_dim, code_dim
        self.projector = nn.Sequential(
            nn.Linear(in_dim, 1024), nn.BatchNorm1d(1024), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(1024, 768), nn.BatchNorm1d(768), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(768, 512), nn.BatchNorm1d(512), nn.ReLU(),
            nn.Linear(512, code_dim),
        )
        self.temperature = nn.Parameter(torch.ones(()))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """Codes [B, code_dim] for embeddings [B, in_dim] (or [in_dim] -> [code_dim])."""
        single = embedding.ndim == 1
        if embedding.shape[-1] != self.in_dim:
            raise ValueError(f"identity embedding: expected {self.in_dim} values, got {embedding.shape[-1]}")
        x = embedding[None] if single else embedding
        w = self.projector(x) * self.temperature
        return w[0] if single else w
