"""FastAvatar for Blender: a single face photo -> a 3D Gaussian Splatting head avatar object.

The 3D Viewport's sidebar (N) gets a *FastAvatar* tab with **Generate Avatar**. The photo goes
to the FastAvatar engine, a PyTorch process started and kept warm by :mod:`.engine` (torch never
enters Blender's process); the Gaussians come back through the pipe protocol and become an
avatar object (:mod:`.avatar`). Generation runs off the main thread in the UI (modal operator,
progress in the status bar, Esc cancels and leaves the scene untouched) and synchronously in
background mode. Every operator that changes the scene is undoable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, IntProperty, PointerProperty, StringProperty

from . import avatar as avatar_mod
from . import engine


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

    def draw(self, context):
        col = self.layout.column()
        col.prop(self, "engine_python")
        col.prop(self, "device")
        col.prop(self, "weights_dir")
        _draw_engine_status(col)


def _draw_engine_status(layout):
    try:
        python = engine.engine_python()
        layout.label(text=f"Engine: {python}", icon="CHECKMARK")
    except engine.EngineNotInstalled as e:
        layout.label(text=str(e).split(":")[0], icon="ERROR")
        layout.operator(FASTAVATAR_OT_install_engine.bl_idname, icon="IMPORT")
    if _INSTALL.get("job") is not None and not _INSTALL["job"].done:
        layout.label(text=_INSTALL["job"].status[:80] or "Installing...", icon="TIME")


# ---------------------------------------------------------------------- properties
class FastAvatarObjectProps(bpy.types.PropertyGroup):
    is_avatar: BoolProperty(name="Is Avatar", default=False)
    model_id: StringProperty(name="Model", description="Model the avatar's code belongs to")
    photo: StringProperty(name="Photo", subtype="FILE_PATH", description="Source photo")
    face_index: IntProperty(name="Face Index", default=-1)
    refined_steps: IntProperty(name="Refined Steps", default=0)
    camera_json: StringProperty(name="Camera", description="Estimated photo camera (JSON, head frame)")


class FastAvatarSceneProps(bpy.types.PropertyGroup):
    photo_path: StringProperty(name="Photo", subtype="FILE_PATH", description="Face photo to turn into an avatar")
    image: PointerProperty(name="Image", type=bpy.types.Image,
                           description="Use this image datablock instead of the file path")
    face_index: IntProperty(name="Face", default=-1, min=-1, soft_max=16,
                            description="Which face when there are several (-1: the largest)")
    status: StringProperty(name="Status")


# ---------------------------------------------------------------------- photo source
def image_pixels(image) -> np.ndarray:
    """[H,W,3] uint8 RGB (top row first) from an image datablock."""
    w, h = image.size
    if w == 0 or h == 0:
        raise ValueError(f"image {image.name!r} has no pixels")
    px = np.empty(w * h * image.channels, np.float32)
    image.pixels.foreach_get(px)
    px = px.reshape(h, w, image.channels)[::-1]
    rgb = px[..., :3] if image.channels >= 3 else np.repeat(px[..., :1], 3, axis=2)
    if image.channels == 4:  # composite over white, like the engine's loader
        a = px[..., 3:4]
        rgb = rgb * a + (1 - a)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def resolve_photo(context) -> tuple[str | None, np.ndarray | None, str]:
    """(file path, pixels, label) of the photo to use: the panel's image datablock, else the
    active object's reference image (an image empty), else the panel's file path."""
    settings = context.scene.fastavatar
    image = settings.image
    obj = context.active_object
    if image is None and obj is not None and obj.type == "EMPTY" and obj.empty_display_type == "IMAGE":
        image = obj.data
    if image is not None:
        path = bpy.path.abspath(image.filepath) if image.filepath else ""
        if path and os.path.isfile(path) and image.packed_file is None:
            return path, None, path
        return None, image_pixels(image), image.name
    path = bpy.path.abspath(settings.photo_path) if settings.photo_path else ""
    if not path:
        raise ValueError("choose a photo (file path or image) in the FastAvatar panel")
    if not os.path.isfile(path):
        raise ValueError(f"photo not found: {path}")
    return path, None, path


# ---------------------------------------------------------------------- generate
def generate_avatar(path, pixels, face_index, progress=None, cancelled=None):
    """Run generate on the engine; returns (GaussianSet, code, header). Engine errors propagate."""
    client = engine.get_client()
    if progress:
        progress("Starting the engine..." if not client.alive else "Generating...", 0.1)
    client.start()
    if progress:
        progress("Generating...", 0.3)
    return client.generate(image_path=path, pixels=pixels, face_index=None if face_index < 0 else face_index,
                           cancel=cancelled)


def _apply_result(context, result, label, face_index):
    g, code, header = result
    name = Path(label).stem if label else "Avatar"
    obj = avatar_mod.create_avatar_object(
        context, g, code, name=f"Avatar_{name}"[:60], model_id=header.get("model_id", ""),
        photo=label, face_index=face_index, camera=header.get("camera"),
        refined_steps=int(header.get("refined_steps", 0)))
    for o in context.view_layer.objects:
        o.select_set(False)
    obj.select_set(True)
    context.view_layer.objects.active = obj
    return obj


class FASTAVATAR_OT_generate(bpy.types.Operator):
    """Turn the chosen face photo into a 3D Gaussian head avatar at the 3D cursor"""

    bl_idname = "fastavatar.generate"
    bl_label = "Generate Avatar"
    bl_options = {"REGISTER", "UNDO"}

    _timer = None
    _job = None

    def _prepare(self, context):
        path, pixels, label = resolve_photo(context)
        return path, pixels, label, context.scene.fastavatar.face_index

    def execute(self, context):  # synchronous: background mode, scripts, redo
        try:
            path, pixels, label, fi = self._prepare(context)
            obj = _apply_result(context, generate_avatar(path, pixels, fi), label, fi)
        except Exception as e:  # noqa: BLE001 - every failure ends as a message, the scene untouched
            msg = str(e) if isinstance(e, ValueError) else engine.describe_error(e)
            context.scene.fastavatar.status = msg
            self.report({"ERROR"}, msg)
            return {"CANCELLED"}
        context.scene.fastavatar.status = f"Created {obj.name} ({len(obj.data.vertices)} splats)"
        self.report({"INFO"}, context.scene.fastavatar.status)
        return {"FINISHED"}

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        try:
            path, pixels, label, fi = self._prepare(context)
            engine.engine_python()
        except (ValueError, engine.EngineNotInstalled) as e:
            context.scene.fastavatar.status = str(e)
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self._label, self._fi, self._t0 = label, fi, time.perf_counter()
        self._job = engine.Job(lambda progress, cancelled: generate_avatar(path, pixels, fi, progress, cancelled))
        self._job.start()
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.05, window=context.window)
        wm.modal_handler_add(self)
        wm.progress_begin(0, 100)
        return {"RUNNING_MODAL"}

    def _finish(self, context):
        wm = context.window_manager
        wm.event_timer_remove(self._timer)
        wm.progress_end()
        context.workspace.status_text_set(None)

    def modal(self, context, event):
        if event.type == "ESC":
            self._job.cancel()
            self._finish(context)
            context.scene.fastavatar.status = "Generate cancelled; the scene is unchanged"
            self.report({"WARNING"}, context.scene.fastavatar.status)
            return {"CANCELLED"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        job = self._job
        if not job.done:
            context.window_manager.progress_update(int(100 * job.fraction))
            context.workspace.status_text_set(f"FastAvatar: {job.status} (Esc to cancel)")
            return {"RUNNING_MODAL"}
        self._finish(context)
        if job.error is not None:
            msg = engine.describe_error(job.error)
            context.scene.fastavatar.status = msg
            self.report({"ERROR"}, msg)
            return {"CANCELLED"}
        obj = _apply_result(context, job.result, self._label, self._fi)
        dt = time.perf_counter() - self._t0
        context.scene.fastavatar.status = f"Created {obj.name} ({len(obj.data.vertices)} splats) in {dt:.2f} s"
        self.report({"INFO"}, context.scene.fastavatar.status)
        return {"FINISHED"}


# ---------------------------------------------------------------------- engine management
_INSTALL: dict = {}


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


def _bundled_wheel() -> Path:
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
            cmds = install_commands(venv, _bundled_wheel(), Path(__file__).parent / "constraints.txt")
        except FileNotFoundError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        job = engine.Job(lambda progress, cancelled: run_install(cmds, progress, cancelled))
        _INSTALL["job"] = job
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
        job = _INSTALL["job"]
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
        col.operator(FASTAVATAR_OT_generate.bl_idname, icon="USER")
        if settings.status:
            col.label(text=settings.status[:90])
        box = col.box()
        _draw_engine_status(box)
        box.operator(FASTAVATAR_OT_stop_engine.bl_idname, icon="CANCEL")
        obj = context.active_object
        if avatar_mod.is_avatar(obj):
            b = col.box()
            b.label(text=f"{obj.name}: {len(obj.data.vertices)} splats", icon="OUTLINER_OB_POINTCLOUD")
            b.label(text=f"Model: {obj.fastavatar.model_id}")
            b.label(text=f"Photo: {Path(obj.fastavatar.photo).name}")


_CLASSES = (FASTAVATAR_AP_preferences, FastAvatarObjectProps, FastAvatarSceneProps, FASTAVATAR_OT_generate,
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


def unregister():
    engine.stop_engine()
    del bpy.types.Scene.fastavatar
    del bpy.types.Object.fastavatar
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
