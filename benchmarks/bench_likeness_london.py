"""Likeness on 102 unseen people, scored against a photo the fit never saw.

    python benchmarks/bench_likeness_london.py --out runs/head_v2/likeness_london.json
    python benchmarks/bench_likeness_london.py --limit 24 --fit 40          # a quicker subset
    python benchmarks/bench_likeness_london.py --held-out --out runs/default_v2/likeness_london_held_out.json

For every person of ``../shared/data/london`` (Face Research Lab London Set, CC BY 4.0: DeBruine &
Jones 2017, doi:10.6084/m9.figshare.5047666), the product path of ``fastavatar generate
neutral/NNN_03.jpg --refine N`` (default: the likeness fit, ``generate.DEFAULT_FIT_STEPS``): the
avatar rendered at the photo's camera and at +-30 degrees of yaw, each render's dlib identity
descriptor compared with the same person's **smiling** photo (``smiling/NNN_08.jpg``), which no
stage saw. Two scores per view:

* ``verified``: the render passes for its person at the 1%-impostor threshold: the cosine
  similarity to the person's smiling photo is at least the 99th percentile of the similarities
  between different people's photos (neutral against smiling, all pairs of different people);
* ``rank1``: the render is closer to its own person's smiling photo than to any other person's.

``--held-out`` scores only the people that default v2's training never saw
(``fastavatar_engine/train/split_v2.json``); the threshold still comes from all the people's photos.
Progress goes to stderr and, per person, to ``--out``'s ``.jsonl`` beside it (a rerun resumes).
Prints the summary JSON. Renders are never written (the photos are not ours to share).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import cpu_description  # noqa: E402
os.environ.setdefault("GLOG_minloglevel", "2")
LONDON = ROOT.parent / "shared" / "data" / "london"
YAWS = (0.0, -30.0, 30.0)


def people(root: Path, limit: int | None) -> list[tuple[str, Path, Path]]:
    """[(id, neutral photo, smiling photo)] for every person with both photos."""
    out = []
    for p in sorted((root / "neutral").glob("*_03.jpg")):
        pid = p.name.split("_")[0]
        s = root / "smiling" / f"{pid}_08.jpg"
        if s.is_file():
            out.append((pid, p, s))
    return out[:limit] if limit else out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(LONDON))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--fit", type=int, default=None, help="likeness-fit steps (default: Generate's default)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--weights", default=None, help="model bundle (default: the packaged model)")
    ap.add_argument("--held-out", action="store_true", help="only the people no stage of default v2 saw")
    args = ap.parse_args()

    import numpy as np

    from fastavatar_engine.face import NoFaceError
    from fastavatar_engine.generate import DEFAULT_FIT_STEPS, AvatarGenerator
    from fastavatar_engine.images import load_image
    from fastavatar_engine.likeness import avatar_renders, render_embedding

    fit = DEFAULT_FIT_STEPS if args.fit is None else args.fit
    log = Path(args.out).with_suffix(".jsonl") if args.out else None
    done = {}
    if log is not None and log.is_file():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            if r.get("fit") == fit and (args.weights is None or r.get("model_id")):
                done[r["person"]] = r
    import subprocess

    commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or None
    rows = []
    scored = None
    if args.held_out:
        from fastavatar_engine.train.people import load_split

        scored = {p.split("-", 1)[1] for p in load_split()["held_out"] if p.startswith("london-")}
    with AvatarGenerator(args.weights) as gen:
        emb = {}
        for pid, neutral, smiling in people(Path(args.data), args.limit):
            for tag, path in (("neutral", neutral), ("smiling", smiling)):
                img = load_image(path)
                faces = gen.front_end.detect(img)
                emb[(pid, tag)] = None if not faces else gen.embedder.embed(img, max(faces, key=lambda f: f.area))
            if scored is not None and pid not in scored:
                continue
            if pid in done:
                rows.append(done[pid])
                continue
            row = {"person": pid, "fit": fit, "commit": commit, "model_id": gen.model.model_id}
            try:
                t = time.perf_counter()
                av = gen.generate(str(neutral), refine_steps=fit)
                row["time_s"] = round(time.perf_counter() - t, 2)
                row["head_fit"] = av.head is not None
                row["grown"] = 0 if av.parents is None else int(len(av.parents))
                row["render_embeddings"] = {}
                for yaw, img in avatar_renders(av.gaussians, av.camera, YAWS).items():
                    e = render_embedding(gen.front_end, gen.embedder, img)
                    row["render_embeddings"][str(yaw)] = None if e is None else [round(float(v), 6) for v in e]
            except NoFaceError as exc:
                row["error"] = str(exc)
            print(json.dumps({k: v for k, v in row.items() if k != "render_embeddings"}), file=sys.stderr, flush=True)
            if log is not None:
                with open(log, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
            rows.append(row)
    ids = [pid for pid, _, _ in people(Path(args.data), args.limit)]
    smile = {pid: emb[(pid, "smiling")] for pid in ids if emb[(pid, "smiling")] is not None}
    impostor = [float(np.dot(emb[(a, "neutral")], smile[b])) for a in ids for b in smile
                if a != b and emb[(a, "neutral")] is not None]
    threshold = float(np.percentile(impostor, 99))
    genuine = [float(np.dot(emb[(a, "neutral")], smile[a])) for a in smile if emb[(a, "neutral")] is not None]
    summary = {"people": len(rows), "threshold_people": len(ids), "model_id": gen.model.model_id, "fit_steps": fit,
               "threshold_1pct_impostor": round(threshold, 4),
               "photo_to_photo_verified": round(float(np.mean(np.array(genuine) >= threshold)), 4)}
    ok = [r for r in rows if "error" not in r and r["person"] in smile]
    order = sorted(smile)
    S = np.stack([smile[p] for p in order])
    for yaw in YAWS:
        ver, r1, found = [], [], 0
        for r in ok:
            e = r["render_embeddings"].get(str(yaw))
            if e is None:
                ver.append(False)
                r1.append(False)
                continue
            found += 1
            sims = S @ np.asarray(e)
            own = sims[order.index(r["person"])]
            ver.append(own >= threshold)
            r1.append(own >= sims.max())
        summary[f"yaw{yaw:+.0f}"] = {"verified": round(float(np.mean(ver)), 4), "rank1": round(float(np.mean(r1)), 4),
                                     "faces_found": found, "n": len(ok)}
    summary["time_s_median"] = round(float(np.median([r["time_s"] for r in ok])), 2) if ok else None
    summary["no_face"] = [r["person"] for r in rows if "error" in r]
    commits = {}
    for r in rows:  # rows of a resumed run may come from older code (rows before the field: null)
        commits[r.get("commit") or "unrecorded"] = commits.get(r.get("commit") or "unrecorded", 0) + 1
    summary["people_per_commit"] = commits
    result = {"benchmark": "likeness_london", "machine": cpu_description(), "date": time.strftime("%Y-%m-%d"),
              "command": "python benchmarks/bench_likeness_london.py " + " ".join(sys.argv[1:]), "summary": summary}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
