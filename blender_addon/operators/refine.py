"""*Refine Avatar*: the paper's full refinement of the active avatar against its photo(s), with
live previews (:class:`.editing.RefineSession`)."""

from __future__ import annotations

import bpy

from .. import editing
from .jobs import JobModal, active_avatar


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
