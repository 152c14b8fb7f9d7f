"""Default v2: the prior of many people, from targets to a packaged model with its directions.

Stages over one run folder (each writes its outputs; ``decoder`` resumes from its checkpoint):

1. ``template``   the mean over identities (:func:`.latent.canonical_template`) -> ``template.ply``
2. ``decoder``    the auto-decoder over every target (:func:`.latent.train_decoder_targets`)
3. ``encoder``    any photo of a person -> the person's code (:func:`.encoder_train.train_encoder_targets`)
4. ``directions`` smile, age, gender from the labels (:func:`train_attribute_directions`)

The targets (:mod:`.targets`) are the training people's likeness fits (``RUN/people``, stage a')
and the NeRSemble subjects as ``subject_model`` decodes them. ``fit_model`` is the model whose
likeness fit made the people's targets: its template is the starting point of the mean.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..directions import Direction, paired_direction, save_direction, train_direction
from .targets import Target, people_targets, person_codes, subject_targets


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def decoder_template(decoder):
    """The decoder's template as a GaussianSet (K Gaussians, head frame)."""
    import torch

    from ..render.types import GaussianTensors

    d = decoder
    return GaussianTensors(d.base_means, d.base_scales, d.base_rotations, d.base_opacity,
                           torch.cat([d.base_sh0, d.base_shN], 1)).to_numpy()


def collect_targets(run_dir, nersemble_dir, subjects, subject_model, held_out=(), progress=_log) -> list[Target]:
    """The people's targets in ``RUN/people`` plus the ``subjects`` decoded by ``subject_model``
    (a FastAvatarModel). Subject embeddings are cached in ``RUN/subject_embeddings.npz``.
    Raises ``ValueError`` when a held-out person's entry is found (it must never enter training)."""
    import torch

    from ..face import DlibEmbedder, FaceFrontEnd

    targets = people_targets(run_dir)
    leaked = sorted({t.person for t in targets} & set(held_out))
    if leaked:
        raise ValueError(f"held-out people in the training targets: {leaked}")
    cache = Path(run_dir) / "subject_embeddings.npz"
    cached = dict(np.load(cache)) if cache.is_file() else {}
    missing = [s for s in subjects if s not in cached]
    if missing:
        with FaceFrontEnd() as fe:
            for t in subject_targets(nersemble_dir, missing, subject_model, fe, DlibEmbedder()):
                cached[t.name] = t.embeddings
        np.savez(cache, **cached)
    subs = []
    for s in subjects:
        with torch.no_grad():
            g = subject_model.decode(subject_model.codes[s]).to_numpy()
        subs.append(Target(s, f"nersemble-{s}", g, None, cached[s], {}))
    progress(f"[prior] {len(targets)} people targets ({len({t.person for t in targets})} people) + "
             f"{len(subs)} multi-view subjects")
    return targets + subs


def train_attribute_directions(targets, codes, model_id: str) -> list[Direction]:
    """Smile, age and gender directions in the code space.

    * ``smile``: the mean difference of each London person's smiling and neutral codes
      (:func:`~fastavatar_engine.directions.paired_direction`: identity cancels out);
    * ``age``: people's neutral codes, label 1 above the median age;
    * ``gender``: people's neutral codes, label 1 for "male" (so + is more masculine).

    Each direction's ``provenance["unit_amount"]`` is the code-space distance that strength 1
    means: for smile the mean projection of (smiling code - neutral code) over the pairs, for age
    and gender (linear SVM normals) the distance between the two classes' mean projections.
    ``codes`` [T,D] in the order
    of ``targets``."""
    codes = np.asarray(codes, np.float64)
    out = []
    pairs: dict = {}
    for i, t in enumerate(targets):
        if t.attributes.get("smiling") in (0, 1):
            pairs.setdefault(t.person, {})[t.attributes["smiling"]] = i
    both = [p for p in sorted(pairs) if len(pairs[p]) == 2]
    if len(both) >= 2:
        d = paired_direction(codes[[pairs[p][0] for p in both]], codes[[pairs[p][1] for p in both]], "smile", model_id,
                             source="London Set: each person's neutral vs smiling photo (likeness-fit codes)")
        out.append(d)
    neutral = {t.person: i for i, t in enumerate(targets) if t.attributes.get("smiling") == 0}
    ages = {p: targets[i].attributes.get("age") for p, i in neutral.items() if targets[i].attributes.get("age")}
    if len(ages) >= 4:
        med = float(np.median(list(ages.values())))
        people = sorted(ages)
        y = np.array([int(ages[p] > med) for p in people])
        d = train_direction(codes[[neutral[p] for p in people]], y, "age", model_id,
                            source=f"London Set self-reported age, 1 = older than the median {med:g} years")
        out.append(_with_class_amount(d, codes[[neutral[p] for p in people]], y))
    genders = {p: targets[i].attributes.get("gender") for p, i in neutral.items()
               if targets[i].attributes.get("gender") in ("male", "female")}
    if len(genders) >= 4:
        people = sorted(genders)
        y = np.array([int(genders[p] == "male") for p in people])
        d = train_direction(codes[[neutral[p] for p in people]], y, "gender", model_id,
                            source="London Set self-reported gender, 1 = male (+ is more masculine)")
        out.append(_with_class_amount(d, codes[[neutral[p] for p in people]], y))
    return out


def _with_class_amount(d: Direction, x: np.ndarray, y: np.ndarray) -> Direction:
    proj = x @ d.vector
    d.provenance["unit_amount"] = round(float(proj[y == 1].mean() - proj[y == 0].mean()), 5)
    return d


def run_prior(run_dir, targets, fit_model, decoder_cfg=None, encoder_cfg=None, model_id="fastavatar-custom",
              stages=("template", "decoder", "encoder", "directions"), expressions: bool = True,
              progress=_log) -> dict:
    """Run the stages over ``targets``; returns the metrics of each stage (also in ``RUN/*.json``).
    ``expressions``: put every entry of a person on their neutral head
    (:func:`.targets.one_head_per_person`) and carry each single-photo target's fitted expression
    into its Gaussians (:func:`.targets.with_expressions`) first."""
    from safetensors.torch import load_file

    from ..ply import read_ply, write_ply
    from .encoder_train import train_encoder_targets
    from .latent import _bound, canonical_template, train_decoder_targets
    from .targets import one_head_per_person, with_expressions

    run_dir = Path(run_dir)
    metrics = {}
    if expressions:
        targets = with_expressions(one_head_per_person(targets), _bound(fit_model.decoder))
        n = sum(t.expression is not None and t.head is not None for t in targets)
        progress(f"[prior] the fitted expression carried into {n} targets")
    if "template" in stages:
        template, stats = canonical_template(decoder_template(fit_model.decoder), targets, _bound(fit_model.decoder))
        write_ply(run_dir / "template.ply", template)
        stats["fit_model"] = fit_model.model_id
        (run_dir / "template.json").write_text(json.dumps(stats, indent=2))
        progress(f"[prior] template: {stats}")
        metrics["template"] = stats
    if "decoder" in stages:
        _, _, metrics["decoder"] = train_decoder_targets(run_dir, read_ply(run_dir / "template.ply"), targets,
                                                         decoder_cfg, progress=progress)
    codes_by_name = load_file(str(run_dir / "codes.safetensors")) if (run_dir / "codes.safetensors").is_file() else {}
    codes = np.stack([codes_by_name[t.name].numpy() for t in targets]) if codes_by_name else None
    if "encoder" in stages:
        emb = np.concatenate([t.embeddings for t in targets])
        persons = [t.person for t in targets for _ in range(len(t.embeddings))]
        _, metrics["encoder"] = train_encoder_targets(run_dir, emb, persons, person_codes(targets, codes),
                                                      encoder_cfg, progress=progress)
    if "directions" in stages:
        out = run_dir / "directions"
        dirs = train_attribute_directions(targets, codes, model_id)
        for d in dirs:
            save_direction(d, out / f"{d.name}.json")
        metrics["directions"] = {d.name: {"accuracy": d.accuracy, "unit_amount": d.provenance.get("unit_amount")}
                                 for d in dirs}
        (run_dir / "directions.json").write_text(json.dumps(metrics["directions"], indent=2))
        progress(f"[prior] directions: {metrics['directions']}")
    return metrics
