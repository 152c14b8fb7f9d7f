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
    ``attributes`` (``age``, ``gender``, ``smiling``... where known); ``expression`` [53] float32
    the head fit's expression coefficients of its one photo, or None (several photos, or a
    multi-view subject)."""

    name: str
    person: str
    gaussians: GaussianSet
    head: np.ndarray | None
    embeddings: np.ndarray
    attributes: dict = field(default_factory=dict)
    expression: np.ndarray | None = None


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
        ex = rec.get("head_expressions")
        expr = np.asarray(ex[0], np.float32) if ex and len(ex) == 1 and len(rec["photos"]) == 1 else None
        out.append(Target(rec["entry"], rec["person"], read_ply(js.with_suffix(".ply")), head, emb,
                          dict(rec.get("attributes") or {}), expr))
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


def with_expressions(targets: list[Target], bound) -> list[Target]:
    """The targets with their photo's expression carried into their Gaussians.

    A target was fitted on its head's identity alone (the template deformed by the fitted
    identity, :meth:`~fastavatar_engine.head.template.BoundTemplate.deform`), so the expression
    the head fit found in the photo (a smile, a blink) reached the Gaussians only as far as
    40 likeness-fit steps moved them: on the London pairs the decoded smile widened the mouth
    by 7% where the photos differ by 19%. Here each target with an ``expression`` gets the
    displacement that expression makes on its head against its baseline,
    ``deform(id, e) - deform(id, e0)``, added to its means and log-scales (rotations are left as
    fitted), so its residual against the head, and so its code, carries the expression. The
    baseline ``e0`` is the expression of the person's neutral entry (``attributes["smiling"] ==
    0``) where there is one, since that entry's Gaussians already hold its photo as it is (so a
    neutral entry is unchanged and a smiling one gets the pair's difference), else 0.
    ``bound``: the BoundTemplate of the model that fitted the targets (same K); targets without a
    head or an expression are returned unchanged. Raises ``ValueError`` for a count mismatch."""
    base = {t.person: t.expression for t in targets if t.attributes.get("smiling") == 0 and t.expression is not None}
    out = []
    for t in targets:
        if t.head is None or t.expression is None or bound is None:
            out.append(t)
            continue
        e0 = base.get(t.person)
        mu0, ls0, _ = (x.detach().double().numpy() for x in bound.deform(identity=t.head, expression=e0))
        mu1, ls1, _ = (x.detach().double().numpy() for x in bound.deform(identity=t.head, expression=t.expression))
        if mu0.shape[0] != t.gaussians.count:
            raise ValueError(f"target {t.name}: {t.gaussians.count} Gaussians, the bound template has {mu0.shape[0]}")
        g = t.gaussians.copy()
        g.means = (g.means + (mu1 - mu0)).astype(g.means.dtype)
        g.log_scales = (g.log_scales + (ls1 - ls0)).astype(g.log_scales.dtype)
        out.append(Target(t.name, t.person, g, t.head, t.embeddings, dict(t.attributes), t.expression))
    return out


def one_head_per_person(targets: list[Target]) -> list[Target]:
    """The targets with every entry of a person on that person's neutral head.

    A London person's neutral and smiling photos are head-fitted separately, and the smiling
    photo's identity absorbs part of the smile (its mouth is 2.7% wider, over the 80 training
    pairs, where the photos differ by 19%). A person has one head shape, so each entry of a
    person with a neutral entry (``attributes["smiling"] == 0``) gets that entry's head; its
    Gaussians stay where they were fitted, so their residual against the neutral head, and so
    the code, carries what the smiling head had absorbed. Other targets are returned unchanged."""
    neutral = {t.person: t.head for t in targets if t.attributes.get("smiling") == 0 and t.head is not None}
    out = []
    for t in targets:
        h = neutral.get(t.person)
        if h is None or t.head is None or t.head is h:
            out.append(t)
        else:
            out.append(Target(t.name, t.person, t.gaussians, h, t.embeddings, dict(t.attributes), t.expression))
    return out
