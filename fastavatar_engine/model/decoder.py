"""The FastAvatar decoder h(w, e_k) -> residuals of the K template Gaussians (torch).

Liang et al., "FastAvatar", TMLR 2026 (arXiv 2508.18389), Sec. 3.2. For every Gaussian k the
decoder sees the subject code ``w`` (512-D) and a learned per-Gaussian embedding ``e_k`` (32-D,
initialised from the template position) and predicts residuals, applied as in the paper::

    mu    = mu_T + d_mu                  d_mu = 0.1 * tanh(means_head)       (metres)
    log s = log s_T + d_s                (s = s_T * exp(d_s))
    q     = normalize(q_T + d_q)
    alpha = sigmoid(logit alpha_T + d_alpha)
    c     = c_T + d_c                    SH DC (3) + degree 1-3 (45, as [15, 3])

Parameter names and shapes follow the official release's decoder state dict, so
``decoder_neutral_flame.pth`` loads into this module (:mod:`.io`): ``gaussian_embeddings``
[K,32]; ``conditioning_mlp.shared_body.{0,2,4,6,8,10}`` Linear 544->256->...->256 with ReLU;
``conditioning_mlp.{scale,rotation,color,opacity,means}_head.{0,2}`` Linear 256->256, ReLU,
Linear 256->{3,4,48,1,3}; ``base_rotations`` [K,4], ``base_scales`` [K,3] (log),
``base_sh0`` [K,1,3], ``base_shN`` [K,15,3], ``base_opacity`` [K] (logit). Our template also
carries ``base_means`` [K,3] (the official code takes positions from a separate geometry model).

The input is ``concat([w, e_k])`` (w first). The first layer is evaluated as
``W_w w + W_e e_k + b`` so the 512-D part is computed once per code, not once per Gaussian.

**Linear basis (ours, default v2).** A decoder may also carry a per-Gaussian linear basis,
buffers ``linear_mean`` [K,10] and ``linear_basis`` [N,K,10] (N <= code dim), added to the MLP's
residuals: ``r_k += linear_mean_k + sum_n w_n linear_basis_{n,k}``, with the 10 columns
``d_means`` (3, metres), ``d_log_scales`` (3), ``d_opacity`` (1) and the SH DC ``d_sh[:,0]`` (3).
It is a morphable model of the Gaussians in the style of Blanz & Vetter (1999): the basis is the
principal components of many people's fitted avatars (:func:`fastavatar_engine.train.latent.pca_basis`)
and ``w[:N]`` their coordinates, so a code's first N entries *are* the avatar's position in the
space of people, and the MLP learns what is left (rotations, higher SH bands, non-linear parts).
Why: trained on ~170 single-photo people on a 2-core CPU, an MLP alone decoded every code as
nearly the mean face after 3,000 steps; the basis reproduces each person's PCA reconstruction
exactly from the first step. Decoders without these buffers (v1, the official release) are
unchanged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..render.types import GaussianTensors

CODE_DIM = 512
EMBED_DIM = 32
HIDDEN = 256
MEANS_SCALE = 0.1  # metres: the largest position residual, 0.1 * tanh(.)
HEAD_DIMS = {"scale": 3, "rotation": 4, "color": 48, "opacity": 1, "means": 3}
#: Columns of the linear basis per Gaussian: d_means (m), d_log_scales, d_opacity, SH DC.
BASIS_FIELDS = 10


class ConditioningMLP(nn.Module):
    """Shared body (6 Linear + ReLU) and five heads (Linear, ReLU, Linear), official layout."""

    def __init__(self, in_dim: int = CODE_DIM + EMBED_DIM, hidden: int = HIDDEN, depth: int = 6):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.ReLU()]
        self.shared_body = nn.Sequential(*layers)
        for name, out in HEAD_DIMS.items():
            setattr(self, f"{name}_head", nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out)))
        for name in HEAD_DIMS:  # start as the identity map: zero residuals
            last = getattr(self, f"{name}_head")[2]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def body(self, w: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Shared-body features [K, hidden] for code ``w`` [code_dim] and embeddings ``e`` [K, embed]."""
        first: nn.Linear = self.shared_body[0]
        cd = w.shape[-1]
        h = torch.relu(e @ first.weight[:, cd:].T + (first.weight[:, :cd] @ w + first.bias))
        for layer in list(self.shared_body)[2:]:
            h = layer(h)
        return h

    def head_features(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each head's hidden layer (after its first Linear + ReLU), dict of [K, hidden]."""
        return {name: getattr(self, f"{name}_head")[1](getattr(self, f"{name}_head")[0](h)) for name in HEAD_DIMS}

    def heads_zero(self) -> bool:
        """True when every head's last Linear is exactly zero (weights and bias): the MLP adds
        nothing to the residuals (an untrained MLP, as in default v2.1), whatever its gradients."""
        return all(not torch.any(p) for p in self._last_params())

    def outputs_zero(self) -> bool:
        """True when :meth:`heads_zero` and none of the last layers takes gradients (or autograd
        is off): the heads then output 0 for any input and no gradient can flow through them, so
        the MLP need not run."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in self._last_params()):
            return False
        return self.heads_zero()

    def _last_params(self) -> list[torch.Tensor]:
        lasts = [getattr(self, f"{name}_head")[2] for name in HEAD_DIMS]
        return [p for m in lasts for p in (m.weight, m.bias)]

    def forward_split(self, w: torch.Tensor, e: torch.Tensor) -> dict[str, torch.Tensor]:
        """Heads' raw outputs for code ``w`` [512] and embeddings ``e`` [K,32]: dict of [K,d]."""
        h = self.body(w, e)
        return {name: getattr(self, f"{name}_head")(h) for name in HEAD_DIMS}


class FastAvatarDecoder(nn.Module):
    """Template Gaussians + the conditioning MLP; ``forward(w)`` returns the subject's Gaussians.

    Args: ``template``: a :class:`GaussianTensors` (or ``GaussianSet``) of K Gaussians with SH
    degree 3 (the per-parameter mean of per-subject fits), in the head frame (metres).
    """

    def __init__(self, template, code_dim: int = CODE_DIM, embed_dim: int = EMBED_DIM, basis_components: int = 0):
        super().__init__()
        if not isinstance(template, GaussianTensors):
            template = GaussianTensors.from_numpy(template)
        k = template.count
        if template.sh.shape[1] != 16:
            raise ValueError(f"template: expected SH degree 3 (16 coefficients), got {template.sh.shape[1]}")
        self.code_dim = code_dim
        self.register_buffer("base_means", template.means.detach().float().clone())
        self.register_buffer("base_scales", template.log_scales.detach().float().clone())
        self.register_buffer("base_rotations", template.rotations.detach().float().clone())
        self.register_buffer("base_opacity", template.opacity_logits.detach().float().clone())
        self.register_buffer("base_sh0", template.sh[:, :1].detach().float().clone())
        self.register_buffer("base_shN", template.sh[:, 1:].detach().float().clone())
        self.gaussian_embeddings = nn.Embedding(k, embed_dim)
        with torch.no_grad():
            self.gaussian_embeddings.weight.copy_(position_embedding_init(self.base_means, embed_dim))
        self.conditioning_mlp = ConditioningMLP(code_dim + embed_dim)
        if basis_components:
            self.set_linear_basis(torch.zeros(k, BASIS_FIELDS), torch.zeros(basis_components, k, BASIS_FIELDS))

    @property
    def basis_components(self) -> int:
        """N, the number of linear-basis components (0: no linear basis)."""
        b = getattr(self, "linear_basis", None)
        return 0 if b is None else int(b.shape[0])

    def set_linear_basis(self, mean: torch.Tensor, basis: torch.Tensor) -> None:
        """Install the linear basis (module doc): ``mean`` [K,10], ``basis`` [N,K,10] float, columns
        d_means (m), d_log_scales, d_opacity, SH DC. Raises ``ValueError`` for other shapes or
        N > code dim."""
        k = self.num_gaussians
        mean, basis = torch.as_tensor(mean).float(), torch.as_tensor(basis).float()
        if mean.shape != (k, BASIS_FIELDS) or basis.ndim != 3 or basis.shape[1:] != (k, BASIS_FIELDS) \
                or not 0 < basis.shape[0] <= self.code_dim:
            raise ValueError(f"linear basis: expected mean [{k},{BASIS_FIELDS}] and basis [N<={self.code_dim},{k},"
                             f"{BASIS_FIELDS}], got {list(mean.shape)} and {list(basis.shape)}")
        dev = self.base_means.device
        self.register_buffer("linear_mean", mean.contiguous().to(dev))
        self.register_buffer("linear_basis", basis.contiguous().to(dev))

    def linear_residuals(self, w: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor | None:
        """The linear basis's part of the residuals, [K,10] (or [M,10] for ``index``); None without a basis."""
        n = self.basis_components
        if not n:
            return None
        if index is None:
            flat = self.linear_basis.reshape(n, -1)
            return self.linear_mean + (w[:n] @ flat).reshape(-1, BASIS_FIELDS)
        return self.linear_mean[index] + torch.einsum("n,nkf->kf", w[:n], self.linear_basis[:, index])

    @property
    def num_gaussians(self) -> int:
        """K, the number of template Gaussians."""
        return int(self.base_means.shape[0])

    def residuals(self, w: torch.Tensor, index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Residuals for code ``w`` [code_dim]: ``d_means`` [K,3] (metres), ``d_log_scales`` [K,3],
        ``d_rotations`` [K,4], ``d_opacity`` [K], ``d_sh`` [K,16,3]. With ``index`` (int64 [M]) only
        those Gaussians are decoded ([M, ...]); each Gaussian's output depends on w and its own
        embedding only, so this equals the full decode restricted to ``index``."""
        if w.ndim != 1 or w.shape[0] != self.code_dim:
            raise ValueError(f"code w: expected shape [{self.code_dim}], got {list(w.shape)}")
        e = self.gaussian_embeddings.weight if index is None else self.gaussian_embeddings(index)
        if self.conditioning_mlp.outputs_zero():  # exact shortcut: zero heads output zero residuals
            z = w.new_zeros(e.shape[0])
            raw = {name: z[:, None].expand(-1, d) for name, d in HEAD_DIMS.items()}
        else:
            raw = self.conditioning_mlp.forward_split(w, e)
        return self.with_linear(self.residuals_from_raw(raw), w, index)

    def with_linear(self, r: dict[str, torch.Tensor], w: torch.Tensor, index: torch.Tensor | None = None) -> dict:
        """The MLP's residuals ``r`` (:meth:`residuals_from_raw`) plus the linear basis's part for code
        ``w`` (module doc); ``r`` itself without a basis. Whoever assembles residuals from the MLP's
        heads (refinement's heads mode) must pass them through here."""
        lin = self.linear_residuals(w, index)
        if lin is None:
            return r
        dc = torch.cat([r["d_sh"][:, :1] + lin[:, None, 7:10], r["d_sh"][:, 1:]], 1)
        return {"d_means": r["d_means"] + lin[:, 0:3], "d_log_scales": r["d_log_scales"] + lin[:, 3:6],
                "d_rotations": r["d_rotations"], "d_opacity": r["d_opacity"] + lin[:, 6], "d_sh": dc}

    @staticmethod
    def residuals_from_raw(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map the heads' raw outputs to residuals (the tanh position bound and the reshapes)."""
        return {
            "d_means": MEANS_SCALE * torch.tanh(out["means"]),
            "d_log_scales": out["scale"],
            "d_rotations": out["rotation"],
            "d_opacity": out["opacity"][:, 0],
            "d_sh": out["color"].reshape(-1, 16, 3),
        }

    def apply_residuals(self, r: dict[str, torch.Tensor], index: torch.Tensor | None = None) -> GaussianTensors:
        """The paper's equations: template + residuals -> Gaussians (see module docstring).
        ``index`` selects the template Gaussians the residuals belong to (default: all)."""
        sel = (lambda t: t) if index is None else (lambda t: t[index])  # noqa: E731
        base_sh = torch.cat([sel(self.base_sh0), sel(self.base_shN)], 1)
        q = sel(self.base_rotations) + r["d_rotations"]
        return GaussianTensors(
            means=sel(self.base_means) + r["d_means"],
            log_scales=sel(self.base_scales) + r["d_log_scales"],
            rotations=q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12),
            opacity_logits=sel(self.base_opacity) + r["d_opacity"],
            sh=base_sh + r["d_sh"],
        )

    def with_base(self, means: torch.Tensor, log_scales: torch.Tensor, rotations: torch.Tensor) -> "FastAvatarDecoder":
        """A decoder sharing this one's weights whose template geometry is replaced: ``means`` [K,3]
        (m), ``log_scales`` [K,3], ``rotations`` [K,4] (e.g. the template on a person's head,
        :class:`fastavatar_engine.head.template.BoundTemplate`). Colours and opacities stay.
        Raises ``ValueError`` for mismatched shapes."""
        k = self.num_gaussians
        if means.shape != (k, 3) or log_scales.shape != (k, 3) or rotations.shape != (k, 4):
            raise ValueError(f"with_base: expected [{k},3], [{k},3], [{k},4] template arrays")
        new = copy.copy(self)
        new._buffers = dict(self._buffers)
        dev = self.base_means.device
        new._buffers["base_means"] = means.detach().float().to(dev)
        new._buffers["base_scales"] = log_scales.detach().float().to(dev)
        new._buffers["base_rotations"] = rotations.detach().float().to(dev)
        return new

    def forward(self, w: torch.Tensor, index: torch.Tensor | None = None) -> GaussianTensors:
        """Gaussians of the subject with code ``w`` [code_dim] (differentiable in w and weights);
        only the Gaussians in ``index`` when given."""
        return self.apply_residuals(self.residuals(w, index), index)


def position_embedding_init(means: torch.Tensor, dim: int = EMBED_DIM) -> torch.Tensor:
    """Gaussian embeddings initialised from normalised template positions, [K, dim].

    Positions are normalised to [-1, 1] per axis and expanded with sin/cos features at
    octave frequencies (the first 3 columns are the normalised positions themselves).
    """
    lo, hi = means.min(0).values, means.max(0).values
    p = 2 * (means - lo) / (hi - lo).clamp_min(1e-9) - 1
    feats = [p]
    f = 1.0
    while sum(x.shape[1] for x in feats) < dim:
        feats += [torch.sin(torch.pi * f * p), torch.cos(torch.pi * f * p)]
        f *= 2
    return torch.cat(feats, 1)[:, :dim].contiguous()
