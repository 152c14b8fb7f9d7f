"""Tests for fastavatar_engine.images: every input file is generated here, in tmp_path."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile, features

from fastavatar_engine import images
from fastavatar_engine.images import MAX_PIXELS, ImageLoadError, load_image, load_mask, save_png


# --------------------------------------------------------------------------- helpers
def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _write(tmp_path, name: str, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _pattern(h: int = 48, w: int = 80) -> np.ndarray:
    """A non-square RGB image whose quadrants have distinct flat colours (JPEG-friendly, asymmetric
    under every rotation and flip)."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (230, 30, 30)  # top-left red
    a[: h // 2, w // 2 :] = (30, 200, 40)  # top-right green
    a[h // 2 :, : w // 2] = (20, 40, 220)  # bottom-left blue
    a[h // 2 :, w // 2 :] = (240, 230, 60)  # bottom-right yellow
    a[2:10, 2:20] = (255, 255, 255)  # a white bar near the top-left corner
    return a


class _Peek:
    """Mode, info, EXIF and pixels of a file as Pillow itself opens it (file closed afterwards)."""

    def __init__(self, path):
        with Image.open(path) as im:
            self.mode, self.info, self.exif = im.mode, dict(im.info), dict(im.getexif())
            self.pixels = np.asarray(im)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_claiming(width: int, height: int) -> bytes:
    """A valid-looking 8-bit greyscale PNG header claiming ``width`` x ``height`` with only one
    tiny IDAT (decoding it would need width*height bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@pytest.fixture
def load_spy(monkeypatch):
    """Counts calls to Pillow's decoder entry point (ImageFile.load) and makes them fail."""
    calls = []

    def spy(self, *a, **k):
        calls.append(self.size)
        raise OSError("decoder must not run (spy)")

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


# --------------------------------------------------------------------------- plain RGB and bytes
def test_rgb_png_exact_and_bytes_input(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(a), "PNG")
    p = _write(tmp_path, "rgb.png", data)
    out = load_image(p)
    assert out.dtype == np.uint8 and out.shape == (17, 23, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, a)
    np.testing.assert_array_equal(load_image(str(p)), a)
    np.testing.assert_array_equal(load_image(data), a)
    np.testing.assert_array_equal(load_image(bytearray(data)), a)


# --------------------------------------------------------------------------- EXIF orientation
@pytest.mark.parametrize("orientation, k", [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_applied(tmp_path, orientation, k):
    # 6: stored rotated, display needs 90 deg clockwise (np.rot90 k=-1); 8: counter-clockwise (k=1)
    a = _pattern()
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = _write(tmp_path, f"exif{orientation}.jpg", _encode(Image.fromarray(a), "JPEG", exif=exif, quality=95))
    assert _Peek(p).exif[0x0112] == orientation  # the tag really is in the file
    out = load_image(p).astype(np.int16)
    expected = np.rot90(a, k).astype(np.int16)
    assert out.shape == expected.shape
    err = np.abs(out - expected)
    assert err.mean() < 3.0 and np.median(err) <= 2
    # and clearly not any other orientation of the same pattern
    for other in {0, 1, 2, 3} - {k % 4}:
        cand = np.rot90(a, other).astype(np.int16)
        if cand.shape == out.shape:
            assert np.abs(out - cand).mean() > 40
        cand = np.fliplr(np.rot90(a, other)).astype(np.int16)
        if cand.shape == out.shape:
            assert np.abs(out - cand).mean() > 40


def test_no_exif_means_no_rotation(tmp_path):
    a = _pattern()
    out = load_image(_write(tmp_path, "plain.jpg", _encode(Image.fromarray(a), "JPEG", quality=95)))
    assert out.shape == a.shape
    assert np.abs(out.astype(int) - a).mean() < 3.0


# --------------------------------------------------------------------------- modes
def test_grayscale_L_replicated(tmp_path):
    g = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = load_image(_write(tmp_path, "l.png", _encode(Image.fromarray(g, "L"), "PNG")))
    assert out.shape == (16, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)


def test_one_bit(tmp_path):
    bits = np.random.default_rng(1).random((9, 13)) > 0.5
    img = Image.fromarray(bits.astype(np.uint8) * 255, "L").convert("1")
    p = _write(tmp_path, "bits.png", _encode(img, "PNG"))
    assert _Peek(p).mode == "1"
    out = load_image(p)
    expected = np.where(bits, 255, 0).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)


def test_rgba_composited_on_white_exact(tmp_path):
    colour = np.array([200, 100, 0])
    a = np.zeros((1, 256, 4), np.uint8)
    a[0, :, :3] = colour
    a[0, :, 3] = np.arange(256)
    out = load_image(_write(tmp_path, "rgba.png", _encode(Image.fromarray(a, "RGBA"), "PNG")))
    alpha = np.arange(256)[:, None] / 255.0
    expected = np.round(colour[None, :] * alpha + 255.0 * (1.0 - alpha))
    np.testing.assert_array_equal(out[0], expected)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])  # fully transparent -> white
    np.testing.assert_array_equal(out[0, 255], colour)  # opaque -> the colour
    np.testing.assert_array_equal(out[0, 128], [227, 177, 127])  # half transparent: 200*128/255 + 127 = 227.4


def test_la_composited_on_white(tmp_path):
    a = np.zeros((1, 256, 2), np.uint8)
    a[0, :, 0] = 60
    a[0, :, 1] = np.arange(256)
    p = _write(tmp_path, "la.png", _encode(Image.fromarray(a, "LA"), "PNG"))
    assert _Peek(p).mode == "LA"
    out = load_image(p)
    alpha = np.arange(256) / 255.0
    expected = np.round(60 * alpha + 255 * (1 - alpha))
    for c in range(3):
        np.testing.assert_array_equal(out[0, :, c], expected)


def test_palette_without_transparency(tmp_path):
    palette = [10, 20, 30, 200, 150, 100, 0, 255, 0] + [0] * (256 * 3 - 9)
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    img = Image.fromarray(idx, "P")
    img.putpalette(palette)
    p = _write(tmp_path, "p.png", _encode(img, "PNG"))
    peek = _Peek(p)
    assert peek.mode == "P" and "transparency" not in peek.info
    out = load_image(p)
    lut = np.array(palette, np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(out, lut[idx])


def test_palette_with_index_transparency(tmp_path):
    palette = [10, 20, 30, 200, 150, 100, 0, 255, 0] + [0] * (256 * 3 - 9)
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    img = Image.fromarray(idx, "P")
    img.putpalette(palette)
    p = _write(tmp_path, "pt.png", _encode(img, "PNG", transparency=1))  # index 1 transparent
    assert _Peek(p).info.get("transparency") == 1
    out = load_image(p)
    lut = np.array(palette, np.uint8).reshape(-1, 3)
    expected = lut[idx].copy()
    expected[idx == 1] = 255
    np.testing.assert_array_equal(out, expected)


def test_palette_with_partial_alpha_gif_and_png(tmp_path):
    # tRNS with one alpha per palette entry: entry 0 half transparent, entry 1 opaque
    palette = [100, 0, 200, 0, 50, 0] + [0] * (256 * 3 - 6)
    idx = np.array([[0, 1]], np.uint8)
    img = Image.fromarray(idx, "P")
    img.putpalette(palette)
    p = _write(tmp_path, "pa.png", _encode(img, "PNG", transparency=bytes([128, 255])))
    out = load_image(p)
    a = 128 / 255
    np.testing.assert_array_equal(out[0, 0], np.round(np.array([100, 0, 200]) * a + 255 * (1 - a)))
    np.testing.assert_array_equal(out[0, 1], [0, 50, 0])


def _cmyk_to_rgb(c: np.ndarray) -> np.ndarray:
    c = c.astype(np.float64)
    return (255 - c[..., :3]) * (255 - c[..., 3:]) / 255.0


def test_cmyk_tiff(tmp_path):
    c = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 128, 0, 64], [30, 60, 90, 120]]], np.uint8)
    p = _write(tmp_path, "cmyk.tif", _encode(Image.fromarray(c, "CMYK"), "TIFF"))
    assert _Peek(p).mode == "CMYK"
    out = load_image(p)
    assert out.shape == (1, 4, 3)
    assert np.abs(out - _cmyk_to_rgb(c)).max() <= 1.0


def test_cmyk_jpeg(tmp_path):
    c = np.zeros((32, 32, 4), np.uint8)
    c[:, :16] = (0, 200, 200, 0)  # red
    c[:, 16:] = (30, 60, 90, 120)
    p = _write(tmp_path, "cmyk.jpg", _encode(Image.fromarray(c, "CMYK"), "JPEG", quality=95))
    assert _Peek(p).mode == "CMYK"
    out = load_image(p).astype(np.float64)
    expected = _cmyk_to_rgb(c)
    # compare block interiors (away from the JPEG edge between the halves)
    assert np.abs(out[4:-4, 2:12] - expected[4:-4, 2:12]).max() <= 6
    assert np.abs(out[4:-4, 20:30] - expected[4:-4, 20:30]).max() <= 6


def test_16bit_grayscale_png_scaled(tmp_path):
    g = np.array([[0, 257, 1000, 32768, 65535]], np.uint16)
    p = _write(tmp_path, "g16.png", _encode(Image.fromarray(g), "PNG"))
    assert _Peek(p).mode.startswith("I;16")
    out = load_image(p)
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 4, 128, 255])
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    # independent of the loader: round(v * 255 / 65535)
    np.testing.assert_array_equal(out[0, :, 0], np.round(g[0] * 255.0 / 65535.0))


def test_16bit_grayscale_png_from_cv2(tmp_path):
    g = np.random.default_rng(2).integers(0, 65536, (20, 30), dtype=np.uint16)
    p = tmp_path / "g16cv.png"
    assert cv2.imwrite(str(p), g)
    out = load_image(p)
    np.testing.assert_array_equal(out[..., 1], np.round(g * 255.0 / 65535.0))


def test_16bit_rgb_png_from_cv2(tmp_path):
    """Pillow opens a 16-bit-per-channel RGB PNG as 8-bit "RGB", keeping the high byte of each
    sample (v >> 8): within 1 of round(v / 257), and the channel order is the file's RGB."""
    rng = np.random.default_rng(3)
    bgr = rng.integers(0, 65536, (12, 14, 3), dtype=np.uint16)
    bgr[0, 0] = (0, 32768, 65535)  # B, G, R
    bgr[0, 1] = (511, 256, 255)
    p = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(p), bgr)
    assert cv2.imread(str(p), cv2.IMREAD_UNCHANGED).dtype == np.uint16  # really a 16-bit file
    rgb16 = bgr[..., ::-1]
    out = load_image(p)
    assert out.dtype == np.uint8 and out.shape == (12, 14, 3)
    assert np.abs(out.astype(np.float64) - rgb16 / 257.0).max() <= 1.0
    np.testing.assert_array_equal(out, (rgb16 >> 8).astype(np.uint8))  # Pillow's actual rule
    np.testing.assert_array_equal(out[0, 0], [255, 128, 0])
    np.testing.assert_array_equal(out[0, 1], [0, 1, 1])


def test_float_F_tiff(tmp_path):
    f = np.array([[0.0, 0.25, 0.5, 1.0, 1.5, -0.3]], np.float32)
    p = _write(tmp_path, "f.tif", _encode(Image.fromarray(f, "F"), "TIFF"))
    assert _Peek(p).mode == "F"
    out = load_image(p)
    # max 1.5 > 1 -> the file is read as 0..255 floats
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 0, 1, 2, 0])
    f01 = np.array([[0.0, 0.25, 0.5, 1.0, np.nan]], np.float32)
    out = load_image(_write(tmp_path, "f01.tif", _encode(Image.fromarray(f01, "F"), "TIFF")))
    np.testing.assert_array_equal(out[0, :, 0], [0, 64, 128, 255, 0])  # 0.25*255 = 63.75; NaN -> 0


def test_int32_I_tiff(tmp_path):
    i = np.array([[0, 100, 255]], np.int32)
    out = load_image(_write(tmp_path, "i8.tif", _encode(Image.fromarray(i, "I"), "TIFF")))
    np.testing.assert_array_equal(out[0, :, 0], [0, 100, 255])
    i = np.array([[0, 257, 65535, 70000]], np.int32)
    out = load_image(_write(tmp_path, "i16.tif", _encode(Image.fromarray(i, "I"), "TIFF")))
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 255, 255])


# --------------------------------------------------------------------------- decompression bombs
def test_header_above_max_pixels_refused_without_decoding(tmp_path, load_spy):
    p = _write(tmp_path, "bomb.png", _png_claiming(9000, 9000))  # 81 MP: above ours, below Pillow's
    assert 9000 * 9000 > MAX_PIXELS
    with pytest.raises(ImageLoadError, match="above the limit") as ei:
        load_image(p)
    assert "bomb.png" in str(ei.value) and "9000x9000" in str(ei.value)
    assert load_spy == []


@pytest.mark.parametrize("side", [12_000, 100_000])
def test_header_above_pillow_limits_refused_without_decoding(tmp_path, load_spy, side):
    # 144 MP trips Pillow's warning threshold, 10^10 its hard DecompressionBombError
    p = _write(tmp_path, "huge.png", _png_claiming(side, side))
    with pytest.raises(ImageLoadError, match="huge.png") as ei:
        load_image(p)
    assert "limit" in str(ei.value) or "too large" in str(ei.value)
    assert load_spy == []
    with pytest.raises(ImageLoadError):
        load_mask(p)
    assert load_spy == []


def test_max_pixels_parameter(tmp_path):
    a = np.zeros((100, 50, 3), np.uint8)
    p = _write(tmp_path, "small.png", _encode(Image.fromarray(a), "PNG"))
    with pytest.raises(ImageLoadError, match="5,000 pixels, above the limit of 4,999"):
        load_image(p, max_pixels=4999)
    assert load_image(p, max_pixels=5000).shape == (100, 50, 3)  # the limit itself is allowed
    with pytest.raises(ImageLoadError, match="above the limit"):
        load_mask(p, max_pixels=100)


def test_max_pixels_above_pillow_warning_threshold_is_honoured(tmp_path, load_spy):
    # 144 MP is above Pillow's soft limit (~89 MP); a caller who allows it gets past the size
    # checks to the decoder (here a spy that fails) instead of a "too large" refusal.
    p = _write(tmp_path, "big.png", _png_claiming(12_000, 12_000))
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(p, max_pixels=150_000_000)
    assert load_spy == [(12_000, 12_000)]


# --------------------------------------------------------------------------- bad files
def _bad_files(tmp_path):
    a = np.random.default_rng(4).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    png = _encode(Image.fromarray(a), "PNG")
    jpg = _encode(Image.fromarray(a), "JPEG", quality=90)
    (tmp_path / "a_directory.png").mkdir()
    return {
        "text": _write(tmp_path, "notes.txt.png", b"this is not an image\n" * 10),
        "empty": _write(tmp_path, "zero.png", b""),
        "png_cut_header": _write(tmp_path, "cut_header.png", png[:20]),
        "png_cut_data": _write(tmp_path, "cut_data.png", png[: len(png) // 2]),
        "jpeg_cut_header": _write(tmp_path, "cut_header.jpg", jpg[:10]),
        "jpeg_cut_tables": _write(tmp_path, "cut_tables.jpg", jpg[:300]),
        "jpeg_cut_data": _write(tmp_path, "cut_data.jpg", jpg[: len(jpg) // 2]),
        "missing": tmp_path / "does_not_exist.png",
        "directory": tmp_path / "a_directory.png",
    }


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("text", "not a recognised image"),
        ("empty", "empty"),
        ("png_cut_header", "truncated"),
        ("png_cut_data", "truncated"),
        ("jpeg_cut_header", "truncated"),
        ("jpeg_cut_tables", "truncated"),
        ("jpeg_cut_data", "truncated"),
        ("missing", "not found"),
        ("directory", "directory"),
    ],
)
def test_bad_file_raises_image_load_error_naming_file(tmp_path, kind, reason):
    p = _bad_files(tmp_path)[kind]
    for loader in (load_image, load_mask):
        with pytest.raises(ImageLoadError) as ei:
            loader(p)
        assert p.name in str(ei.value) and reason in str(ei.value)
    assert isinstance(ei.value, ValueError)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "WEBP", "TIFF", "GIF"])
def test_every_truncation_is_image_load_error(fmt):
    """Cutting an encoded image anywhere gives ImageLoadError (or, where the cut only removes a
    trailer, the intact image) and never another exception type."""
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("this Pillow build has no WebP codec")
    a = np.random.default_rng(5).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    img = Image.fromarray(a)
    data = _encode(img.convert("P") if fmt == "GIF" else img, fmt)
    reference = load_image(data)
    n_ok = 0
    with warnings.catch_warnings():  # Pillow's "Corrupt EXIF data" / "Truncated File Read"
        warnings.simplefilter("ignore", UserWarning)
        for n in range(1, len(data), max(1, len(data) // 400)):
            try:
                out = load_image(data[:n])
            except ImageLoadError as exc:
                assert str(exc).startswith("<bytes>")
                continue
            n_ok += 1
            assert out.shape == reference.shape
    assert n_ok < 0.1 * len(range(1, len(data), max(1, len(data) // 400)))


def test_bytes_errors_named_bytes():
    with pytest.raises(ImageLoadError, match="<bytes>: empty"):
        load_image(b"")
    with pytest.raises(ImageLoadError, match="<bytes>: not a recognised"):
        load_image(b"hello world, not an image")


# --------------------------------------------------------------------------- masks and saving
def test_load_mask_keeps_grey_levels(tmp_path):
    g = np.array([[0, 1, 64, 128], [200, 254, 255, 0]], np.uint8)
    m = load_mask(_write(tmp_path, "mask.png", _encode(Image.fromarray(g, "L"), "PNG")))
    assert m.dtype == np.float32 and m.shape == (2, 4)
    np.testing.assert_array_equal(m, g.astype(np.float32) / 255.0)


def test_load_mask_colour_and_16bit(tmp_path):
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 1] = 255
    rgb[0, 2] = (255, 0, 0)
    m = load_mask(_write(tmp_path, "cmask.png", _encode(Image.fromarray(rgb), "PNG")))
    # Pillow's L = (299 R + 587 G + 114 B) / 1000
    np.testing.assert_allclose(m[0], [0.0, 1.0, round(0.299 * 255) / 255.0], atol=1 / 255)
    g16 = np.array([[0, 32768, 65535]], np.uint16)
    m = load_mask(_write(tmp_path, "m16.png", _encode(Image.fromarray(g16), "PNG")))
    np.testing.assert_allclose(m[0], g16[0] / 65535.0, rtol=1e-6)
    f = np.array([[0.0, 0.3, 1.0]], np.float32)
    m = load_mask(_write(tmp_path, "mf.tif", _encode(Image.fromarray(f, "F"), "TIFF")))
    np.testing.assert_allclose(m[0], f[0], rtol=1e-6)
    f255 = np.array([[0.0, 51.0, 255.0]], np.float32)  # a float mask stored as 0..255
    m = load_mask(_write(tmp_path, "mf255.tif", _encode(Image.fromarray(f255, "F"), "TIFF")))
    np.testing.assert_allclose(m[0], [0.0, 0.2, 1.0], rtol=1e-6)


def test_save_png_round_trip(tmp_path):
    rng = np.random.default_rng(6)
    a = rng.integers(0, 256, (21, 13, 3), dtype=np.uint8)
    p = save_png(tmp_path / "sub" / "out.png", a)
    assert p == tmp_path / "sub" / "out.png"
    with Image.open(p) as im:  # independent reader
        assert im.format == "PNG" and im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), a)
    np.testing.assert_array_equal(load_image(p), a)

    f = rng.random((5, 7, 3))
    save_png(tmp_path / "f.png", f)
    np.testing.assert_array_equal(load_image(tmp_path / "f.png"), np.round(f * 255).astype(np.uint8))

    g = rng.integers(0, 256, (6, 9), dtype=np.uint8)
    save_png(tmp_path / "g.png", g)
    assert _Peek(tmp_path / "g.png").mode == "L"
    np.testing.assert_array_equal(load_mask(tmp_path / "g.png"), g / np.float32(255))

    save_png(tmp_path / "clip.png", np.array([[-0.5, 0.5, 2.0]]))
    np.testing.assert_array_equal(_Peek(tmp_path / "clip.png").pixels, [[0, 128, 255]])
    assert sorted(x.name for x in tmp_path.iterdir() if x.name.endswith(".tmp")) == []
    mode = os.stat(p).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # not the owner-only 0o600 of a mkstemp file


def test_save_png_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        save_png(tmp_path / "x.png", np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="shape"):
        save_png(tmp_path / "x.png", np.zeros(5))
    with pytest.raises(ValueError, match="uint8"):
        save_png(tmp_path / "x.png", np.full((2, 2), 200, np.int64))
    assert list(tmp_path.iterdir()) == []


def test_module_constants():
    assert images.MAX_PIXELS == 64_000_000
    assert issubclass(ImageLoadError, ValueError)
