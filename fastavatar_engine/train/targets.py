"""The many-identity training set of default v2 as the latent stages see it: one *target* per avatar.

A :class:`Target` is a set of K template-ordered Gaussians (head frame, metres) the decoder must
reproduce from one free code, the head-model identity its template sits on, the identity
embeddings of the photos it came from, and its person and attributes. Two sources:

* :func:`people_targets`: the single-photo people's likeness fits (stage a', :mod:`.people`);
* :func:`subject_targets`: the multi-view NeRSemble subjects, as a trained model decodes their
  codes (the model was fitted to their 15 calibrated training views; its decode reproduces the
  per-subject 3DGS fits, and it spares re-running those 17-minute fits). Their head is the
  template's own (None); the target is named by the subject (``128``), its person ``nersemble-128``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..gaussians import GaussianSet


@dataclass
class Target:
    """One avatar to reproduce: ``name``; ``person`` (identity id); ``gaussians`` (K Gaussians);
    ``head`` [100] float32 identity coefficients of the head model or None (the template's own
    head); ``embeddings`` [P,D] float32 unit identity embeddings of its photos (and mirrors);
    ``attributes`` (``age``, ``gender``, ``smiling``... where known)."""

    name: str
    person: str
    gaussians: GaussianSet
    head: np.ndarray | None
    embeddings: np.ndarray
    attributes: dict = field(default_factory=dict)


def people_targets(run_dir, names=None) -> list[Target]:
    """Targets from ``RUN/people/*.json`` (+ ``.ply``, ``.npz``), sorted by name; ``names`` restricts
    them. Raises ``FileNotFoundError`` when an entry's PLY or NPZ is missing."""
    from ..ply import read_ply

    out = []
    for js in sorted((Path(run_dir) / "people").glob("*.json")):
        rec = json.loads(js.read_text())
        if names is not None and rec["entry"] not in names:
            continue
        emb = np.load(js.with_suffix(".npz"))["embeddings"].astype(np.float32)
        head = None if rec.get("head_identity") is None else np.asarray(rec["head_identity"], np.float32)
        out.append(Target(rec["entry"], rec["person"], read_ply(js.with_suffix(".ply")), head, emb,
                          dict(rec.get("attributes") or {})))
    return out


def subject_targets(data_dir, subjects, model, front_end, embedder) -> list[Target]:
    """Targets of NeRSemble ``subjects`` (folders of ``data_dir``): ``model`` (a FastAvatarModel
    trained on them) decodes each subject's code; embeddings of every training view but the
    frontal camera 8, and of their mirrors. Raises ``KeyError`` for a subject the model has no
    code for."""
    import torch

    from ..cameras import load_subject
    from .encoder_train import view_embeddings

    out = []
    for s in subjects:
        if s not in model.codes:
            raise KeyError(f"model {model.model_id} has no code for subject {s!r}")
        with torch.no_grad():
            g = model.decode(model.codes[s]).to_numpy()
        subject = load_subject(Path(data_dir) / s)
        train_idx = subject.splits.get("train") or [v.camera_index for v in subject.views]
        emb = view_embeddings(Path(data_dir) / s, [i for i in train_idx if i != 8], front_end, embedder)
        out.append(Target(s, f"nersemble-{s}", g, None, np.stack(emb).astype(np.float32), {}))
    return out


def person_codes(targets: list[Target], codes: np.ndarray) -> dict[str, np.ndarray]:
    """Each person's code: the code of their neutral entry where they have one (London), else of
    their first entry. ``codes`` [T,D] in the order of ``targets``."""
    out: dict[str, np.ndarray] = {}
    for t, c in zip(targets, codes):
        if t.person not in out or t.attributes.get("smiling") == 0:
            out[t.person] = c
    return out
