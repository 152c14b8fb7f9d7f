"""Blender round-trip timings (JSON on stdout): first Generate including the engine start, warm
Generate (operator call -> avatar object created), and writing 10k splats' attributes.

    python benchmarks/bench_blender.py [PHOTO] [--device auto|cpu|cuda] [--repeats 5]

Runs with Blender as a Python module (``pip install bpy``) in the engine's environment; the
engine runs in its own subprocess as in Blender. Targets (issue 4): warm Generate <= 1 s with a
CPU engine (<= 150 ms CUDA), first Generate <= 15 s on CPU, 10k attribute writes <= 20 ms.
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

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("photo", nargs="?", help="face photo (default: skimage's astronaut)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.photo is None:
        from PIL import Image
        from skimage import data

        args.photo = str(Path(tempfile.mkdtemp()) / "astronaut.png")
        Image.fromarray(data.astronaut()).save(args.photo)
    sys.path.insert(0, str(ROOT))
    import bpy

    import blender_addon
    from blender_addon import avatar as avatar_mod
    from blender_addon import engine

    blender_addon.register()
    try:
        prefs_device = args.device.upper()
        os.environ.setdefault("FASTAVATAR_ENGINE_PYTHON", sys.executable)
        if prefs_device != "AUTO":  # no add-on preferences in module mode: set the client directly
            engine.engine_settings = lambda: (sys.executable, args.device, "")
        bpy.ops.wm.read_factory_settings(use_empty=True)
        scene = bpy.context.scene
        scene.fastavatar.photo_path = args.photo
        t = time.perf_counter()
        assert bpy.ops.fastavatar.generate() == {"FINISHED"}
        first = time.perf_counter() - t
        client = engine.get_client()
        warm = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            assert bpy.ops.fastavatar.generate() == {"FINISHED"}
            warm.append(time.perf_counter() - t)
        g = avatar_mod.read_gaussians(bpy.context.active_object.data)
        mesh = bpy.data.meshes.new("bench")
        avatar_mod.write_gaussians(mesh, g)  # allocate once
        writes = []
        for _ in range(10):
            t = time.perf_counter()
            avatar_mod.write_gaussians(mesh, g)
            writes.append(time.perf_counter() - t)
        info = client.info
        print(json.dumps({
            "benchmark": "blender_round_trip", "blender": bpy.app.version_string, "splats": len(g),
            "engine_device": info.get("device"), "engine_start_s": round(client.start_seconds, 3),
            "first_generate_s": round(first, 3), "warm_generate_ms_median": round(1e3 * statistics.median(warm), 1),
            "warm_generate_ms_all": [round(1e3 * w, 1) for w in warm],
            "write_attributes_ms_median": round(1e3 * statistics.median(writes), 2),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        }))
    finally:
        blender_addon.unregister()


if __name__ == "__main__":
    main()
