"""What the latent space gives held-out people: feed-forward likeness, interpolation, the smile direction.

    python benchmarks/bench_latent.py --out runs/default_v2/latent_v2.json
    python benchmarks/bench_latent.py --weights fastavatar_engine/weights/default_v1 --out runs/default_v2/latent_v1.json

The held-out people of ``fastavatar_engine/train/split_v2.json`` (22 London, 3 ``faces``), none of
whom entered any training stage. Along the user's path: ``fastavatar generate PHOTO --refine 0``
(the feed-forward avatar: photo -> face -> embedding -> encoder -> w -> decoder, on the fitted
head, at the fitted camera), with London's neutral photo and each ``faces`` person's first photo.

* **Feed-forward likeness**: each avatar rendered at its photo's camera; dlib similarity of the
  render to every held-out person's input photo. ``rank1``: own photo the most similar;
  ``own_mean``: mean similarity to the own photo; ``other_renders_mean``: mean similarity between
  renders of different people (identity collapse when it is not below ``own_mean``).
* **Interpolation** of consecutive pairs of held-out London people (``fastavatar edit --mix``),
  amounts 0, 0.25 .. 1, rendered at A's camera: whether the similarity to A falls and to B rises
  monotonically along the path, with the feed-forward avatars (``interpolation``) and with the
  avatars a user mixes (``interpolation_generate``), those of the default ``fastavatar generate
  PHOTO`` (the likeness fit of ``--generate-fit`` steps; the mix fades each avatar's per-Gaussian
  fit residual with its code).
* **Smile** (``fastavatar edit --direction smile --strength 1``) on each held-out London person's
  feed-forward avatar, at the photo's camera: MediaPipe mouth-corner distance (61-291) over face
  width (234-454) before and after, and the change of the dlib similarity to the photo.

Renders are never written (the photos are not ours to share). Prints the summary JSON.
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
DATA = ROOT.parent / "shared" / "data"
AMOUNTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def mouth_ratio(front_end, img):
    """Mouth-corner distance / face width (MediaPipe 61-291 over 234-454), or None without a face."""
    import numpy as np

    faces = front_end.detect(img)
    if not faces:
        return None
    p = max(faces, key=lambda f: f.area).landmarks
    return float(np.linalg.norm(p[61] - p[291]) / max(np.linalg.norm(p[234] - p[454]), 1e-6))


def coded(avatar):
    """The avatar as :class:`fastavatar_engine.edit.CodedAvatar` (what its sidecar would give)."""
    from fastavatar_engine.edit import CodedAvatar

    return CodedAvatar(avatar.gaussians, avatar.code, avatar.model_id, avatar.head, avatar.parents, avatar.metadata())


def interpolation(gen, pairs, avatars) -> list[dict]:
    """Per pair (A, B) of rows: ``fastavatar edit A --mix B --amount t`` for t in AMOUNTS, rendered at
    A's camera; the dlib similarity of each render to A's and B's photo and whether the first
    falls and the second rises monotonically."""
    from fastavatar_engine.edit import edit_avatar
    from fastavatar_engine.likeness import avatar_renders, render_embedding

    out = []
    for a, b in pairs:
        A, B = avatars[a["person"]], avatars[b["person"]]
        sa, sb = [], []
        for t in AMOUNTS:
            g, _, _, _ = edit_avatar(gen.model, coded(A), (), coded(B), t)
            e = render_embedding(gen.front_end, gen.embedder, avatar_renders(g, A.camera, (0.0,))[0.0])
            sa.append(None if e is None else round(float(e @ a["photo_embedding"]), 4))
            sb.append(None if e is None else round(float(e @ b["photo_embedding"]), 4))
        mono = None not in sa + sb and all(x >= y for x, y in zip(sa, sa[1:])) and all(
            x <= y for x, y in zip(sb, sb[1:]))
        out.append({"a": a["person"], "b": b["person"], "similarity_to_a": sa, "similarity_to_b": sb,
                    "monotonic": bool(mono)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--weights", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--generate-fit", type=int, default=None,
                    help="also interpolate the default Generate avatars, fitted this many steps "
                         "(default: Generate's default; 0: feed-forward only)")
    args = ap.parse_args()

    import numpy as np

    from fastavatar_engine.edit import edit_avatar, library
    from fastavatar_engine.generate import AvatarGenerator
    from fastavatar_engine.images import load_image
    from fastavatar_engine.likeness import avatar_renders, render_embedding
    from fastavatar_engine.train.people import held_out_entries

    from fastavatar_engine.generate import DEFAULT_FIT_STEPS

    if args.generate_fit is None:
        args.generate_fit = DEFAULT_FIT_STEPS
    entries = [e for e in held_out_entries(args.data) if not e.name.endswith("-smiling")]
    rows, avatars = [], {}
    t_all = time.perf_counter()
    with AvatarGenerator(args.weights) as gen:
        lib = library(gen.model)
        for e in entries:
            photo = e.photos[0]
            img = load_image(photo)
            faces = gen.front_end.detect(img)
            if not faces:
                rows.append({"person": e.person, "error": "no face in photo"})
                continue
            t = time.perf_counter()
            av = gen.generate(str(photo), refine_steps=0)
            ms = 1e3 * (time.perf_counter() - t)
            r0 = avatar_renders(av.gaussians, av.camera, (0.0,))[0.0]
            row = {"person": e.person, "photo": photo,
                   "photo_embedding": gen.embedder.embed(img, max(faces, key=lambda f: f.area)),
                   "render_embedding": render_embedding(gen.front_end, gen.embedder, r0), "generate_ms": round(ms, 1),
                   "attributes": e.attributes}
            if "smile" in lib and e.person.startswith("london"):
                sm, _, _, _ = edit_avatar(gen.model, coded(av), [(lib["smile"], 1.0)])
                r1 = avatar_renders(sm, av.camera, (0.0,))[0.0]
                e1 = render_embedding(gen.front_end, gen.embedder, r1)
                row["smile"] = {"mouth_before": mouth_ratio(gen.front_end, r0), "mouth_after": mouth_ratio(gen.front_end, r1),
                                "similarity_after": None if e1 is None else float(e1 @ row["photo_embedding"])}
            rows.append(row)
            avatars[e.person] = av
            print(json.dumps({"person": e.person, "generate_ms": row["generate_ms"], "smile": row.get("smile")}),
                  file=sys.stderr, flush=True)
        ok = [r for r in rows if "error" not in r]
        P = np.stack([r["photo_embedding"] for r in ok])
        rank1, own, other_r = [], [], []
        for i, r in enumerate(ok):
            e = r["render_embedding"]
            if e is None:
                rank1.append(False)
                continue
            sims = P @ e
            own.append(float(sims[i]))
            rank1.append(bool(sims[i] >= sims.max()))
            for j, q in enumerate(ok):
                if j != i and q["render_embedding"] is not None:
                    other_r.append(float(e @ q["render_embedding"]))
        smile_rows = [r for r in ok if r.get("smile") and r["smile"]["mouth_before"] and r["smile"]["mouth_after"]]
        for r in smile_rows:
            s = r["smile"]
            s["mouth_change"] = s["mouth_after"] / s["mouth_before"] - 1
            base = None if r["render_embedding"] is None else float(r["render_embedding"] @ r["photo_embedding"])
            s["similarity_before"] = base
            s["similarity_drop"] = None if base is None or s["similarity_after"] is None else base - s["similarity_after"]
        london = [r for r in ok if r["person"].startswith("london")]
        pairs = list(zip(london[0::2], london[1::2]))
        interp = interpolation(gen, pairs, avatars)
        fitted = {}
        if args.generate_fit > 0:  # the user's path: two default Generate avatars, then --mix
            for a, b in pairs:
                for r in (a, b):
                    fitted[r["person"]] = gen.generate(str(r["photo"]), refine_steps=args.generate_fit)
        interp_fit = interpolation(gen, pairs, fitted) if fitted else []
    summary = {
        "model_id": gen.model.model_id, "held_out_people": len(ok),
        "feed_forward": {"rank1": round(float(np.mean(rank1)), 4), "faces_found": len(own),
                         "own_mean": round(float(np.mean(own)), 4) if own else None,
                         "other_renders_mean": round(float(np.mean(other_r)), 4) if other_r else None,
                         "generate_ms_median": round(float(np.median([r["generate_ms"] for r in ok])), 1)},
        "interpolation": {"pairs": len(interp), "monotonic": sum(p["monotonic"] for p in interp), "paths": interp},
        "interpolation_generate": {"fit_steps": args.generate_fit, "pairs": len(interp_fit),
                                   "monotonic": sum(p["monotonic"] for p in interp_fit), "paths": interp_fit},
        "smile": None if not smile_rows else {
            "people": len(smile_rows),
            "mouth_change_mean": round(float(np.mean([r["smile"]["mouth_change"] for r in smile_rows])), 4),
            "mouth_change_min": round(float(np.min([r["smile"]["mouth_change"] for r in smile_rows])), 4),
            "similarity_drop_mean": round(float(np.nanmean([r["smile"]["similarity_drop"] or np.nan
                                                             for r in smile_rows])), 4)},
    }
    per = [{"person": r["person"], "rank1": rk, "smile": r.get("smile")} for r, rk in zip(ok, rank1)]
    result = {"benchmark": "latent", "machine": cpu_description(), "date": time.strftime("%Y-%m-%d"),
              "command": "python benchmarks/bench_latent.py " + " ".join(sys.argv[1:]),
              "time_s": round(time.perf_counter() - t_all, 1), "summary": summary, "people": per}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
