"""*Export Gaussian Splats* (N-panel and File > Export): INRIA PLY, ``.splat``, ``.spz`` and glTF
``.glb`` through :func:`fastavatar_engine.export.export_gaussians` (numpy only)."""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, StringProperty
from bpy_extras.io_utils import ExportHelper

from .. import avatar as avatar_mod
from .. import editing, engine
from .jobs import active_avatar, engine_free


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
    packed = editing.expand_to_parents(editing.pack_gaussians(engine.get_client().decode(state.base)[0]), state.parents)
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
