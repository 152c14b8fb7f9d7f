"""Rasteriser benchmark: prints JSON with forward and forward+backward timings and peak memory.

    python benchmarks/bench_render.py                      # CPU (and CUDA when available)
    python benchmarks/bench_render.py --ply avatar.ply     # a real Gaussian set instead of the synthetic head
    python benchmarks/bench_render.py --sizes 256 512 --counts 10000 40000

The synthetic scene is N Gaussians on a head-sized ellipsoid (0.09 x 0.12 x 0.10 m semi-axes),
std-dev 2-6 mm, seen from 1.1 m with a 2,000 px focal length scaled to the image (the sample
data's framing). Each configuration runs in a fresh subprocess so the reported peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic_head(n: int, seed: int = 0):
    import numpy as np

    from fastavatar_engine.gaussians import GaussianSet, logit

    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    pts = d * np.array([0.09, 0.12, 0.10]) * rng.uniform(0.9, 1.0, (n, 1))
    g = GaussianSet.from_points(pts, colors=rng.uniform(0.2, 0.9, (n, 3)))
    g.log_scales[:] = np.log(rng.uniform(0.002, 0.006, (n, 3)))
    g.rotations[:] = rng.normal(size=(n, 4))
    g.opacity_logits[:] = logit(rng.uniform(0.3, 0.95, n))
    g.sh[:, 1:] = rng.normal(0, 0.05, (n, 15, 3))
    return g


def run_one(size: int, count: int, device: str, backend: str, repeats: int, ply: str | None) -> dict:
    import torch

    from fastavatar_engine.cameras import intrinsics, orbit_c2w
    from fastavatar_engine.ply import read_ply
    from fastavatar_engine.render import GaussianTensors, render

    torch.manual_seed(0)
    g = read_ply(ply) if ply else synthetic_head(count)
    gt = GaussianTensors.from_numpy(g, device=device, requires_grad=True)
    focal = 2000.0 * size / 802.0
    K = intrinsics(focal, focal, size / 2, size / 2)
    c2w = orbit_c2w(15.0, 5.0, 1.1)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def fwd():
        with torch.no_grad():
            render(gt, c2w, K, size, size, backend=backend)
        sync()

    def fwd_bwd():
        rgb, alpha = render(gt, c2w, K, size, size, backend=backend)
        (rgb.mean() + alpha.mean()).backward()
        sync()

    out = {"size": size, "gaussians": gt.count, "device": device, "backend": backend}
    for name, fn in (("forward", fwd), ("forward_backward", fwd_bwd)):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        times.sort()
        out[f"{name}_ms_median"] = round(1000 * times[len(times) // 2], 2)
        out[f"{name}_ms_min"] = round(1000 * times[0], 2)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if device == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--counts", type=int, nargs="+", default=[10_000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ply", help="benchmark this 3DGS PLY instead of the synthetic head")
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    ap.add_argument("--single", help=argparse.SUPPRESS)  # internal: one config as JSON
    args = ap.parse_args()

    if args.single:
        cfg = json.loads(args.single)
        print(json.dumps(run_one(**cfg)))
        return

    import torch

    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    results = []
    for device in devices:
        backends = ["torch"] if device != "cuda" else ["gsplat", "torch"]
        for backend in backends:
            for count in args.counts:
                for size in args.sizes:
                    cfg = dict(size=size, count=count, device=device, backend=backend, repeats=args.repeats, ply=args.ply)
                    proc = subprocess.run([sys.executable, __file__, "--single", json.dumps(cfg)],
                                          capture_output=True, text=True)
                    if proc.returncode != 0:
                        results.append({**cfg, "error": proc.stderr.strip().splitlines()[-1:]})
                    else:
                        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(json.dumps({
        "benchmark": "render",
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
