"""FastAvatar for Blender: a single face photo -> a 3D Gaussian Splatting head avatar object.

The 3D Viewport's sidebar (N) gets a *FastAvatar* tab with **Generate Avatar** (and *Generate
from Photos*). The photo goes to the FastAvatar engine, a PyTorch process started and kept warm
by :mod:`.engine` (torch never enters Blender's process); the Gaussians come back through the
pipe protocol and become an avatar object (:mod:`.avatar`). With an avatar active the tab offers
**Refine**, **Interpolate Avatars**, direction sliders with *Add Direction*, **Train Direction**
and *Direction from Photos* (:mod:`.editing` explains how edits, blends and refinements are
stored and kept up to date on the timeline). Engine work runs off the main thread in the UI
(modal operators, progress in the status bar and the panel, Esc or Cancel leaves the scene as it
was) and synchronously in background mode. Every operator that changes the scene is undoable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import bpy
import numpy as np
from bpy.props import (
    BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty,
)

from bpy_extras.io_utils import ExportHelper

from . import avatar as avatar_mod
from . import editing, engine
from .photo_source import image_pixels, resolve_photo  # noqa: F401 (moved)
from .direction_library import directions_dir, _DIRECTION_ITEMS, _LIBRARY_CACHE, library_directions, direction_items  # noqa: F401 (moved)
from .properties import _param_update, _is_avatar_poll, FastAvatarEdit, FastAvatarObjectProps, FIT_STEPS_DEFAULT, FastAvatarSceneProps  # noqa: F401 (moved)


# ---------------------------------------------------------------------- preferences
class FASTAVATAR_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    engine_python: StringProperty(
        name="Engine Python", subtype="FILE_PATH",
        description="Interpreter of an environment with the FastAvatar engine installed "
                    "(empty: the one Install Engine made, or FASTAVATAR_ENGINE_PYTHON)")
    device: EnumProperty(
        name="Device", default="AUTO",
        items=[("AUTO", "Auto", "CUDA when the engine sees a GPU, CPU otherwise"),
               ("CUDA", "CUDA", "NVIDIA GPU (gsplat)"), ("CPU", "CPU", "CPU (any machine)")])
    weights_dir: StringProperty(
        name="Weights", subtype="DIR_PATH",
        description="Model folder (empty: the built-in default model); e.g. a folder made by "
                    "'fastavatar train package'")
    directions_dir: StringProperty(
        name="Directions", subtype="DIR_PATH",
        description="Direction library folder (empty: the extension's user folder, or "
                    "FASTAVATAR_DIRECTIONS_DIR)")

    def draw(self, context):
        col = self.layout.column()
        col.prop(self, "engine_python")
        col.prop(self, "device")
        col.prop(self, "weights_dir")
        col.prop(self, "directions_dir")
        draw_engine_status(col)


def draw_engine_status(layout):
    try:
        python = engine.engine_python()
        layout.label(text=f"Engine: {python}", icon="CHECKMARK")
    except engine.EngineNotInstalled as e:
        layout.label(text=str(e).split(":")[0], icon="ERROR")
        layout.operator(FASTAVATAR_OT_install_engine.bl_idname, icon="IMPORT")
    if INSTALL.get("job") is not None and not INSTALL["job"].done:
        layout.label(text=INSTALL["job"].status[:80] or "Installing...", icon="TIME")


# ---------------------------------------------------------------------- properties


# ---------------------------------------------------------------------- photo source


# ---------------------------------------------------------------------- generate
def generate_avatar(path, pixels, face_index, progress=None, cancelled=None, fit_steps: int = FIT_STEPS_DEFAULT):
    """Run generate on the engine (with ``fit_steps`` of likeness fit against the photo, 0: none);
    returns (GaussianSet, code, header). Engine errors propagate."""
    client = engine.get_client()
    if progress:
        progress("Starting the engine..." if not client.alive else "Generating...", 0.1)
    client.start()
    if progress:
        progress("Generating...", 0.2)

    def on_step(h):
        if progress and h.get("stage") == "refine" and h.get("total"):
            progress(f"Fitting to the photo {h['step']}/{h['total']}", 0.2 + 0.8 * h["step"] / h["total"])

    return client.generate(image_path=path, pixels=pixels, face_index=None if face_index < 0 else face_index,
                           refine_steps=int(fit_steps), cancel=cancelled, progress=on_step)


def apply_result(context, result, label, face_index, photos=None):
    g, code, header = result
    name = Path(label).stem if label else "Avatar"
    obj = avatar_mod.create_avatar_object(
        context, g, code, name=f"Avatar_{name}"[:60], model_id=header.get("model_id", ""),
        photo=label, face_index=face_index, camera=header.get("camera"),
        refined_steps=int(header.get("refined_steps", 0)))
    if photos:
        obj[editing.PHOTOS_KEY] = [str(q) for q in photos]
    base = header.get("arrays", {}).get("base_packed")
    if base is not None:  # generated with refinement: keep it as a residual, like Refine does
        editing.set_residual(obj.data, editing.pack_gaussians(g) - base)
    for o in context.view_layer.objects:
        o.select_set(False)
    obj.select_set(True)
    context.view_layer.objects.active = obj
    return obj


ACTIVE_JOB: dict = {"job": None}


class JobModal:
    """Mixin for operators that run an :class:`engine.Job`: synchronous in background mode;
    in the UI a modal timer polls it, shows progress in the status bar and the panel, and Esc
    or the panel's Cancel stops it. Subclasses implement ``on_done(context, result) -> message``
    and may override ``on_tick``/``on_cancel`` (``on_cancel`` must leave the scene as it was)."""

    _timer = None
    _job = None
    _t0 = 0.0

    def on_tick(self, context):
        pass

    def on_cancel(self, context):
        pass

    def run_job(self, context, job):
        running = ACTIVE_JOB["job"]
        if running is not None and not running.done:
            self.report({"ERROR"}, "Another FastAvatar job is running; wait for it or cancel it first")
            return {"CANCELLED"}
        self._job, self._t0 = job, time.perf_counter()
        ACTIVE_JOB["job"] = job
        context.scene.fastavatar.progress = 0.0
        if bpy.app.background:
            job.run_sync()
            return self._end(context)
        job.start()
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.05, window=context.window)
        wm.modal_handler_add(self)
        wm.progress_begin(0, 100)
        return {"RUNNING_MODAL"}

    def _cleanup(self, context):
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            wm.progress_end()
            self._timer = None
        context.workspace.status_text_set(None)
        ACTIVE_JOB["job"] = None
        context.scene.fastavatar.progress = -1.0
        redraw(context)

    def modal(self, context, event):
        job = self._job
        if event.type == "ESC" or (job.cancel_requested and not job.done):
            job.cancel()
            self.on_cancel(context)
            self._cleanup(context)
            context.scene.fastavatar.status = f"{self.bl_label} cancelled; the scene is unchanged"
            self.report({"WARNING"}, context.scene.fastavatar.status)
            return {"CANCELLED"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        self.on_tick(context)
        if not job.done:
            context.window_manager.progress_update(int(100 * job.fraction))
            context.scene.fastavatar.progress = job.fraction
            context.workspace.status_text_set(f"FastAvatar: {job.status} (Esc to cancel)")
            redraw(context)
            return {"RUNNING_MODAL"}
        self._cleanup(context)
        return self._end(context)

    def _end(self, context):
        job = self._job
        ACTIVE_JOB["job"] = None
        context.scene.fastavatar.progress = -1.0
        try:
            if job.error is not None:
                raise job.error
            msg = self.on_done(context, job.result)
        except Exception as e:  # noqa: BLE001 - every failure ends as a message, the scene untouched
            self.on_cancel(context)
            msg = str(e) if isinstance(e, ValueError) else engine.describe_error(e)
            context.scene.fastavatar.status = msg
            self.report({"ERROR"}, msg)
            return {"CANCELLED"}
        context.scene.fastavatar.status = f"{msg} ({time.perf_counter() - self._t0:.2f} s)"
        self.report({"INFO"}, context.scene.fastavatar.status)
        return {"FINISHED"}


def redraw(context):
    screen = getattr(context, "screen", None)
    for area in (screen.areas if screen is not None else []):
        if area.type in ("VIEW_3D", "PROPERTIES"):
            area.tag_redraw()


class FASTAVATAR_OT_generate(JobModal, bpy.types.Operator):
    """Turn the chosen face photo into a 3D Gaussian head avatar at the 3D cursor"""

    bl_idname = "fastavatar.generate"
    bl_label = "Generate Avatar"
    bl_options = {"REGISTER", "UNDO"}

    def invoke(self, context, event):
        return self.execute(context)

    def execute(self, context):
        try:
            path, pixels, label = resolve_photo(context)
            if not bpy.app.background:
                engine.engine_python()
        except (ValueError, engine.EngineNotInstalled) as e:
            context.scene.fastavatar.status = str(e)
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self._label, self._fi = label, context.scene.fastavatar.face_index
        fi, fit = self._fi, context.scene.fastavatar.fit_steps
        return self.run_job(context, engine.Job(
            lambda progress, cancelled: generate_avatar(path, pixels, fi, progress, cancelled, fit)))

    def on_done(self, context, result):
        obj = apply_result(context, result, self._label, self._fi)
        return f"Created {obj.name} ({len(obj.data.vertices)} splats)"


class FASTAVATAR_OT_generate_multi(JobModal, bpy.types.Operator):
    """Generate one avatar from several photos of the same person (fused code; optional refinement against all of them)"""

    bl_idname = "fastavatar.generate_multi"
    bl_label = "Generate from Photos"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(subtype="DIR_PATH")
    files: CollectionProperty(type=bpy.types.OperatorFileListElement)
    filter_image: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    refine_steps: IntProperty(name="Refine Steps", default=0, min=0, soft_max=2000,
                              description="Refine against all the photos afterwards (0: feed-forward only)")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        paths = [str(Path(bpy.path.abspath(self.directory)) / f.name) for f in self.files if f.name]
        missing = [q for q in paths if not os.path.isfile(q)]
        if len(paths) < 1 or missing:
            msg = f"photos not found: {', '.join(missing[:3])}" if missing else "select one or more photos"
            self.report({"ERROR"}, msg)
            return {"CANCELLED"}
        fi, steps = context.scene.fastavatar.face_index, self.refine_steps
        self._paths, self._fi = paths, fi

        def fn(progress, cancelled):
            client = engine.get_client()
            progress(f"Generating from {len(paths)} photos...", 0.1)

            def on_progress(h):
                if h.get("stage") == "refine":
                    progress(f"Refining {h['step']}/{h['total']}", h["step"] / h["total"])

            return client.generate(image_paths=paths, face_index=None if fi < 0 else fi, refine_steps=steps,
                                   progress=on_progress, cancel=cancelled)

        return self.run_job(context, engine.Job(fn))

    def on_done(self, context, result):
        obj = apply_result(context, result, self._paths[0], self._fi, photos=self._paths)
        return f"Created {obj.name} from {len(self._paths)} photos"


# ---------------------------------------------------------------------- editing


def engine_free(op) -> bool:
    """False (and an error report) when the engine is serving a long request such as a
    refinement: a synchronous request now would freeze Blender until it ends."""
    if engine.client_busy():
        op.report({"ERROR"}, "The FastAvatar engine is busy (a refinement or generation is running); "
                             "try again when it finishes or cancel it")
        return False
    return True


def active_avatar(context, op):
    obj = context.active_object
    if not avatar_mod.is_avatar(obj):
        op.report({"ERROR"}, "select a FastAvatar avatar first")
        return None
    return obj


class FASTAVATAR_OT_add_direction(bpy.types.Operator):
    """Add a slider for an attribute direction (from the library, or a direction file) to the active avatar"""

    bl_idname = "fastavatar.add_direction"
    bl_label = "Add Direction"
    bl_options = {"REGISTER", "UNDO"}

    name: StringProperty(name="Direction", description="Library direction name (empty: the panel's choice)")
    filepath: StringProperty(name="File", subtype="FILE_PATH", description="Direction file instead of the library")

    def execute(self, context):
        from fastavatar_engine.directions import DirectionError, direction_filename, load_direction, load_library

        obj = active_avatar(context, self)
        if obj is None:
            return {"CANCELLED"}
        try:
            if self.filepath:
                d = load_direction(bpy.path.abspath(self.filepath))
            else:
                name = self.name or context.scene.fastavatar.direction
                if not name or name == "NONE":
                    raise DirectionError(f"no direction for model {obj.fastavatar.model_id!r} in {directions_dir()}")
                path = directions_dir() / direction_filename(name)
                if path.is_file():
                    d = load_direction(path)
                else:
                    found = [x for x in load_library(directions_dir())[0] if x.name == name]
                    if not found:
                        raise DirectionError(f"direction {name!r} not found in {directions_dir()}")
                    d = found[0]
            editing.add_direction(obj, d)
        except (DirectionError, KeyError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"{obj.name}: added direction {d.name!r}")
        return {"FINISHED"}


class FASTAVATAR_OT_add_all_directions(bpy.types.Operator):
    """Add a slider for every direction of the active avatar's model in the library"""

    bl_idname = "fastavatar.add_all_directions"
    bl_label = "Add All Directions"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        obj = active_avatar(context, self)
        if obj is None:
            return {"CANCELLED"}
        dirs, problems = library_directions(obj.fastavatar.model_id)
        added = [d.name for d in dirs if d.name not in obj.fastavatar.edits]
        for d in dirs:
            if d.name in added:
                editing.add_direction(obj, d)
        msg = (f"{obj.name}: added {len(added)} direction(s)" + (f": {', '.join(added)}" if added else "")
               + (f"; {len(problems)} unreadable file(s) skipped" if problems else ""))
        context.scene.fastavatar.status = msg
        self.report({"WARNING"} if problems else {"INFO"}, msg)
        return {"FINISHED"}


class FASTAVATAR_OT_remove_direction(bpy.types.Operator):
    """Remove a direction slider (and its keyframes) from the active avatar"""

    bl_idname = "fastavatar.remove_direction"
    bl_label = "Remove Direction"
    bl_options = {"REGISTER", "UNDO"}

    name: StringProperty(name="Direction")

    def execute(self, context):
        obj = active_avatar(context, self)
        if obj is None or not engine_free(self):
            return {"CANCELLED"}
        editing.remove_direction(obj, self.name)
        editing.update_exact(obj)
        return {"FINISHED"}


class FASTAVATAR_OT_train_direction(bpy.types.Operator):
    """Learn a direction (linear SVM on the codes) from the avatars labelled Has / Lacks, save it in the library"""

    bl_idname = "fastavatar.train_direction"
    bl_label = "Train Direction"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        from fastavatar_engine.directions import (
            DirectionError, direction_filename, direction_from_json, save_direction,
        )

        if not engine_free(self):
            return {"CANCELLED"}
        name = context.scene.fastavatar.direction_name.strip()
        labelled = [o for o in context.scene.objects if avatar_mod.is_avatar(o) and o.fastavatar.label != "NONE"]
        models = {o.fastavatar.model_id for o in labelled}
        try:
            if len(models) > 1:
                raise DirectionError(f"labelled avatars come from several models ({', '.join(sorted(models))})")
            if not labelled:
                raise DirectionError("label avatars as Has / Lacks first (FastAvatar panel, Attribute)")
            codes = np.stack([avatar_mod.get_code(o) for o in labelled])
            labels = np.array([o.fastavatar.label == "HAS" for o in labelled], np.uint8)
            d = direction_from_json(engine.get_client().train_direction(
                codes, labels, name, source="Blender: " + ", ".join(o.name for o in labelled)[:400]))
            path = save_direction(d, directions_dir() / direction_filename(d.name))
        except DirectionError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        except Exception as e:  # noqa: BLE001
            self.report({"ERROR"}, engine.describe_error(e))
            return {"CANCELLED"}
        acc = d.accuracy
        msg = (f"Direction {d.name!r}: training accuracy {acc['train']:.2f}, cross-validated "
               f"{acc['cross_validated'] if acc['cross_validated'] is not None else 'n/a'} ({acc['folds']} folds); "
               f"saved to {path}")
        context.scene.fastavatar.status = msg
        self.report({"INFO"}, msg)
        return {"FINISHED"}


class FASTAVATAR_OT_direction_from_photos(JobModal, bpy.types.Operator):
    """Build an expression direction from a folder of photos, labelled automatically from their landmarks"""

    bl_idname = "fastavatar.direction_from_photos"
    bl_label = "Direction from Photos"

    def execute(self, context):
        settings = context.scene.fastavatar
        folder = Path(bpy.path.abspath(settings.photos_dir)) if settings.photos_dir else None
        exts = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"}
        photos = sorted(q for q in folder.iterdir() if q.suffix.lower() in exts) if folder and folder.is_dir() else []
        if len(photos) < 4:
            self.report({"ERROR"}, f"need a folder with at least 4 face photos, found {len(photos)}")
            return {"CANCELLED"}
        measure, name = settings.measure, settings.direction_name.strip() or settings.measure

        def fn(progress, cancelled):
            from fastavatar_engine.directions import median_split_labels
            from fastavatar_engine.client import EngineError

            client = engine.get_client()
            codes, values, skipped = [], [], []
            for i, q in enumerate(photos):
                if cancelled():
                    raise RuntimeError("cancelled")
                progress(f"Encoding {q.name} ({i + 1}/{len(photos)})", i / (len(photos) + 1))
                try:
                    code, header = client.encode(image_path=str(q))
                except EngineError as e:
                    skipped.append(f"{q.name}: {e}")
                    continue
                codes.append(code)
                values.append(header["measures"][measure])
            if len(codes) < 4:
                raise ValueError(f"only {len(codes)} photos with a face; skipped: {'; '.join(skipped[:3])}")
            labels = median_split_labels(values)
            progress("Training the SVM...", 0.95)
            d = client.train_direction(np.stack(codes), labels, name,
                                       source=f"photos in {folder}, label: {measure} above its median "
                                              f"({float(np.median(values)):.4f})")
            return d, len(codes), skipped

        return self.run_job(context, engine.Job(fn))

    def on_done(self, context, result):
        from fastavatar_engine.directions import direction_filename, direction_from_json, save_direction

        data, used, skipped = result
        d = direction_from_json(data)
        path = save_direction(d, directions_dir() / direction_filename(d.name))
        acc = d.accuracy
        return (f"Direction {d.name!r} from {used} photos ({len(skipped)} skipped): training accuracy "
                f"{acc['train']:.2f}, cross-validated {acc['cross_validated']}; saved to {path.name}")


class FASTAVATAR_OT_refine(JobModal, bpy.types.Operator):
    """Refine the active avatar against its source photo(s): the paper's full refinement of the code and decoder"""

    bl_idname = "fastavatar.refine"
    bl_label = "Refine Avatar"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        obj = active_avatar(context, self)
        if obj is None:
            return {"CANCELLED"}
        settings = context.scene.fastavatar
        try:
            self._session = editing.RefineSession(obj, settings.refine_steps,
                                                  0 if bpy.app.background else settings.preview_every)
        except (ValueError, KeyError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        return self.run_job(context, self._session.job)

    def on_tick(self, context):
        self._session.tick()

    def on_cancel(self, context):
        self._session.cancel()

    def on_done(self, context, result):
        self._session.finish()
        obj = self._session.obj
        return f"Refined {obj.name} ({obj.fastavatar.refined_steps} steps in total)"


class FASTAVATAR_OT_interpolate(bpy.types.Operator):
    """Blend the two selected avatars into a new avatar whose Mix (0-1) can be keyframed"""

    bl_idname = "fastavatar.interpolate"
    bl_label = "Interpolate Avatars"
    bl_options = {"REGISTER", "UNDO"}

    mix: FloatProperty(name="Mix", default=0.5, min=0.0, max=1.0)

    def execute(self, context):
        if not engine_free(self):
            return {"CANCELLED"}
        sel = [o for o in context.selected_objects if avatar_mod.is_avatar(o)]
        if len(sel) != 2:
            self.report({"ERROR"}, f"select exactly two avatars (selected: {len(sel)})")
            return {"CANCELLED"}
        active = context.active_object
        a, b = (active, next(o for o in sel if o != active)) if active in sel else sel
        try:
            obj = editing.create_blend(context, a, b, self.mix)
        except ValueError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        except Exception as e:  # noqa: BLE001
            self.report({"ERROR"}, engine.describe_error(e))
            return {"CANCELLED"}
        for o in context.view_layer.objects:
            o.select_set(False)
        obj.select_set(True)
        context.view_layer.objects.active = obj
        self.report({"INFO"}, f"Created {obj.name} (mix {self.mix:.2f} of {a.name} -> {b.name})")
        return {"FINISHED"}


class FASTAVATAR_OT_cancel_job(bpy.types.Operator):
    """Cancel the running FastAvatar job (the scene stays as it was)"""

    bl_idname = "fastavatar.cancel_job"
    bl_label = "Cancel"

    def execute(self, context):
        if ACTIVE_JOB["job"] is not None:
            ACTIVE_JOB["job"].cancel()
        return {"FINISHED"}


# ---------------------------------------------------------------------- export
EXPORT_FORMATS = [("ply", "INRIA PLY (.ply)", "3DGS PLY, float32, lossless"),
                   ("splat", "antimatter15 (.splat)", "32 bytes per splat, no view-dependent colour"),
                   ("spz", "Niantic SPZ (.spz)", "compressed, ~10x smaller than PLY"),
                   ("glb", "glTF binary (.glb)", "KHR_gaussian_splatting, for game engines")]


def avatar_gaussians_for_export(obj, apply_edits: bool):
    """The GaussianSet to export from ``obj`` (engine frame): as displayed (edits and blend
    applied) or, without ``apply_edits``, its base state (refinement kept, direction sliders off;
    decoded by the engine)."""
    if apply_edits or not any(e.amount for e in obj.fastavatar.edits):
        return avatar_mod.read_gaussians(obj.data)
    state = editing.effective_state(obj)
    packed = editing.pack_gaussians(engine.get_client().decode(state.base)[0])
    return editing.unpack_gaussians(packed + state.residual if state.residual is not None else packed)


class FASTAVATAR_OT_export(bpy.types.Operator, ExportHelper):
    """Export the active avatar's splats for game engines and web viewers (.ply, .splat, .spz, glTF .glb)"""

    bl_idname = "fastavatar.export"
    bl_label = "Export Gaussian Splats"
    bl_options = {"REGISTER"}

    filename_ext = ".ply"
    filter_glob: StringProperty(default="*.ply;*.splat;*.spz;*.glb", options={"HIDDEN"})
    file_format: EnumProperty(name="Format", items=EXPORT_FORMATS, default="ply")
    axes: EnumProperty(name="Axes", default="auto", items=[
        ("auto", "Auto", "Y down for PLY/.splat/.spz (what their viewers expect), Y up for glTF"),
        ("ply", "Y Down (3DGS)", "COLMAP/INRIA convention"),
        ("engine", "Y Up (glTF)", "The engine's frame: y up, face towards +z"),
        ("blender", "Z Up (Blender)", "Blender's world axes")])
    min_opacity: FloatProperty(name="Min Opacity", default=0.0, min=0.0, max=0.99,
                               description="Leave out splats less opaque than this (the count is reported)")
    apply_edits: BoolProperty(name="Apply Edits", default=True,
                              description="Export the avatar as shown (slider edits applied); off: without the sliders")

    def check(self, context):
        ext = "." + self.file_format
        path = Path(self.filepath)
        if path.suffix.lower() != ext:
            self.filepath = str(path.with_suffix(ext))
            return True
        return False

    def execute(self, context):
        from fastavatar_engine.export import ExportError, export_gaussians

        obj = active_avatar(context, self)
        if obj is None:
            return {"CANCELLED"}
        if not self.apply_edits and not engine_free(self):
            return {"CANCELLED"}
        self.check(context)
        try:
            g = avatar_gaussians_for_export(obj, self.apply_edits)
            r = export_gaussians(g, bpy.path.abspath(self.filepath), fmt=self.file_format, convention=self.axes,
                                 min_opacity=self.min_opacity)
        except (ExportError, ValueError, OSError) as e:
            self.report({"ERROR"}, f"Export failed: {e}")
            return {"CANCELLED"}
        except Exception as e:  # noqa: BLE001 - engine errors (unedited export)
            self.report({"ERROR"}, f"Export failed: {engine.describe_error(e)}")
            return {"CANCELLED"}
        msg = (f"Exported {r['splats']} splats to {Path(r['path']).name} ({r['format']}, axes {r['convention']}"
               + (f", {r['pruned']} below opacity {self.min_opacity:g} left out" if self.min_opacity > 0 else "") + ")")
        context.scene.fastavatar.status = msg
        self.report({"INFO"}, msg)
        return {"FINISHED"}


def export_menu(self, context):
    self.layout.operator(FASTAVATAR_OT_export.bl_idname, text="FastAvatar Gaussian Splats (.ply/.splat/.spz/.glb)")


# ---------------------------------------------------------------------- engine management
INSTALL: dict = {}


def install_commands(venv: Path, wheel: Path, constraints: Path | None, python: str | None = None) -> list[list[str]]:
    """The commands Install Engine runs: create ``venv``, install the CPU torch pin first, then the
    bundled engine wheel with its engine and face extras (CUDA users add gsplat themselves)."""
    vpy = str(engine.venv_python(venv))
    pin = ["-c", str(constraints)] if constraints is not None and constraints.is_file() else []
    return [
        [python or sys.executable, "-m", "venv", str(venv)],
        [vpy, "-m", "pip", "install", "--upgrade", "pip"],
        [vpy, "-m", "pip", "install", "torch==2.13.0"],
        [vpy, "-m", "pip", "install", *pin, f"{wheel}[engine,face]"],
    ]


def bundled_wheel() -> Path:
    here = Path(__file__).parent
    wheels = sorted((here / "wheels").glob("fastavatar-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no fastavatar wheel in {here / 'wheels'} (rebuild the add-on with build_addon.py)")
    return wheels[-1]


def run_install(commands, progress, cancelled) -> None:
    """Run the install commands one by one, reporting each output line; raises on failure."""
    for i, cmd in enumerate(commands):
        progress(f"[{i + 1}/{len(commands)}] {' '.join(Path(c).name if j == 0 else c for j, c in enumerate(cmd))[:70]}",
                 i / len(commands))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail = []
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-20:]
            progress(f"[{i + 1}/{len(commands)}] {line.strip()[:70]}", None)
            if cancelled():
                proc.kill()
                raise RuntimeError("engine installation cancelled")
        if proc.wait() != 0:
            raise RuntimeError(f"'{' '.join(cmd)}' failed:\n" + "\n".join(tail))
    progress("Engine installed", 1.0)


class FASTAVATAR_OT_install_engine(bpy.types.Operator):
    """Create a virtual environment for the FastAvatar engine and install it from the bundled wheel (downloads PyTorch from PyPI)"""

    bl_idname = "fastavatar.install_engine"
    bl_label = "Install Engine"

    _timer = None

    def execute(self, context):
        venv = engine.managed_venv_dir()
        if venv is None:
            self.report({"ERROR"}, "Install Engine needs the add-on installed as an extension; set Engine Python instead")
            return {"CANCELLED"}
        try:
            cmds = install_commands(venv, bundled_wheel(), Path(__file__).parent / "constraints.txt")
        except FileNotFoundError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        job = engine.Job(lambda progress, cancelled: run_install(cmds, progress, cancelled))
        INSTALL["job"] = job
        if bpy.app.background:
            job.run_sync()
            return self._done(context, job)
        job.start()
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.2, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def _done(self, context, job):
        if job.error is not None:
            self.report({"ERROR"}, f"Engine installation failed: {job.error}")
            return {"CANCELLED"}
        engine.stop_engine()
        self.report({"INFO"}, "FastAvatar engine installed")
        return {"FINISHED"}

    def modal(self, context, event):
        job = INSTALL["job"]
        if event.type == "ESC":
            job.cancel()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        if not job.done:
            context.workspace.status_text_set(f"Installing FastAvatar engine: {job.status}")
            for area in context.screen.areas:
                area.tag_redraw()
            return {"RUNNING_MODAL"}
        context.window_manager.event_timer_remove(self._timer)
        context.workspace.status_text_set(None)
        return self._done(context, job)


class FASTAVATAR_OT_stop_engine(bpy.types.Operator):
    """Stop the engine process (it starts again on the next request)"""

    bl_idname = "fastavatar.stop_engine"
    bl_label = "Stop Engine"

    def execute(self, context):
        engine.stop_engine()
        return {"FINISHED"}


# ---------------------------------------------------------------------- UI
class FASTAVATAR_PT_main(bpy.types.Panel):
    bl_label = "FastAvatar"
    bl_idname = "FASTAVATAR_PT_main"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "FastAvatar"

    def draw(self, context):
        settings = context.scene.fastavatar
        col = self.layout.column()
        col.prop(settings, "photo_path")
        col.template_ID(settings, "image", open="image.open")
        col.prop(settings, "face_index")
        col.prop(settings, "fit_steps")
        col.operator(FASTAVATAR_OT_generate.bl_idname, icon="USER")
        if settings.status:
            col.label(text=settings.status[:90])
        box = col.box()
        draw_engine_status(box)
        box.operator(FASTAVATAR_OT_stop_engine.bl_idname, icon="CANCEL")
        if settings.progress >= 0 and ACTIVE_JOB["job"] is not None:
            row = col.row(align=True)
            if hasattr(row, "progress"):
                row.progress(factor=settings.progress, type="BAR", text=ACTIVE_JOB["job"].status[:60] or "Working...")
            else:
                row.label(text=f"{100 * settings.progress:.0f}%  {ACTIVE_JOB['job'].status[:50]}")
            row.operator(FASTAVATAR_OT_cancel_job.bl_idname, text="", icon="CANCEL")
        obj = context.active_object
        if not avatar_mod.is_avatar(obj):
            col.operator(FASTAVATAR_OT_generate_multi.bl_idname, icon="COMMUNITY")
            return
        props = obj.fastavatar
        b = col.box()
        b.label(text=f"{obj.name}: {len(obj.data.vertices)} splats", icon="OUTLINER_OB_POINTCLOUD")
        b.label(text=f"Model: {props.model_id}")
        if editing.is_blend(obj):
            b.label(text=f"Blend: {props.blend_a.name} -> {props.blend_b.name}")
            b.prop(props, "mix", slider=True)
        else:
            b.label(text=f"Photo: {Path(props.photo).name}")
            row = b.row(align=True)
            row.prop(settings, "refine_steps")
            row.prop(settings, "preview_every", text="Preview")
            b.operator(FASTAVATAR_OT_refine.bl_idname, icon="MODIFIER",
                       text=f"Refine ({props.refined_steps} steps so far)" if props.refined_steps else "Refine")
        b.operator(FASTAVATAR_OT_interpolate.bl_idname, icon="ARROW_LEFTRIGHT")
        b.operator(FASTAVATAR_OT_export.bl_idname, icon="EXPORT", text="Export Splats...")
        d = col.box()
        d.label(text="Directions", icon="DRIVER")
        for item in props.edits:
            row = d.row(align=True)
            row.prop(item, "amount", text=item.name, slider=False)
            op = row.operator(FASTAVATAR_OT_remove_direction.bl_idname, text="", icon="X")
            op.name = item.name
        row = d.row(align=True)
        row.prop(settings, "direction", text="")
        row.operator(FASTAVATAR_OT_add_direction.bl_idname, text="Add", icon="ADD")
        row.operator(FASTAVATAR_OT_add_all_directions.bl_idname, text="All", icon="COLLECTION_NEW")
        t = col.box()
        t.label(text="Train a direction", icon="LIGHT")
        t.prop(props, "label", expand=True)
        t.prop(settings, "direction_name")
        t.operator(FASTAVATAR_OT_train_direction.bl_idname, icon="PLAY")
        t.prop(settings, "photos_dir")
        t.prop(settings, "measure")
        t.operator(FASTAVATAR_OT_direction_from_photos.bl_idname, icon="IMAGE_DATA")


_CLASSES = (FASTAVATAR_AP_preferences, FastAvatarEdit, FastAvatarObjectProps, FastAvatarSceneProps,
            FASTAVATAR_OT_generate, FASTAVATAR_OT_generate_multi, FASTAVATAR_OT_refine, FASTAVATAR_OT_interpolate,
            FASTAVATAR_OT_add_direction, FASTAVATAR_OT_add_all_directions, FASTAVATAR_OT_remove_direction, FASTAVATAR_OT_train_direction,
            FASTAVATAR_OT_direction_from_photos, FASTAVATAR_OT_cancel_job, FASTAVATAR_OT_export,
            FASTAVATAR_OT_install_engine, FASTAVATAR_OT_stop_engine, FASTAVATAR_PT_main)


def _unregister_at_exit():
    # Blender as a Python module (bpy from PyPI) hangs at interpreter exit while Python classes
    # are still registered; unregister first. (The Blender program disables add-ons itself.)
    if hasattr(bpy.types.Scene, "fastavatar"):
        unregister()


def register():
    import atexit

    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    if not bpy.app.binary_path:
        atexit.unregister(_unregister_at_exit)
        atexit.register(_unregister_at_exit)
    bpy.types.Object.fastavatar = PointerProperty(type=FastAvatarObjectProps)
    bpy.types.Scene.fastavatar = PointerProperty(type=FastAvatarSceneProps)
    editing.register_handlers()
    bpy.types.TOPBAR_MT_file_export.append(export_menu)


def unregister():
    bpy.types.TOPBAR_MT_file_export.remove(export_menu)
    editing.unregister_handlers()
    engine.stop_engine()
    del bpy.types.Scene.fastavatar
    del bpy.types.Object.fastavatar
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
