"""F-curves of an action on every supported Blender line: the legacy ``action.fcurves`` (before
4.4) and layered actions (layers -> strips -> channel bags, 4.4 and later). bpy only."""

from __future__ import annotations


def fcurves(action):
    """Every F-curve of ``action`` (legacy ``action.fcurves`` before 4.4, layered actions after)."""
    if hasattr(action, "layers") and len(getattr(action, "layers", [])):
        out = []
        for layer in action.layers:
            for strip in layer.strips:
                for bag in getattr(strip, "channelbags", []):
                    out.extend(bag.fcurves)
        return out
    return list(getattr(action, "fcurves", []))


def remove_fcurve(action, fc):
    """Remove ``fc`` from ``action`` (either API)."""
    if hasattr(action, "layers") and len(getattr(action, "layers", [])):
        for layer in action.layers:
            for strip in layer.strips:
                for bag in getattr(strip, "channelbags", []):
                    if fc in list(bag.fcurves):
                        bag.fcurves.remove(fc)
                        return
    action.fcurves.remove(fc)
