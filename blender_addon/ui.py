"""The FastAvatar tab of the 3D Viewport's sidebar (N) and the engine status line it shares with the
preferences."""

from __future__ import annotations

from pathlib import Path

import bpy

from . import avatar as avatar_mod
from . import editing, engine, expressions
from .operators.drive import FASTAVATAR_OT_clear_performance, FASTAVATAR_OT_drive, FASTAVATAR_OT_reset_expression
from .operators.directions import (
    FASTAVATAR_OT_add_all_directions, FASTAVATAR_OT_add_direction, FASTAVATAR_OT_direction_from_photos,
    FASTAVATAR_OT_remove_direction, FASTAVATAR_OT_train_direction,
)
from .operators.engine_service import INSTALL, FASTAVATAR_OT_install_engine, FASTAVATAR_OT_stop_engine
from .operators.export import FASTAVATAR_OT_export
from .operators.generate import FASTAVATAR_OT_generate, FASTAVATAR_OT_generate_multi
from .operators.interpolate import FASTAVATAR_OT_interpolate
from .operators.jobs import ACTIVE_JOB, FASTAVATAR_OT_cancel_job
from .operators.refine import FASTAVATAR_OT_refine


def draw_engine_status(layout):
    """The engine's interpreter (or why there is none, with *Install Engine*) and a running install's status."""
    try:
        python = engine.engine_python()
        layout.label(text=f"Engine: {python}", icon="CHECKMARK")
    except engine.EngineNotInstalled as e:
        layout.label(text=str(e).split(":")[0], icon="ERROR")
        layout.operator(FASTAVATAR_OT_install_engine.bl_idname, icon="IMPORT")
    if INSTALL.get("job") is not None and not INSTALL["job"].done:
        layout.label(text=INSTALL["job"].status[:80] or "Installing...", icon="TIME")


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
        b.label(text=f"{obj.name}: {avatar_mod.splat_count(obj.data)} splats", icon="OUTLINER_OB_POINTCLOUD")
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


class FASTAVATAR_PT_expressions(bpy.types.Panel):
    """The active avatar's face rig: *Drive from Video* and the 53 keyable expression sliders,
    grouped (brows, eyes, jaw, mouth, cheeks, nose)."""

    bl_label = "Expressions"
    bl_idname = "FASTAVATAR_PT_expressions"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "FastAvatar"
    bl_parent_id = "FASTAVATAR_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    @classmethod
    def poll(cls, context):
        return avatar_mod.is_avatar(context.active_object)

    def draw(self, context):
        obj, settings = context.active_object, context.scene.fastavatar
        col = self.layout.column()
        if expressions.effective_head(obj) is None:
            col.label(text="No face rig: made before the head model", icon="INFO")
            col.label(text="Generate the avatar again to drive it")
            return
        d = col.box()
        d.prop(settings, "drive_source")
        row = d.row()
        row.prop(settings, "drive_same_person")
        row.prop(settings, "drive_pose")
        d.prop(settings, "drive_smooth")
        d.operator(FASTAVATAR_OT_drive.bl_idname, icon="FILE_MOVIE")
        row = col.row(align=True)
        row.operator(FASTAVATAR_OT_reset_expression.bl_idname, icon="LOOP_BACK")
        row.operator(FASTAVATAR_OT_clear_performance.bl_idname, icon="TRASH")
        e = obj.fastavatar.expression
        for label, names in expressions.grouped():
            box = col.box()
            box.label(text=label)
            grid = box.grid_flow(row_major=True, columns=2, even_columns=True, align=True)
            for name in names:
                grid.prop(e, name, slider=True)
