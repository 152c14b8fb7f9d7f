"""The direction library on disk, as the panel and the direction operators see it.

The folder is the preference, ``$FASTAVATAR_DIRECTIONS_DIR`` or the extension's user folder;
the files are read with :mod:`fastavatar_engine.directions` (numpy only) and cached per folder
listing."""

from __future__ import annotations

import os
from pathlib import Path

import bpy

from . import avatar as avatar_mod
from . import engine


def directions_dir() -> Path:
    """The direction library folder: the preference, else $FASTAVATAR_DIRECTIONS_DIR, else the
    extension's user folder (``~/.fastavatar/directions`` outside the extension system)."""
    prefs = engine.preferences()
    choice = prefs.directions_dir.strip() if prefs is not None else ""
    if choice:
        return Path(bpy.path.abspath(choice))
    env = os.environ.get("FASTAVATAR_DIRECTIONS_DIR", "").strip()
    if env:
        return Path(env)
    try:
        return Path(bpy.utils.extension_path_user(engine.addon_package(), path="directions", create=True))
    except (ValueError, AttributeError, TypeError):
        return Path.home() / ".fastavatar" / "directions"


_DIRECTION_ITEMS: list = []  # Blender needs the enum item strings kept alive


_LIBRARY_CACHE: dict = {}


def library_directions(model_id: str):
    """(directions, problems) of the library for ``model_id``: the directions shipped with the
    packaged model (smile, age, gender for the default model), then the library folder's (a file
    of the same name replaces the shipped one). The files are parsed again only when the
    folder's listing or a file's modification time changed (the panel asks on every redraw)."""
    from fastavatar_engine.directions import load_library, shipped_directions

    folder = directions_dir()
    try:
        stamp = tuple(sorted((q.name, q.stat().st_mtime_ns) for q in folder.glob("*.json")))
    except OSError:
        stamp = ()
    key = (str(folder), model_id)
    hit = _LIBRARY_CACHE.get(key)
    if hit is None or hit[0] != stamp:
        own, problems = load_library(folder, model_id)
        merged = {d.name: d for d in shipped_directions(model_id)}
        merged.update({d.name: d for d in own})
        hit = (stamp, ([merged[k] for k in sorted(merged)], problems))
        _LIBRARY_CACHE[key] = hit
    return hit[1]


def direction_items(context):
    obj = getattr(context, "active_object", None) if context is not None else None
    items = []
    if avatar_mod.is_avatar(obj):
        dirs, _ = library_directions(obj.fastavatar.model_id)
        for d in dirs:
            acc = d.accuracy.get("cross_validated")
            items.append((d.name, d.name, f"{d.name} (cross-validated accuracy {acc})" if acc is not None else d.name))
    _DIRECTION_ITEMS[:] = items or [("NONE", "(none for this model)", "No direction in the library for this model")]
    return _DIRECTION_ITEMS
