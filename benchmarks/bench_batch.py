"""Batch throughput (issue 23): ``fastavatar batch`` on N photos with 1 and 2 workers. Prints JSON.

    python benchmarks/bench_batch.py --fit 0 --out runs/batch/throughput_ff.json
    python benchmarks/bench_batch.py --out runs/batch/throughput_fit.json          # the default fit

The photos are the shared sets (London neutral photos, then ``faces/``), repeated in order up
to ``--count`` entries of one list file. Each worker count runs the whole list into a fresh
output folder with the CLI a user runs (``--no-preview``; 2 workers go through a local Ray), so
the figures include Ray's and the engines' start. Throughput is photos per hour of wall time;
the scaling efficiency is the 2-worker throughput over twice the 1-worker one. Outputs are
deleted after each run (the photos are not ours to share).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import cpu_description, emit  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SUFFIXES = (".jpg", ".jpeg", ".png")


def photos(count: int) -> list[str]:
    """``count`` photo paths: the London neutral photos, then faces/, repeated."""
    pool = sorted(str(p) for p in (DATA / "london" / "neutral").glob("*.jpg"))
    pool += sorted(str(p) for p in (DATA / "faces").rglob("*") if p.suffix.lower() in SUFFIXES)
    if not pool:
        raise SystemExit(f"no photos under {DATA}")
    return [pool[i % len(pool)] for i in range(count)]


def run(listing: Path, workers: int, fit: int | None) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "fastavatar_engine", "batch", str(listing), out, "--workers", str(workers),
               "--no-preview"] + ([] if fit is None else ["--fit", str(fit)])
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        wall = time.perf_counter() - t
        if r.returncode not in (0, 1):
            raise SystemExit(f"batch failed ({r.returncode}): {r.stderr[-2000:]}")
        s = json.loads(r.stdout)
    return {"workers": workers, "photos": s["jobs"], "done": s["done"], "failed": s["failed"],
            "wall_s": round(wall, 1), "photos_per_hour": round(3600.0 * s["jobs"] / wall, 1),
            "failures": s["failures"][:5]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=200, help="list entries (default 200)")
    ap.add_argument("--fit", type=int, default=None, help="likeness-fit steps (default: generate's; 0: feed-forward)")
    ap.add_argument("--workers", default="1,2", help="worker counts to run (default 1,2)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "photos.txt"
        listing.write_text("\n".join(photos(args.count)) + "\n")
        rows = [run(listing, int(w), args.fit) for w in args.workers.split(",")]
    one = next((r for r in rows if r["workers"] == 1), None)
    for r in rows:
        if one and r["workers"] > 1:
            r["scaling_efficiency"] = round(r["photos_per_hour"] / (r["workers"] * one["photos_per_hour"]), 3)
    emit({"benchmark": "batch", "machine": cpu_description(), "date": time.strftime("%Y-%m-%d"),
          "command": "python benchmarks/bench_batch.py " + " ".join(sys.argv[1:]),
          "fit": "default" if args.fit is None else args.fit, "count": args.count, "runs": rows}, args.out)


if __name__ == "__main__":
    main()
