"""Generate the hostile-input corpus: files a user (or a broken tool) can hand FastAvatar.

    python tests/hostile/make_corpus.py OUT_DIR

Writes every case into OUT_DIR and ``OUT_DIR/manifest.json``: a list of
``{"name", "category", "file", "expect"}``, where ``category`` says which entry point takes the
file (image, ply, frame, weights, official, direction) and ``expect`` is a fragment of the clear
error message it must produce (tests/test_hostile.py feeds each case to its entry point and
checks the message, that nothing crashes or hangs, and that no partial output file appears).
numpy + the project's own writers only; nothing is downloaded.
"""

from __future__ import annotations

import json
import pickle
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, idat: bytes | None = None) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = _png_chunk(b"IHDR", ihdr)
    if idat is not None:
        body += _png_chunk(b"IDAT", idat)
    return b"\x89PNG\r\n\x1a\n" + body + _png_chunk(b"IEND", b"")


def _good_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _good_jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _ply_header(n, props, fmt="binary_little_endian", extra=""):
    lines = ["ply", f"format {fmt} 1.0", f"element vertex {n}"] + [f"property float {p}" for p in props]
    return ("\n".join(lines) + ("\n" + extra if extra else "") + "\nend_header\n").encode()


def _gaussian_ply(path: Path, mutate=None, n=8) -> None:
    from fastavatar_engine.gaussians import GaussianSet
    from fastavatar_engine.ply import write_ply

    rng = np.random.default_rng(1)
    arrays = [rng.normal(size=(n, 3)) * 0.1, rng.normal(size=(n, 3)) - 4, rng.normal(size=(n, 4)),
              rng.normal(size=n), rng.normal(size=(n, 16, 3)) * 0.2]
    g = GaussianSet(*arrays)
    write_ply(path, g)
    if mutate is not None:
        data = bytearray(path.read_bytes())
        mutate(data)
        path.write_bytes(bytes(data))


class _Exploit:
    """A pickle that would run a shell command on load (never loaded without weights_only)."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/fastavatar_pwned",))


def make(out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    cases: list[dict] = []

    def case(name, category, data, expect, suffix=""):
        path = out / (name + suffix)
        if isinstance(data, bytes):
            path.write_bytes(data)
        elif callable(data):
            data(path)
        cases.append({"name": name, "category": category, "file": path.name, "expect": expect})

    # ------------------------------------------------------------------ images
    jpeg, png = _good_jpeg(), _good_png()
    case("empty", "image", b"", "file is empty", ".jpg")
    case("truncated_jpeg", "image", jpeg[: len(jpeg) // 3], "truncated", ".jpg")
    case("truncated_png", "image", png[: len(png) // 2], "", ".png")
    corrupt = bytearray(png)
    corrupt[len(png) // 2: len(png) // 2 + 40] = b"\x00" * 40
    case("corrupt_png", "image", bytes(corrupt), "", ".png")
    case("text_as_png", "image", b"this is not an image\n" * 20, "not a recognised image format", ".png")
    case("html_as_jpg", "image", b"<html><body><img src=x onerror=alert(1)></body></html>", "not a recognised image format", ".jpg")
    case("huge_dimensions_png", "image", _png(100_000, 100_000, zlib.compress(b"\x00" * 1000)), "too large", ".png")
    case("huge_dimensions_bmp", "image", b"BM" + struct.pack("<IHHI", 0, 0, 0, 54)
         + struct.pack("<IiiHHIIiiII", 40, 70_000, 70_000, 1, 24, 0, 0, 0, 0, 0, 0), "too large", ".bmp")
    case("zero_width_png", "image", _png(0, 10, zlib.compress(b"")), "", ".png")
    case("directory_as_image", "image", lambda p: p.mkdir(), "is a directory", ".jpg")
    case("ply_as_jpg", "image", _ply_header(1, ["x", "y", "z"]) + b"\x00" * 12, "not a recognised image format", ".jpg")
    case("bogus_tiff", "image", b"II*\x00" + struct.pack("<I", 0xFFFFFFF0) + b"\x00" * 64, "", ".tif")
    case("tiny_image", "image_no_face", lambda p: __import__("PIL.Image").Image.fromarray(
        np.full((2, 2, 3), 128, np.uint8)).save(p), "no face", ".png")

    # ------------------------------------------------------------------ PLY files
    inria = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)] \
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    no_opacity = [p for p in inria if p != "opacity"]
    case("missing_opacity", "ply", _ply_header(2, no_opacity) + b"\x00" * (4 * len(no_opacity) * 2), "opacity", ".ply")

    def nan_means(data):
        body = data.index(b"end_header\n") + len(b"end_header\n")
        data[body: body + 4] = struct.pack("<f", float("nan"))
    case("nan_position", "ply", lambda p: _gaussian_ply(p, nan_means), "non-finite", ".ply")

    def inf_scale(data):
        body = data.index(b"end_header\n") + len(b"end_header\n")
        off = body + 4 * inria.index("scale_0")
        data[off: off + 4] = struct.pack("<f", float("inf"))
    case("inf_scale", "ply", lambda p: _gaussian_ply(p, inf_scale), "non-finite", ".ply")
    case("absurd_count", "ply", _ply_header(10**12, inria) + b"\x00" * 64, "vertices", ".ply")
    case("negative_count", "ply", _ply_header(-5, inria), "", ".ply")

    def truncate(data):
        del data[len(data) - 300:]
    case("truncated_body", "ply", lambda p: _gaussian_ply(p, truncate), "", ".ply")
    case("zero_byte_ply", "ply", b"", "", ".ply")
    case("no_end_header", "ply", b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\n" * 3,
         "", ".ply")
    case("ascii_garbage", "ply", _ply_header(2, inria, fmt="ascii") + b"1 2 banana\n" * 2, "", ".ply")
    case("faces_only", "ply", b"ply\nformat ascii 1.0\nelement face 1\nproperty list uchar int vertex_indices\n"
                              b"end_header\n3 0 1 2\n", "vertex", ".ply")

    # ------------------------------------------------------------------ protocol frames
    from fastavatar_engine.protocol import MAGIC, encode_frame

    def prefix(hlen, plen, magic=MAGIC):
        return struct.pack("<4sIQ", magic, hlen, plen)

    hello = encode_frame({"type": "hello", "id": 900})
    case("frame_garbage", "frame", b"GARBAGE!" * 64, "", ".bin")
    case("frame_header_too_long", "frame", prefix(1 << 30, 0) + b"{}", "", ".bin")
    case("frame_payload_absurd", "frame", prefix(2, 1 << 40) + b"{}", "", ".bin")
    case("frame_header_not_json", "frame", prefix(9, 0) + b"not json!", "", ".bin")
    case("frame_header_a_list", "frame", prefix(7, 0) + b"[1,2,3]", "", ".bin")
    bad_dtype = json.dumps({"type": "decode", "id": 901, "arrays": [
        {"name": "code", "dtype": "|O", "shape": [512], "offset": 0, "nbytes": 4096}]}).encode()
    case("frame_object_dtype", "frame", prefix(len(bad_dtype), 4096) + bad_dtype + b"\x00" * 4096, "", ".bin")
    mismatch = json.dumps({"type": "decode", "id": 902, "arrays": [
        {"name": "code", "dtype": "<f4", "shape": [512], "offset": 0, "nbytes": 16}]}).encode()
    case("frame_shape_mismatch", "frame", prefix(len(mismatch), 16) + mismatch + b"\x00" * 16, "", ".bin")
    negative = json.dumps({"type": "decode", "id": 903, "arrays": [
        {"name": "code", "dtype": "<f4", "shape": [-512], "offset": 0, "nbytes": 0}]}).encode()
    case("frame_negative_shape", "frame", prefix(len(negative), 0) + negative, "", ".bin")
    case("frame_truncated", "frame", hello[: len(hello) - 5], "", ".bin")
    nan_code = encode_frame({"type": "decode", "id": 904}, {"code": np.full(512, np.nan, np.float32)})
    case("frame_nan_code", "frame", nan_code, "", ".bin")
    wrong_len = encode_frame({"type": "decode", "id": 905}, {"code": np.zeros(7, np.float32)})
    case("frame_wrong_code_length", "frame", wrong_len, "", ".bin")

    # ------------------------------------------------------------------ weights
    import shutil

    from fastavatar_engine.model.io import DEFAULT_MODEL_DIR

    def model_copy(mutate):
        def build(path: Path):
            shutil.copytree(DEFAULT_MODEL_DIR, path)
            mutate(path)
        return build

    def wrong_shapes(path):
        from safetensors.numpy import load_file, save_file

        sd = load_file(str(path / "decoder.safetensors"))
        key = next(k for k in sd if k.endswith("gaussian_embeddings.weight"))
        sd[key] = sd[key][:100]
        save_file(sd, str(path / "decoder.safetensors"))
    case("weights_wrong_shapes", "weights", model_copy(wrong_shapes), "", "")

    def truncated_weights(path):
        data = (path / "encoder.safetensors").read_bytes()
        (path / "encoder.safetensors").write_bytes(data[: len(data) // 2])
    case("weights_truncated", "weights", model_copy(truncated_weights), "not a readable safetensors file", "")
    case("weights_zero_byte", "weights", model_copy(lambda p: (p / "decoder.safetensors").write_bytes(b"")),
         "not a readable safetensors file", "")
    case("weights_corrupt_card", "weights", model_copy(lambda p: (p / "model_card.json").write_text("{not json")),
         "cannot read model card", "")
    case("weights_missing_file", "weights", model_copy(lambda p: (p / "decoder.safetensors").unlink()),
         "weights file not found", "")

    def foreign_pickle(path: Path):
        path.mkdir()
        with open(path / "decoder_neutral_flame.pth", "wb") as f:
            pickle.dump({"model_dict": _Exploit()}, f)
        with open(path / "encoder_neutral_flame.pth", "wb") as f:
            pickle.dump({"model_dict": {}}, f)
        (path / "averaged_model.ply").write_bytes(b"")
    case("official_foreign_pickle", "official", foreign_pickle, "weights_only", "")

    def official_wrong_keys(path: Path):
        import torch

        path.mkdir()
        torch.save({"model_dict": {"something.else": torch.zeros(3)}}, path / "decoder_neutral_flame.pth")
        torch.save({"model_dict": {}}, path / "encoder_neutral_flame.pth")
        _gaussian_ply(path / "averaged_model.ply")
    case("official_wrong_keys", "official", official_wrong_keys, "not a FastAvatar decoder", "")

    # ------------------------------------------------------------------ direction files
    from fastavatar_engine.directions import Direction, save_direction

    case("direction_other_model", "direction",
         lambda p: save_direction(Direction("other", "another-model", np.ones(512)), p), "belongs to model", ".json")
    case("direction_wrong_dimension", "direction",
         lambda p: save_direction(Direction("short", "fastavatar-default-v2", np.ones(10)), p), "10 values", ".json")
    case("direction_corrupt", "direction", b'{"format": "fastavatar-direction", "vector": [1, 2', "cannot read", ".json")
    case("direction_nan", "direction", json.dumps({
        "format": "fastavatar-direction", "version": 1, "name": "nan", "model_id": "fastavatar-default-v2",
        "code_dim": 3, "vector": [1.0, float("nan"), 0.0]}).encode(), "non-finite", ".json")
    (out / "manifest.json").write_text(json.dumps(cases, indent=1))
    return cases


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    made = make(Path(sys.argv[1]))
    print(f"{len(made)} hostile inputs in {sys.argv[1]}")
