"""A warm Blender that turns generated avatars into .blend files: the .blend stage of ``fastavatar batch --blend``.

Each batch worker (:mod:`fastavatar_engine.batch.blend`) starts one of these beside its engine and
keeps it for the whole run, so Blender starts once per worker, not once per photo; torch stays
in the worker and Blender gets only numpy arrays, as the add-on does. Run with Blender as a
Python module or with Blender itself::

    python blender_addon/blend_writer.py --reply-fd FD
    blender -b --factory-startup --python blender_addon/blend_writer.py -- --reply-fd FD

Requests arrive on stdin, one JSON object per line::

    {"arrays": "OUT/.a.1f2e.payload.tmp", "header": {...}, "blend": "OUT/a.blend",
     "label": "photo.jpg", "resolution": 512, "samples": 32}

``arrays`` is an ``.npz`` (no pickles) of the engine's generate reply (the Gaussians, ``code``,
``head``, ``base_packed``, ``parents``: :func:`fastavatar_engine.serve.avatar_result`) and
``header`` its header. For each, an empty scene gets the avatar exactly as *Generate Avatar*
builds it (:func:`operators.generate.apply_result`: residual, grown Gaussians' parents, the head
the face rig rides on), a camera on the face and Cycles set up as ``batch.py`` does, and is saved
to ``blend`` atomically (under a temporary name in the same folder, then renamed). One JSON line
answers each request on the file descriptor ``--reply-fd`` (Blender prints to stdout):
``{"ok": true, "blend": PATH, "splats": N, "seconds": S}`` or ``{"ok": false, "error": MESSAGE}``.
End of input ends the process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# the engine's numpy-only modules: Blender's own Python ignores PYTHONPATH, and ensure_addon adds the
# checkout only when it registers the add-on itself (not when Blender has it installed as an extension)
sys.path.insert(1, str(HERE.parent))
from batch import addon_package, ensure_addon, frame_camera, setup_cycles  # noqa: E402

#: The largest payload accepted (bytes): ~1.5 M Gaussians in the packed layout.
MAX_PAYLOAD = 1 << 30


def write_blend(request: dict) -> dict:
    """Build and save one avatar's .blend (module docstring); returns the reply. Raises
    ``ValueError`` for a malformed request and what Blender or the add-on raise."""
    import bpy
    import numpy as np

    from fastavatar_engine.protocol import gaussians_from_arrays

    blend = Path(str(request["blend"]))
    src = Path(str(request["arrays"]))
    if blend.suffix != ".blend" or not src.is_file() or src.stat().st_size > MAX_PAYLOAD:
        raise ValueError(f"bad request: blend {blend.name!r}, arrays {src.name!r}")
    t = time.perf_counter()
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = dict(request.get("header") or {})
    header["arrays"] = arrays
    g = gaussians_from_arrays(arrays)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    addon = addon_package(scene)
    obj = addon.operators.generate.apply_result(bpy.context, (g, np.asarray(arrays["code"], np.float32), header),
                                                request.get("label") or blend.stem, -1)
    frame_camera(scene, obj, int(request.get("resolution", 512)))
    setup_cycles(scene, int(request.get("samples", 32)))
    tmp = blend.with_name(f".{blend.stem}.{os.getpid()}.tmp.blend")
    try:
        bpy.ops.wm.save_as_mainfile(filepath=str(tmp), compress=True)
        os.replace(tmp, blend)
    finally:
        tmp.unlink(missing_ok=True)
        Path(str(tmp) + "1").unlink(missing_ok=True)  # Blender's backup of an earlier save
    return {"ok": True, "blend": str(blend), "splats": addon.avatar.splat_count(obj.data),
            "seconds": round(time.perf_counter() - t, 3)}


def serve(requests, reply) -> None:
    """Answer each JSON line of ``requests`` with one JSON line on ``reply`` (a binary file)."""
    for line in requests:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("a request is a JSON object")
            out = write_blend(req)
        except Exception as exc:  # noqa: BLE001 - a photo's failure is its reply, never the writer's end
            out = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        reply.write((json.dumps(out) + "\n").encode("utf-8"))
        reply.flush()


def main(argv=None) -> int:
    argv = sys.argv if argv is None else argv
    args = argv[argv.index("--") + 1:] if "--" in argv else argv[1:]
    p = argparse.ArgumentParser(prog="blend_writer.py", description=__doc__.splitlines()[0])
    p.add_argument("--reply-fd", type=int, required=True, help="file descriptor the replies are written to")
    opts = p.parse_args(args)
    import bpy  # noqa: F401  (Blender or the bpy module)

    ensure_addon()
    with os.fdopen(opts.reply_fd, "wb") as reply:
        reply.write(b'{"ready": true}\n')
        reply.flush()
        serve(sys.stdin, reply)
    return 0


if __name__ == "__main__":
    sys.exit(main())
