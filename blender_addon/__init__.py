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
from .operators.jobs import ACTIVE_JOB, JobModal, redraw, engine_free, active_avatar, FASTAVATAR_OT_cancel_job  # noqa: F401 (moved)
from .operators.generate import generate_avatar, apply_result, FASTAVATAR_OT_generate, FASTAVATAR_OT_generate_multi  # noqa: F401 (moved)
from .operators.directions import FASTAVATAR_OT_add_direction, FASTAVATAR_OT_add_all_directions, FASTAVATAR_OT_remove_direction, FASTAVATAR_OT_train_direction, FASTAVATAR_OT_direction_from_photos  # noqa: F401 (moved)
from .operators.refine import FASTAVATAR_OT_refine  # noqa: F401 (moved)
from .operators.interpolate import FASTAVATAR_OT_interpolate  # noqa: F401 (moved)
from .operators.export import EXPORT_FORMATS, avatar_gaussians_for_export, FASTAVATAR_OT_export, export_menu  # noqa: F401 (moved)
from .operators.engine_service import INSTALL, install_commands, bundled_wheel, run_install, FASTAVATAR_OT_install_engine, FASTAVATAR_OT_stop_engine  # noqa: F401 (moved)


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


# ---------------------------------------------------------------------- editing


# ---------------------------------------------------------------------- export


# ---------------------------------------------------------------------- engine management


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
