"""FastAvatar for Blender (extension entry point).

Foundation stage: this registers the "FastAvatar" tab in the 3D Viewport's sidebar (N-panel)
and reports whether the bundled engine client library (the ``fastavatar`` wheel, numpy-only)
imports inside Blender. Generate Avatar, the engine subprocess and the avatar object arrive
with the Blender-extension work (see the project README); nothing here imports torch.
"""

import bpy


def _client_status() -> str:
    try:
        import fastavatar_engine

        return f"engine client {fastavatar_engine.__version__} loaded"
    except Exception as exc:  # the wheel missing or broken: say so in the panel
        return f"engine client unavailable: {type(exc).__name__}"


class FASTAVATAR_PT_main(bpy.types.Panel):
    """Sidebar panel of the FastAvatar tab."""

    bl_label = "FastAvatar"
    bl_idname = "FASTAVATAR_PT_main"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "FastAvatar"

    def draw(self, context):
        col = self.layout.column()
        col.label(text=_client_status())
        col.label(text="Generate Avatar: not in this build yet")


_CLASSES = (FASTAVATAR_PT_main,)


def register():
    for cls in _CLASSES:
        bpy.utils.register_class(cls)


def unregister():
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
