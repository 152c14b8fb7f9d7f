"""Blender round-trip timings (JSON on stdout): first Generate including the engine start (the
default 40-step likeness fit, what a user runs first), warm feed-forward Generate (*Likeness Fit*
0: operator call -> avatar object created), writing 10k splats' attributes, and the
slider / timeline update rate of an avatar with direction sliders (issue 5: >= 30 updates/s
for 10k splats with a CPU engine):

* ``slider_preview_updates_per_s``: what the UI does per slider drag or scrubbed frame, the
  first-order model ``G(p0) + sum_k dp_k T_k`` in numpy plus the attribute write;
* ``slider_exact_updates_per_s``: one exact engine decode + write per update (renders, ``-b``);
* ``relinearise_ms``: the exact decode with tangents that replaces the preview once the slider
  rests (on a worker thread in the UI);
* ``preview_error_mm``: position error of the preview against the exact decode (median, 99th
  percentile, max over the splats; and how far the splats moved) at 0.1 / 0.25 / 0.5 code units
  from the point of expansion (inter-subject distances in the default model: 1.3-2.0).

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
        assert bpy.ops.fastavatar.generate() == {"FINISHED"}  # what a user runs first: the default likeness fit
        first = time.perf_counter() - t
        client = engine.get_client()
        warm = []
        scene.fastavatar.fit_steps = 0  # warm: the feed-forward operator round trip (issue 4's target)
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
        slider = _slider_benchmark(bpy, bpy.context.active_object, client)
        info = client.info
        print(json.dumps({
            "benchmark": "blender_round_trip", "blender": bpy.app.version_string, "splats": len(g),
            "engine_device": info.get("device"), "engine_start_s": round(client.start_seconds, 3),
            "first_generate_s": round(first, 3), "warm_generate_ms_median": round(1e3 * statistics.median(warm), 1),
            "warm_generate_ms_all": [round(1e3 * w, 1) for w in warm],
            "write_attributes_ms_median": round(1e3 * statistics.median(writes), 2),
            **slider,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        }))
    finally:
        blender_addon.unregister()


def _slider_benchmark(bpy, obj, client) -> dict:
    import numpy as np

    from blender_addon import editing
    from fastavatar_engine.directions import Direction

    rng = np.random.default_rng(0)
    code = np.asarray(obj["fastavatar_code"], np.float32)
    for i in range(2):
        editing.add_direction(obj, Direction(f"bench{i}", obj.fastavatar.model_id, rng.standard_normal(code.shape[0])))
    t = time.perf_counter()
    editing.update_exact(obj, tangents=True)
    relin = time.perf_counter() - t
    anchor = editing.read_packed(obj.data)
    amounts = np.linspace(0.0, 1.0, 60)
    t = time.perf_counter()
    for a in amounts:  # a drag: the first slider moves, the preview path updates
        obj.fastavatar.edits["bench0"]["amount"] = float(a)  # ID-property write: no update callback
        assert editing.update_preview(obj)
    preview_rate = len(amounts) / (time.perf_counter() - t)
    errors = {}
    for a in (0.1, 0.25, 0.5):
        obj.fastavatar.edits["bench0"]["amount"] = a
        editing.update_preview(obj)
        approx = editing.read_packed(obj.data)
        editing.update_exact(obj)
        exact = editing.read_packed(obj.data)
        err = 1e3 * np.linalg.norm(approx[:, :3] - exact[:, :3], axis=1)
        moved = 1e3 * np.linalg.norm(exact[:, :3] - anchor[:, :3], axis=1)
        errors[str(a)] = {"median": round(float(np.median(err)), 3), "p99": round(float(np.percentile(err, 99)), 3),
                          "max": round(float(err.max()), 3), "moved_median": round(float(np.median(moved)), 3)}
        obj.fastavatar.edits["bench0"]["amount"] = 0.0
        editing.update_exact(obj, tangents=True)
    t = time.perf_counter()
    for a in amounts[:15]:
        obj.fastavatar.edits["bench0"]["amount"] = float(a)
        editing.update_exact(obj)
    exact_rate = 15 / (time.perf_counter() - t)
    return {"slider_directions": 2, "slider_preview_updates_per_s": round(preview_rate, 1),
            "slider_exact_updates_per_s": round(exact_rate, 1), "relinearise_ms": round(1e3 * relin, 1),
            "preview_error_mm": errors}


if __name__ == "__main__":
    main()
