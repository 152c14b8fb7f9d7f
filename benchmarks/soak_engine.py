"""Engine soak: N decode requests against one warm engine; prints JSON with the engine's
resident memory (RSS, MiB, from /proc) sampled along the way.

    python benchmarks/soak_engine.py [--requests 1000] [--every 50] [--device cpu]

Each request decodes a different code (random, like slider edits) with one direction, so the
request, the decode and the 2.4 MB answer all go through the full path. A flat curve after the
first samples (allocator warm-up) means no leak per request.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def soak(requests: int = 1000, every: int = 50, device: str = "cpu") -> dict:
    import numpy as np

    from fastavatar_engine.client import EngineClient, engine_command

    client = EngineClient(engine_command(device=device), request_timeout=120)
    client.start()
    try:
        pid = client.proc.pid
        rng = np.random.default_rng(0)
        d = rng.standard_normal((1, 512)).astype(np.float32)
        samples = [(0, round(rss_mib(pid), 1))]
        t0 = time.perf_counter()
        for i in range(1, requests + 1):
            client.decode(rng.standard_normal(512).astype(np.float32) * 0.3, d, [float(rng.uniform(-1, 1))])
            if i % every == 0:
                samples.append((i, round(rss_mib(pid), 1)))
        elapsed = time.perf_counter() - t0
    finally:
        client.stop()
    warm = np.array([(i, r) for i, r in samples if i >= max(every, requests // 10)], np.float64)
    slope = float(np.polyfit(warm[:, 0], warm[:, 1], 1)[0]) if len(warm) >= 3 else None
    return {"benchmark": "engine_soak", "requests": requests, "device": device, "rss_mib": samples,
            "rss_trend_mib_per_1000_requests": None if slope is None else round(1000 * slope, 1),
            "rss_range_after_warmup_mib": [round(float(warm[:, 1].min()), 1), round(float(warm[:, 1].max()), 1)],
            "decodes_per_s": round(requests / elapsed, 1),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    print(json.dumps(soak(args.requests, args.every, args.device)))


if __name__ == "__main__":
    main()
