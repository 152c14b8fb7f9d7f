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


def linear_projector(weight: torch.Tensor, bias: torch.Tensor, dropout: float = 0.1) -> FastAvatarEncoder:
    """A :class:`FastAvatarEncoder` (official layout) computing exactly ``w = weight @ e + bias`` in eval mode.

    ``weight`` [code_dim, in_dim], ``bias`` [code_dim]. A ReLU network carries a vector x
    unchanged as the pair (relu(x), relu(-x)), since x = relu(x) - relu(-x): the first three
    Linear layers carry ``[x; -x]`` (2 x in_dim of their 1024 / 768 / 512 units; needs
    ``2 * in_dim <= 512``), each BatchNorm is the identity (running mean 0, variance 1 - eps,
    affine 1 / 0), and the last Linear applies ``[weight, -weight]``. This is how a closed-form
    ridge regression from embeddings to codes (:mod:`fastavatar_engine.train.encoder_train`)
    ships in the official file layout. Raises ``ValueError`` for shapes that do not fit."""
    code_dim, in_dim = weight.shape
    if bias.shape != (code_dim,) or 2 * in_dim > 512:
        raise ValueError(f"linear_projector: weight [{code_dim},{in_dim}] / bias {list(bias.shape)} do not fit")
    enc = FastAvatarEncoder(in_dim=in_dim, code_dim=code_dim, dropout=dropout)
    eye = torch.eye(in_dim)
    with torch.no_grad():
        for layer in enc.projector:
            if isinstance(layer, nn.Linear):
                layer.weight.zero_()
                layer.bias.zero_()
            elif isinstance(layer, nn.BatchNorm1d):
                layer.running_mean.zero_()
                layer.running_var.fill_(1.0 - layer.eps)
                layer.weight.fill_(1.0)
                layer.bias.zero_()
        first, second, third, last = (m for m in enc.projector if isinstance(m, nn.Linear))
        first.weight[:in_dim] = eye
        first.weight[in_dim:2 * in_dim] = -eye
        for lin in (second, third):
            lin.weight[:in_dim, :in_dim] = eye
            lin.weight[:in_dim, in_dim:2 * in_dim] = -eye
            lin.weight[in_dim:2 * in_dim, :in_dim] = -eye
            lin.weight[in_dim:2 * in_dim, in_dim:2 * in_dim] = eye
        last.weight[:, :in_dim] = weight
        last.weight[:, in_dim:2 * in_dim] = -weight
        last.bias.copy_(bias)
        enc.temperature.fill_(1.0)
    return enc.eval()
