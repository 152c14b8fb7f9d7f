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
