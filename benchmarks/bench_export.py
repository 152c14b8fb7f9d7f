"""Export timings (JSON): the default model's 10,144-splat avatar written in every format.

    python benchmarks/bench_export.py [--repeats 5]

Per format: median milliseconds to write (numpy writers, axis conversion included) and the
file size in bytes.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import torch

    from fastavatar_engine.export import FORMATS, export_gaussians
    from fastavatar_engine.model.io import FastAvatarModel

    model = FastAvatarModel.load()
    with torch.no_grad():
        g = model.decode(next(iter(model.codes.values()))).to_numpy()
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        for fmt in FORMATS:
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                r = export_gaussians(g, Path(d) / f"avatar.{fmt}")
                times.append(1e3 * (time.perf_counter() - t))
            rows[fmt] = {"ms_median": round(statistics.median(times), 1), "bytes": r["bytes"],
                         "convention": r["convention"]}
    print(json.dumps({"benchmark": "export", "splats": len(g.means), "formats": rows,
                      "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"}))


if __name__ == "__main__":
    main()
