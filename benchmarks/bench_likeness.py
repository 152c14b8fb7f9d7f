"""Likeness benchmark on real photos: does the avatar look like the person in the photo?

    python benchmarks/bench_likeness.py                               # all 61 photos, ff + default fit
    python benchmarks/bench_likeness.py --per-person 1 --fits 0,40    # one photo per person
    python benchmarks/bench_likeness.py --out runs/likeness.json

For every photo of ``../shared/data/faces`` (13 people, ``identities.json``) plus the public-domain
astronaut (scikit-image) and Grace Hopper (matplotlib) photos, the product path of
``fastavatar generate PHOTO --refine N`` for each N in ``--fits`` (0 = feed-forward): the avatar
rendered at the photo's camera and at +-30 degrees of yaw (:mod:`fastavatar_engine.likeness`),
the dlib identity similarity of each render to its photo, and rank-1: whether the render is closer
to its own photo than to every photo of the 12 (14 with the two extra photos) other people.
Prints JSON (per photo and summary); renders are never written (the photos are not ours to share).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GLOG_minloglevel", "2")
FACES = ROOT.parent / "shared" / "data" / "faces"


def photo_list(faces_dir: Path, per_person: int | None, extras: bool = True) -> list[tuple[str, str]]:
    """[(person, photo path)]: the faces folder's identities (the first ``per_person`` photos of
    each), plus the astronaut and Grace Hopper photos as two more people."""
    people = json.loads((faces_dir / "identities.json").read_text())
    out = []
    for i, files in enumerate(people):
        for f in sorted(files)[:per_person]:
            out.append((f"person{i:02d}", str(faces_dir / f)))
    if extras:
        tmp = Path(tempfile.mkdtemp())
        from PIL import Image
        from skimage import data

        Image.fromarray(data.astronaut()).save(tmp / "astronaut.png")
        import matplotlib.cbook

        hopper = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
        out += [("astronaut", str(tmp / "astronaut.png")), ("grace_hopper", str(hopper))]
    return out


def run(photos, fits, weights=None, yaws=(0.0, -30.0, 30.0), log=sys.stderr) -> dict:
    """The benchmark over ``photos`` [(person, path)]; returns the JSON-ready dict."""
    import numpy as np
    import torch

    from fastavatar_engine.face import NoFaceError
    from fastavatar_engine.generate import AvatarGenerator
    from fastavatar_engine.images import load_image
    from fastavatar_engine.likeness import avatar_renders, rank1, render_embedding

    torch.manual_seed(0)
    rows = []
    with AvatarGenerator(weights) as gen:
        for person, path in photos:
            image = load_image(path)
            row = {"person": person, "photo": Path(path).name}
            try:
                base = gen.generate(image)
            except NoFaceError:
                row["error"] = "no face"
                rows.append(row)
                continue
            row["photo_embedding"] = base.embedding.tolist()
            for n in fits:
                av = gen.generate(image)
                t = time.perf_counter()
                if n:
                    gen.refine(av, image, n)
                dt = time.perf_counter() - t
                embs = {}
                for yaw, img in avatar_renders(av.gaussians, av.camera, yaws).items():
                    e = render_embedding(gen.front_end, gen.embedder, img)
                    embs[yaw] = None if e is None else e.tolist()
                row[f"fit{n}"] = {"time_s": round(dt, 2), "render_embeddings": embs,
                                  "similarity": {y: (None if e is None else round(float(np.dot(e, base.embedding)), 4))
                                                 for y, e in embs.items()}}
            print(f"{person} {row['photo']}: " + ", ".join(
                f"fit {n}: {row[f'fit{n}']['similarity']}" for n in fits), file=log, flush=True)
            rows.append(row)
    ok = [r for r in rows if "error" not in r]
    persons = [r["person"] for r in ok]
    photo_e = [np.array(r["photo_embedding"]) for r in ok]
    summary = {}
    for n in fits:
        s = {}
        for yaw in yaws:
            rend = [r[f"fit{n}"]["render_embeddings"][yaw] for r in ok]
            hits = rank1([None if e is None else np.array(e) for e in rend], photo_e, persons)
            sims = [r[f"fit{n}"]["similarity"][yaw] for r in ok]
            found = [v for v in sims if v is not None]
            s[f"yaw{yaw:+.0f}"] = {"rank1": round(float(np.mean(hits)), 4), "faces_found": len(found),
                                   "similarity_mean": round(float(np.mean(found)), 4) if found else None}
        s["time_s_mean"] = round(float(np.mean([r[f"fit{n}"]["time_s"] for r in ok])), 2)
        summary[f"fit{n}"] = s
    for r in rows:  # keep the JSON small: embeddings are inputs to the summary only
        r.pop("photo_embedding", None)
        for n in fits:
            if f"fit{n}" in r:
                r[f"fit{n}"].pop("render_embeddings", None)
    return {"benchmark": "likeness", "photos": len(rows), "people": len(set(p for p, _ in photos)),
            "no_face": [r["photo"] for r in rows if "error" in r], "yaws": list(yaws), "fits": list(fits),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "date": time.strftime("%Y-%m-%d"), "summary": summary, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", default=str(FACES), help="folder with identities.json (default ../shared/data/faces)")
    ap.add_argument("--per-person", type=int, default=None, help="photos per person (default: all)")
    ap.add_argument("--fits", default="0,40", help="comma-separated fit steps to compare (0: feed-forward)")
    ap.add_argument("--no-extras", action="store_true", help="leave out the astronaut and Grace Hopper")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    photos = photo_list(Path(args.faces), args.per_person, not args.no_extras)
    result = run(photos, [int(v) for v in args.fits.split(",")], args.weights)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
