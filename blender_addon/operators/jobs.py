"""Running engine work from operators: :class:`JobModal` (synchronous in background mode; in the
UI a modal timer with progress in the status bar and the panel, Esc or *Cancel* leaves the
scene as it was), the one running job (:data:`ACTIVE_JOB`), *Cancel*, and the checks every
operator shares (an active avatar, an idle engine)."""

from __future__ import annotations

import time

import bpy

from .. import avatar as avatar_mod
from .. import engine


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


class FASTAVATAR_OT_cancel_job(bpy.types.Operator):
    """Cancel the running FastAvatar job (the scene stays as it was)"""

    bl_idname = "fastavatar.cancel_job"
    bl_label = "Cancel"

    def execute(self, context):
        if ACTIVE_JOB["job"] is not None:
            ACTIVE_JOB["job"].cancel()
        return {"FINISHED"}
