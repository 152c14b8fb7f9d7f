"""Head-model benchmark: prints JSON with the bound deformation's and the fit's timings (ms, medians).

    python benchmarks/bench_head.py [--repeats 50]

* ``bind``: binding the default template's 10,144 Gaussians to the head mesh (once per model);
* ``deform``: the template on another head (identity coefficients) — target <= 5 ms on 2 CPU cores;
* ``deform_with_expression``: the same with 53 expression coefficients;
* ``fit``: :func:`fastavatar_engine.head.fit.fit_head` on one face's landmarks (synthetic: the head
  model's own landmarks projected at a known camera, so no photo is needed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_description  # noqa: E402


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return round(statistics.median(times), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    import numpy as np
    import torch

    from fastavatar_engine.cameras import intrinsics, orbit_c2w, project_points
    from fastavatar_engine.face.landmarks import arcface5_from_mesh
    from fastavatar_engine.face.types import Face
    from fastavatar_engine.head import load_head_model
    from fastavatar_engine.head.fit import fit_head
    from fastavatar_engine.head.template import BoundTemplate
    from fastavatar_engine.model.io import FastAvatarModel

    d = FastAvatarModel.load().decoder
    t0 = time.perf_counter()
    bt = BoundTemplate(d.base_means, d.base_scales, d.base_rotations)
    bind_ms = 1e3 * (time.perf_counter() - t0)
    rng = np.random.default_rng(0)
    ident, expr = rng.normal(size=100), rng.uniform(0, 0.3, size=53)
    with torch.no_grad():
        deform = _median_ms(lambda: bt.deform(identity=ident), args.repeats)
        deform_ex = _median_ms(lambda: bt.deform(identity=ident, expression=expr), args.repeats)
    m = load_head_model()
    lb = m.landmark_binding()
    pts = lb.points(m.vertices(ident * 0.5, expr), m.triangles)
    pts[~lb.valid] = pts[lb.valid].mean(0)
    K = intrinsics(1400.0, 1400.0, 256, 320)
    uv, _ = project_points(pts, orbit_c2w(15.0, 5.0, 0.9), K)
    face = Face(box=np.r_[uv.min(0), uv.max(0)], score=1.0, landmarks5=arcface5_from_mesh(uv), landmarks=uv,
                image_size=(512, 640))
    fit = _median_ms(lambda: fit_head(face, Ks=[K]), max(3, args.repeats // 10))
    print(json.dumps({"benchmark": "head", "machine": cpu_description(), "torch_threads": torch.get_num_threads(),
                      "gaussians": int(d.num_gaussians), "head_vertices": m.num_vertices,
                      "ms": {"bind": round(bind_ms, 1), "deform": deform, "deform_with_expression": deform_ex,
                             "fit": fit}}, indent=1))


if __name__ == "__main__":
    main()
