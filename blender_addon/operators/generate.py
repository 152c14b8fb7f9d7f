"""*Generate Avatar* and *Generate from Photos*: photo(s) to the engine, a new avatar object back."""

from __future__ import annotations

import os
from pathlib import Path

import bpy
from bpy.props import BoolProperty, CollectionProperty, IntProperty, StringProperty

from .. import avatar as avatar_mod
from .. import editing, engine, expressions
from ..photo_source import resolve_photo
from ..properties import FIT_STEPS_DEFAULT
from .jobs import JobModal


def generate_avatar(path, pixels, face_index, progress=None, cancelled=None, fit_steps: int = FIT_STEPS_DEFAULT):
    """Run generate on the engine (with ``fit_steps`` of likeness fit against the photo, 0: none);
    returns (GaussianSet, code, header). Engine errors propagate."""
    client = engine.get_client()
    if progress:
        progress("Starting the engine..." if not client.alive else "Generating...", 0.1)
    client.start()
    if progress:
        progress("Generating...", 0.2)

    def on_step(h):
        if progress and h.get("stage") == "refine" and h.get("total"):
            progress(f"Fitting to the photo {h['step']}/{h['total']}", 0.2 + 0.8 * h["step"] / h["total"])

    return client.generate(image_path=path, pixels=pixels, face_index=None if face_index < 0 else face_index,
                           refine_steps=int(fit_steps), cancel=cancelled, progress=on_step)


def apply_result(context, result, label, face_index, photos=None):
    g, code, header = result
    name = Path(label).stem if label else "Avatar"
    obj = avatar_mod.create_avatar_object(
        context, g, code, name=f"Avatar_{name}"[:60], model_id=header.get("model_id", ""),
        photo=label, face_index=face_index, camera=header.get("camera"),
        refined_steps=int(header.get("refined_steps", 0)))
    if photos:
        obj[editing.PHOTOS_KEY] = [str(q) for q in photos]
    base = header.get("arrays", {}).get("base_packed")
    if base is not None:  # refined or on the photo's own head: keep it as a residual, like Refine does
        editing.set_residual(obj.data, editing.pack_gaussians(g) - base)
    editing.set_parents(obj, header.get("arrays", {}).get("parents"))  # Gaussians grown by the fit
    expressions.set_head(obj, header.get("arrays", {}).get("head"))  # the face rig rides on the fitted head
    for o in context.view_layer.objects:
        o.select_set(False)
    obj.select_set(True)
    context.view_layer.objects.active = obj
    return obj


class FASTAVATAR_OT_generate(JobModal, bpy.types.Operator):
    """Turn the chosen face photo into a 3D Gaussian head avatar at the 3D cursor"""

    bl_idname = "fastavatar.generate"
    bl_label = "Generate Avatar"
    bl_options = {"REGISTER", "UNDO"}

    def invoke(self, context, event):
        return self.execute(context)

    def execute(self, context):
        try:
            path, pixels, label = resolve_photo(context)
            if not bpy.app.background:
                engine.engine_python()
        except (ValueError, engine.EngineNotInstalled) as e:
            context.scene.fastavatar.status = str(e)
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self._label, self._fi = label, context.scene.fastavatar.face_index
        fi, fit = self._fi, context.scene.fastavatar.fit_steps
        return self.run_job(context, engine.Job(
            lambda progress, cancelled: generate_avatar(path, pixels, fi, progress, cancelled, fit)))

    def on_done(self, context, result):
        obj = apply_result(context, result, self._label, self._fi)
        return f"Created {obj.name} ({avatar_mod.splat_count(obj.data)} splats)"


class FASTAVATAR_OT_generate_multi(JobModal, bpy.types.Operator):
    """Generate one avatar from several photos of the same person (fused code; optional refinement against all of them)"""

    bl_idname = "fastavatar.generate_multi"
    bl_label = "Generate from Photos"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(subtype="DIR_PATH")
    files: CollectionProperty(type=bpy.types.OperatorFileListElement)
    filter_image: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    refine_steps: IntProperty(name="Refine Steps", default=0, min=0, soft_max=2000,
                              description="Refine against all the photos afterwards (0: feed-forward only)")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        paths = [str(Path(bpy.path.abspath(self.directory)) / f.name) for f in self.files if f.name]
        missing = [q for q in paths if not os.path.isfile(q)]
        if len(paths) < 1 or missing:
            msg = f"photos not found: {', '.join(missing[:3])}" if missing else "select one or more photos"
            self.report({"ERROR"}, msg)
            return {"CANCELLED"}
        fi, steps = context.scene.fastavatar.face_index, self.refine_steps
        self._paths, self._fi = paths, fi

        def fn(progress, cancelled):
            client = engine.get_client()
            progress(f"Generating from {len(paths)} photos...", 0.1)

            def on_progress(h):
                if h.get("stage") == "refine":
                    progress(f"Refining {h['step']}/{h['total']}", h["step"] / h["total"])

            return client.generate(image_paths=paths, face_index=None if fi < 0 else fi, refine_steps=steps,
                                   progress=on_progress, cancel=cancelled)

        return self.run_job(context, engine.Job(fn))

    def on_done(self, context, result):
        obj = apply_result(context, result, self._paths[0], self._fi, photos=self._paths)
        return f"Created {obj.name} from {len(self._paths)} photos"
