"""The refinement's two stages and what they optimise.

* **Decoder stage** (:class:`DecoderStage`): ``"full"`` mode is the paper's refinement, the code
  ``w`` and all decoder weights jointly; ``"heads"`` computes the shared body once, keeps the
  geometry at the feed-forward prediction and fine-tunes only the colour and opacity heads' output
  layers (a step costs about one render per view). ``precision`` ``"bf16"`` runs the decoder MLP's
  matrix products under bfloat16 autocast (everything else float32).
* **Detail stage** (:class:`DetailStage`): the decoder's result fitted per Gaussian, as 3DGS does
  (SH DC colour, mean, log-scales, opacity logit; rotations and higher bands stay), optionally
  starting from the appearance transfer (:func:`~.appearance.photo_colours`) and with Gaussians
  grown where the person reaches past the avatar (:mod:`.grow`) and, once, the coarse Gaussians
  where the photo has detail split in two (:mod:`.densify`); a squared-drift penalty keeps it near
  where it started.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..cameras import viewmat_from_c2w
from ..gaussians import SH_C0
from ..render import GaussianTensors
from .appearance import photo_colours, select
from .camera import corrected_camera
from .densify import GradientStats, projected_radius, split, split_candidates

#: Heads that the "heads" refinement mode fine-tunes; geometry heads stay fixed.
APPEARANCE_HEADS = ("color", "opacity")


def cpu_has_bf16() -> bool:
    """True when this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private helpers moved: stay on the safe side
        return False


class DecoderStage:
    """A private copy of ``decoder`` and its optimiser for ``mode`` (see the module docstring).

    ``code`` is the optimised code (a Parameter initialised at ``w0``); :meth:`current` decodes
    the Gaussians ``index`` (all by default) with the current state."""

    def __init__(self, decoder, w0: torch.Tensor, mode: str, precision: str, lr_code: float, lr_decoder: float,
                 lr_heads: float, device):
        self.decoder = decoder = copy.deepcopy(decoder).to(device).train()
        self.w0, self.mode, self.precision, self.device = w0, mode, precision, torch.device(device)
        self.code = torch.nn.Parameter(w0.clone())
        mlp = decoder.conditioning_mlp
        if mode == "full":
            self.opt = torch.optim.Adam([
                {"params": [self.code], "lr": lr_code},
                {"params": list(mlp.parameters()) + list(decoder.gaussian_embeddings.parameters()), "lr": lr_decoder},
            ])
        else:
            # geometry (means, scales, rotations) stays at the feed-forward prediction: fitting it to
            # one view breaks the others; only the colour and opacity heads' output layers move
            with torch.no_grad():
                self.feats = mlp.head_features(mlp.body(w0, decoder.gaussian_embeddings.weight))
                self.fixed = {name: getattr(mlp, f"{name}_head")[2](f) for name, f in self.feats.items()}
            self.lasts = {name: getattr(mlp, f"{name}_head")[2] for name in APPEARANCE_HEADS}
            self.opt = torch.optim.Adam([p for layer in self.lasts.values() for p in layer.parameters()], lr=lr_heads)

    def current(self, index=None) -> GaussianTensors:
        d = self.decoder
        if self.mode == "full":
            if self.precision == "fp32" or not torch.is_grad_enabled():
                return d(self.code, index)
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                r = d.residuals(self.code, index)
            return d.apply_residuals({k: v.float() for k, v in r.items()}, index)
        raw = dict(self.fixed) | {name: self.lasts[name](self.feats[name]) for name in APPEARANCE_HEADS}
        g = d.apply_residuals(d.with_linear(d.residuals_from_raw(raw), self.w0))
        return g if index is None else select(g, index)


class DetailStage:
    """Per-Gaussian leaves started from ``g0`` (the decoder stage's result).

    Args: ``targets``: the refinement targets; ``cameras``: per target ``(c2w, K)`` to transfer
    colours with (and to measure view-space gradients in); ``transfer``: start from the photos'
    colours; ``grow``: cap on grown Gaussians (0: none); ``lrs``: learning rates of means,
    log-scales, opacity logits, DC colour; ``reg``: weight of the squared drift (means in cm,
    log-scales, opacity logits); ``split``: cap on Gaussians :meth:`densify` splits (0: none);
    ``mouth``: (Gaussians, parents) of the mouth interior to add (:func:`.mouth.mouth_interior`).
    """

    def __init__(self, g0: GaussianTensors, targets: list, cameras: list, transfer: bool, grow: int, lrs: tuple,
                 reg: float, split: int = 0, mouth: tuple | None = None):
        self.num_template = g0.means.shape[0]
        d = {k: getattr(g0, k).detach().clone() for k in ("means", "log_scales", "opacity_logits")}
        d["dc"] = g0.sh[:, :1].detach().clone()
        self.rest, self.rots = g0.sh[:, 1:].detach(), g0.rotations.detach()
        fg = [(t["image"] * t["mask"][..., None] + (1 - t["mask"][..., None]), c2w, K, t["weight"], t["valid"])
              for t, (c2w, K) in zip(targets, cameras) if t["foreground"]]
        if transfer and fg:  # the photos' colours onto the Gaussians they see (and their mirrors)
            col, evidence = photo_colours(g0, fg)
            with torch.no_grad():
                seen = evidence > 0.05
                d["dc"][seen, 0] = (col[seen] - 0.5) / SH_C0
                self.rest = self.rest.clone()
                self.rest[seen] *= (0.5 / (0.5 + evidence[seen]))[:, None, None]
        self.parents = torch.zeros(0, dtype=torch.long)
        if grow > 0:  # Gaussians where the person mask reaches past the avatar (hair)
            from .grow import grow_into_mask

            extra, self.parents = grow_into_mask(g0, targets, budget=grow)
            if extra is not None:
                for k in ("means", "log_scales", "opacity_logits"):
                    d[k] = torch.cat([d[k], getattr(extra, k)])
                d["dc"] = torch.cat([d["dc"], extra.sh[:, :1]])
                self.rest = torch.cat([self.rest, extra.sh[:, 1:]])
                self.rots = torch.cat([self.rots, extra.rotations])
        if mouth is not None:  # the mouth interior (:mod:`.mouth`): grown Gaussians behind the lips
            extra, parents = mouth
            dev = d["means"].device
            for k in ("means", "log_scales", "opacity_logits"):
                d[k] = torch.cat([d[k], getattr(extra, k).to(dev)])
            d["dc"] = torch.cat([d["dc"], extra.sh[:, :1].to(dev)])
            self.rest = torch.cat([self.rest, extra.sh[:, 1:].to(dev)])
            self.rots = torch.cat([self.rots, extra.rotations.to(dev)])
            self.parents = torch.cat([self.parents.to(dev), parents.to(dev)])
        self.lrs, self.reg, self.split_budget = lrs, reg, int(split)
        self._set_leaves(d)
        dev = self.leaves["means"].device
        self.cameras = [(torch.as_tensor(viewmat_from_c2w(np.asarray(c2w, np.float64)), dtype=torch.float32, device=dev),
                         torch.as_tensor(np.asarray(K), dtype=torch.float32, device=dev)) for c2w, K in cameras]
        self.stats = GradientStats(self.leaves["means"].shape[0], dev) if self.split_budget > 0 else None

    def _set_leaves(self, d: dict) -> None:
        """Make ``d`` the optimised leaves, with a fresh optimiser and drift anchor."""
        self.leaves = {k: v.detach().requires_grad_(True) for k, v in d.items()}
        lr_means, lr_scales, lr_opacity, lr_dc = self.lrs
        self.opt = torch.optim.Adam([
            {"params": [self.leaves["means"]], "lr": lr_means},
            {"params": [self.leaves["log_scales"]], "lr": lr_scales},
            {"params": [self.leaves["opacity_logits"]], "lr": lr_opacity},
            {"params": [self.leaves["dc"]], "lr": lr_dc}])
        self.anchor = {k: v.detach().clone() for k, v in self.leaves.items()}

    def observe(self, target_index: int) -> None:
        """After a backward pass through target ``target_index``'s render: accumulate the
        view-space gradients that :meth:`densify` selects by (no-op without a split budget)."""
        if self.stats is not None:
            self.stats.add(self.leaves["means"], *self.cameras[target_index])

    def densify(self, target_index: int, min_radius_px: float = 3.0) -> int:
        """Split up to the split budget of the Gaussians with the largest average view-space
        gradient whose 3-sigma radius in target ``target_index``'s image is at least
        ``min_radius_px`` (:mod:`.densify`); restarts the optimiser. Returns how many were split."""
        if self.stats is None:
            return 0
        with torch.no_grad():
            radius = projected_radius(self.gaussians(), *self.cameras[target_index])
            idx = split_candidates(self.stats.mean, radius, self.split_budget, min_radius_px)
        self.stats = None
        if idx.numel() == 0:
            return 0
        d, self.rots, self.rest = split(self.leaves, self.rots, self.rest, idx)
        origin = idx.clone()  # a split grown Gaussian's children descend from its template parent
        added = idx >= self.num_template
        origin[added] = self.parents.to(idx.device)[idx[added] - self.num_template]
        self.parents = torch.cat([self.parents.to(idx.device), origin])
        self._set_leaves(d)
        return int(idx.numel())

    def gaussians(self) -> GaussianTensors:
        d = self.leaves
        return GaussianTensors(d["means"], d["log_scales"], self.rots, d["opacity_logits"], torch.cat([d["dc"], self.rest], 1))

    def drift(self) -> torch.Tensor:
        """``reg`` x the squared drift from the start (means in cm, log-scales, opacity logits)."""
        d, a = self.leaves, self.anchor
        return self.reg * ((((d["means"] - a["means"]) * 100) ** 2).sum(-1).mean()
                           + ((d["log_scales"] - a["log_scales"]) ** 2).sum(-1).mean()
                           + ((d["opacity_logits"] - a["opacity_logits"]) ** 2).mean())

    def result(self) -> tuple[GaussianTensors, np.ndarray | None]:
        """(the fitted Gaussians, parents [E] of the added ones kept (grown and split), or None):
        added Gaussians below 5% opacity are dropped (3DGS's opacity pruning)."""
        with torch.no_grad():
            g = self.gaussians()
            if not len(self.parents):
                return g, None
            from .grow import prune

            keep = prune(self.num_template, g.opacity_logits)
            grown = keep[keep >= self.num_template] - self.num_template
            return select(g, keep), self.parents[grown.to(self.parents.device)].cpu().numpy().astype(np.int64)


def detail_cameras(targets: list, cam_params: torch.Tensor | None) -> list:
    """Per target ``(c2w, K)`` numpy, with the refined camera corrections when ``cam_params`` is given."""
    if cam_params is None:
        return [(t["c2w"], t["K"]) for t in targets]
    with torch.no_grad():
        return [corrected_camera(t, cam_params[t["cam_group"]].detach(), as_numpy=True) for t in targets]
