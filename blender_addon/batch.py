"""Headless batch: one avatar .blend (and optionally a PLY and a Cycles render) per photo.

Run it with Blender::

    blender -b --python blender_addon/batch.py -- PHOTOS_DIR OUT_DIR [--render] [--ply]

or with Blender as a Python module (``pip install bpy``, in the engine's environment)::

    python blender_addon/batch.py PHOTOS_DIR OUT_DIR [--render] [--ply]
    python blender_addon/batch.py out/astronaut.png out --name avatar --render --ply

Latent edits (applied to every photo's avatar; exact decodes for every rendered frame)::

    # a direction slider at 1.5 (direction files: see fastavatar_engine/directions.py)
    python blender_addon/batch.py me.jpg out --refine 300 --direction smile.json=1.5 --render
    # a blend of each photo's avatar with another person's, mix 0.3
    python blender_addon/batch.py me.jpg out --blend-with other.jpg --mix 0.3 --render
    # an animation of an edit: the slider keyed from -2 at frame 1 to 2 at frame 24, rendered to
    # OUT/<name>_frames/<name>_0001.png ... (use "mix" to animate the blend factor instead)
    python blender_addon/batch.py me.jpg out --direction smile.json=0 --animate smile:-2:2 --frames 24 --render

A performance (Drive from Video: a video, a folder of frames, an iPhone Live Link Face CSV or an
expressions JSON from ``fastavatar track``) keyed on each avatar and rendered frame by frame to
``OUT/<name>_frames/`` (``--frames N``: only the first N)::

    python blender_addon/batch.py me.jpg out --drive talking.mp4 --render --resolution 256 --samples 16
    python blender_addon/batch.py me.jpg out --drive me_talking.mp4 --drive-same-person --no-head-motion

Inputs are photo files and/or folders (their .jpg/.jpeg/.png/.webp/.bmp/.tif files, sorted).
For each photo it starts from an empty scene, runs the add-on's Generate Avatar (synchronously:
timers do not fire in background mode), frames a camera on the face, and writes
``OUT_DIR/<name>.blend`` (+ ``<name>.ply``, ``<name>.png``). A photo that fails (no face,
unreadable file, engine error) is reported and skipped; the summary (also written to
``OUT_DIR/batch_summary.json``) lists every photo's outcome, and the exit status is 1 when any
failed. The engine is started once and kept warm for the whole batch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def _script_args(argv: list[str]) -> list[str]:
    return argv[argv.index("--") + 1:] if "--" in argv else argv[1:]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="batch.py", description="FastAvatar headless batch: photos -> avatar .blend files")
    p.add_argument("inputs", nargs="+", help="photo files and/or folders of photos, then the output folder last")
    p.add_argument("--name", help="output name (only with a single photo; default: the photo's stem)")
    p.add_argument("--render", action="store_true", help="also render <name>.png with Cycles")
    p.add_argument("--ply", action="store_true", help="also write <name>.ply (INRIA 3DGS, engine frame: y up)")
    p.add_argument("--samples", type=int, default=32, help="Cycles samples (default 32)")
    p.add_argument("--resolution", type=int, default=512, help="render width and height in pixels (default 512)")
    p.add_argument("--face-index", type=int, default=-1, help="which face (-1: the largest)")
    p.add_argument("--fit", type=int, default=None, metavar="N",
                   help="likeness fit steps of Generate Avatar (default: the add-on's, 40; 0: feed-forward only)")
    p.add_argument("--refine", type=int, default=0, metavar="N",
                   help="refine each avatar against its photo for N steps (the paper's full refinement: 300)")
    p.add_argument("--direction", action="append", default=[], metavar="FILE=AMOUNT",
                   help="add a direction slider from a direction file at AMOUNT (repeatable)")
    p.add_argument("--blend-with", metavar="PHOTO", help="blend each avatar with the avatar of PHOTO")
    p.add_argument("--mix", type=float, default=0.5, help="blend factor for --blend-with (0: the photo, 1: PHOTO)")
    p.add_argument("--animate", metavar="NAME:FROM:TO",
                   help="key direction NAME (or 'mix') from FROM at frame 1 to TO at frame --frames")
    p.add_argument("--frames", type=int, default=None,
                   help="animation length in frames (--animate: default 24; --drive: render only the first N)")
    p.add_argument("--drive", metavar="PERFORMANCE",
                   help="key the avatar's expressions from a video, frames folder, Live Link Face .csv or "
                        "expressions .json (Drive from Video), from frame 1")
    p.add_argument("--drive-same-person", action="store_true",
                   help="the video shows the photo's person: hold the avatar's head shape while tracking")
    p.add_argument("--no-head-motion", action="store_true", help="with --drive: keep the head still")
    args = p.parse_args(argv)
    try:
        args.direction = [(Path(f), float(a)) for f, a in (spec.rsplit("=", 1) for spec in args.direction)]
    except ValueError:
        p.error("--direction takes FILE=AMOUNT, e.g. smile.json=1.5")
    if args.animate:
        parts = args.animate.split(":")
        try:
            args.animate = (parts[0], float(parts[1]), float(parts[2]))
        except (IndexError, ValueError):
            p.error("--animate takes NAME:FROM:TO, e.g. smile:-2:2 or mix:0:1")
        if args.animate[0] == "mix" and not args.blend_with:
            p.error("--animate mix needs --blend-with")
        if args.drive:
            p.error("--animate and --drive cannot be combined")
        args.frames = 24 if args.frames is None else args.frames
        if args.frames < 2:
            p.error("--frames must be at least 2")
    if args.frames is not None and args.frames < 1:
        p.error("--frames must be positive")
    if len(args.inputs) < 2:
        p.error("give at least one photo or folder and the output folder")
    args.out = Path(args.inputs[-1])
    args.inputs = [Path(x) for x in args.inputs[:-1]]
    return args


def collect_photos(inputs) -> list[Path]:
    photos = []
    for item in inputs:
        if item.is_dir():
            photos += sorted(p for p in item.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
        else:
            photos.append(item)
    return photos


def ensure_addon():
    """Register the add-on: the installed extension when enabled, else this folder's package."""
    import bpy

    if hasattr(bpy.types.Scene, "fastavatar"):
        return
    import addon_utils

    for mod in addon_utils.modules():
        if mod.__name__.endswith(".fastavatar") and mod.__name__.startswith("bl_ext."):
            addon_utils.enable(mod.__name__, default_set=True)
            if hasattr(bpy.types.Scene, "fastavatar"):
                return
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here.parent))
    import importlib

    importlib.import_module(here.name).register()


def addon_package(scene):
    """The add-on package, however it was loaded (``blender_addon`` from a checkout, or
    ``bl_ext.<repo>.fastavatar`` as an extension): the parent of its properties' module."""
    return sys.modules[type(scene.fastavatar).__module__.rpartition(".")[0]]


def frame_camera(scene, obj, resolution: int):
    """Add a camera looking at the avatar's face (the face points along -Y in Blender)."""
    import bpy
    import numpy as np
    from mathutils import Vector

    centre = obj.matrix_world @ Vector(np.median(addon_package(scene).avatar.splat_positions(obj.data), axis=0).tolist())
    cam_data = bpy.data.cameras.new("FastAvatar Camera")
    cam_data.lens_unit = "FOV"
    cam_data.angle = math.radians(25.0)
    cam = bpy.data.objects.new("FastAvatar Camera", cam_data)
    scene.collection.objects.link(cam)
    cam.location = centre + Vector((0.0, -0.75, 0.06))
    cam.rotation_euler = (centre - cam.location).to_track_quat("-Z", "Y").to_euler()
    scene.camera = cam
    scene.render.resolution_x = scene.render.resolution_y = resolution
    scene.render.resolution_percentage = 100
    addon_package(scene).avatar.update_pixel_angles(scene)
    return cam


def setup_cycles(scene, samples: int):
    import bpy

    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = True  # Blender's default for a new scene: no stochastic-transparency grain (+0.2 dB, +0.4 s)
    scene.cycles.transparent_max_bounces = 256  # splats overlap many times along a ray
    scene.cycles.min_transparent_bounces = 8  # a few before Russian roulette may end a ray (256: 13x the time, +0.2 dB)
    scene.cycles.max_bounces = 256
    if scene.world is None:
        scene.world = bpy.data.worlds.new("World")
    if scene.world.node_tree is None:  # Blender < 5.0; from 5.0 every world has nodes (use_nodes is deprecated)
        scene.world.use_nodes = True
    bg = scene.world.node_tree.nodes.get("Background")
    bg.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
    bg.inputs["Strength"].default_value = 1.0
    scene.view_settings.view_transform = "Standard"  # splat colours are display colours
    scene.render.image_settings.file_format = "PNG"


def process(photo: Path, out_dir: Path, name: str, args) -> dict:
    import bpy

    from fastavatar_engine.ply import write_ply

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.fastavatar.photo_path = str(photo.resolve())
    scene.fastavatar.face_index = args.face_index
    if args.fit is not None:
        scene.fastavatar.fit_steps = args.fit
    t = time.perf_counter()
    result = bpy.ops.fastavatar.generate()
    if result != {"FINISHED"}:
        raise RuntimeError(scene.fastavatar.status or "Generate Avatar failed")
    obj = bpy.context.active_object
    addon = addon_package(scene)
    row = {"photo": str(photo), "object": obj.name, "splats": addon.avatar.splat_count(obj.data),
           "generate_s": round(time.perf_counter() - t, 3)}
    obj = apply_edits(bpy.context, scene, obj, args, addon, row)
    frame_camera(scene, obj, args.resolution)
    setup_cycles(scene, args.samples)
    if args.ply:
        g = addon.avatar.read_gaussians(obj.data)
        row["ply"] = str(write_ply(out_dir / f"{name}.ply", g))
    blend = out_dir / f"{name}.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend.resolve()))
    row["blend"] = str(blend)
    if args.render and (args.animate or args.drive):
        t = time.perf_counter()
        frames_dir = out_dir / f"{name}_frames"
        frames_dir.mkdir(parents=True, exist_ok=True)
        row["frames"] = []
        last = scene.frame_end if args.frames is None else min(scene.frame_end, scene.frame_start + args.frames - 1)
        for f in range(scene.frame_start, last + 1):
            scene.frame_set(f)  # the add-on's frame handler decodes this frame exactly
            if f in addon.editing.frame_errors:  # never write a frame showing a stale avatar
                raise RuntimeError(addon.editing.frame_errors[f])
            scene.render.filepath = str((frames_dir / f"{name}_{f:04d}.png").resolve())
            bpy.ops.render.render(write_still=True)
            row["frames"].append(scene.render.filepath)
        row["render_s"] = round(time.perf_counter() - t, 1)
    elif args.render:
        t = time.perf_counter()
        scene.render.filepath = str((out_dir / f"{name}.png").resolve())
        bpy.ops.render.render(write_still=True)
        row["png"] = scene.render.filepath
        row["render_s"] = round(time.perf_counter() - t, 1)
    return row


def apply_edits(context, scene, obj, args, addon, row):
    """--blend-with / --direction / --animate on the new avatar ``obj``; returns the object to
    render (the blend when there is one). Raises ValueError/DirectionError for unusable inputs."""
    import bpy

    from fastavatar_engine.directions import load_direction

    editing = addon.editing
    if args.refine > 0:
        t = time.perf_counter()
        scene.fastavatar.refine_steps = args.refine
        if bpy.ops.fastavatar.refine() != {"FINISHED"}:
            raise RuntimeError(f"--refine: {scene.fastavatar.status}")
        row["refined_steps"] = obj.fastavatar.refined_steps
        row["refine_s"] = round(time.perf_counter() - t, 1)
    if args.blend_with:
        scene.fastavatar.photo_path = str(Path(args.blend_with).resolve())
        if bpy.ops.fastavatar.generate() != {"FINISHED"}:
            raise RuntimeError(f"--blend-with: {scene.fastavatar.status}")
        other = context.active_object
        blend = editing.create_blend(context, obj, other, args.mix)
        for o in (obj, other):
            o.hide_render = True
            o.hide_set(True)
        row["blended"] = {"with": args.blend_with, "mix": args.mix, "object": blend.name}
        obj = blend
    for path, amount in args.direction:
        d = load_direction(path)
        editing.add_direction(obj, d)
        obj.fastavatar.edits[d.name].amount = amount
        row.setdefault("directions", {})[d.name] = amount
    if args.animate:
        name, lo, hi = args.animate
        if name == "mix":
            path = "fastavatar.mix"
        elif name in obj.fastavatar.edits:
            path = f'fastavatar.edits["{name}"].amount'
        else:
            raise ValueError(f"--animate {name}: no such direction on the avatar (add it with --direction)")
        scene.frame_start, scene.frame_end = 1, args.frames
        for frame, value in ((1, lo), (args.frames, hi)):
            obj.path_resolve(path.rsplit(".", 1)[0]).__setattr__(path.rsplit(".", 1)[1], value)
            obj.keyframe_insert(path, frame=frame)
        scene.frame_set(1)
        row["animation"] = {"property": path, "from": lo, "to": hi, "frames": args.frames}
    if args.drive:
        drive(scene, obj, args, row)
    return obj


def drive(scene, obj, args, row):
    """--drive: Drive from Video on ``obj`` from frame 1; the scene's range becomes the performance's."""
    import bpy

    scene.frame_start = scene.frame_end = 1
    settings = scene.fastavatar
    settings.drive_same_person, settings.drive_pose = args.drive_same_person, not args.no_head_motion
    t = time.perf_counter()
    bpy.context.view_layer.objects.active = obj
    if bpy.ops.fastavatar.drive(filepath=str(Path(args.drive).resolve()), start_frame=1) != {"FINISHED"}:
        raise RuntimeError(f"--drive: {settings.status}")
    scene.frame_set(1)
    row["drive"] = {"performance": str(args.drive), "frames": [scene.frame_start, scene.frame_end],
                    "status": settings.status, "track_s": round(time.perf_counter() - t, 1)}


def main(argv=None) -> int:
    args = parse_args(_script_args(sys.argv if argv is None else argv))
    import bpy  # noqa: F401  (Blender or the bpy module)

    ensure_addon()
    photos = collect_photos(args.inputs)
    if not photos:
        print("batch: no photos found in " + ", ".join(map(str, args.inputs)), file=sys.stderr)
        return 1
    if args.name and len(photos) > 1:
        print("batch: --name needs a single photo", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    rows, used = [], set()
    for photo in photos:
        name = args.name or photo.stem
        while name in used:
            name += "_1"
        used.add(name)
        try:
            row = process(photo, args.out, name, args)
            row["ok"] = True
            print(f"batch: {photo} -> {row['blend']}", flush=True)
        except Exception as e:  # noqa: BLE001 - continue with the next photo
            row = {"photo": str(photo), "ok": False, "error": str(e).splitlines()[0]}
            print(f"batch: {photo} FAILED: {row['error']}", file=sys.stderr, flush=True)
        rows.append(row)
    failed = [r for r in rows if not r["ok"]]
    summary = {"photos": len(rows), "succeeded": len(rows) - len(failed), "failed": len(failed), "results": rows}
    (args.out / "batch_summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "results"} |
                     {"failures": [(r["photo"], r["error"]) for r in failed]}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
