"""Stage a': fits of many people from single photos — the many-identity training set (default v2).

Multi-view captures exist for three people only (stage a, :mod:`.fit`). Single photos exist for
many: the Face Research Lab London Set (102 adults, a neutral and a smiling frontal photo each,
CC BY 4.0) and the ``faces`` set (13 people, 2-8 photos each). Each becomes one or more *entries*,
an avatar fitted with the product's own likeness fit
(:meth:`fastavatar_engine.generate.AvatarGenerator.refine`): the photo at its fitted camera, its
mirror at the mirrored camera, the fitted head shape as the geometry prior, the person mask as
silhouette, the landmarks as targets. Growth and splitting are off, so an entry keeps the K
template-ordered Gaussians the template average and the decoder need.

- A London person gives two entries, ``london-NNN-neutral`` and ``london-NNN-smiling``, each fitted
  to its own photo: the two photos show different expressions, so fitting them into one avatar
  would blur the mouth; the auto-decoder gives each its own code and the pair teaches the smile
  direction.
- A ``faces`` person gives one entry, ``faces-NN``, fitted to all their photos at their own cameras
  (one head shape, one camera per photo, one photo and its mirror per step).

The held-out people (:data:`SPLIT_FILE`, committed) never enter any stage. Outputs in
``RUN/people/``: ``{entry}.ply`` (the fitted K Gaussians, head frame), ``{entry}.json`` (person,
photos, attributes, head identity [100], per photo the head fit's 53 expression coefficients,
cameras, timings) and ``{entry}.npz`` (``embeddings``
[P,128] float32: the dlib identity embedding of every photo and of its mirror image). Finished
entries are skipped, so the stage resumes after an interruption.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: The committed split: which people never enter training (evaluation only).
SPLIT_FILE = Path(__file__).with_name("split_v2.json")
#: Likeness-fit steps per entry: the product's default for one photo, more for several photos.
STEPS_ONE_PHOTO = 40
STEPS_PER_EXTRA_PHOTO = 10
MAX_STEPS = 100


@dataclass
class PeopleEntry:
    """One avatar of the training set: ``name`` (file stem), ``person`` (identity id, e.g.
    ``london-001``), ``photos`` (paths), ``attributes`` (``age`` years, ``gender``, ``ethnicity``,
    ``smiling`` 0/1; None where unknown)."""

    name: str
    person: str
    photos: list[Path]
    attributes: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return min(MAX_STEPS, STEPS_ONE_PHOTO + STEPS_PER_EXTRA_PHOTO * (len(self.photos) - 1))


def load_split(path=SPLIT_FILE) -> dict:
    """The split: ``{"held_out": [person ids], ...}``. Raises ``ValueError`` for a malformed file."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data.get("held_out"), list) or not all(isinstance(p, str) for p in data["held_out"]):
        raise ValueError(f"{path}: 'held_out' must be a list of person ids")
    return data


def london_entries(root) -> list[PeopleEntry]:
    """Entries of the London Set at ``root`` (``neutral/NNN_03.jpg``, ``smiling/NNN_08.jpg``,
    ``london_info.csv``): two per person whose photos exist."""
    root = Path(root)
    out = []
    with open(root / "london_info.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        pid = row["face_id"].strip()
        age = row["face_age"].strip()
        attrs = {"age": float(age) if age.replace(".", "", 1).isdigit() else None,
                 "gender": row["face_gender"].strip(), "ethnicity": row["face_eth"].strip()}
        for kind, sub, suffix, smiling in (("neutral", "neutral", "03", 0), ("smiling", "smiling", "08", 1)):
            p = root / sub / f"{pid}_{suffix}.jpg"
            if p.is_file():
                out.append(PeopleEntry(f"london-{pid}-{kind}", f"london-{pid}", [p], {**attrs, "smiling": smiling}))
    return out


def faces_entries(root) -> list[PeopleEntry]:
    """Entries of the ``faces`` set at ``root`` (``identities.json``: a list of file-name lists):
    one per person, ``faces-NN`` numbered by the list's order."""
    root = Path(root)
    ids = json.loads((root / "identities.json").read_text())
    return [PeopleEntry(f"faces-{i:02d}", f"faces-{i:02d}", [root / n for n in names if (root / n).is_file()])
            for i, names in enumerate(ids)]


def all_entries(data_root) -> list[PeopleEntry]:
    """Every entry of ``data_root/london`` and ``data_root/faces`` (held-out people included)."""
    data_root = Path(data_root)
    return london_entries(data_root / "london") + faces_entries(data_root / "faces")


def training_entries(data_root, split=None) -> list[PeopleEntry]:
    """The entries whose person is not held out by ``split`` (default: the committed split)."""
    held = set((split or load_split())["held_out"])
    return [e for e in all_entries(data_root) if e.person not in held]


def held_out_entries(data_root, split=None) -> list[PeopleEntry]:
    """The held-out people's entries (evaluation only)."""
    held = set((split or load_split())["held_out"])
    return [e for e in all_entries(data_root) if e.person in held]


def photo_embeddings(gen, photo) -> tuple[list[np.ndarray], object]:
    """dlib embeddings [128] of ``photo`` and of its mirror image (where a face is found), and the
    photo's face. Raises like :meth:`AvatarGenerator.generate` for the photo itself."""
    image, _, face, _ = gen._detect(photo, None)
    embs = [gen.embedder.embed(image, face)]
    mirrored = np.ascontiguousarray(image[:, ::-1])
    found = gen.front_end.detect(mirrored)
    if found:
        embs.append(gen.embedder.embed(mirrored, max(found, key=lambda f: f.area)))
    return embs, face


def fit_entry(gen, entry: PeopleEntry, out_dir) -> dict:
    """Fit one entry with ``gen`` (an AvatarGenerator) and write its three files; returns the JSON
    record. Photos in which no single face is found are left out (listed under ``skipped``);
    raises ``ValueError`` when none is left."""
    from ..ply import write_ply

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    embs, photos, skipped, smiles = [], [], [], []
    from ..directions import expression_measures

    for p in entry.photos:
        try:
            e, face = photo_embeddings(gen, p)
        except Exception as exc:  # noqa: BLE001 - a photo without a usable face is skipped, with its reason
            skipped.append({"photo": str(p), "error": str(exc)})
            continue
        embs += e
        photos.append(p)
        smiles.append(expression_measures(face.landmarks)["smile"])
    if not photos:
        raise ValueError(f"{entry.name}: no photo with a face ({skipped})")
    kw = {"grow": 0, "split": 0}
    if len(photos) == 1:
        avatar = gen.generate(photos[0], refine_steps=entry.steps, **kw)
    else:
        avatar = gen.generate_multi(photos, refine_steps=entry.steps, **kw)
    if avatar.gaussians.count != gen.model.decoder.num_gaussians:
        raise RuntimeError(f"{entry.name}: the fit changed the Gaussian count ({avatar.gaussians.count})")
    write_ply(out_dir / f"{entry.name}.ply", avatar.gaussians)
    np.savez(out_dir / f"{entry.name}.npz", embeddings=np.stack(embs).astype(np.float32))
    losses = [float(x) for x in (avatar.refine_losses or [])]
    record = {
        "entry": entry.name, "person": entry.person, "photos": [str(p) for p in photos], "skipped": skipped,
        "attributes": entry.attributes, "smile_measure": smiles, "steps": entry.steps,
        "head_identity": None if avatar.head is None else [float(v) for v in avatar.head],
        "head_expressions": None if avatar.head_expressions is None
        else [[round(float(v), 5) for v in e] for e in avatar.head_expressions],
        "cameras": [v.camera.to_json() for v in avatar.views] if avatar.views else [avatar.camera.to_json()],
        "model_id": gen.model.model_id, "loss_first_last": [losses[0], losses[-1]] if losses else None,
        "time_s": round(time.perf_counter() - t0, 2),
    }
    (out_dir / f"{entry.name}.json").write_text(json.dumps(record, indent=1))
    return record


def backfill_expressions(gen, run_dir, progress=None) -> int:
    """Add ``head_expressions`` (per photo the 53 fitted expression coefficients in [0,1]) to
    finished entries written before the records carried them: the head fit of the product path
    (:func:`fastavatar_engine.generate.photo_head` on the photos' faces and person masks) is run
    again on the entry's photos, ~1 s per entry. The refit identity must match the recorded one
    (max |difference| < 0.05), else ``RuntimeError`` (the fit is deterministic, so a mismatch
    means the head model or the photos changed). Returns how many records were updated."""
    from ..generate import photo_head

    log = progress or (lambda m: print(m, file=sys.stderr, flush=True))
    n = 0
    for js in sorted((Path(run_dir) / "people").glob("*.json")):
        rec = json.loads(js.read_text())
        if "head_expressions" in rec or rec.get("head_identity") is None:
            continue
        found = [gen._detect(p, None) for p in rec["photos"]]
        masks = [gen.segmenter.segment(image, face) for image, _, face, _ in found]
        _, fit = photo_head([f for _, _, f, _ in found], rec["photos"], masks=masks)
        if fit is None:
            raise RuntimeError(f"{rec['entry']}: the head fit no longer converges")
        diff = float(np.abs(fit.identity - np.asarray(rec["head_identity"])).max())
        if diff > 0.05:
            raise RuntimeError(f"{rec['entry']}: refit identity differs from the recorded one by {diff:.3f}")
        rec["head_expressions"] = [[round(float(v), 5) for v in e] for e in fit.expressions]
        js.write_text(json.dumps(rec, indent=1))
        n += 1
        if n % 20 == 0:
            log(f"[people] expressions added to {n} records")
    return n


#: ``expression_fit`` of records whose expressions come from :func:`refit_pair_expressions`.
PAIR_EXPRESSION_FIT = "joint neutral+smiling head fit, box expressions (head.fit.EXPRESSION_PARAM)"


def refit_pair_expressions(gen, run_dir, progress=None) -> int:
    """Refit the expressions of every London person's neutral and smiling records jointly.

    The records of stage a' were written with the head fit's first expression parametrisation,
    which left every coefficient near 0.018 (:data:`fastavatar_engine.head.fit.EXPRESSION_PARAM`),
    so a smiling photo's smile reached neither its expression nor, through
    :func:`.targets.with_expressions`, its target. Here both photos of a person are fitted
    together (one identity, one expression per photo, :func:`fastavatar_engine.generate.photo_head`
    as Generate runs it, with the photos' person masks) and each record gets its photo's
    ``head_expressions`` [[53]] and ``expression_fit`` = :data:`PAIR_EXPRESSION_FIT`. The
    records' Gaussians, identity and cameras stay as fitted; :func:`.targets.with_expressions`
    uses the neutral photo's expression as the baseline, so only the pair's difference moves the
    smiling target. Skips people already refitted (resumable); returns the records updated.
    Raises ``RuntimeError`` when the joint fit does not converge."""
    from ..generate import photo_head

    log = progress or (lambda m: print(m, file=sys.stderr, flush=True))
    pairs: dict = {}
    for js in sorted((Path(run_dir) / "people").glob("london-*.json")):
        rec = json.loads(js.read_text())
        smiling = (rec.get("attributes") or {}).get("smiling")
        if smiling in (0, 1) and len(rec["photos"]) == 1:
            pairs.setdefault(rec["person"], {})[smiling] = (js, rec)
    n = 0
    for person in sorted(pairs):
        pair = pairs[person]
        if len(pair) != 2 or all(r.get("expression_fit") == PAIR_EXPRESSION_FIT for _, r in pair.values()):
            continue
        photos = [pair[0][1]["photos"][0], pair[1][1]["photos"][0]]
        found = [gen._detect(p, None) for p in photos]
        masks = [gen.segmenter.segment(image, face) for image, _, face, _ in found]
        _, fit = photo_head([f for _, _, f, _ in found], photos, masks=masks)
        if fit is None:
            raise RuntimeError(f"{person}: the joint head fit of the neutral and smiling photos does not converge")
        for k in (0, 1):
            js, rec = pair[k]
            rec["head_expressions"] = [[round(float(v), 5) for v in fit.expressions[k]]]
            rec["expression_fit"] = PAIR_EXPRESSION_FIT
            js.write_text(json.dumps(rec, indent=1))
            n += 1
        if n % 20 == 0:
            log(f"[people] pair expressions refitted for {n // 2} people")
    return n


def fit_people(data_root, run_dir, model=None, limit: int | None = None, only=None, progress=None,
               refit_expressions: bool = False) -> list[dict]:
    """Stage a' over the training entries (the committed split's held-out people excluded), with the
    fits made by ``model`` (a bundle folder; None: the packaged default). Skips finished entries;
    an entry that fails is logged to ``RUN/people/failed.jsonl`` and the stage goes on.
    ``only``: entry names to restrict to. ``refit_expressions``: first refit the London pairs'
    expressions jointly (:func:`refit_pair_expressions`). Returns the records written in this call."""
    from ..generate import AvatarGenerator

    log = progress or (lambda m: print(m, file=sys.stderr, flush=True))
    out = Path(run_dir) / "people"
    out.mkdir(parents=True, exist_ok=True)
    entries = [e for e in training_entries(data_root) if only is None or e.name in set(only)]
    todo = [e for e in entries if not (out / f"{e.name}.json").is_file()][:limit]
    log(f"[people] {len(entries)} training entries, {len(entries) - len(todo)} done, {len(todo)} to fit")
    done = []
    t0 = time.perf_counter()
    with AvatarGenerator(model) as gen:
        added = backfill_expressions(gen, run_dir, log)
        if added:
            log(f"[people] head expressions added to {added} earlier records")
        if refit_expressions:
            log(f"[people] pair expressions refitted in {refit_pair_expressions(gen, run_dir, log)} records")
        for i, e in enumerate(todo):
            try:
                rec = fit_entry(gen, e, out)
            except Exception as exc:  # noqa: BLE001 - one bad entry must not stop a long stage
                with open(out / "failed.jsonl", "a") as f:
                    f.write(json.dumps({"entry": e.name, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
                log(f"[people] {e.name} FAILED: {exc}")
                continue
            done.append(rec)
            rate = (time.perf_counter() - t0) / (i + 1)
            log(f"[people] {i + 1}/{len(todo)} {e.name}: {len(rec['photos'])} photo(s), {rec['steps']} steps, "
                f"{rec['time_s']:.1f} s; eta {rate * (len(todo) - i - 1) / 60:.1f} min")
    return done
