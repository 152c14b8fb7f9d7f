"""Scrubbing a driven avatar in Blender (issue 22: >= 24 frames/s for a 10k-splat avatar on the
5.3 line). Prints JSON.

    .venv-bpy53/bin/python benchmarks/bench_scrub.py [PHOTO] [--frames 96] [--fit 0] [--out runs/expressions_v2/scrub_bpy53.json]
    .venv/bin/python benchmarks/bench_scrub.py                # the 4.2-5.2 mesh display (bpy 4.5)

Run with Blender as a Python module; the engine runs in its own process as in Blender (its
interpreter: ``FASTAVATAR_ENGINE_PYTHON``, default ``.venv/bin/python``). The avatar (Generate,
``--fit`` steps, default 0: the model's 10,144 splats) is driven by a synthetic 4 s performance
at 24 fps (jaw, blinks, brows, smile, head motion), keyed by the add-on's ``key_performance``
exactly as *Drive from Video* keys a tracked one. Then, per frame, what the viewport does while
an artist scrubs or plays back: ``scene.frame_set`` (Blender evaluates the keyed coefficients and
the object's transform) + the face rig's preview (:func:`blender_addon.editing.update_preview`:
the linear rig in numpy, only the moved columns written) + the depsgraph evaluation of the splat
object. Reported:

* ``scrub_fps``: frames per second of that loop (median over ``--repeats`` passes);
* ``exact_fps``: the same with the exact engine decode per frame (what renders and ``-b`` use);
* ``rig_ms``: building the face rig (the engine's 53 secants; on a worker thread in the UI);
* ``preview_error_mm``: position error of the preview against the exact frame over the frames
  (median, 99th percentile, max; and the largest expression motion, for scale).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def performance(frames: int):
    """(coefficients [F,53], rotations [F,4] w,x,y,z, translations [F,3]) of a synthetic take."""
    from fastavatar_engine.expressions.names import EXPRESSION_NAMES as N

    t = np.arange(frames) / 24.0
    C = np.zeros((frames, 53))
    C[:, N.index("jawOpen")] = 0.35 * (1 - np.cos(2 * np.pi * t / 0.8))
    for side in ("_L", "_R"):
        C[:, N.index("eyeBlink" + side)] = np.clip(1.5 - np.abs((t % 2.0) - 1.0) / 0.08, 0, 1)
        C[:, N.index("browInnerUp" + side)] = 0.5 * np.clip(np.sin(2 * np.pi * t / 2.0), 0, 1)
        C[:, N.index("mouthSmile" + side)] = 0.6 * np.clip(np.sin(2 * np.pi * (t - 1) / 2.0), 0, 1)
    yaw, pitch = np.radians(12) * np.sin(2 * np.pi * t / 3), np.radians(5) * np.sin(2 * np.pi * t / 2)
    R = np.stack([np.cos(yaw / 2) * np.cos(pitch / 2), np.cos(yaw / 2) * np.sin(pitch / 2),
                  np.sin(yaw / 2) * np.cos(pitch / 2), -np.sin(yaw / 2) * np.sin(pitch / 2)], 1)
    T = np.stack([0.01 * np.sin(2 * np.pi * t / 3), np.zeros(frames), np.zeros(frames)], 1)
    return C, R, T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("photo", nargs="?", help="face photo (default: skimage's astronaut)")
    ap.add_argument("--frames", type=int, default=96)
    ap.add_argument("--fit", type=int, default=0, help="Generate's likeness fit steps (0: 10,144 splats)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.photo is None:
        from PIL import Image

        try:
            from skimage import data
        except ImportError:
            ap.error("give a PHOTO: scikit-image (the default astronaut) is not installed in this interpreter")

        args.photo = str(Path(tempfile.mkdtemp()) / "astronaut.png")
        Image.fromarray(data.astronaut()).save(args.photo)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    os.environ.setdefault("FASTAVATAR_ENGINE_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
    import bpy

    import blender_addon
    from blender_addon import avatar as avatar_mod
    from blender_addon import editing, expressions
    from machine import cpu_description, emit

    blender_addon.register()
    try:
        bpy.ops.wm.read_factory_settings(use_empty=True)
        scene = bpy.context.scene
        scene.render.fps, scene.render.fps_base = 24, 1.0
        scene.fastavatar.photo_path = args.photo
        scene.fastavatar.fit_steps = args.fit
        bpy.ops.fastavatar.generate()
        obj = bpy.context.active_object
        C, R, T = performance(args.frames)
        expressions.key_performance(obj, scene, 24.0, C, R, T, start=1)
        scene.frame_set(1)
        t = time.perf_counter()
        editing.update_exact(obj, tangents=True)
        rig_ms = 1e3 * (time.perf_counter() - t)
        # the viewport's path: the frame handler would decode exactly in background mode, so it
        # is taken out and the preview called as the UI's handler does
        bpy.app.handlers.frame_change_post.remove(editing.frame_change_post)
        frames = list(range(1, args.frames + 1))
        rates, errors, motion = [], [], 0.0
        for rep in range(args.repeats):
            t = time.perf_counter()
            for f in frames:
                scene.frame_set(f)
                if not editing.update_preview(obj):
                    raise RuntimeError("no face rig to preview with")
                bpy.context.evaluated_depsgraph_get().update()
            rates.append(len(frames) / (time.perf_counter() - t))
        rest = None
        for f in frames[:: max(1, len(frames) // 12)]:
            scene.frame_set(f)
            editing.update_preview(obj)
            prev = avatar_mod.read_packed(obj.data)
            exact, _ = editing.exact_packed(obj)
            rest = exact if rest is None else rest
            errors.append(1e3 * np.linalg.norm(prev[:, :3] - exact[:, :3], axis=1))
            motion = max(motion, 1e3 * float(np.linalg.norm(exact[:, :3] - rest[:, :3], axis=1).max()))
        bpy.app.handlers.frame_change_post.append(editing.frame_change_post)
        t = time.perf_counter()
        for f in frames[:24]:
            scene.frame_set(f)  # background mode: the handler decodes exactly
            bpy.context.evaluated_depsgraph_get().update()
        exact_fps = 24 / (time.perf_counter() - t)
        err = np.concatenate(errors)
        result = {"benchmark": "scrub", "machine": cpu_description(), "date": time.strftime("%Y-%m-%d"),
                  "blender": bpy.app.version_string, "display": "native splats" if avatar_mod.is_splat_cloud(obj.data)
                  else "mesh + geometry nodes", "splats": avatar_mod.splat_count(obj.data),
                  "command": "python benchmarks/bench_scrub.py " + " ".join(sys.argv[1:]),
                  "scrub_fps": round(statistics.median(rates), 1), "scrub_fps_all": [round(r, 1) for r in rates],
                  "exact_fps": round(exact_fps, 1), "rig_ms": round(rig_ms),
                  "preview_error_mm": {"median": round(float(np.median(err)), 4),
                                       "p99": round(float(np.percentile(err, 99)), 4),
                                       "max": round(float(err.max()), 3), "largest_motion": round(motion, 2)}}
    finally:
        blender_addon.unregister()
    emit(result, args.out)


if __name__ == "__main__":
    main()
