"""FastAvatar for Blender: a single face photo -> a 3D Gaussian Splatting head avatar object.

The 3D Viewport's sidebar (N) gets a *FastAvatar* tab with **Generate Avatar** (and *Generate
from Photos*). The photo goes to the FastAvatar engine, a PyTorch process started and kept warm
by :mod:`.engine` (torch never enters Blender's process); the Gaussians come back through the
pipe protocol and become an avatar object (:mod:`.avatar`). With an avatar active the tab offers
**Refine**, **Interpolate Avatars**, direction sliders with *Add Direction*, **Train Direction**
and *Direction from Photos* (:mod:`.editing` explains how edits, blends and refinements are
stored and kept up to date on the timeline), and an *Expressions* subpanel: 53 keyable ARKit
sliders and **Drive from Video** (:mod:`.expressions`). Engine work runs off the main thread in the UI
(modal operators, progress in the status bar and the panel, Esc or Cancel leaves the scene as it
was) and synchronously in background mode. Every operator that changes the scene is undoable.

Layout: this module only registers. :mod:`.preferences`, :mod:`.properties` and :mod:`.ui` are
the Blender-facing declarations; :mod:`.operators` holds one module per feature (generate,
refine, interpolate, directions, export, engine_service, jobs); :mod:`.avatar` (the avatar
object and its attributes), :mod:`.editing` (edits, blends, refinement residuals, the
timeline), :mod:`.engine` (the engine process and its numpy-only client),
:mod:`.photo_source` and :mod:`.direction_library` are the helpers they share.
"""

from __future__ import annotations

import bpy
from bpy.props import PointerProperty

from . import editing, engine, operators
from .preferences import FASTAVATAR_AP_preferences
from .properties import FastAvatarEdit, FastAvatarExpression, FastAvatarObjectProps, FastAvatarSceneProps
from .ui import FASTAVATAR_PT_expressions, FASTAVATAR_PT_main

_CLASSES = (FASTAVATAR_AP_preferences, FastAvatarEdit, FastAvatarExpression, FastAvatarObjectProps,
            FastAvatarSceneProps, *operators.CLASSES, FASTAVATAR_PT_main, FASTAVATAR_PT_expressions)


#: Whether :func:`register` ran without a matching :func:`unregister` (both may be called twice:
#: Blender as a Python module 5.x disables add-ons at exit itself, after our atexit handler).
_registered = False


def _unregister_at_exit():
    # Blender as a Python module (bpy from PyPI) 4.x hangs at interpreter exit while Python classes
    # are still registered; unregister first. (The Blender program disables add-ons itself.)
    unregister()


def register():
    import atexit

    global _registered
    if _registered:
        return
    _registered = True
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    if not bpy.app.binary_path:
        atexit.unregister(_unregister_at_exit)
        atexit.register(_unregister_at_exit)
    bpy.types.Object.fastavatar = PointerProperty(type=FastAvatarObjectProps)
    bpy.types.Scene.fastavatar = PointerProperty(type=FastAvatarSceneProps)
    editing.register_handlers()
    bpy.types.TOPBAR_MT_file_export.append(operators.export_menu)


def unregister():
    global _registered
    if not _registered:
        return
    _registered = False
    bpy.types.TOPBAR_MT_file_export.remove(operators.export_menu)
    editing.unregister_handlers()
    engine.stop_engine()
    del bpy.types.Scene.fastavatar
    del bpy.types.Object.fastavatar
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
