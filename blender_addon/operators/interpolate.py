"""*Interpolate Avatars*: a blended avatar of the two selected ones, its *Mix* keyframable."""

from __future__ import annotations

import bpy
from bpy.props import FloatProperty

from .. import avatar as avatar_mod
from .. import editing, engine
from .jobs import engine_free


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
