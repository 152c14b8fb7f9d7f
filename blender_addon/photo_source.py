"""Where the photo for Generate comes from: an image datablock, an image empty, or a file path.

Blender-side, numpy only (no engine import)."""

from __future__ import annotations

import os

import bpy
import numpy as np


def image_pixels(image) -> np.ndarray:
    """[H,W,3] uint8 RGB (top row first) from an image datablock."""
    w, h = image.size
    if w == 0 or h == 0:
        raise ValueError(f"image {image.name!r} has no pixels")
    px = np.empty(w * h * image.channels, np.float32)
    image.pixels.foreach_get(px)
    px = px.reshape(h, w, image.channels)[::-1]
    rgb = px[..., :3] if image.channels >= 3 else np.repeat(px[..., :1], 3, axis=2)
    if image.channels == 4:  # composite over white, like the engine's loader
        a = px[..., 3:4]
        rgb = rgb * a + (1 - a)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def resolve_photo(context) -> tuple[str | None, np.ndarray | None, str]:
    """(file path, pixels, label) of the photo to use: the panel's image datablock, else the
    active object's reference image (an image empty), else the panel's file path."""
    settings = context.scene.fastavatar
    image = settings.image
    obj = context.active_object
    if image is None and obj is not None and obj.type == "EMPTY" and obj.empty_display_type == "IMAGE":
        image = obj.data
    if image is not None:
        path = bpy.path.abspath(image.filepath) if image.filepath else ""
        if path and os.path.isfile(path) and image.packed_file is None:
            return path, None, path
        return None, image_pixels(image), image.name
    path = bpy.path.abspath(settings.photo_path) if settings.photo_path else ""
    if not path:
        raise ValueError("choose a photo (file path or image) in the FastAvatar panel")
    if not os.path.isfile(path):
        raise ValueError(f"photo not found: {path}")
    return path, None, path
