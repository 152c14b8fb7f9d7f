"""Blender-side test driver, run in a subprocess (``python driver.py SCENARIO OUT_DIR [args]``)
with Blender as a Python module, so bpy never shares a process with torch. Each scenario does
the operations through the add-on and dumps what the Blender objects hold (JSON + .npz) for the
pytest side to compare against an independent computation."""

import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def dump_object(obj, out: Path, tag: str) -> dict:
    from blender_addon import avatar as avatar_mod

    mesh = obj.data
    n = len(mesh.vertices)
    co = np.empty(n * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    arrays = {"co": co.reshape(n, 3)}
    for name in avatar_mod.inria_attribute_names():
        a = np.empty(n, np.float32)
        mesh.attributes[name].data.foreach_get("value", a)
        arrays[name] = a
    arrays["code"] = np.asarray(obj["fastavatar_code"], np.float64)
    arrays["matrix_world"] = np.array(obj.matrix_world, np.float64)
    np.savez(out / f"{tag}.npz", **arrays)
    return {"name": obj.name, "vertices": n, "edges": len(mesh.edges), "faces": len(mesh.polygons),
            "model_id": obj.fastavatar.model_id, "photo": obj.fastavatar.photo,
            "is_avatar": obj.fastavatar.is_avatar, "modifiers": [m.type for m in obj.modifiers],
            "node_group": obj.modifiers[0].node_group.name if obj.modifiers else None,
            "camera_json": bool(obj.fastavatar.camera_json)}


def run_generate():
    """Run the operator like a script would; (result set, error text reported by the operator)."""
    import bpy

    try:
        return sorted(bpy.ops.fastavatar.generate()), ""
    except RuntimeError as e:  # bpy.ops raises when the operator reports an ERROR
        return ["CANCELLED"], str(e)


def main():
    scenario, out = sys.argv[1], Path(sys.argv[2])
    args = sys.argv[3:]
    sys.path.insert(0, str(ROOT))
    import bpy

    import blender_addon

    result = {}
    blender_addon.register()
    try:
        bpy.ops.wm.read_factory_settings(use_empty=True)
        scene = bpy.context.scene
        if scenario == "register":
            result["operators"] = [hasattr(bpy.ops.fastavatar, n) for n in ("generate", "install_engine", "stop_engine")]
            result["panel"] = hasattr(bpy.types, "FASTAVATAR_PT_main")
            blender_addon.unregister()
            result["after_unregister"] = [hasattr(bpy.types, "FASTAVATAR_PT_main"), hasattr(bpy.types.Scene, "fastavatar")]
            blender_addon.register()
        elif scenario == "generate":
            photo, bad_photo = args
            scene.cursor.location = (1.0, 2.0, 3.0)
            scene.fastavatar.photo_path = photo
            import time

            t = time.perf_counter()
            result["op"] = run_generate()
            result["first_s"] = time.perf_counter() - t
            obj = bpy.context.active_object
            result["object"] = dump_object(obj, out, "generated")
            # evaluated display: one instance per splat
            dg = bpy.context.evaluated_depsgraph_get()
            mats = [np.array(i.matrix_world) for i in dg.object_instances
                    if i.is_instance and i.parent and i.parent.original == obj]
            np.save(out / "instances.npy", np.stack(mats))
            # a photo without a face: clear message, scene unchanged
            n_before = len(bpy.data.objects)
            scene.fastavatar.photo_path = bad_photo
            result["no_face_op"] = run_generate()
            result["no_face_status"] = scene.fastavatar.status
            result["objects_unchanged"] = len(bpy.data.objects) == n_before
            # the engine is killed: clear message, scene unchanged, a fresh engine next time
            from blender_addon import engine

            client = engine.get_client()
            old_pid = client.proc.pid
            orig_start = client.start

            def start_then_die():  # the engine dies after it started, before it answers
                info = orig_start()
                client.proc.kill()
                client.proc.wait()
                return info

            client.start = start_then_die
            scene.fastavatar.photo_path = photo
            result["killed_op"] = run_generate()
            result["killed_status"] = scene.fastavatar.status
            result["objects_unchanged_after_kill"] = len(bpy.data.objects) == n_before
            del client.start
            result["again_op"] = run_generate()
            result["new_pid"] = engine.get_client().proc.pid != old_pid
            # save and reload
            for o in list(bpy.data.objects):
                if o != obj:
                    bpy.data.objects.remove(o)
            name = obj.name
            blend = out / "avatar.blend"
            bpy.ops.wm.save_as_mainfile(filepath=str(blend))
            bpy.ops.wm.read_factory_settings(use_empty=True)
            bpy.ops.wm.open_mainfile(filepath=str(blend))
            result["reloaded"] = dump_object(bpy.data.objects[name], out, "reloaded")
        elif scenario == "no_engine":
            os.environ["FASTAVATAR_ENGINE_PYTHON"] = str(out / "missing-python")
            scene.fastavatar.photo_path = args[0]
            result["op"] = run_generate()
            result["status"] = scene.fastavatar.status
            result["objects"] = len(bpy.data.objects)
        else:
            raise SystemExit(f"unknown scenario {scenario}")
    finally:
        if hasattr(bpy.types.Scene, "fastavatar"):
            blender_addon.unregister()
    (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
