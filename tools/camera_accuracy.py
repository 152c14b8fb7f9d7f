"""Camera accuracy on the calibrated sample views: PnP (default field of view) vs the refined camera.

    python tools/camera_accuracy.py --subjects 128 306 369 --steps 30 --out runs/product_v1/camera_accuracy.json
    python tools/camera_accuracy.py --subjects 369 --weights runs/loo_369/model   # leave-one-out model

For every view of each subject, the photo alone gives: the PnP camera against the landmark
template at the default 30-degree field of view (``face.estimate_camera``), then the same camera
after the refinement's camera-only warm-up (``AvatarGenerator.refine`` with ``camera_warmup =
steps``: rotation, translation and log focal length aligned photometrically, with silhouette
and landmarks, to the feed-forward avatar). Both are compared with the calibrated camera in the
head frame: rotation error (degrees), focal-length error (percent) and the image-space error of
the subject's own 3D points (``points3d.ply``) projected by each camera (pixels at full
resolution). Prints JSON (per view and the mean / median).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GLOG_minloglevel", "2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "nersemble_samples"))
    ap.add_argument("--subjects", nargs="+", default=["128", "306", "369"])
    ap.add_argument("--weights", default=None)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out")
    args = ap.parse_args()

    import numpy as np

    from fastavatar_engine.cameras import project_points, rotation_angle_deg
    from fastavatar_engine.face import FaceError
    from fastavatar_engine.generate import AvatarGenerator
    from fastavatar_engine.train.data import load_views, subject_points

    rows = []
    with AvatarGenerator(args.weights) as gen:
        for s in args.subjects:
            root = Path(args.data) / s
            pts = subject_points(root)
            for v in load_views(root, list(range(16)), scale=1.0):
                photo = (v.image.numpy() * 255 + 0.5).astype(np.uint8)
                try:
                    av = gen.generate(photo)
                except FaceError as e:
                    rows.append({"subject": s, "camera": v.camera_index, "error": str(e)})
                    continue
                true_uv, _ = project_points(pts, v.c2w, v.K)
                row = {"subject": s, "camera": v.camera_index}
                for tag in ("pnp", "refined"):
                    if tag == "refined":
                        gen.refine(av, photo, args.steps, camera=True, camera_warmup=args.steps, detail_steps=0)
                    c = av.camera
                    uv, _ = project_points(pts, c.c2w, c.K)
                    row[tag] = {"rotation_deg": round(rotation_angle_deg(c.c2w, v.c2w), 3),
                                "focal_error_pct": round(100 * (c.K[1, 1] / v.K[1, 1] - 1), 2),
                                "points_px": round(float(np.nanmean(np.linalg.norm(uv - true_uv, axis=1))), 2)}
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    ok = [r for r in rows if "error" not in r]
    summary = {tag: {k: {"mean": round(float(np.mean([r[tag][k] for r in ok])), 3),
                         "median": round(float(np.median([r[tag][k] for r in ok])), 3)}
                     for k in ("rotation_deg", "focal_error_pct", "points_px")} for tag in ("pnp", "refined")}
    result = {"views": len(rows), "no_face": len(rows) - len(ok), "steps": args.steps,
              "weights": args.weights or "default", "summary": summary, "rows": rows}
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
