"""Stage a: per-subject 3D Gaussian Splatting fit with a fixed, template-ordered set of Gaussians.

Standard 3DGS optimisation (Kerbl et al. 2023: Adam, per-parameter learning rates, exponential
position-lr decay, L1 + 0.2 D-SSIM, SH degree raised over time) **without densification or
pruning**: Gaussian k starts at point k of the subject's ``points3d.ply`` and stays Gaussian k,
which is what makes the per-parameter template average meaningful (FastAvatar Sec. 3.1). A
silhouette term L1(alpha, mask) keeps the splats on the head.

Outputs in ``OUT/fits/``: ``{subject}.ply`` (INRIA 3DGS PLY, head frame), ``{subject}.json``
(metrics, settings, time) and a resumable checkpoint ``{subject}.ckpt.pt`` while running.
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

from ..gaussians import SH_C0
from ..ply import write_ply
from ..render import GaussianTensors, render
from .data import TrainView, load_views, subject_points
from .losses import photometric_loss, psnr

PARAMS = ("means", "log_scales", "rotations", "opacity_logits", "sh")


@dataclass
class FitConfig:
    """Hyper-parameters of a per-subject fit (3DGS defaults scaled to a 10k-Gaussian head)."""

    steps: int = 1500
    image_scale: float = 0.5
    lr_means: float = 1.6e-4
    lr_means_final: float = 1.6e-5
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    lr_opacity: float = 2.5e-2
    lr_scales: float = 5e-3
    lr_rotations: float = 1e-3
    ssim_weight: float = 0.2
    mask_weight: float = 0.1
    sh_degree_every: int = 400  # SH degree d from step d * sh_degree_every
    init_opacity: float = 0.5
    checkpoint_every: int = 250
    seed: int = 0
    device: str = "cpu"  # "cuda" renders with gsplat


def nearest_neighbour_scale(points: np.ndarray, k: int = 3) -> np.ndarray:
    """Mean distance (metres) to the ``k`` nearest other points, [N]; the 3DGS initial scale."""
    p = torch.as_tensor(points, dtype=torch.float32)
    out = torch.empty(len(p))
    for i in range(0, len(p), 2048):
        d = torch.cdist(p[i:i + 2048], p)
        d[torch.arange(d.shape[0]), torch.arange(i, i + d.shape[0])] = float("inf")
        out[i:i + 2048] = d.topk(k, largest=False).values.mean(1)
    return out.clamp_min(1e-4).numpy()


def initial_colours(points: np.ndarray, views: list[TrainView]) -> np.ndarray:
    """Per-point colour [N,3]: the mean image colour where the point projects inside the mask."""
    from ..cameras import project_points

    acc = np.zeros((len(points), 3))
    cnt = np.zeros(len(points))
    for v in views:
        uv, z = project_points(points, v.c2w, v.K)
        j, i = np.floor(uv[:, 0]), np.floor(uv[:, 1])
        ok = (z > 0) & (j >= 0) & (i >= 0) & (j < v.width) & (i < v.height)
        ii, jj = i[ok].astype(int), j[ok].astype(int)
        inside = v.mask.cpu().numpy()[ii, jj] > 0.5
        idx = np.flatnonzero(ok)[inside]
        acc[idx] += v.image.cpu().numpy()[ii[inside], jj[inside]]
        cnt[idx] += 1
    col = np.full((len(points), 3), 0.5)
    seen = cnt > 0
    col[seen] = acc[seen] / cnt[seen, None]
    return col


def init_gaussians(points: np.ndarray, views: list[TrainView], opacity: float = 0.5, device="cpu") -> GaussianTensors:
    """Gaussians at ``points`` [N,3]: isotropic (nearest-neighbour scale), coloured from ``views``."""
    n = len(points)
    sh = np.zeros((n, 16, 3), np.float32)
    sh[:, 0] = (initial_colours(points, views) - 0.5) / SH_C0
    rot = np.zeros((n, 4), np.float32)
    rot[:, 0] = 1
    mk = lambda a: torch.tensor(np.asarray(a, np.float32), device=device, requires_grad=True)  # noqa: E731
    return GaussianTensors(
        mk(points), mk(np.log(nearest_neighbour_scale(points))[:, None].repeat(3, 1)), mk(rot),
        mk(np.full(n, math.log(opacity / (1 - opacity)))), mk(sh),
    )


def _optimizer(g: GaussianTensors, cfg: FitConfig) -> torch.optim.Adam:
    # the higher SH orders' 20x smaller rate is applied by scaling their gradient in the loop
    return torch.optim.Adam([
        {"params": [g.means], "lr": cfg.lr_means, "name": "means"},
        {"params": [g.log_scales], "lr": cfg.lr_scales, "name": "log_scales"},
        {"params": [g.rotations], "lr": cfg.lr_rotations, "name": "rotations"},
        {"params": [g.opacity_logits], "lr": cfg.lr_opacity, "name": "opacity_logits"},
        {"params": [g.sh], "lr": cfg.lr_sh0, "name": "sh"},
    ], eps=1e-15)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fit_subject(root, out_dir, cfg: FitConfig | None = None, resume: bool = True, progress=_log) -> dict:
    """Fit one subject; returns its metrics dict (also written as ``{subject}.json``).

    ``root``: the subject's sample-data folder. Resumes from ``{subject}.ckpt.pt`` when present
    and ``resume`` is true. The held-out frontal view (camera 8) is only *evaluated*.
    """
    cfg = cfg or FitConfig()
    root, out_dir = Path(root), Path(out_dir) / "fits"
    out_dir.mkdir(parents=True, exist_ok=True)
    name = root.name
    ckpt_path = out_dir / f"{name}.ckpt.pt"
    torch.manual_seed(cfg.seed)
    views = load_views(root, scale=cfg.image_scale, device=cfg.device)
    held_out = load_views(root, camera_indices=[8], scale=cfg.image_scale, device=cfg.device)
    points = subject_points(root)
    g = init_gaussians(points, views, cfg.init_opacity, device=cfg.device)
    opt = _optimizer(g, cfg)
    start, elapsed = 0, 0.0
    if resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, weights_only=True, map_location=cfg.device)
        with torch.no_grad():
            for k in PARAMS:
                getattr(g, k).copy_(state["params"][k])
        opt.load_state_dict(state["optimizer"])
        start, elapsed = int(state["step"]), float(state["elapsed_s"])
        progress(f"[fit {name}] resuming at step {start}")
    bg = torch.ones(3, device=cfg.device)
    rng = np.random.default_rng(cfg.seed + start)
    sh_rest_scale = cfg.lr_shN / cfg.lr_sh0
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        frac = step / max(1, cfg.steps - 1)
        opt.param_groups[0]["lr"] = cfg.lr_means * (cfg.lr_means_final / cfg.lr_means) ** frac
        degree = min(3, step // cfg.sh_degree_every)
        v = views[int(rng.integers(len(views)))]
        sub = GaussianTensors(g.means, g.log_scales, g.rotations, g.opacity_logits, g.sh[:, : (degree + 1) ** 2])
        rgb, alpha = render(sub, v.c2w, v.K, v.width, v.height, bg)  # gsplat on CUDA, ours elsewhere
        loss = photometric_loss(rgb, alpha, v.image, v.mask, cfg.ssim_weight, cfg.mask_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if g.sh.grad is not None:
            g.sh.grad[:, 1:] *= sh_rest_scale  # higher SH orders learn 20x slower (3DGS)
        opt.step()
        done = step + 1
        if done % 50 == 0 or done == cfg.steps:
            rate = (time.perf_counter() - t0) / (done - start)
            progress(f"[fit {name}] step {done}/{cfg.steps} loss {loss.item():.4f} "
                     f"psnr {psnr(rgb.detach(), v.image):.2f} dB  {rate:.2f} s/step  "
                     f"eta {rate * (cfg.steps - done) / 60:.1f} min")
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            _save_checkpoint(ckpt_path, g, opt, done, elapsed + time.perf_counter() - t0)
    elapsed += time.perf_counter() - t0

    metrics = {"subject": name, "gaussians": g.count, "steps": cfg.steps, "time_s": round(elapsed, 1),
               "device": cfg.device, "config": asdict(cfg)}
    with torch.no_grad():
        for label, vs in (("train", views), ("held_out_view_8", held_out)):
            scores = [psnr(render(g, v.c2w, v.K, v.width, v.height, bg)[0], v.image) for v in vs]
            metrics[f"psnr_{label}"] = round(float(np.mean(scores)), 2)
    write_ply(out_dir / f"{name}.ply", g.to_numpy())
    (out_dir / f"{name}.json").write_text(json.dumps(metrics, indent=2))
    if ckpt_path.exists():
        ckpt_path.unlink()
    progress(f"[fit {name}] done: train {metrics['psnr_train']} dB, held-out view 8 "
             f"{metrics['psnr_held_out_view_8']} dB, {elapsed / 60:.1f} min")
    return metrics


def _save_checkpoint(path: Path, g: GaussianTensors, opt, step: int, elapsed: float) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"params": {k: getattr(g, k).detach() for k in PARAMS}, "optimizer": opt.state_dict(),
                "step": step, "elapsed_s": elapsed}, tmp)
    tmp.replace(path)
