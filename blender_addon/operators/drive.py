"""*Drive from Video* (a video, a folder of frames, a Live Link Face CSV or an expressions JSON ->
the active avatar's expression coefficients, and optionally its head motion, keyed on the
timeline) and *Reset Expression*."""

from __future__ import annotations

import os

import bpy
from bpy.props import IntProperty, StringProperty

from .. import editing, engine, expressions
from .jobs import JobModal, active_avatar


def track_job(path: str, head, smooth: float):
    """``fn(progress, cancelled)`` for :class:`engine.Job`: the engine tracks ``path`` (holding
    ``head`` [100] when given) and returns (header, arrays) of the sequence (``client.track``)."""

    def fn(progress, cancelled):
        client = engine.get_client()
        progress("Starting the engine..." if not client.alive else "Reading the performance...", 0.0)

        def on_progress(h):
            if h.get("stage") == "track":
                total = h.get("total")
                frac = h["step"] / total if total else 0.5
                progress(f"Tracking frame {h['step']}/{total or '?'}", min(frac, 1.0))

        return client.track(path, head=head, smooth=smooth, progress=on_progress, cancel=cancelled)

    return fn


def apply_performance(context, obj, result, start: float, pose: bool) -> str:
    """Key ``result`` (``client.track``'s (header, arrays)) on ``obj`` from scene frame ``start``;
    returns the report. Raises ValueError for a malformed sequence."""
    header, arrays = result
    names = header.get("names")
    if list(names or []) != list(expressions.EXPRESSION_NAMES):
        raise ValueError("the engine's expression names differ from the add-on's: update the add-on or the engine")
    scene = context.scene
    first, last = expressions.key_performance(
        obj, scene, float(header["fps"]), arrays["coefficients"],
        arrays["rotations"] if pose else None, arrays["translations"] if pose else None, start=start)
    scene.frame_set(int(round(first)))
    missing = int(header.get("missing", 0))
    gaps = f"; {missing} frames without a face were interpolated" if missing else ""
    return (f"Drove {obj.name}: {header['frames']} frames at {header['fps']:g} fps on frames "
            f"{first:g}-{last:g}{' with head motion' if pose else ''}{gaps}")


class FASTAVATAR_OT_drive(JobModal, bpy.types.Operator):
    """Track a video (or read a Live Link Face CSV or expressions JSON) and key the avatar's expressions"""

    bl_idname = "fastavatar.drive"
    bl_label = "Drive from Video"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="Performance", subtype="FILE_PATH",
                             description="Video, frames folder, .csv or .json (default: the panel's)")
    start_frame: IntProperty(name="Start Frame", default=-1000000,
                             description="Scene frame of the performance's first frame (default: the current frame)")

    def execute(self, context):
        obj = active_avatar(context, self)
        if obj is None:
            return {"CANCELLED"}
        settings = context.scene.fastavatar
        head = expressions.effective_head(obj)
        source = bpy.path.abspath(self.filepath or settings.drive_source)
        msg = None
        if head is None:
            msg = f"{obj.name} has no face rig (made before the head model): generate it again to drive it"
        elif not source or not os.path.exists(source):
            msg = f"performance not found: {source or '(none chosen)'}"
        elif expressions.get_head(obj) is None and settings.drive_same_person:
            msg = f"{obj.name} is a blend: untick 'Video Shows This Person'"
        if msg:
            settings.status = msg
            self.report({"ERROR"}, msg)
            return {"CANCELLED"}
        self._obj_name = obj.name
        self._start = context.scene.frame_current if self.start_frame == -1000000 else self.start_frame
        self._pose = settings.drive_pose
        return self.run_job(context, engine.Job(
            track_job(source, head if settings.drive_same_person else None, settings.drive_smooth)))

    def on_done(self, context, result):
        obj = bpy.data.objects.get(self._obj_name)
        if obj is None:
            raise ValueError(f"{self._obj_name} was deleted while tracking")
        return apply_performance(context, obj, result, self._start, self._pose)


class FASTAVATAR_OT_reset_expression(bpy.types.Operator):
    """Set every expression coefficient of the active avatar to 0 (keys are kept)"""

    bl_idname = "fastavatar.reset_expression"
    bl_label = "Reset Expression"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        obj = active_avatar(context, self)
        if obj is None:
            return {"CANCELLED"}
        expressions.set_values(obj, [0.0] * len(expressions.EXPRESSION_NAMES))
        editing.on_parameter_changed(obj)
        return {"FINISHED"}


class FASTAVATAR_OT_clear_performance(bpy.types.Operator):
    """Remove the active avatar's expression keys and keyed head motion (back to its rest transform)"""

    bl_idname = "fastavatar.clear_performance"
    bl_label = "Clear Performance"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        obj = active_avatar(context, self)
        if obj is None:
            return {"CANCELLED"}
        rest = obj.get(expressions.REST_KEY)
        expressions.clear_keys(obj, pose=True)
        if rest is not None:
            from mathutils import Matrix

            import numpy as np

            obj.matrix_basis = Matrix(np.asarray(rest, np.float64).reshape(4, 4).tolist())
            del obj[expressions.REST_KEY]
        expressions.set_values(obj, [0.0] * len(expressions.EXPRESSION_NAMES))
        editing.on_parameter_changed(obj)
        return {"FINISHED"}
