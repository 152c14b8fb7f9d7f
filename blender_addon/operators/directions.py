"""Attribute directions on the active avatar: *Add Direction* / *All* (sliders from the library or a
file), *Remove*, *Train Direction* (linear SVM on labelled avatars' codes) and *Direction from
Photos* (labels from each photo's landmarks)."""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np
from bpy.props import StringProperty

from .. import avatar as avatar_mod
from .. import editing, engine
from ..direction_library import directions_dir, library_directions
from .jobs import JobModal, active_avatar, engine_free


class FASTAVATAR_OT_add_direction(bpy.types.Operator):
    """Add a slider for an attribute direction (from the library, or a direction file) to the active avatar"""

    bl_idname = "fastavatar.add_direction"
    bl_label = "Add Direction"
    bl_options = {"REGISTER", "UNDO"}

    name: StringProperty(name="Direction", description="Library direction name (empty: the panel's choice)")
    filepath: StringProperty(name="File", subtype="FILE_PATH", description="Direction file instead of the library")

    def execute(self, context):
        from fastavatar_engine.directions import DirectionError, direction_filename, load_direction, load_library

        obj = active_avatar(context, self)
        if obj is None:
            return {"CANCELLED"}
        try:
            if self.filepath:
                d = load_direction(bpy.path.abspath(self.filepath))
            else:
                name = self.name or context.scene.fastavatar.direction
                if not name or name == "NONE":
                    raise DirectionError(f"no direction for model {obj.fastavatar.model_id!r} in {directions_dir()}")
                path = directions_dir() / direction_filename(name)
                if path.is_file():
                    d = load_direction(path)
                else:
                    found = [x for x in library_directions(obj.fastavatar.model_id)[0] + load_library(directions_dir())[0]
                             if x.name == name]
                    if not found:
                        raise DirectionError(f"direction {name!r} not found in {directions_dir()}")
                    d = found[0]
            editing.add_direction(obj, d)
        except (DirectionError, KeyError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"{obj.name}: added direction {d.name!r}")
        return {"FINISHED"}


class FASTAVATAR_OT_add_all_directions(bpy.types.Operator):
    """Add a slider for every direction of the active avatar's model in the library"""

    bl_idname = "fastavatar.add_all_directions"
    bl_label = "Add All Directions"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        obj = active_avatar(context, self)
        if obj is None:
            return {"CANCELLED"}
        dirs, problems = library_directions(obj.fastavatar.model_id)
        added = [d.name for d in dirs if d.name not in obj.fastavatar.edits]
        for d in dirs:
            if d.name in added:
                editing.add_direction(obj, d)
        msg = (f"{obj.name}: added {len(added)} direction(s)" + (f": {', '.join(added)}" if added else "")
               + (f"; {len(problems)} unreadable file(s) skipped" if problems else ""))
        context.scene.fastavatar.status = msg
        self.report({"WARNING"} if problems else {"INFO"}, msg)
        return {"FINISHED"}


class FASTAVATAR_OT_remove_direction(bpy.types.Operator):
    """Remove a direction slider (and its keyframes) from the active avatar"""

    bl_idname = "fastavatar.remove_direction"
    bl_label = "Remove Direction"
    bl_options = {"REGISTER", "UNDO"}

    name: StringProperty(name="Direction")

    def execute(self, context):
        obj = active_avatar(context, self)
        if obj is None or not engine_free(self):
            return {"CANCELLED"}
        editing.remove_direction(obj, self.name)
        editing.update_exact(obj)
        return {"FINISHED"}


class FASTAVATAR_OT_train_direction(bpy.types.Operator):
    """Learn a direction (linear SVM on the codes) from the avatars labelled Has / Lacks, save it in the library"""

    bl_idname = "fastavatar.train_direction"
    bl_label = "Train Direction"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        from fastavatar_engine.directions import (
            DirectionError, direction_filename, direction_from_json, save_direction,
        )

        if not engine_free(self):
            return {"CANCELLED"}
        name = context.scene.fastavatar.direction_name.strip()
        labelled = [o for o in context.scene.objects if avatar_mod.is_avatar(o) and o.fastavatar.label != "NONE"]
        models = {o.fastavatar.model_id for o in labelled}
        try:
            if len(models) > 1:
                raise DirectionError(f"labelled avatars come from several models ({', '.join(sorted(models))})")
            if not labelled:
                raise DirectionError("label avatars as Has / Lacks first (FastAvatar panel, Attribute)")
            codes = np.stack([avatar_mod.get_code(o) for o in labelled])
            labels = np.array([o.fastavatar.label == "HAS" for o in labelled], np.uint8)
            d = direction_from_json(engine.get_client().train_direction(
                codes, labels, name, source="Blender: " + ", ".join(o.name for o in labelled)[:400]))
            path = save_direction(d, directions_dir() / direction_filename(d.name))
        except DirectionError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        except Exception as e:  # noqa: BLE001
            self.report({"ERROR"}, engine.describe_error(e))
            return {"CANCELLED"}
        acc = d.accuracy
        msg = (f"Direction {d.name!r}: training accuracy {acc['train']:.2f}, cross-validated "
               f"{acc['cross_validated'] if acc['cross_validated'] is not None else 'n/a'} ({acc['folds']} folds); "
               f"saved to {path}")
        context.scene.fastavatar.status = msg
        self.report({"INFO"}, msg)
        return {"FINISHED"}


class FASTAVATAR_OT_direction_from_photos(JobModal, bpy.types.Operator):
    """Build an expression direction from a folder of photos, labelled automatically from their landmarks"""

    bl_idname = "fastavatar.direction_from_photos"
    bl_label = "Direction from Photos"

    def execute(self, context):
        settings = context.scene.fastavatar
        folder = Path(bpy.path.abspath(settings.photos_dir)) if settings.photos_dir else None
        exts = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"}
        photos = sorted(q for q in folder.iterdir() if q.suffix.lower() in exts) if folder and folder.is_dir() else []
        if len(photos) < 4:
            self.report({"ERROR"}, f"need a folder with at least 4 face photos, found {len(photos)}")
            return {"CANCELLED"}
        measure, name = settings.measure, settings.direction_name.strip() or settings.measure

        def fn(progress, cancelled):
            from fastavatar_engine.directions import median_split_labels
            from fastavatar_engine.client import EngineError

            client = engine.get_client()
            codes, values, skipped = [], [], []
            for i, q in enumerate(photos):
                if cancelled():
                    raise RuntimeError("cancelled")
                progress(f"Encoding {q.name} ({i + 1}/{len(photos)})", i / (len(photos) + 1))
                try:
                    code, header = client.encode(image_path=str(q))
                except EngineError as e:
                    skipped.append(f"{q.name}: {e}")
                    continue
                codes.append(code)
                values.append(header["measures"][measure])
            if len(codes) < 4:
                raise ValueError(f"only {len(codes)} photos with a face; skipped: {'; '.join(skipped[:3])}")
            labels = median_split_labels(values)
            progress("Training the SVM...", 0.95)
            d = client.train_direction(np.stack(codes), labels, name,
                                       source=f"photos in {folder}, label: {measure} above its median "
                                              f"({float(np.median(values)):.4f})")
            return d, len(codes), skipped

        return self.run_job(context, engine.Job(fn))

    def on_done(self, context, result):
        from fastavatar_engine.directions import direction_filename, direction_from_json, save_direction

        data, used, skipped = result
        d = direction_from_json(data)
        path = save_direction(d, directions_dir() / direction_filename(d.name))
        acc = d.accuracy
        return (f"Direction {d.name!r} from {used} photos ({len(skipped)} skipped): training accuracy "
                f"{acc['train']:.2f}, cross-validated {acc['cross_validated']}; saved to {path.name}")
