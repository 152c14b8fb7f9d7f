"""The engine protocol's framing (numpy only), checked against a hand-written parser."""

import io
import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from fastavatar_engine.protocol import (
    MAGIC, FrameError, FrameReader, StreamClosed, encode_frame, gaussians_from_arrays, read_frame,
)


def _independent_parse(frame: bytes):
    magic, hlen, plen = struct.unpack("<4sIQ", frame[:16])
    header = json.loads(frame[16:16 + hlen])
    payload = frame[16 + hlen:]
    assert magic == b"FAV1" and len(payload) == plen
    arrays = {}
    for spec in header.get("arrays", []):
        raw = payload[spec["offset"]:spec["offset"] + spec["nbytes"]]
        arrays[spec["name"]] = np.frombuffer(raw, dtype=np.dtype(spec["dtype"])).reshape(spec["shape"])
    return header, arrays


def _frame(header: bytes, payload: bytes = b"", magic: bytes = MAGIC) -> bytes:
    return struct.pack("<4sIQ", magic, len(header), len(payload)) + header + payload


def test_round_trip_matches_an_independent_parser():
    rng = np.random.default_rng(0)
    arrays = {"means": rng.normal(size=(7, 3)).astype(np.float32), "px": rng.integers(0, 255, (4, 5, 3), np.uint8),
              "big_endian": np.arange(5, dtype=">f8"), "empty": np.zeros((0, 3), np.float32)}
    frame = encode_frame({"type": "result", "id": 3, "x": [1, "a"]}, arrays)
    header, parsed = _independent_parse(frame)
    assert header["type"] == "result" and header["id"] == 3 and header["x"] == [1, "a"]
    msg = read_frame(io.BytesIO(frame))
    assert msg.type == "result" and msg.id == 3 and "arrays" not in msg.header
    for name, a in arrays.items():
        np.testing.assert_array_equal(parsed[name], a)
        np.testing.assert_array_equal(msg.arrays[name], a)
        assert msg.arrays[name].dtype.byteorder in ("<", "|", "=")
    assert parsed["big_endian"].dtype.str == "<f8"


def test_encode_refuses_unsupported_dtypes_and_reserved_keys():
    with pytest.raises(ValueError, match="not allowed"):
        encode_frame({"type": "x"}, {"o": np.array(["a"], dtype=object)})
    with pytest.raises(ValueError, match="complex|not allowed"):
        encode_frame({"type": "x"}, {"c": np.zeros(2, np.complex64)})
    with pytest.raises(ValueError, match="reserved"):
        encode_frame({"type": "x", "arrays": []})
    with pytest.raises(ValueError):
        encode_frame({"type": "x", "v": float("nan")})


BAD_FRAMES = {
    "not json": _frame(b"{nope"),
    "not utf-8": _frame(b"\xff\xfe"),
    "json list": _frame(b"[1,2]"),
    "no type": _frame(b'{"id": 1}'),
    "bool id": _frame(b'{"type": "hello", "id": true}'),
    "bad dtype": _frame(json.dumps({"type": "x", "arrays": [
        {"name": "a", "dtype": "|O", "shape": [1], "offset": 0, "nbytes": 8}]}).encode(), b"\0" * 8),
    "nbytes mismatch": _frame(json.dumps({"type": "x", "arrays": [
        {"name": "a", "dtype": "<f4", "shape": [3], "offset": 0, "nbytes": 8}]}).encode(), b"\0" * 8),
    "outside payload": _frame(json.dumps({"type": "x", "arrays": [
        {"name": "a", "dtype": "<f4", "shape": [4], "offset": 4, "nbytes": 16}]}).encode(), b"\0" * 16),
    "negative shape": _frame(json.dumps({"type": "x", "arrays": [
        {"name": "a", "dtype": "<f4", "shape": [-1], "offset": 0, "nbytes": 0}]}).encode()),
    "huge shape": _frame(json.dumps({"type": "x", "arrays": [
        {"name": "a", "dtype": "<f4", "shape": [2**31 - 1, 2**31 - 1], "offset": 0, "nbytes": 4}]}).encode(), b"\0" * 4),
    "duplicate": _frame(json.dumps({"type": "x", "arrays": [
        {"name": "a", "dtype": "|u1", "shape": [1], "offset": 0, "nbytes": 1},
        {"name": "a", "dtype": "|u1", "shape": [1], "offset": 0, "nbytes": 1}]}).encode(), b"\0"),
}


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_malformed_frames_raise_and_leave_the_stream_in_sync(name):
    good = encode_frame({"type": "hello", "id": 9})
    reader = FrameReader(io.BytesIO(BAD_FRAMES[name] + good))
    with pytest.raises(FrameError) as info:
        reader.next()
    assert info.value.in_sync
    assert reader.next().id == 9  # the next frame is read intact


def test_oversized_garbage_and_truncated_frames():
    good = encode_frame({"type": "hello", "id": 1})
    # oversized: payload above the reader's limit is skipped
    big = encode_frame({"type": "x"}, {"a": np.zeros(1000, np.uint8)})
    reader = FrameReader(io.BytesIO(big + good), max_payload=100)
    with pytest.raises(FrameError, match="too large"):
        reader.next()
    assert reader.next().id == 1
    # an absurd header length: resynchronise on the next magic
    absurd = struct.pack("<4sIQ", MAGIC, 2**31, 2**62)
    reader = FrameReader(io.BytesIO(absurd + b"junk" * 10 + good))
    with pytest.raises(FrameError, match="too large"):
        reader.next()
    assert reader.next().id == 1
    # garbage (with a partial magic) before a frame
    reader = FrameReader(io.BytesIO(b"FAV garbage FA" * 50 + good + good))
    with pytest.raises(FrameError, match="magic"):
        reader.next()
    assert reader.next().id == 1 and reader.next().id == 1
    with pytest.raises(StreamClosed):
        reader.next()
    # truncated in the middle of a payload
    with pytest.raises(StreamClosed, match="inside"):
        FrameReader(io.BytesIO(big[:-10])).next()


def test_gaussians_from_arrays_validates():
    g = {"means": np.zeros((2, 3), np.float32), "log_scales": np.zeros((2, 3), np.float32),
         "rotations": np.tile(np.float32([1, 0, 0, 0]), (2, 1)), "opacity_logits": np.zeros(2, np.float32),
         "sh": np.zeros((2, 16, 3), np.float32)}
    assert len(gaussians_from_arrays(g)) == 2
    with pytest.raises(FrameError, match="lacks"):
        gaussians_from_arrays({k: v for k, v in g.items() if k != "sh"})
    with pytest.raises(FrameError, match="invalid"):
        gaussians_from_arrays(dict(g, means=np.zeros((3, 3), np.float32)))


def test_client_modules_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import fastavatar_engine.protocol, fastavatar_engine.client, fastavatar_engine.gaussians, "
            "fastavatar_engine.ply\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
