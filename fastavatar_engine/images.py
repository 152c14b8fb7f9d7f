"""The one loader for images that come from users (and from the sample data), built on Pillow.

Every photo the engine reads goes through :func:`load_image`, which returns ``[H, W, 3] uint8``
RGB and

* applies the EXIF orientation tag (phone photos are often stored sideways);
* converts grayscale (``L``, ``1``), palette (``P``, with transparency), ``CMYK``, ``YCbCr``,
  ``LAB``, 16-bit (``I;16*``, ``I``) and float (``F``) images to 8-bit RGB;
* composites transparency (``RGBA``, ``LA``, ``PA``) over white, the background the model
  was trained against;
* refuses images above :data:`MAX_PIXELS` before decoding them (decompression bombs);
* raises :class:`ImageLoadError` (naming the file) for missing, zero-byte, non-image, truncated
  or otherwise undecodable files.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Largest image accepted, in pixels (width x height). 64 MP covers every camera sensor in use.
MAX_PIXELS = 64_000_000


class ImageLoadError(ValueError):
    """A user-supplied image cannot be used; the message names the file and the reason."""


_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _high_depth_to_unit(img: Image.Image) -> np.ndarray:
    """A 16-bit (``I;16*``), 32-bit integer (``I``) or float (``F``) image as float64 in [0, 1].

    ``I;16*``: divided by 65535.  ``I``: by 65535 when any value exceeds 255, else by 255.
    ``F``: taken as [0, 1] when no value exceeds 1, else as [0, 255]. NaN becomes 0; values
    outside the range are clipped.
    """
    mode = img.mode
    a = np.asarray(img).astype(np.float64)
    a = np.nan_to_num(a, nan=0.0, posinf=np.finfo(np.float64).max, neginf=0.0)
    peak = a.max(initial=0.0)
    if mode.startswith("I;16"):
        hi = 65535.0
    elif mode == "F":
        hi = 1.0 if peak <= 1.0 else 255.0
    else:  # "I"
        hi = 65535.0 if peak > 255 else 255.0
    return np.clip(a / hi, 0.0, 1.0)


def _to_rgb8(img: Image.Image, name: str) -> np.ndarray:
    mode = img.mode
    if mode in _HIGH_DEPTH_MODES:
        g = np.round(_high_depth_to_unit(img) * 255.0).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    if mode != "RGB":
        img = img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV ...
    return np.asarray(img)


def open_image(source, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and fully decode ``source`` (path or bytes) with EXIF orientation applied.

    Returns a Pillow image in its file's mode. Raises :class:`ImageLoadError`.
    """
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    if not isinstance(source, (bytes, bytearray)):
        path = Path(source)
        if not path.exists():
            raise ImageLoadError(f"{name}: file not found")
        if path.is_dir():
            raise ImageLoadError(f"{name}: is a directory, not an image")
        try:
            if path.stat().st_size == 0:
                raise ImageLoadError(f"{name}: file is empty (0 bytes)")
            fp = open(path, "rb")
        except OSError as exc:  # permission denied, special files, ...
            raise ImageLoadError(f"{name}: cannot open file ({exc})") from exc
    else:
        if len(source) == 0:
            raise ImageLoadError(f"{name}: empty image data")
        fp = io.BytesIO(bytes(source))
    try:
        with warnings.catch_warnings():
            # Our own ``max_pixels`` check below is the authority: Pillow's softer warning
            # threshold (Image.MAX_IMAGE_PIXELS, ~89 MP) must not refuse an image a caller has
            # allowed. Pillow still refuses above twice that (DecompressionBombError).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                img = Image.open(fp)
            except UnidentifiedImageError as exc:
                raise ImageLoadError(f"{name}: not a recognised image format") from exc
            except Image.DecompressionBombError as exc:
                raise ImageLoadError(f"{name}: image is too large to load safely ({exc})") from exc
            except Exception as exc:  # OSError / EOFError / SyntaxError / struct.error from a cut header
                raise ImageLoadError(
                    f"{name}: image header is truncated or corrupt ({type(exc).__name__}: {exc})"
                ) from exc
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ImageLoadError(f"{name}: image has zero size {w}x{h}")
            if w * h > max_pixels:
                raise ImageLoadError(
                    f"{name}: image is {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,}"
                )
            try:
                img.load()
                img = ImageOps.exif_transpose(img)
            except Exception as exc:  # decoders raise OSError, EOFError, SyntaxError, ValueError, ...
                raise ImageLoadError(
                    f"{name}: image data is truncated or corrupt ({type(exc).__name__}: {exc})"
                ) from exc
        return img
    finally:
        fp.close()


def load_image(source, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Load a photo as ``[H, W, 3] uint8`` RGB (see the module docstring for what is converted).

    ``source``: a path (str / PathLike) or the encoded file's bytes.
    Raises :class:`ImageLoadError` naming the file when it cannot be used.
    """
    img = open_image(source, max_pixels)
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else os.fspath(source)
    try:
        arr = _to_rgb8(img, name)
    except (OSError, ValueError) as exc:
        raise ImageLoadError(f"{name}: cannot convert image mode {img.mode} to RGB ({exc})") from exc
    return np.ascontiguousarray(arr, dtype=np.uint8)


def load_mask(source, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Load a foreground mask as ``[H, W] float32`` in [0, 1] (grey levels kept; colour masks averaged)."""
    img = open_image(source, max_pixels)
    if img.mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_unit(img).astype(np.float32)
    return (np.asarray(img.convert("L"), dtype=np.float32) / 255.0)


#: Diagonal of the 35 mm film frame (36 x 24 mm), for EXIF FocalLengthIn35mmFilm.
FILM_DIAGONAL_MM = 43.2666


def exif_focal_px(source) -> float | None:
    """Focal length in pixels of the photo ``source`` (path or bytes) from its EXIF
    ``FocalLengthIn35mmFilm`` tag (0xA405), or None when the photo has none (or is unreadable).

    The 35 mm-equivalent focal length maps the image diagonal to the 43.27 mm film diagonal, so
    ``f_px = f35 * hypot(W, H) / 43.27`` for the image as stored (orientation does not change the
    diagonal). The plain ``FocalLength`` tag is not used: without the sensor size it does not
    give a field of view. Values outside 8-2000 mm are ignored as corrupt.
    """
    import io

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as img:
            exif = img.getexif()
            f35 = exif.get_ifd(0x8769).get(0xA405) if exif else None
            w, h = img.size
    except (OSError, ValueError, SyntaxError):
        return None
    try:
        f35 = float(f35)
    except (TypeError, ValueError):
        return None
    if not 8.0 <= f35 <= 2000.0:
        return None
    return f35 * float(np.hypot(w, h)) / FILM_DIAGONAL_MM


def resample(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Box-filter resample a uint8 ``[H,W]`` or ``[H,W,C]`` image to ``size`` = (width, height).

    Returns the input unchanged when it already has that size.
    """
    pil = Image.fromarray(np.asarray(image))
    return np.asarray(pil.resize(tuple(size), Image.BOX)) if pil.size != tuple(size) else image


def save_png(path, rgb: np.ndarray) -> Path:
    """Write ``rgb`` ([H,W,3] or [H,W], uint8 or float in [0,1]) as PNG, atomically. Returns the path."""
    from .ply import _atomic_write

    a = np.asarray(rgb)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ValueError(f"save_png: expected [H,W] or [H,W,3] array, got shape {a.shape}")
    if a.dtype.kind in "iu" and a.dtype != np.uint8:
        # Ambiguous (0-255? 0-65535? 0/1?): multiplying by 255 would silently saturate it.
        raise ValueError(f"save_png: integer arrays must be uint8 (or pass floats in [0, 1]), got {a.dtype}")
    if a.dtype != np.uint8:
        f = np.nan_to_num(np.asarray(a, dtype=np.float64), nan=0.0)
        a = np.clip(np.round(f * 255.0), 0, 255).astype(np.uint8)
    path = Path(path)
    _atomic_write(path, lambda tmp: Image.fromarray(a).save(tmp, format="PNG"))
    return path
