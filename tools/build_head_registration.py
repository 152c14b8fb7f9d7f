"""Register ICT-FaceKit's head to the engine's head frame and find MediaPipe's landmarks on it.

    python tools/build_head_registration.py            # writes fastavatar_engine/data/ict_head_registration.json

Input: the head model basis (``tools/build_head_model.py``) and the three calibrated sample
subjects in ``../shared/data/nersemble_samples`` (their 478 MediaPipe landmarks triangulated from
16 views, in each subject's FLAME head frame, :mod:`fastavatar_engine.face.triangulate`).

1. **Similarity from anchors**: 12 landmarks named in both schemes (eye corners, nose tip,
   subnasale, mouth corners, lip midpoints, chin, nasion; ``head.landmarks.ANCHORS_MP_TO_68``)
   give Umeyama's similarity from ICT's neutral head (cm) to the mean landmark template (m).
2. **Correspondence**: every MediaPipe landmark of the mean template is projected onto the
   neutral surface (closest point: triangle + barycentric weights).
3. **Non-rigid, per subject, iterated** (``--iterations``): similarity + identity (ridge prior)
   + expression (bounded [0,1]) fitted to each subject's own triangulated landmarks; each
   subject's landmarks are projected onto its fitted mesh and carried back to the neutral mesh
   through the same triangle and weights; the three are averaged and re-projected.
4. **Template rest head**: the same fit against the mean template (the head the engine's
   Gaussian template was averaged over) gives the similarity stored for the engine and the
   rest identity/expression coefficients that the Gaussian binding starts from.
The iris landmarks have no skin point (the eyeballs are not kept) and stay unbound.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastavatar_engine.face.landmarks import IRIS_LANDMARKS  # noqa: E402
from fastavatar_engine.head.basis import REGISTRATION_PATH, HeadModel  # noqa: E402
from fastavatar_engine.head.landmarks import ANCHORS_MP_TO_68, LandmarkBinding  # noqa: E402
from fastavatar_engine.head.register import fit_shape, project_to_surface, umeyama  # noqa: E402


def _bind(points_cm, vertices_cm, triangles, valid):
    tri, bary, dist = project_to_surface(points_cm[valid], vertices_cm, triangles)
    T = np.full(478, -1)
    B = np.full((478, 3), 1.0 / 3.0)
    T[valid], B[valid] = tri, bary
    return LandmarkBinding(T, B), dist


def register(model: HeadModel, subjects: list[np.ndarray], template: np.ndarray, iterations: int = 3,
             id_sigma: float = 0.5) -> tuple[dict, dict]:
    """Registration dict (similarity, rest coefficients, landmark binding) and statistics."""
    valid = np.ones(478, bool)
    valid[list(IRIS_LANDMARKS)] = False
    tris = model.triangles
    neutral = model.neutral_cm.astype(np.float64)
    mp, ict = zip(*ANCHORS_MP_TO_68)
    s, R, t = umeyama(neutral[model.landmarks68[list(ict)]], template[list(mp)])
    binding, dist = _bind((template - t) @ R / s, neutral, tris, valid)
    stats = {"anchor_projection_mm_median": round(float(np.median(dist)) * 10, 2)}
    idx = np.nonzero(valid)[0]
    for it in range(iterations):
        W = binding.matrix(tris, model.num_vertices, idx)
        carried = []
        for pts in subjects:
            ok = np.isfinite(pts[idx]).all(1)
            s_, R_, t_, a, b, rms = fit_shape(model, W[ok], pts[idx][ok], id_sigma=id_sigma)
            V = model.vertices_cm(a, b)
            back = np.full((478, 3), np.nan)
            back[idx[ok]] = (pts[idx][ok] - t_) @ R_ / s_
            sub_ok = valid & np.isfinite(back).all(1)
            lb, _ = _bind(np.nan_to_num(back), V, tris, sub_ok)
            carried.append(lb.points(neutral, tris))
            stats[f"iteration{it}_rms_mm"] = stats.get(f"iteration{it}_rms_mm", []) + [round(rms * 1000, 2)]
        mean = np.nanmean(np.stack(carried), 0)
        binding, dist = _bind(np.nan_to_num(mean), neutral, tris, valid)
    W = binding.matrix(tris, model.num_vertices, idx)
    s, R, t, a, b, rms = fit_shape(model, W, template[idx], id_sigma=id_sigma)
    stats["template_rms_mm"] = round(rms * 1000, 2)
    per_subject = []
    for pts in subjects:
        ok = np.isfinite(pts[idx]).all(1)
        per_subject.append(round(fit_shape(model, W[ok], pts[idx][ok], id_sigma=id_sigma)[-1] * 1000, 2))
    stats["subject_rms_mm"] = per_subject
    reg = {"similarity": {"scale": s, "R": R.tolist(), "t": t.tolist()},
           "rest_identity": np.round(a, 5).tolist(), "rest_expression": np.round(b, 5).tolist(),
           "landmarks": binding.to_json()}
    return reg, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "nersemble_samples"))
    ap.add_argument("--subjects", nargs="+", default=["128", "306", "369"])
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--id-sigma", type=float, default=0.5)
    ap.add_argument("--out", default=str(REGISTRATION_PATH))
    args = ap.parse_args()
    from fastavatar_engine.face import FaceFrontEnd, load_landmark_template
    from fastavatar_engine.face.triangulate import triangulate_subject

    t0 = time.time()
    with FaceFrontEnd() as fe:
        subs = [triangulate_subject(Path(args.data) / s, fe).head_points for s in args.subjects]
    model = HeadModel(registration_path=Path("/nonexistent"))
    reg, stats = register(model, subs, load_landmark_template().points, args.iterations, args.id_sigma)
    reg = {"format": "fastavatar.ict_head_registration", "version": 1,
           "frame": "engine head frame (FLAME canonical: y up, face +z, metres); x_engine = scale R x_ict_cm + t",
           "source": f"ICT-FaceKit {model.meta.get('source_commit', '?')[:7]} (MIT) registered to NeRSemble sample "
                     f"subjects {', '.join(args.subjects)} (derived numbers only; NeRSemble: research use)",
           "command": "python tools/build_head_registration.py", "created": _dt.date.today().isoformat(),
           "seconds": round(time.time() - t0, 1), "stats": stats, **reg}
    out = Path(args.out)
    out.write_text(json.dumps(reg, separators=(",", ":")) + "\n")
    print(json.dumps({"out": str(out), "stats": stats, "scale": reg["similarity"]["scale"],
                      "seconds": reg["seconds"]}, indent=1))


if __name__ == "__main__":
    main()
