"""Stage c: the decoder as an auto-decoder (FastAvatar Sec. 3.2; Park et al., DeepSDF 2019).

Decoder weights, Gaussian embeddings and one free code ``w_i`` per training subject are
optimised together. Two phases:

1. **Warm start by distillation** (``distill_steps``): decode ``w_i`` and regress the subject's
   own per-subject fit (stage a) parameter by parameter (L1 on means x100 per metre,
   log-scales, sign-aligned unit quaternions, opacity logits, SH). No rendering, so it is cheap,
   and it starts phase 2 close to the fits. (Our addition for CPU-only training; the paper
   trains with rendering losses only.)
2. **Rendering** (``render_steps``): the paper's objective on the training views,
   L1 + SSIM (0.8 / 0.2) + ``lambda_mu`` * mean ||d_mu||^2 + ``lambda_s`` * mean ||d_s||^2,
   plus a silhouette term L1(alpha, mask). LPIPS is not used (no weights offline).

Writes ``RUN/decoder.safetensors`` (all decoder tensors, official names) and
``RUN/codes.safetensors`` (one [512] code per subject), ``RUN/decoder.json`` (metrics, settings).
Resumable from ``RUN/decoder.ckpt.pt``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..model.decoder import CODE_DIM, FastAvatarDecoder
from ..ply import read_ply
from ..render import GaussianTensors, render
from .data import load_views
from .losses import photometric_loss, psnr


@dataclass
class DecoderTrainConfig:
    """Hyper-parameters of the auto-decoder stage."""

    steps: int = 2800  # total = distill_steps + render steps
    distill_steps: int = 2500
    image_scale: float = 0.5
    lr_mlp: float = 1e-3
    lr_embeddings: float = 3e-2
    lr_codes: float = 3e-3
    code_init_std: float = 0.01
    code_reg: float = 1e-4
    lambda_mu: float = 1.0  # per m^2 of mean position residual
    lambda_s: float = 1e-3  # per squared log-scale residual
    ssim_weight: float = 0.2
    mask_weight: float = 0.1
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "cpu"  # "cuda" decodes on the GPU and renders with gsplat


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def distill_loss(pred: GaussianTensors, target: GaussianTensors) -> torch.Tensor:
    """Parameter-space L1 between decoded Gaussians and a subject's fit (same order)."""
    q_t = target.rotations / target.rotations.norm(dim=-1, keepdim=True)
    q_t = q_t * torch.sign((q_t * pred.rotations).sum(-1, keepdim=True) + 1e-12)
    return (
        100.0 * (pred.means - target.means).abs().mean()
        + (pred.log_scales - target.log_scales).abs().mean()
        + (pred.rotations - q_t).abs().mean()
        + 0.5 * (pred.opacity_logits - target.opacity_logits).abs().mean()
        + (pred.sh - target.sh).abs().mean()
    )


def save_checkpoint(path: Path, decoder, codes: torch.Tensor, opt, step: int, elapsed_s: float) -> None:
    """Write the auto-decoder's resumable state (decoder, codes [T,512], optimiser, step, seconds)
    to ``path`` atomically (a temporary file, then rename). Only tensors and Python numbers, so
    :func:`load_checkpoint` reads it with ``weights_only=True``."""
    tmp = path.with_suffix(".tmp")
    torch.save({"decoder": decoder.state_dict(), "codes": codes.detach(), "optimizer": opt.state_dict(),
                "step": int(step), "elapsed_s": float(elapsed_s)}, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, decoder, codes: torch.Tensor, opt, device="cpu") -> tuple[int, float]:
    """Restore :func:`save_checkpoint`'s state into ``decoder``, ``codes`` and ``opt``; returns
    ``(step, elapsed seconds)``."""
    state = torch.load(path, weights_only=True, map_location=device)
    decoder.load_state_dict(state["decoder"])
    with torch.no_grad():
        codes.copy_(state["codes"])
    opt.load_state_dict(state["optimizer"])
    return int(state["step"]), float(state["elapsed_s"])


def train_decoder(data_dir, run_dir, subjects, cfg: DecoderTrainConfig | None = None, resume: bool = True,
                  progress=_log) -> dict:
    """Train the decoder and the per-subject codes; returns the metrics dict."""
    from safetensors.torch import save_file

    cfg = cfg or DecoderTrainConfig()
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    template = read_ply(run_dir / "template.ply")
    decoder = FastAvatarDecoder(template).to(cfg.device)
    codes = torch.nn.Parameter((cfg.code_init_std * torch.randn(len(subjects), CODE_DIM)).to(cfg.device))
    fits = [GaussianTensors.from_numpy(read_ply(run_dir / "fits" / f"{s}.ply"), device=cfg.device) for s in subjects]
    # the train split: camera 8 is excluded
    views = [load_views(data_dir / s, scale=cfg.image_scale, device=cfg.device) for s in subjects]
    opt = torch.optim.Adam([
        {"params": decoder.conditioning_mlp.parameters(), "lr": cfg.lr_mlp},
        {"params": decoder.gaussian_embeddings.parameters(), "lr": cfg.lr_embeddings},
        {"params": [codes], "lr": cfg.lr_codes},
    ])
    ckpt = run_dir / "decoder.ckpt.pt"
    start, elapsed = 0, 0.0
    if resume and ckpt.is_file():
        start, elapsed = load_checkpoint(ckpt, decoder, codes, opt, cfg.device)
        rng = np.random.default_rng(cfg.seed + start)
        progress(f"[decoder] resuming at step {start}")
    bg = torch.ones(3, device=cfg.device)
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        i = int(rng.integers(len(subjects)))
        r = decoder.residuals(codes[i])
        g = decoder.apply_residuals(r)
        if step < cfg.distill_steps:
            loss = distill_loss(g, fits[i])
            shown = f"distill {loss.item():.4f}"
        else:
            v = views[i][int(rng.integers(len(views[i])))]
            rgb, alpha = render(g, v.c2w, v.K, v.width, v.height, bg, backend="auto")
            photo = photometric_loss(rgb, alpha, v.image, v.mask, cfg.ssim_weight, cfg.mask_weight)
            loss = (photo + cfg.lambda_mu * (r["d_means"] ** 2).sum(-1).mean()
                    + cfg.lambda_s * (r["d_log_scales"] ** 2).sum(-1).mean())
            shown = f"photo {photo.item():.4f} psnr {psnr(rgb.detach(), v.image):.2f} dB"
        loss = loss + cfg.code_reg * (codes[i] ** 2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), cfg.grad_clip)
        opt.step()
        done = step + 1
        if done % 25 == 0 or done == cfg.steps:
            rate = (time.perf_counter() - t0) / (done - start)
            progress(f"[decoder] step {done}/{cfg.steps} subject {subjects[i]} {shown}  {rate:.2f} s/step  "
                     f"eta {rate * (cfg.steps - done) / 60:.1f} min")
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            save_checkpoint(ckpt, decoder, codes, opt, done, elapsed + time.perf_counter() - t0)
    elapsed += time.perf_counter() - t0

    metrics = {"subjects": list(subjects), "steps": cfg.steps, "time_s": round(elapsed, 1), "device": cfg.device,
               "config": asdict(cfg), "train_psnr": {}, "held_out_view_8_psnr": {}}
    with torch.no_grad():
        for i, s in enumerate(subjects):
            g = decoder(codes[i])
            metrics["train_psnr"][s] = round(float(np.mean(
                [psnr(render(g, v.c2w, v.K, v.width, v.height, bg)[0], v.image) for v in views[i]])), 2)
            (v8,) = load_views(data_dir / s, camera_indices=[8], scale=cfg.image_scale, device=cfg.device)
            metrics["held_out_view_8_psnr"][s] = round(psnr(render(g, v8.c2w, v8.K, v8.width, v8.height, bg)[0],
                                                             v8.image), 2)
    save_file({k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()},
              str(run_dir / "decoder.safetensors"))
    save_file({s: codes[i].detach().cpu().contiguous() for i, s in enumerate(subjects)},
              str(run_dir / "codes.safetensors"))
    (run_dir / "decoder.json").write_text(json.dumps(metrics, indent=2))
    if ckpt.exists():
        ckpt.unlink()
    progress(f"[decoder] done in {elapsed / 60:.1f} min: train PSNR {metrics['train_psnr']}, "
             f"held-out view 8 {metrics['held_out_view_8_psnr']}")
    return metrics
