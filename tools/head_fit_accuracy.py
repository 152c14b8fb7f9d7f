"""Camera and head shape from one photo, on the 48 calibrated sample views: the head fit against PnP.

    python tools/head_fit_accuracy.py --out runs/head_v2/camera_accuracy.json
    python tools/head_fit_accuracy.py --no-silhouette --out runs/head_v2/camera_accuracy_landmarks_only.json

For every view of each sample subject the photo alone (its MediaPipe landmarks and its person
mask from segmentation, as Generate computes them; no calibration, no dataset mask) gives (a) the
PnP camera against the mean landmark template at the default 30-degree field of view and (b)
:func:`fastavatar_engine.head.fit.fit_head` (camera + identity + expression, the landmarks and
the mask's outline; ``--no-silhouette``: the landmarks only). ``--true-focal`` gives both the
calibrated K (a diagnostic: how much of the error the unknown focal length causes). Both are compared with the calibrated camera in the subject's FLAME head frame:

* ``rotation_deg``: geodesic angle between the estimated and calibrated camera rotations;
* ``rotation_aligned_deg``: the same after removing one rotation per subject (the best rotation
  taking the subject's 16 estimated cameras onto the calibrated ones: the fitted head may be
  tilted against FLAME's tracked head frame by a fixed amount, which is not a camera error);
* ``focal_error_pct``: 100 (f_est / f_true - 1);
* ``yaw_pitch_roll_deg`` per view, beside ``true_yaw_pitch_roll_deg``;
* ``landmarks_mm`` (head fit only): the fitted head's 3D landmarks against the subject's
  triangulated ones after a similarity alignment (shape error), and for PnP the mean template's.
Prints JSON (summary) and writes per-view rows with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import cpu_description  # noqa: E402
os.environ.setdefault("GLOG_minloglevel", "2")


def _align_rotation(est: list, true: list) -> np.ndarray:
    """Rotation G minimising sum ||G R_est - R_true||: the one global frame rotation per subject."""
    M = sum(t[:3, :3] @ e[:3, :3].T for e, t in zip(est, true))
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1, 1, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "nersemble_samples"))
    ap.add_argument("--subjects", nargs="+", default=["128", "306", "369"])
    ap.add_argument("--out")
    ap.add_argument("--no-silhouette", action="store_true",
                    help="fit the landmarks only (no person mask outline), as before the silhouette term")
    ap.add_argument("--true-focal", action="store_true",
                    help="diagnostic: give both estimators the calibrated K (how much of the rotation error "
                         "the unknown focal length causes)")
    args = ap.parse_args()
    from fastavatar_engine.cameras import load_subject, rotation_angle_deg
    from fastavatar_engine.face import FaceFrontEnd, estimate_camera, load_landmark_template
    from fastavatar_engine.face.pose import camera_angles
    from fastavatar_engine.face.triangulate import triangulate_subject
    from fastavatar_engine.head import load_head_model
    from fastavatar_engine.head.fit import fit_head
    from fastavatar_engine.head.register import umeyama
    from fastavatar_engine.train.data import head_frame_transform

    model = load_head_model()
    lb = model.landmark_binding()
    tpl = load_landmark_template().points
    rows, summary = [], {}
    from fastavatar_engine.face.segment import PersonSegmenter

    segmenter = None if args.no_silhouette else PersonSegmenter()
    with FaceFrontEnd() as fe:
        for s in args.subjects:
            root = Path(args.data) / s
            subj = load_subject(root)
            Th = head_frame_transform(root)
            truth = triangulate_subject(root, fe).head_points
            ok = lb.valid & np.isfinite(truth).all(1)
            ok[468:] = False
            ests = {"pnp": [], "fit": []}
            trues = []
            for v in subj.views:
                img = np.asarray(v.load_image() if hasattr(v, "load_image") else v.image)
                faces = fe.detect(img)
                if not faces:
                    rows.append({"subject": s, "camera": v.camera_index, "error": "no face"})
                    continue
                face = max(faces, key=lambda f: f.area)
                c2w_true = Th @ v.c2w
                K_given = np.asarray(v.K, np.float64) if args.true_focal else None
                pnp = estimate_camera(face, K=K_given)
                t0 = time.perf_counter()
                mask = None if segmenter is None else segmenter.segment(img, face)  # product path
                fit = fit_head(face, Ks=[K_given], masks=[mask])
                dt = time.perf_counter() - t0
                cam = fit.cameras[0]
                pts = model.vertices(fit.identity, fit.expressions[0])
                fl = lb.points(pts, model.triangles)
                sc, R, t = umeyama(fl[ok], truth[ok])
                lm_fit = float(np.linalg.norm(sc * fl[ok] @ R.T + t - truth[ok], axis=1).mean() * 1000)
                sc, R, t = umeyama(tpl[ok], truth[ok])
                lm_tpl = float(np.linalg.norm(sc * tpl[ok] @ R.T + t - truth[ok], axis=1).mean() * 1000)
                row = {"subject": s, "camera": v.camera_index, "fit_seconds": round(dt, 3),
                       "converged": fit.converged, "reason": fit.reason, "rms_px": round(float(fit.rms_px[0]), 2)}
                for tag, c in (("pnp", pnp), ("fit", cam)):
                    row[tag] = {"rotation_deg": round(rotation_angle_deg(c.c2w, c2w_true), 3),
                                "focal_error_pct": round(100 * (c.K[1, 1] / v.K[1, 1] - 1), 2),
                                "yaw_pitch_roll_deg": [round(float(a), 2) for a in camera_angles(c.c2w)]}
                    ests[tag].append(c.c2w)
                row["true_yaw_pitch_roll_deg"] = [round(float(a), 2) for a in camera_angles(c2w_true)]
                row["pnp"]["landmarks_mm"] = round(lm_tpl, 2)
                row["fit"]["landmarks_mm"] = round(lm_fit, 2)
                trues.append(c2w_true)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
            for tag in ("pnp", "fit"):
                G = _align_rotation(ests[tag], trues)
                sub_rows = [r for r in rows if r["subject"] == s and "error" not in r]
                for r, e, t in zip(sub_rows, ests[tag], trues):
                    r[tag]["rotation_aligned_deg"] = round(rotation_angle_deg(G @ e[:3, :3], t[:3, :3]), 3)
    ok_rows = [r for r in rows if "error" not in r]
    for tag in ("pnp", "fit"):
        summary[tag] = {}
        for k in ("rotation_deg", "rotation_aligned_deg", "focal_error_pct", "landmarks_mm"):
            vals = np.array([r[tag][k] for r in ok_rows])
            summary[tag][k] = {"mean": round(float(vals.mean()), 3), "median": round(float(np.median(vals)), 3),
                               "max": round(float(vals.max()), 3)}
        fe_ = np.abs([r[tag]["focal_error_pct"] for r in ok_rows])
        summary[tag]["abs_focal_error_pct_mean"] = round(float(fe_.mean()), 2)
    summary["fit"]["converged"] = sum(r["converged"] for r in ok_rows)
    summary["fit"]["seconds_median"] = round(float(np.median([r["fit_seconds"] for r in ok_rows])), 3)
    result = {"views": len(rows), "no_face": len(rows) - len(ok_rows), "summary": summary,
              "machine": {"cpu": cpu_description(), "python": platform.python_version()},
              "command": "python tools/head_fit_accuracy.py " + " ".join(sys.argv[1:]), "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
