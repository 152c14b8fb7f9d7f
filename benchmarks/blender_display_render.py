"""Blender side of the display-fidelity benchmark: render an avatar the way a user sees it.

Run under a Blender-as-a-Python-module interpreter (any supported line)::

    python benchmarks/blender_display_render.py AVATAR.ply OUT_DIR --engine cycles|eevee \
        [--samples 64] [--resolution 256]

It registers the add-on from this checkout, makes the avatar object from the PLY with the
add-on's own :func:`blender_addon.avatar.create_avatar_object` (a Gaussian-splat point cloud on
Blender >= 5.3, the mesh with its splat display on older lines), frames the camera and sets up the
scene exactly as ``batch.py --render`` does (white world, Standard view transform), renders with
the chosen engine and writes ``OUT_DIR/blender_<engine>.png`` and ``OUT_DIR/blender_<engine>.json``:
the camera in the avatar's (engine) frame ``c2w = obj.matrix_world^-1 @ camera.matrix_world``
(OpenGL axes, metres), the intrinsics ``fx = fy = (W/2) / tan(fov/2)``, ``cx = W/2``, ``cy = H/2``
(pixels), the render time (s), Blender's version and the avatar's representation. The engine's
rasteriser renders the same Gaussians from that camera in ``bench_display.py``.

With ``--drive PERFORMANCE.json --frame N`` the avatar is set up as Generate Avatar leaves it
(code, head shape and grown Gaussians from the PLY's ``.fastavatar.json`` sidecar, the rest kept as
the residual), the performance is keyed by the add-on from frame 1 (:func:`blender_addon.expressions.key_performance`,
head motion included) and frame N is rendered: the driven frame as ``blender -b`` renders it. ``c2w``
is then relative to the moved object, so the engine renders ``fastavatar animate``'s unposed
frame N from it (``bench_drive_display.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def eevee_engine_id(scene) -> str:
    """EEVEE's render-engine identifier on this line ('BLENDER_EEVEE_NEXT' on 4.2-4.5, 'BLENDER_EEVEE' from 5.0)."""
    items = scene.render.bl_rna.properties["engine"].enum_items.keys()
    return "BLENDER_EEVEE_NEXT" if "BLENDER_EEVEE_NEXT" in items else "BLENDER_EEVEE"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ply", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--engine", choices=("cycles", "eevee"), default="cycles")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--drive", type=Path, help="an expressions JSON to key on the avatar (needs the PLY's sidecar)")
    p.add_argument("--frame", type=int, default=1, help="with --drive: the scene frame to render")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import bpy
    import numpy as np

    import blender_addon
    from blender_addon import avatar, batch
    from fastavatar_engine.ply import read_ply

    args.out.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    blender_addon.register()
    try:
        scene = bpy.context.scene
        g = read_ply(args.ply)
        obj = avatar.create_avatar_object(bpy.context, g, np.zeros(1, np.float32), name="Avatar", location=(0, 0, 0))
        cam = batch.frame_camera(scene, obj, args.resolution)
        if args.drive:
            drive(scene, obj, args.ply, args.drive, args.frame)
        batch.setup_cycles(scene, args.samples)  # white world, Standard view, PNG; Cycles settings
        if args.engine == "eevee":
            scene.render.engine = eevee_engine_id(scene)
            scene.eevee.taa_render_samples = args.samples
        bpy.context.view_layer.update()
        scene.render.filepath = str((args.out / f"blender_{args.engine}.png").resolve())
        t = time.perf_counter()
        bpy.ops.render.render(write_still=True)
        seconds = time.perf_counter() - t
        w = h = args.resolution
        f = 0.5 * w / math.tan(0.5 * cam.data.angle)
        c2w = np.linalg.inv(np.array(obj.matrix_world)) @ np.array(cam.matrix_world)
        info = {"blender": bpy.app.version_string, "engine": scene.render.engine, "samples": args.samples,
                "width": w, "height": h, "render_s": round(seconds, 2), "c2w": c2w.tolist(),
                "K": [[f, 0.0, 0.5 * w], [0.0, f, 0.5 * h], [0.0, 0.0, 1.0]],
                "representation": obj.type + (f"/{obj.data.type}" if obj.type == "POINTCLOUD" else ""),
                "png": scene.render.filepath}
    finally:
        blender_addon.unregister()
    (args.out / f"blender_{args.engine}.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))
    return info


def drive(scene, obj, ply: Path, performance: Path, frame: int) -> None:
    """Make ``obj`` the avatar Generate Avatar would have made from ``ply`` + sidecar, key
    ``performance`` on it from frame 1 and show frame ``frame`` (exact: background mode)."""
    import numpy as np

    from blender_addon import editing, engine, expressions
    from fastavatar_engine.expressions import ExpressionSequence
    from fastavatar_engine.gaussians import pack_gaussians

    side = json.loads(ply.with_suffix(".fastavatar.json").read_text())
    code = np.asarray(side["code_w"], np.float32)
    obj["fastavatar_code"] = [float(v) for v in code]
    expressions.set_head(obj, side["head_identity"])
    parents = np.asarray(side.get("parents") or [], np.int64)
    editing.set_parents(obj, parents)
    base = editing.expand_to_parents(pack_gaussians(engine.get_client().decode(code)[0]), parents)
    editing.set_residual(obj.data, editing.read_packed(obj.data) - base)
    seq = ExpressionSequence.load(performance)
    expressions.key_performance(obj, scene, seq.fps, seq.coefficients_for(expressions.EXPRESSION_NAMES),
                                seq.rotations, seq.translations, start=1)
    scene.frame_set(frame)
    if frame in editing.frame_errors:
        raise RuntimeError(editing.frame_errors[frame])


if __name__ == "__main__":
    main()
