"""The add-on's preferences: the engine's interpreter, device, model weights and direction library."""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, StringProperty

from .ui import draw_engine_status


class FASTAVATAR_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = __package__  # the add-on package (this module sits at its top level)

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
