"""Stage d: the encoder's projector, decoder frozen (FastAvatar Sec. 3.3).

Every training view of subject i (the frontal camera 8 held out) and its mirror image go through
the offline face front-end and identity backbone (dlib 128-D by default); the projector MLP is
trained to map each embedding to the subject's code w_i from stage c with
MSE + (1 - cosine similarity). Writes ``RUN/encoder.safetensors`` and ``RUN/encoder.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..cameras import load_subject
from ..model.encoder import FastAvatarEncoder


@dataclass
class EncoderTrainConfig:
    """Hyper-parameters of the encoder stage."""

    steps: int = 2000
    lr: float = 1e-3
    weight_decay: float = 1e-4
    cosine_weight: float = 1.0
    dropout: float = 0.1
    seed: int = 0


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def view_embeddings(subject_root, camera_indices, front_end, embedder, mirror: bool = True) -> list[np.ndarray]:
    """Identity embeddings of the given views (and their mirror images) where a face is found."""
    subject = load_subject(subject_root)
    out = []
    for idx in camera_indices:
        img = subject.view(idx).load_image()
        for im in ([img, np.ascontiguousarray(img[:, ::-1])] if mirror else [img]):
            faces = front_end.detect(im)
            if faces:
                out.append(embedder.embed(im, faces[0]))
    return out


def train_encoder(data_dir, run_dir, subjects, cfg: EncoderTrainConfig | None = None, progress=_log) -> dict:
    """Train the projector on the subjects' training views; returns the metrics dict."""
    from safetensors.torch import load_file, save_file

    os.environ.setdefault("GLOG_minloglevel", "2")
    from ..face import DlibEmbedder, FaceFrontEnd

    cfg = cfg or EncoderTrainConfig()
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    torch.manual_seed(cfg.seed)
    codes = load_file(str(run_dir / "codes.safetensors"))
    embedder = DlibEmbedder()
    xs, ys, labels, held = [], [], [], {}
    t0 = time.perf_counter()
    with FaceFrontEnd() as fe:
        for s in subjects:
            subject = load_subject(data_dir / s)
            train_idx = subject.splits.get("train") or [v.camera_index for v in subject.views]
            embs = view_embeddings(data_dir / s, [i for i in train_idx if i != 8], fe, embedder)
            xs += embs
            ys += [codes[s]] * len(embs)
            labels += [s] * len(embs)
            held[s] = view_embeddings(data_dir / s, [8], fe, embedder, mirror=False)
            progress(f"[encoder] subject {s}: {len(embs)} embeddings (views + mirrors)")
    x = torch.tensor(np.stack(xs), dtype=torch.float32)
    y = torch.stack(ys)
    enc = FastAvatarEncoder(in_dim=embedder.dim, code_dim=y.shape[1], dropout=cfg.dropout)
    opt = torch.optim.AdamW(enc.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for step in range(cfg.steps):
        enc.train()
        pred = enc(x)
        loss = ((pred - y) ** 2).sum(-1).mean() + cfg.cosine_weight * (1 - torch.cosine_similarity(pred, y, -1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 500 == 0:
            progress(f"[encoder] step {step + 1}/{cfg.steps} loss {loss.item():.5f}")
    enc.eval()
    metrics = {"subjects": list(subjects), "backbone": embedder.name, "embedding_dim": embedder.dim,
               "samples": len(xs), "steps": cfg.steps, "config": asdict(cfg), "time_s": None,
               "train_cosine": {}, "held_out_view_8_cosine": {}, "held_out_view_8_nearest_code": {}}
    with torch.no_grad():
        pred = enc(x)
        for s in subjects:
            m = torch.tensor([lab == s for lab in labels])
            metrics["train_cosine"][s] = round(float(torch.cosine_similarity(pred[m], codes[s][None], -1).mean()), 4)
            if held[s]:
                p8 = enc(torch.tensor(np.stack(held[s]), dtype=torch.float32))[0]
                sims = {t: float(torch.cosine_similarity(p8, codes[t], 0)) for t in subjects}
                metrics["held_out_view_8_cosine"][s] = round(sims[s], 4)
                metrics["held_out_view_8_nearest_code"][s] = max(sims, key=sims.get)
    metrics["time_s"] = round(time.perf_counter() - t0, 1)
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(run_dir / "encoder.safetensors"))
    (run_dir / "encoder.json").write_text(json.dumps(metrics, indent=2))
    progress(f"[encoder] done: train cosine {metrics['train_cosine']}, held-out view 8 cosine "
             f"{metrics['held_out_view_8_cosine']}")
    return metrics


@dataclass
class LatentEncoderConfig:
    """Hyper-parameters of the many-identity encoder stage (:func:`train_encoder_targets`)."""

    steps: int = 3000
    lr: float = 1e-3
    weight_decay: float = 1e-3
    cosine_weight: float = 1.0
    contrastive_weight: float = 0.5
    temperature: float = 0.1
    mixup_fraction: float = 0.5  # share of each batch replaced by mixes of two people
    dropout: float = 0.3
    noise_std: float = 0.02  # Gaussian noise on the unit embeddings before renormalising
    method: str = "ridge"  # "ridge": closed-form ridge regression in the official layout; "mlp": the trained MLP
    ridge_alphas: tuple = (0.1, 0.3, 1.0, 3.0, 10.0)  # chosen by leave-people-out cross-validation
    seed: int = 0


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def train_encoder_targets(run_dir, embeddings, persons, person_codes: dict, cfg: LatentEncoderConfig | None = None,
                          progress=_log) -> tuple[FastAvatarEncoder, dict]:
    """Train the projector to map any photo of a person (and its mirror) to that person's code.

    ``cfg.method`` "ridge" (the default) solves it in closed form (:func:`_ridge_encoder`); "mlp"
    trains the projector as follows.

    ``embeddings`` [N,D] unit identity embeddings, ``persons`` [N] their person ids,
    ``person_codes`` {person: code [512]}. Loss per sample: ||g(x) - w_p||^2 + cosine_weight *
    (1 - cos(g(x), w_p)) + contrastive_weight * InfoNCE: the softmax over every person's code of
    cos(g(x), w_q) / temperature must pick p (FastAvatar Sec. 3.3 makes the encoder
    pose-invariant by pulling a person's views together; here the views are a person's photos
    and their mirror images). With ~100 people the projector would memorise them, so part of
    every batch is *mixup* (Zhang et al. 2018): the renormalised blend of two people's
    embeddings maps to the same blend of their codes, which teaches the projector the space
    between people, where new faces land. Writes ``RUN/encoder.safetensors`` and
    ``RUN/encoder.json``; returns ``(encoder in eval mode, metrics)``."""
    from safetensors.torch import save_file

    cfg = cfg or LatentEncoderConfig()
    if cfg.method == "ridge":
        return _ridge_encoder(run_dir, embeddings, persons, person_codes, cfg, progress)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    names = sorted(person_codes)
    C = torch.stack([torch.as_tensor(np.asarray(person_codes[p]), dtype=torch.float32) for p in names])
    x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    label = torch.tensor([names.index(p) for p in persons])
    enc = FastAvatarEncoder(in_dim=x.shape[1], code_dim=C.shape[1], dropout=cfg.dropout)
    opt = torch.optim.AdamW(enc.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=0.05 * cfg.lr)
    t0 = time.perf_counter()
    n = len(x)
    n_mix = int(cfg.mixup_fraction * n)
    for step in range(cfg.steps):
        enc.train()
        xi = _unit(x + cfg.noise_std * torch.randn(x.shape, generator=g))
        yi = C[label]
        a, b = torch.randint(n, (n_mix,), generator=g), torch.randint(n, (n_mix,), generator=g)
        lam = torch.rand(n_mix, 1, generator=g)
        xm = _unit(lam * xi[a] + (1 - lam) * xi[b])
        ym = lam * yi[a] + (1 - lam) * yi[b]
        pred = enc(torch.cat([xi, xm]))
        tgt = torch.cat([yi, ym])
        loss = ((pred - tgt) ** 2).sum(-1).mean() + cfg.cosine_weight * (1 - torch.cosine_similarity(pred, tgt, -1)).mean()
        logits = _unit(pred[:n]) @ _unit(C).T / cfg.temperature
        loss = loss + cfg.contrastive_weight * torch.nn.functional.cross_entropy(logits, label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 500 == 0:
            progress(f"[latent encoder] step {step + 1}/{cfg.steps} loss {loss.item():.4f}")
    enc.eval()
    with torch.no_grad():
        pred = enc(x)
        cos = torch.cosine_similarity(pred, C[label], -1)
        nearest = (_unit(pred) @ _unit(C).T).argmax(1)
    metrics = {"persons": len(names), "samples": n, "steps": cfg.steps, "config": asdict(cfg),
               "train_cosine_mean": round(float(cos.mean()), 4),
               "train_nearest_code_is_own": round(float((nearest == label).float().mean()), 4),
               "time_s": round(time.perf_counter() - t0, 1)}
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(Path(run_dir) / "encoder.safetensors"))
    (Path(run_dir) / "encoder.json").write_text(json.dumps(metrics, indent=2))
    progress(f"[latent encoder] done: train cosine {metrics['train_cosine_mean']}, nearest code own "
             f"{metrics['train_nearest_code_is_own']}")
    return enc, metrics


def _ridge_encoder(run_dir, embeddings, persons, person_codes: dict, cfg: LatentEncoderConfig, progress):
    """The encoder as a ridge regression from embeddings to person codes, shipped in the official
    projector layout (:func:`fastavatar_engine.model.encoder.linear_projector`).

    Why not the MLP: with ~100 people the trained projector memorised them and mapped every new
    face near the mean code (measured on default v2's 25 held-out people: renders of different
    people 0.978 similar to each other, rank-1 0%). A linear map cannot memorise; its strength
    ``alpha`` is the one of ``cfg.ridge_alphas`` with the best mean cosine between predicted and
    true codes on people left out (5-fold, grouped by person)."""
    from safetensors.torch import save_file
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GroupKFold

    from ..model.encoder import linear_projector

    t0 = time.perf_counter()
    x = np.asarray(embeddings, np.float64)
    y = np.stack([np.asarray(person_codes[p], np.float64) for p in persons])
    groups = np.asarray(persons)
    folds = min(5, len(set(persons)))

    def cv_cosine(alpha):
        cos = []
        for tr, te in GroupKFold(folds).split(x, y, groups):
            pred = Ridge(alpha=alpha).fit(x[tr], y[tr]).predict(x[te])
            cos += list((pred * y[te]).sum(1) / np.maximum(np.linalg.norm(pred, axis=1) * np.linalg.norm(y[te], axis=1),
                                                          1e-12))
        return float(np.mean(cos))

    scores = {a: cv_cosine(a) for a in cfg.ridge_alphas} if folds >= 2 else {cfg.ridge_alphas[0]: float("nan")}
    alpha = max(scores, key=lambda a: scores[a] if np.isfinite(scores[a]) else -1)
    reg = Ridge(alpha=alpha).fit(x, y)
    enc = linear_projector(torch.tensor(reg.coef_, dtype=torch.float32), torch.tensor(reg.intercept_, dtype=torch.float32))
    with torch.no_grad():
        pred = enc(torch.tensor(x, dtype=torch.float32)).numpy()
    cos = (pred * y).sum(1) / np.maximum(np.linalg.norm(pred, axis=1) * np.linalg.norm(y, axis=1), 1e-12)
    names = sorted(person_codes)
    C = np.stack([np.asarray(person_codes[p], np.float64) for p in names])
    Cn = C / np.maximum(np.linalg.norm(C, axis=1, keepdims=True), 1e-12)
    nearest = np.asarray(names)[(pred @ Cn.T).argmax(1)]
    metrics = {"method": "ridge", "persons": len(person_codes), "samples": len(x), "alpha": alpha,
               "cv_cosine_by_alpha": {str(a): round(v, 4) for a, v in scores.items()},
               "train_cosine_mean": round(float(cos.mean()), 4),
               "train_nearest_code_is_own": round(float(np.mean(nearest == groups)), 4), "config": asdict(cfg),
               "time_s": round(time.perf_counter() - t0, 1)}
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(Path(run_dir) / "encoder.safetensors"))
    (Path(run_dir) / "encoder.json").write_text(json.dumps(metrics, indent=2))
    progress(f"[latent encoder] ridge alpha {alpha}: people-out cosine {scores[alpha]:.3f}, train {metrics['train_cosine_mean']}")
    return enc, metrics
