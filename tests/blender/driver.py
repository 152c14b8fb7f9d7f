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
    """The avatar's stored arrays, read here with bpy alone (not the add-on's reader): a mesh's
    vertices and INRIA-named attributes, or a splat point cloud's Blender attributes (saved as
    ``native:<name>``) with the INRIA columns recovered from them by the inverse of the
    documented mapping (f_dc from radiance:base, f_rest from radiance:sh_k; opacity, scale and rot
    from the add-on's own columns)."""
    from blender_addon import avatar as avatar_mod

    data = obj.data
    cloud = obj.type == "POINTCLOUD"
    n = len(data.points) if cloud else len(data.vertices)
    arrays = {}

    def get(name, width, key):
        a = np.empty(n * width, np.float32)
        data.attributes[name].data.foreach_get(key, a)
        return a.reshape(n, width) if width > 1 else a

    if cloud:
        for name, (_, key) in avatar_mod.NATIVE_ATTRIBUTES.items():
            arrays[f"native:{name}"] = get(name, 4 if name in ("radiance:base", "rotation") else 3, key)
        arrays["co"] = arrays["native:position"]
        for c in range(3):
            arrays[f"f_dc_{c}"] = arrays["native:radiance:base"][:, c]
            for k in range(15):
                arrays[f"f_rest_{15 * c + k}"] = arrays[f"native:radiance:sh_{k}"][:, c]
        for name in avatar_mod.OWN_COLUMNS:
            if name in data.attributes:  # absent on a point cloud Blender imported
                arrays[name] = get(name, 1, "value")
    else:
        co = np.empty(n * 3, np.float32)
        data.vertices.foreach_get("co", co)
        arrays["co"] = co.reshape(n, 3)
        for name in avatar_mod.inria_attribute_names():
            arrays[name] = get(name, 1, "value")
    arrays["code"] = np.asarray(obj.get("fastavatar_code", []), np.float64)
    arrays["matrix_world"] = np.array(obj.matrix_world, np.float64)
    np.savez(out / f"{tag}.npz", **arrays)
    return {"name": obj.name, "type": obj.type, "data_type": getattr(data, "type", None) if cloud else None,
            "vertices": n, "edges": 0 if cloud else len(data.edges), "faces": 0 if cloud else len(data.polygons),
            "model_id": obj.fastavatar.model_id, "photo": obj.fastavatar.photo,
            "is_avatar": obj.fastavatar.is_avatar, "modifiers": [m.type for m in obj.modifiers],
            "node_group": obj.modifiers[0].node_group.name if obj.modifiers else None,
            "camera_json": bool(obj.fastavatar.camera_json)}


def run_generate(fit_steps: int = 0):
    """Run the operator like a script would; (result set, error text reported by the operator).
    ``fit_steps``: the likeness fit (0, the bare feed-forward avatar, unless a test is about the
    fit; None: the add-on's default)."""
    import bpy

    if fit_steps is not None:
        bpy.context.scene.fastavatar.fit_steps = fit_steps
    return run_op(bpy.ops.fastavatar.generate)


def run_op(op, **kw) -> tuple[list, str]:
    """(sorted result set, the error an operator reported) of ``op(**kw)`` (bpy.ops raises on ERROR)."""
    try:
        return sorted(op(**kw)), ""
    except RuntimeError as e:
        return ["CANCELLED"], str(e)


def packed(obj):
    from blender_addon import editing

    return editing.read_packed(obj.data)


def run_editing(scene, out: Path, photo_a, photo_b, other_model_dir):
    """Refine / interpolate / directions / keyframes / save-reload / append, dumped for pytest."""
    import time

    import bpy

    from blender_addon import avatar as avatar_mod
    from blender_addon import editing

    info = {}
    arrays = {}

    def gen(photo):
        scene.fastavatar.photo_path = photo
        assert run_generate() == (["FINISHED"], ""), scene.fastavatar.status
        return bpy.context.active_object

    a, b = gen(photo_a), gen(photo_b)
    arrays["a_code"], arrays["b_code"] = avatar_mod.get_code(a), avatar_mod.get_code(b)
    arrays["a_plain"], arrays["b_plain"] = packed(a), packed(b)
    # the head shape (and anything refined) rides on the code as a residual: decode(w) + R
    for key, o in (("a_res0", a), ("b_res0", b)):
        r = editing.get_residual(o.data)
        arrays[key] = np.zeros_like(arrays[key[0] + "_plain"]) if r is None else r
    # --- directions: the library's planted one; another model's is refused
    bpy.context.view_layer.objects.active = a
    bpy.ops.fastavatar.add_direction(name="planted")
    try:
        bpy.ops.fastavatar.add_direction(filepath=str(Path(other_model_dir) / "foreign.json"))
        info["foreign"] = "accepted"
    except RuntimeError as e:
        info["foreign"] = str(e)
    info["a_edits"] = [e.name for e in a.fastavatar.edits]
    # --- timeline: keyed at 1 and 24, exact decode at 12
    item = a.fastavatar.edits["planted"]
    scene.frame_set(1)
    item.amount = 0.0
    a.keyframe_insert('fastavatar.edits["planted"].amount', frame=1)
    item.amount = 2.0
    a.keyframe_insert('fastavatar.edits["planted"].amount', frame=24)
    scene.frame_set(12)
    info["amount_12"] = a.fastavatar.edits["planted"].amount
    arrays["a_12"] = packed(a)
    # the interactive path (timers do not run headless: the settle step is driven by hand):
    # a preview is on screen -> the expansion is computed on a worker thread -> slider moves are
    # previewed from it
    editing._cache[a.session_uid]["exact"] = False
    t0 = time.time()
    while editing._settle() is not None and time.time() - t0 < 120:
        time.sleep(0.05)
    info["expanded"] = editing._cache[a.session_uid]["tangents"] is not None
    a.fastavatar.edits["planted"]["amount"] = info["amount_12"] + 0.1  # ID-property write: no callback
    info["previewed_move"] = editing.update_preview(a)
    arrays["a_preview"] = packed(a)
    arrays["a_exact_at_preview"] = editing.exact_packed(a)[0]
    a.fastavatar.edits["planted"]["amount"] = info["amount_12"]
    editing.update_exact(a)
    # --- interpolation between A (as shown at frame 12) and B
    for o in bpy.context.view_layer.objects:
        o.select_set(o in (a, b))
    bpy.context.view_layer.objects.active = a
    bpy.ops.fastavatar.interpolate(mix=0.0)
    blend = bpy.context.active_object
    info["blend_name"] = blend.name
    arrays["blend_0"] = packed(blend)
    blend.fastavatar.mix = 1.0
    arrays["blend_1"] = packed(blend)
    blend.fastavatar.mix = 0.5
    arrays["blend_05"] = packed(blend)
    blend.keyframe_insert("fastavatar.mix", frame=1)
    # --- refinement: cancelled mid-way (after a live preview) leaves B exactly as it was
    session = editing.RefineSession(b, steps=400, preview_every=1).start()
    t0 = time.time()
    while not session.previewed and time.time() - t0 < 120:
        session.tick()
        time.sleep(0.02)
    info["previewed"] = session.previewed
    arrays["b_preview"] = packed(b)
    session.cancel()
    while not session.job.done and time.time() - t0 < 180:
        time.sleep(0.05)
    info["cancel_error"] = type(session.job.error).__name__ if session.job.error else None
    arrays["b_after_cancel"] = packed(b)
    # --- refinement through the operator (synchronous in background mode)
    bpy.context.view_layer.objects.active = b
    scene.fastavatar.refine_steps = 3
    assert sorted(bpy.ops.fastavatar.refine()) == ["FINISHED"], scene.fastavatar.status
    info["b_refined_steps"] = b.fastavatar.refined_steps
    arrays["b_code_refined"] = avatar_mod.get_code(b)
    arrays["b_refined"] = packed(b)
    arrays["b_residual"] = editing.get_residual(b.data)
    arrays["b_parents"] = editing.get_parents(b)  # Gaussians grown by the refinement, if any
    bpy.ops.fastavatar.add_direction(name="planted")
    b.fastavatar.edits["planted"].amount = -1.5
    arrays["b_refined_edited"] = packed(b)
    # --- export as shown / without the sliders / glTF with pruning
    bpy.ops.fastavatar.export(filepath=str(out / "b_shown.ply"), file_format="ply", axes="engine")
    bpy.ops.fastavatar.export(filepath=str(out / "b_base.ply"), file_format="ply", axes="engine", apply_edits=False)
    bpy.ops.fastavatar.export(filepath=str(out / "b.ply"), file_format="glb", min_opacity=0.1)  # suffix follows
    info["export_status"] = scene.fastavatar.status
    # --- training a direction from labelled avatars (codes with a planted offset)
    rng = np.random.default_rng(0)
    d = np.asarray(a["fastavatar_directions"]["planted"], np.float32)
    g = avatar_mod.read_gaussians(a.data)
    for i in range(8):
        code = avatar_mod.get_code(a) + 0.05 * rng.standard_normal(d.shape[0]).astype(np.float32) \
            + (0.5 if i % 2 else -0.5) * d
        o = avatar_mod.create_avatar_object(bpy.context, g, code, name=f"Labelled{i}", model_id=a.fastavatar.model_id)
        o.fastavatar.label = "HAS" if i % 2 else "LACKS"
    scene.fastavatar.direction_name = "trained"
    assert sorted(bpy.ops.fastavatar.train_direction()) == ["FINISHED"]
    info["train_status"] = scene.fastavatar.status
    for o in [o for o in bpy.data.objects if o.name.startswith("Labelled")]:
        bpy.data.objects.remove(o)
    # --- an expression direction from a folder of photos, labelled from landmarks
    from PIL import Image

    folder = out / "expression_photos"
    folder.mkdir(exist_ok=True)
    for src in (photo_a, photo_b):
        im = Image.open(src).convert("RGB")
        im.save(folder / f"{Path(src).stem}.png")
        im.transpose(Image.FLIP_LEFT_RIGHT).save(folder / f"{Path(src).stem}_flipped.png")
    scene.fastavatar.photos_dir = str(folder)
    scene.fastavatar.measure = "smile"
    scene.fastavatar.direction_name = "smile_test"
    assert sorted(bpy.ops.fastavatar.direction_from_photos()) == ["FINISHED"], scene.fastavatar.status
    info["from_photos_status"] = scene.fastavatar.status
    # --- every library direction of the model at once (the library now also holds 'trained'
    # and 'smile_test'; a file of another model sits in the same folder and is left out)
    import shutil

    shutil.copy(Path(other_model_dir) / "foreign.json", Path(os.environ["FASTAVATAR_DIRECTIONS_DIR"]))
    bpy.context.view_layer.objects.active = a
    bpy.ops.fastavatar.add_all_directions()
    info["all_directions"] = sorted(e.name for e in a.fastavatar.edits)
    for name in [n for n in info["all_directions"] if n != "planted"]:
        bpy.ops.fastavatar.remove_direction(name=name)
    info["after_remove"] = sorted(e.name for e in a.fastavatar.edits)
    # --- one avatar from several photos
    assert sorted(bpy.ops.fastavatar.generate_multi(
        directory=str(folder), files=[{"name": "hopper.png"}, {"name": "hopper_flipped.png"}])) == ["FINISHED"]
    multi = bpy.context.active_object
    info["multi_photos"] = [Path(q).name for q in multi["fastavatar_photos"]]
    arrays["multi_code"] = avatar_mod.get_code(multi)
    bpy.data.objects.remove(multi)
    # --- save, reload, re-evaluate frame 12, append into a new file
    names = (a.name, b.name, blend.name)
    blend_path = out / "edited.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend_path))
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.wm.open_mainfile(filepath=str(blend_path))
    a, b, blend = (bpy.data.objects[n] for n in names)
    arrays["a_reloaded"] = packed(a)
    arrays["b_reloaded"] = packed(b)
    arrays["b_residual_reloaded"] = editing.get_residual(b.data)
    info["reloaded_edits"] = {o.name: [(e.name, e.amount) for e in o.fastavatar.edits] for o in (a, b)}
    info["reloaded_blend"] = [blend.fastavatar.blend_a.name, blend.fastavatar.blend_b.name, blend.fastavatar.mix]
    bpy.context.scene.frame_set(1)
    bpy.context.scene.frame_set(12)
    arrays["a_12_reloaded"] = packed(a)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.wm.append(directory=str(blend_path) + "/Object/", filename=names[1])
    b2 = bpy.data.objects[names[1]]
    arrays["b_appended"] = packed(b2)
    arrays["b_residual_appended"] = editing.get_residual(b2.data)
    info["appended_edits"] = [(e.name, e.amount) for e in b2.fastavatar.edits]
    info["appended_code_equal"] = bool(np.array_equal(avatar_mod.get_code(b2), arrays["b_code_refined"]))
    info["appended_directions"] = sorted(b2["fastavatar_directions"].keys())
    bpy.ops.wm.append(directory=str(blend_path) + "/Object/", filename=names[0])
    a2 = bpy.data.objects[names[0]]
    ad = a2.animation_data
    info["appended_keyframes"] = len(editing._fcurves(ad.action)[0].keyframe_points) if ad and ad.action else 0
    np.savez(out / "editing.npz", **arrays)
    (out / "editing.json").write_text(json.dumps(info))


def run_faults(scene, out: Path, photo, direction_file):
    """Kill / hang / garbage at generate, decode and refine (tests/faults/fault_proxy.py as the
    engine): each ends in a message, the scene untouched, and the next request works."""
    import time

    import bpy

    from blender_addon import editing, engine
    from fastavatar_engine.directions import load_direction

    os.environ["FASTAVATAR_FAULT"] = ""
    scene.fastavatar.photo_path = photo
    assert run_generate() == (["FINISHED"], ""), scene.fastavatar.status
    obj = bpy.context.active_object
    editing.add_direction(obj, load_direction(direction_file))
    scene.fastavatar.refine_steps = 30
    rows = []
    for stage in ("generate", "decode", "refine"):
        for action in ("kill", "hang", "garbage"):
            engine.stop_engine()
            marker = out / f"tripped_{stage}_{action}"
            os.environ["FASTAVATAR_FAULT"] = f"{stage}:{action}"
            os.environ["FASTAVATAR_FAULT_ONCE"] = str(marker)
            before, n_objects, code = packed(obj), len(bpy.data.objects), list(obj["fastavatar_code"])
            scene.fastavatar.status = ""
            bpy.context.view_layer.objects.active = obj
            t = time.time()
            if stage == "generate":
                result = run_generate()[0]
            elif stage == "decode":
                obj.fastavatar.edits["planted"].amount += 0.5  # the slider's update decodes in the engine
                result = ["n/a"]
            else:
                try:
                    result = sorted(bpy.ops.fastavatar.refine())
                except RuntimeError:
                    result = ["CANCELLED"]
            row = {"stage": stage, "action": action, "result": result, "status": scene.fastavatar.status,
                   "seconds": round(time.time() - t, 1), "tripped": marker.exists(),
                   "objects_unchanged": len(bpy.data.objects) == n_objects,
                   "arrays_unchanged": bool(np.array_equal(packed(obj), before)),
                   "code_unchanged": list(obj["fastavatar_code"]) == code}
            # recovery: the same action again, with a fresh (healthy) engine
            bpy.context.view_layer.objects.active = obj
            if stage == "generate":
                row["again"] = run_generate()[0] == ["FINISHED"]
                bpy.data.objects.remove(bpy.context.active_object)
                bpy.context.view_layer.objects.active = obj
            elif stage == "decode":
                obj.fastavatar.edits["planted"].amount += 0.0  # same value: decode again
                editing.update_exact(obj)
                row["again"] = not np.array_equal(packed(obj), before)
            else:
                row["again"] = sorted(bpy.ops.fastavatar.refine()) == ["FINISHED"]
            rows.append(row)
    # a frame change whose decode fails is recorded (Blender ignores handler exceptions), so a
    # render loop can refuse the stale frame; the next frame decodes on a fresh engine
    item = obj.fastavatar.edits["planted"]
    item.amount = 0.0
    obj.keyframe_insert('fastavatar.edits["planted"].amount', frame=1)
    item.amount = 1.0
    obj.keyframe_insert('fastavatar.edits["planted"].amount', frame=10)
    scene.frame_set(1)
    engine.stop_engine()
    os.environ["FASTAVATAR_FAULT"] = "decode:kill"
    os.environ["FASTAVATAR_FAULT_ONCE"] = str(out / "tripped_frame")
    before = packed(obj)
    scene.frame_set(5)
    frame_row = {"error_at_5": editing.frame_errors.get(5, ""), "unchanged_at_5": bool(np.array_equal(packed(obj), before))}
    scene.frame_set(6)
    frame_row["error_at_6"] = editing.frame_errors.get(6, "")
    frame_row["moved_at_6"] = not np.array_equal(packed(obj), before)
    rows.append(dict(stage="frame", action="kill", **frame_row))
    os.environ["FASTAVATAR_FAULT"] = ""
    return rows


def run_drive(scene, out: Path, photo, performance, video):
    """Drive from Video on a generated avatar: the keyed timeline, the exact frames and the face
    rig's preview, head motion on the object, save/reload, a real video through the engine."""
    import bpy

    from blender_addon import editing, expressions

    info, z = {}, {}
    scene.render.fps, scene.render.fps_base = 24, 1.0
    scene.fastavatar.photo_path = photo
    info["op"] = run_generate()
    obj = bpy.context.active_object
    obj.location = (0.5, -1.0, 0.25)
    bpy.context.view_layer.update()
    info["names"] = list(expressions.EXPRESSION_NAMES)
    info["has_rig"] = expressions.get_head(obj) is not None
    info["panel"] = hasattr(bpy.types, "FASTAVATAR_PT_expressions")
    z["rest"] = packed(obj)
    z["code"] = np.asarray(obj["fastavatar_code"], np.float32)
    z["head"] = expressions.get_head(obj)
    z["parents"] = editing.get_parents(obj)
    z["rest_world"] = np.array(obj.matrix_world)
    # a slider moved by hand: one exact refresh (background mode), keyable
    obj.fastavatar.expression.jawOpen = 0.8
    z["jaw_08"] = packed(obj)
    obj.fastavatar.expression.jawOpen = 0.0
    z["jaw_0"] = packed(obj)
    # drive from an expressions JSON (known values), head motion keyed on the object
    scene.frame_set(5)
    scene.fastavatar.drive_pose = True
    info["drive_op"], info["drive_error"] = run_op(bpy.ops.fastavatar.drive, filepath=str(performance))
    info["status"] = scene.fastavatar.status
    info["frame_range"] = [scene.frame_start, scene.frame_end]
    action = obj.animation_data.action
    info["curves"] = sorted({fc.data_path for fc in editing._fcurves(action)})
    jaw = next(fc for fc in editing._fcurves(action) if fc.data_path == "fastavatar.expression.jawOpen")
    info["jaw_keys"] = [list(k.co) for k in jaw.keyframe_points]
    for f in (5, 11, 12):
        scene.frame_set(f)
        z[f"frame_{f}"] = packed(obj)
        z[f"world_{f}"] = np.array(obj.matrix_world)
        z[f"values_{f}"] = expressions.values(obj)
    # the preview (what scrubbing shows) against the exact decode at the same values
    editing.update_exact(obj, tangents=True)
    info["rig"] = editing._cache[obj.session_uid]["tangents"][2] is not None
    expressions._suspended = True
    obj.fastavatar.expression.jawOpen = min(1.0, obj.fastavatar.expression.jawOpen + 0.4)
    obj.fastavatar.expression.eyeBlink_L = 0.7
    expressions._suspended = False
    info["previewed"] = editing.update_preview(obj)
    z["preview"] = packed(obj)
    z["preview_values"] = expressions.values(obj)
    editing.update_exact(obj)
    z["exact_at_preview"] = packed(obj)
    # save, reload, frame 11 again
    blend = out / "driven.blend"
    name = obj.name
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    scene = bpy.context.scene
    obj = bpy.data.objects[name]
    scene.frame_set(12)
    scene.frame_set(11)
    z["frame_11_reloaded"] = packed(obj)
    # Clear Performance: keys gone, the object back at its rest transform and expression
    bpy.context.view_layer.objects.active = obj
    bpy.ops.fastavatar.clear_performance()
    info["curves_after_clear"] = sorted({fc.data_path for fc in editing._fcurves(obj.animation_data.action)})
    z["world_after_clear"] = np.array(obj.matrix_world)
    z["after_clear"] = packed(obj)
    # a real video through the engine's tracker (the speaker's head fitted from its frames)
    scene.frame_set(1)
    scene.fastavatar.drive_pose = False
    info["video_op"], info["video_error"] = run_op(bpy.ops.fastavatar.drive, filepath=str(video))
    info["video_status"] = scene.fastavatar.status
    info["video_curves"] = sorted({fc.data_path for fc in editing._fcurves(obj.animation_data.action)})
    # an avatar without a face rig is refused with a message
    del obj[expressions.HEAD_KEY]
    info["norig_op"], info["norig_error"] = run_op(bpy.ops.fastavatar.drive, filepath=str(performance))
    (out / "drive.json").write_text(json.dumps(info))
    np.savez(out / "drive.npz", **{k: np.asarray(v) for k, v in z.items() if v is not None})


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
            blender_addon.unregister()  # Blender 5.x's module disables add-ons at exit after our atexit handler
            blender_addon.register()
            blender_addon.register()
            result["registered_twice"] = [hasattr(bpy.types, "FASTAVATAR_PT_main"), hasattr(bpy.types.Scene, "fastavatar"),
                                          bpy.types.TOPBAR_MT_file_export._dyn_ui_initialize().count(
                                              blender_addon.operators.export_menu)]
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
            # Generate Avatar as a user runs it: the default likeness fit against the photo
            import blender_addon as _addon
            from blender_addon import editing as _editing

            t = time.perf_counter()
            result["fit_op"] = run_generate(type(scene.fastavatar).bl_rna.properties["fit_steps"].default)
            result["fit_s"] = time.perf_counter() - t
            fitted = bpy.context.active_object
            result["fit_default"] = _addon.properties.FIT_STEPS_DEFAULT
            result["fit_object"] = dump_object(fitted, out, "fitted") | {
                "refined_steps": fitted.fastavatar.refined_steps,
                "residual": _editing.get_residual(fitted.data) is not None,
                "parents": len(_editing.get_parents(fitted)),
                "camera": json.loads(fitted.fastavatar.camera_json)}
            bpy.data.objects.remove(fitted)
            bpy.context.view_layer.objects.active = obj
            if obj.type == "MESH":  # evaluated display: one instance per splat
                dg = bpy.context.evaluated_depsgraph_get()
                mats = [np.array(i.matrix_world) for i in dg.object_instances
                        if i.is_instance and i.parent and i.parent.original == obj]
                np.save(out / "instances.npy", np.stack(mats))
            else:  # Blender's own INRIA PLY importer on the engine's PLY of the same Gaussians
                from fastavatar_engine.ply import write_ply

                write_ply(out / "generated.ply", _addon.avatar.read_gaussians(obj.data))
                before = set(bpy.data.objects)
                bpy.ops.wm.ply_import(filepath=str(out / "generated.ply"))
                imported = next(o for o in bpy.data.objects if o not in before)
                result["ply_import"] = dump_object(imported, out, "ply_import") | {"data_type": imported.data.type}
                bpy.data.objects.remove(imported)
                bpy.context.view_layer.objects.active = obj
            # the display's screen-space dilation follows the scene camera (none above: no camera)
            from blender_addon import batch as _batch

            obj.modifiers[0].name = "Renamed by the artist"  # found by its input, not its name
            cam = _batch.frame_camera(scene, obj, 256)
            dg = bpy.context.evaluated_depsgraph_get()
            result["dilation"] = {"pixel_angle": _addon.avatar.pixel_angle(scene), "fov": cam.data.angle,
                                  "eps2d": _addon.avatar.SCREEN_DILATION_PX2,
                                  "c2w": (np.linalg.inv(np.array(obj.matrix_world)) @ np.array(cam.matrix_world)).tolist()}
            if obj.type == "MESH":
                mats = [np.array(i.matrix_world) for i in dg.object_instances
                        if i.is_instance and i.parent and i.parent.original == obj]
                np.save(out / "instances_dilated.npy", np.stack(mats))
            else:
                ev = obj.evaluated_get(dg).data
                sc = np.empty(len(ev.points) * 3, np.float32)
                ev.attributes["scale"].data.foreach_get("vector", sc)
                np.save(out / "scale_dilated.npy", sc.reshape(-1, 3))
                sc0 = np.empty(len(obj.data.points) * 3, np.float32)
                obj.data.attributes["scale"].data.foreach_get("vector", sc0)
                np.save(out / "scale_stored.npy", sc0.reshape(-1, 3))
            bpy.data.objects.remove(cam)
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
        elif scenario == "editing":
            run_editing(scene, out, *args)
            result["ok"] = True
        elif scenario == "drive":
            run_drive(scene, out, *args)
            result["ok"] = True
        elif scenario == "faults":
            result["rows"] = run_faults(scene, out, *args)
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
