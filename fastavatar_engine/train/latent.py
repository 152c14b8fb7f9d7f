"""Default v2's template and auto-decoder over many identities (FastAvatar Sec. 3.1-3.2).

**Head shape is a separate input, not part of w.** Every target sits on a head: a person's
fitted ICT-FaceKit identity [100] (from the photo's landmarks and outline, before any Gaussian
exists) or the template's own. The decoder's template is bound to the head model
(:class:`~fastavatar_engine.head.template.BoundTemplate`) and deformed to that head, and the
decoder predicts residuals on top of the deformed template. So ``w`` carries what the head
model cannot: appearance (skin, hair, eyes), hair volume, and what is left of the shape. The
head fit is a least-squares problem on landmarks that generalises to any face, while ``w``
is learned from ~100 people; asking ``w`` to relearn the shape from those would waste it, and
keeping them apart lets a user's edit of ``w`` (smile, age) keep their head.

* :func:`canonical_template`: the template as the mean over identities. Each target's residual
  against the fitting model's template deformed to its head (means, log-scales, sign-aligned
  quaternions, opacity logits, SH) is averaged and added to that template.
* :func:`pca_codes`: **each target's code is fixed to its principal-component coordinates**:
  the PCA of the targets' residuals (means in cm, log-scales, opacity logits / 2, SH DC),
  scaled so the first component has unit variance, padded with zeros to 512. The paper's
  auto-decoder optimises free codes; with ~170 single-photo targets free codes did not
  organise (measured on the leave-369-out run: a neutral/smiling pair's code difference
  pointed the same way as the other pairs' mean in 60% of held-out pairs, gender was
  separable at 60% cross-validated), while in the PCA coordinates of the same targets the
  figures are 89% and 85-89%. Fixed PCA codes make code distances avatar distances, so
  interpolation and attribute directions mean what they say.
* :func:`pca_basis`: the same PCA as a **linear basis of the decoder** (``LatentDecoderConfig.
  linear_basis``, default): mean + components, in the decoder's residual columns, become the
  decoder's ``linear_mean`` / ``linear_basis`` buffers, so decoding target i's code reproduces its
  PCA reconstruction (96.5% of the residuals' variance with 64 components, 99.4% with default
  v2.1's 128) before any MLP step, and the MLP only has what is left to learn. Default v2 and v2.1
  ship with 0 MLP steps: after 3,000 steps an MLP alone still decoded every code as nearly the
  mean face (distillation loss 0.174 against the 64-component basis's 0.076), and held-out
  feed-forward rank-1 went from 8% to 48-52% with the basis (56% with 128 components).
* :func:`train_decoder_targets`: the auto-decoder by distillation: decoder weights and Gaussian
  embeddings (and, unless fixed, one code per target) are optimised so that decoding target i's code on
  target i's head reproduces its Gaussians (:func:`.autodecoder.distill_loss`, plus ``dc_weight``
  x L1 on the SH DC colour: averaged with the 15 higher bands, a person's colours weighed 1/16
  of the loss and a first run decoded every code as nearly the mean face). Each step takes
  ``batch`` targets and ``gaussians_per_step`` random Gaussians of each (a Gaussian's output
  depends on w and its own embedding only, so a subset is an unbiased sample of the full loss).
  The paper trains with rendering losses on multi-view images; single photos give one view per
  target, and the likeness fit that made the target already is that rendering loss, so here the
  decoder learns the fits in parameter space: no rendering, ~0.1 s a step on a 2-core CPU.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..gaussians import GaussianSet
from ..model.decoder import CODE_DIM, FastAvatarDecoder
from ..render.types import GaussianTensors
from .autodecoder import distill_loss, load_checkpoint, save_checkpoint


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def head_bases(bound, heads) -> list:
    """Per head (identity [100] or None) the deformed template ``(means, log_scales, rotations)``
    float32 torch tensors of ``bound`` (a BoundTemplate); None gives the undeformed template."""
    out = []
    for h in heads:
        if h is None or bound is None:
            out.append(None)
        else:
            out.append(tuple(t.detach().float() for t in bound.deform(identity=h)))
    return out


def canonical_template(template: GaussianSet, targets, bound=None) -> tuple[GaussianSet, dict]:
    """(new template, stats): ``template`` (K Gaussians, the model whose fits made ``targets``)
    plus the mean of the targets' residuals against it on their heads (``bound``: ``template``'s
    BoundTemplate, or None when no target has a head). Raises ``ValueError`` for a target whose
    count is not K."""
    k = template.count
    base = GaussianTensors.from_numpy(template)
    sums = {f: np.zeros_like(getattr(template, f), dtype=np.float64)
            for f in ("means", "log_scales", "rotations", "opacity_logits", "sh")}
    spread = []
    for tb, t in zip(head_bases(bound, [t.head for t in targets]), targets):
        g = t.gaussians
        if g.count != k:
            raise ValueError(f"target {t.name}: {g.count} Gaussians, the template has {k}")
        mu, ls, rot = (base.means, base.log_scales, base.rotations) if tb is None else tb
        mu, ls, rot = mu.numpy(), ls.numpy(), rot.numpy()
        q = g.unit_rotations.astype(np.float64)
        r0 = rot / np.linalg.norm(rot, axis=1, keepdims=True).clip(1e-12)
        q *= np.where((q * r0).sum(1, keepdims=True) < 0, -1.0, 1.0)
        sums["means"] += g.means - mu
        sums["log_scales"] += g.log_scales - ls
        sums["rotations"] += q - r0
        sums["opacity_logits"] += g.opacity_logits - template.opacity_logits
        sums["sh"] += g.sh - template.sh
        spread.append(float(np.linalg.norm(g.means - mu, axis=1).mean()))
    n = max(len(targets), 1)
    rot = template.unit_rotations + sums["rotations"] / n
    new = GaussianSet(template.means + sums["means"] / n, template.log_scales + sums["log_scales"] / n,
                      rot / np.linalg.norm(rot, axis=1, keepdims=True).clip(1e-12),
                      template.opacity_logits + sums["opacity_logits"] / n, template.sh + sums["sh"] / n)
    stats = {"targets": len(targets), "gaussians": k,
             "mean_residual_mm": round(1000 * float(np.mean(spread)) if spread else 0.0, 3),
             "template_shift_mm": round(1000 * float(np.linalg.norm(sums["means"] / n, axis=1).mean()), 3)}
    return new.validate(), stats


def _residual_features(template: GaussianSet, targets, bound) -> np.ndarray:
    """[T, 10K] float32: per target the residual against the template on its head (means in cm,
    log-scales, opacity logits / 2, SH DC), the weighting of :func:`.autodecoder.distill_loss`."""
    rows = []
    for tb, t in zip(head_bases(bound, [t.head for t in targets]), targets):
        mu, ls = (template.means, template.log_scales) if tb is None else (tb[0].numpy(), tb[1].numpy())
        g = t.gaussians
        rows.append(np.concatenate([(100 * (g.means - mu)).ravel(), (g.log_scales - ls).ravel(),
                                    0.5 * (g.opacity_logits - template.opacity_logits),
                                    (g.sh[:, 0] - template.sh[:, 0]).ravel()]).astype(np.float32))
    return np.stack(rows)


def pca_basis(template: GaussianSet, targets, bound=None, dim: int = CODE_DIM, components: int | None = 64,
              whiten: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(codes [T, dim] float32, mean [K,10] float32, basis [N,K,10] float32, info): the PCA of the
    targets' residuals (:func:`_residual_features`). ``codes``: each target's coordinates on the
    first N = min(``components``, T-1) principal components, zero-padded to ``dim``; ``whiten``:
    every component scaled to unit variance (else all by the first one's standard deviation).
    ``mean`` + ``codes[:, :N] @ basis`` is each target's PCA reconstruction in the decoder's
    linear-basis columns (d_means in metres, d_log_scales, d_opacity, SH DC;
    :class:`~fastavatar_engine.model.decoder.FastAvatarDecoder`). Unwhitened codes of ~170
    targets were too alike for an MLP decoder to tell apart. ``info``: explained variance
    ratios and the mean scale. Raises ``ValueError`` for fewer than 2 targets."""
    from sklearn.decomposition import PCA

    x = _residual_features(template, targets, bound)
    k = template.count
    n = min(len(targets) - 1, dim, x.shape[1], components or dim)
    if n < 1:
        raise ValueError("pca_codes: need at least 2 targets")
    pca = PCA(n_components=n, svd_solver="full").fit(x)
    z = pca.transform(x)
    scale = z.std(0).clip(1e-12) if whiten else np.full(n, float(z[:, 0].std()) or 1.0)
    codes = np.zeros((len(targets), dim), np.float32)
    codes[:, :n] = z / scale

    def columns(f: np.ndarray) -> np.ndarray:  # feature rows [..., 10K] -> [..., K, 10] decoder columns
        lead = f.shape[:-1]
        parts = [f[..., :3 * k].reshape(*lead, k, 3) / 100.0, f[..., 3 * k:6 * k].reshape(*lead, k, 3),
                 2.0 * f[..., 6 * k:7 * k].reshape(*lead, k, 1), f[..., 7 * k:].reshape(*lead, k, 3)]
        return np.concatenate(parts, -1).astype(np.float32)

    mean = columns(pca.mean_)
    basis = columns(pca.components_ * scale[:, None])
    ratio = pca.explained_variance_ratio_
    info = {"components": n, "scale": round(float(np.mean(scale)), 4),
            "explained_variance_first10": [round(float(r), 4) for r in ratio[:10]],
            "explained_variance_kept": round(float(ratio.sum()), 4), "whiten": whiten}
    return codes, mean, basis, info


def pca_codes(template: GaussianSet, targets, bound=None, dim: int = CODE_DIM, components: int | None = 64,
              whiten: bool = True) -> tuple[np.ndarray, dict]:
    """(codes [T, dim] float32, info) of :func:`pca_basis`."""
    codes, _, _, info = pca_basis(template, targets, bound, dim, components, whiten)
    return codes, info


@dataclass
class LatentDecoderConfig:
    """Hyper-parameters of the many-identity auto-decoder (distillation)."""

    steps: int = 4000
    batch: int = 4
    gaussians_per_step: int = 2048
    lr_mlp: float = 1e-3
    lr_embeddings: float = 1e-2
    lr_codes: float = 1e-2
    lr_final_fraction: float = 0.1  # cosine decay of every learning rate to this fraction
    code_init_std: float = 0.01
    code_reg: float = 1e-4
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    dc_weight: float = 4.0  # extra L1 weight on the SH DC colour (distill_loss averages it with 15 other bands)
    fixed_codes: bool = True  # codes stay at their PCA coordinates (pca_codes); False: free auto-decoder codes
    components: int = 64  # principal components of the PCA codes (and of the linear basis)
    linear_basis: bool = True  # with fixed codes: the decoder carries the PCA basis, the MLP learns the rest
    seed: int = 0


def _targets_as_tensors(targets) -> list[GaussianTensors]:
    return [GaussianTensors.from_numpy(t.gaussians) for t in targets]


def train_decoder_targets(run_dir, template: GaussianSet, targets, cfg: LatentDecoderConfig | None = None,
                          resume: bool = True, progress=_log) -> tuple[FastAvatarDecoder, torch.Tensor, dict]:
    """Train decoder + one code per target; returns ``(decoder, codes [T,512], metrics)`` and writes
    ``RUN/decoder.safetensors``, ``RUN/codes.safetensors`` (codes by target name) and
    ``RUN/decoder.json``. Resumable from ``RUN/decoder.ckpt.pt``."""
    from safetensors.torch import save_file

    cfg = cfg or LatentDecoderConfig()
    run_dir = Path(run_dir)
    torch.manual_seed(cfg.seed)
    decoder = FastAvatarDecoder(template)
    bound = _bound(decoder) if any(t.head is not None for t in targets) else None
    bases = head_bases(bound, [t.head for t in targets])
    fits = _targets_as_tensors(targets)
    extra = {}
    if cfg.fixed_codes:
        init, mean, basis, extra["pca"] = pca_basis(template, targets, bound, components=cfg.components)
        codes = torch.nn.Parameter(torch.as_tensor(init), requires_grad=False)
        if cfg.linear_basis:
            decoder.set_linear_basis(torch.as_tensor(mean), torch.as_tensor(basis))
        progress(f"[latent decoder] PCA codes: {extra['pca']}")
    else:
        codes = torch.nn.Parameter(cfg.code_init_std * torch.randn(len(targets), CODE_DIM))
    groups = [{"params": decoder.conditioning_mlp.parameters(), "lr": cfg.lr_mlp},
              {"params": decoder.gaussian_embeddings.parameters(), "lr": cfg.lr_embeddings}]
    if not cfg.fixed_codes:
        groups.append({"params": [codes], "lr": cfg.lr_codes})
    opt = torch.optim.Adam(groups)
    base_lrs = [g["lr"] for g in opt.param_groups]
    ckpt = run_dir / "decoder.ckpt.pt"
    start, elapsed = 0, 0.0
    if resume and ckpt.is_file():
        start, elapsed = load_checkpoint(ckpt, decoder, codes, opt)
        progress(f"[latent decoder] resuming at step {start}")
    gen = torch.Generator().manual_seed(cfg.seed + start)
    k = decoder.num_gaussians
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        frac = 0.5 * (1 + math.cos(math.pi * step / cfg.steps))  # a Python float: the checkpoint stays weights_only-loadable
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * (cfg.lr_final_fraction + (1 - cfg.lr_final_fraction) * frac)
        batch = torch.randint(len(targets), (cfg.batch,), generator=gen).tolist()
        loss = torch.zeros(())
        for i in batch:
            idx = torch.randperm(k, generator=gen)[: cfg.gaussians_per_step]
            d = decoder if bases[i] is None else decoder.with_base(*bases[i])
            pred = d.apply_residuals(d.residuals(codes[i], idx), idx)
            f = fits[i]
            tgt = GaussianTensors(f.means[idx], f.log_scales[idx], f.rotations[idx], f.opacity_logits[idx], f.sh[idx])
            loss = loss + distill_loss(pred, tgt) + cfg.dc_weight * (pred.sh[:, 0] - tgt.sh[:, 0]).abs().mean()
            if not cfg.fixed_codes:
                loss = loss + cfg.code_reg * (codes[i] ** 2).sum()
        loss = loss / len(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), cfg.grad_clip)
        opt.step()
        done = step + 1
        if done % 50 == 0 or done == cfg.steps:
            rate = (time.perf_counter() - t0) / (done - start)
            progress(f"[latent decoder] step {done}/{cfg.steps} loss {loss.item():.4f} |w| "
                     f"{codes.detach().norm(dim=1).mean():.3f}  {rate:.2f} s/step eta {rate * (cfg.steps - done) / 60:.1f} min")
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            save_checkpoint(ckpt, decoder, codes, opt, done, elapsed + time.perf_counter() - t0)
    elapsed += time.perf_counter() - t0
    with torch.no_grad():
        per = []
        for i, t in enumerate(targets):
            d = decoder if bases[i] is None else decoder.with_base(*bases[i])
            per.append(float(distill_loss(d(codes[i]), fits[i])))
    metrics = {"targets": [t.name for t in targets], "steps": cfg.steps, "time_s": round(elapsed, 1),
               "config": asdict(cfg), "distill_loss_mean": round(float(np.mean(per)), 5),
               "distill_loss_max": round(float(np.max(per)), 5),
               "code_norm_mean": round(float(codes.detach().norm(dim=1).mean()), 4), **extra}
    save_file({n: v.detach().contiguous() for n, v in decoder.state_dict().items()}, str(run_dir / "decoder.safetensors"))
    save_file({t.name: codes[i].detach().contiguous() for i, t in enumerate(targets)},
              str(run_dir / "codes.safetensors"))
    (run_dir / "decoder.json").write_text(json.dumps(metrics, indent=2))
    ckpt.unlink(missing_ok=True)
    progress(f"[latent decoder] done in {elapsed / 60:.1f} min: distillation loss mean {metrics['distill_loss_mean']}")
    return decoder, codes.detach(), metrics


def _bound(decoder: FastAvatarDecoder):
    """The decoder's template bound to the head model (None without the head model's data)."""
    try:
        from ..head.template import BoundTemplate

        return BoundTemplate(decoder.base_means, decoder.base_scales, decoder.base_rotations)
    except FileNotFoundError:
        return None
