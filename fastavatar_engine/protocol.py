"""The engine protocol: length-prefixed frames over a byte stream (the engine's stdin/stdout).

numpy only — the Blender add-on imports this module inside Blender's Python. No pickle, no
sockets: a frame is ::

    magic      4 bytes   b"FAV1"
    header_len u32 LE    bytes of the JSON header (<= MAX_HEADER_BYTES)
    payload_len u64 LE   bytes of raw array data that follow the header
    header     UTF-8 JSON object
    payload    the arrays, back to back, little-endian, C order

The header is a JSON object with at least ``"type"`` (str) and usually ``"id"`` (int, the
request it belongs to). Arrays travel in ``header["arrays"]``: a list of
``{"name", "dtype", "shape", "offset", "nbytes"}`` with ``dtype`` one of :data:`DTYPES`
(numpy little-endian codes), offsets into the payload and ``nbytes == prod(shape) * itemsize``.
Every size is validated before anything is allocated: a frame that breaks a rule raises
:class:`FrameError`; when the frame's lengths were still readable the payload has been consumed,
so the stream stays in sync (``FrameError.in_sync``) and the reader can answer with an error
and carry on. A bad magic, an absurd length or an unparsable header makes :class:`FrameReader`
skip forward to the next magic (bounded), so a frame after garbage is still read.

Message types (``PROTOCOL_VERSION`` 1; requests carry ``id``; every request ends in exactly one
``result`` or ``error`` with the same ``id``; ``progress`` events may come before it):

* ``hello`` -> result ``{protocol, engine_version, device, model: {model_id, code_dim,
  num_gaussians, embedder}, pid}``
* ``generate`` ``{image_path | arrays.pixels [H,W,3] uint8 | image_paths [paths], face_index?,
  refine_steps?}`` (absent or null: the default likeness fit, ``generate.DEFAULT_FIT_STEPS``
  steps with ``progress`` events; 0: feed-forward only) -> result with the Gaussian arrays (:data:`GAUSSIAN_ARRAYS`), ``code`` [D]
  float32, ``camera`` (c2w, K), ``model_id``, ``photos``; an avatar on its own head adds
  ``arrays.head`` [100] float32 (head-model identity coefficients); refined results and avatars
  on their own head add ``arrays.base_packed`` [N,59] (the plain decode of the code on the
  model's template, packed layout of :data:`fastavatar_engine.gaussians.PACKED_COLUMNS`): the
  client keeps ``Gaussians - base_packed`` as a residual that edits carry; an avatar with
  Gaussians grown by the likeness fit (more rows than the template) adds ``arrays.parents`` [E]
  int32: row ``K + j`` is based on template row ``parents[j]`` (``decode(w)[parents]``)
* ``decode`` ``{arrays.code [D] float32, arrays.directions [M,D] float32?, amounts [M]?,
  tangents?}`` -> result with the Gaussian arrays of ``w = code + sum_m amounts[m] directions[m]``;
  with ``tangents: true`` also ``arrays.tangents`` and ``arrays.curvatures`` [M,N,59]
* ``refine`` ``{arrays.code, image_path | arrays.pixels | image_paths, steps, face_index?, mode?,
  preview_every?}`` -> ``progress`` events ``{stage: "refine", step, total, loss}`` (and, every
  ``preview_every`` steps, ``{stage: "preview"}`` events carrying ``arrays.packed`` [N,59]), then
  a result like ``generate``'s; a ``cancel`` frame ``{"type": "cancel", "target": <id>}`` stops
  it with an error of kind ``cancelled``
* ``encode`` ``{image_path | arrays.pixels, face_index?}`` -> ``arrays.code`` [D] and
  ``measures`` ``{mouth_open, smile}``
* ``train_direction`` ``{name, C?, source?, arrays.codes [N,D], arrays.labels [N] u8}`` ->
  ``direction`` (the file format of :mod:`fastavatar_engine.directions`)
* ``shutdown`` -> result, then the engine exits

Errors: ``{"type": "error", "id", "kind", "message"}`` with ``kind`` one of
``protocol`` (malformed frame), ``bad_request``, ``version``, ``no_face``, ``image``,
``model``, ``cancelled``, ``internal``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import numpy as np

PROTOCOL_VERSION = 1
MAGIC = b"FAV1"
_PREFIX = struct.Struct("<4sIQ")  # magic, header_len, payload_len
PREFIX_BYTES = _PREFIX.size  # 16
MAX_HEADER_BYTES = 1 << 20  # 1 MiB of JSON
MAX_PAYLOAD_BYTES = 1 << 30  # 1 GiB of arrays (a 10k-splat avatar is 2.4 MB)
MAX_ARRAYS = 64
MAX_RESYNC_BYTES = 1 << 24  # how far read_frame searches for the next magic after garbage
#: numpy dtype codes allowed on the wire (explicitly little-endian)
DTYPES = ("<f4", "<f8", "<f2", "<i4", "<i8", "|u1", "<u4")
#: The arrays of a Gaussian result, engine (y-up head frame) layout of ``GaussianSet``.
GAUSSIAN_ARRAYS = ("means", "log_scales", "rotations", "opacity_logits", "sh")

ERROR_KINDS = ("protocol", "bad_request", "version", "no_face", "image", "model", "cancelled", "internal")


class ProtocolError(Exception):
    """Base class of protocol failures."""


class FrameError(ProtocolError):
    """A malformed frame. ``in_sync``: the frame's bytes were consumed in full, so the next
    frame starts right after it; ``request_id``: the frame's id when the header could be read."""

    def __init__(self, message: str, in_sync: bool = True, request_id=None):
        super().__init__(message)
        self.in_sync = in_sync
        self.request_id = request_id


class StreamClosed(ProtocolError):
    """The stream ended (cleanly between frames, or in the middle of one)."""


@dataclass
class Message:
    """A decoded frame: ``header`` (dict, JSON) and ``arrays`` (name -> numpy array, read-only
    views of the payload)."""

    header: dict
    arrays: dict = field(default_factory=dict)

    @property
    def type(self) -> str:
        return self.header.get("type", "")

    @property
    def id(self):
        return self.header.get("id")


def encode_frame(header: dict, arrays: dict | None = None) -> bytes:
    """Serialise ``header`` (JSON-able dict, must not contain ``arrays``) and ``arrays``
    (name -> numpy array of a :data:`DTYPES` dtype after little-endian conversion) to one frame.
    Raises ``ValueError`` for an unsupported dtype, too many arrays or an oversized frame."""
    arrays = arrays or {}
    if "arrays" in header:
        raise ValueError("header key 'arrays' is reserved")
    if len(arrays) > MAX_ARRAYS:
        raise ValueError(f"{len(arrays)} arrays in one frame (at most {MAX_ARRAYS})")
    specs, chunks, offset = [], [], 0
    for name, a in arrays.items():
        a = np.asarray(a)
        dt = a.dtype if a.dtype.byteorder == "|" else a.dtype.newbyteorder("<")
        code = dt.str
        if code not in DTYPES:
            raise ValueError(f"array {name!r}: dtype {a.dtype} is not allowed on the wire ({', '.join(DTYPES)})")
        data = np.ascontiguousarray(a, dtype=dt).tobytes()
        specs.append({"name": str(name), "dtype": code, "shape": [int(s) for s in a.shape],
                      "offset": offset, "nbytes": len(data)})
        chunks.append(data)
        offset += len(data)
    head = json.dumps(dict(header, arrays=specs) if specs else header, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")
    if len(head) > MAX_HEADER_BYTES:
        raise ValueError(f"header of {len(head)} bytes (at most {MAX_HEADER_BYTES})")
    if offset > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {offset} bytes (at most {MAX_PAYLOAD_BYTES})")
    return _PREFIX.pack(MAGIC, len(head), offset) + head + b"".join(chunks)


def write_frame(stream, header: dict, arrays: dict | None = None) -> None:
    """Encode and write one frame to a binary ``stream`` and flush it."""
    stream.write(encode_frame(header, arrays))
    stream.flush()


class FrameReader:
    """Reads frames from a binary ``stream`` (e.g. ``sys.stdin.buffer`` or a pipe).

    :meth:`next` returns the next :class:`Message`. It raises :class:`StreamClosed` at the end of
    the stream and :class:`FrameError` for a malformed frame; with ``in_sync`` the offending
    bytes have been consumed (or, after garbage, skipped up to the next magic) and the caller
    can answer with an error and call :meth:`next` again."""

    def __init__(self, stream, max_payload: int = MAX_PAYLOAD_BYTES):
        self.stream = stream
        self.max_payload = max_payload
        self._buf = b""  # bytes read ahead while resynchronising

    def _read(self, n: int, what: str, allow_eof: bool = False) -> bytes:
        data, self._buf = self._buf[:n], self._buf[n:]
        parts, got = [data], len(data)
        while got < n:
            chunk = self.stream.read(min(n - got, 1 << 20))
            if not chunk:
                if allow_eof and got == 0:
                    raise StreamClosed("stream closed")
                raise StreamClosed(f"stream ended inside {what} ({got} of {n} bytes)")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def _read_some(self, n: int) -> bytes:
        """Up to ``n`` bytes, as many as are available now (never waits for all ``n``)."""
        read1 = getattr(self.stream, "read1", None)
        return read1(n) if read1 is not None else self.stream.read(1)

    def _skip(self, n: int) -> None:
        while n > 0:
            chunk = self._read(min(n, 1 << 20), "a skipped frame")
            n -= len(chunk)

    def _resync(self, seen: bytes, start: int = 1) -> None:
        """Drop bytes until the next MAGIC at or after ``seen[start]``; leave it (and what
        follows) in the read-ahead buffer."""
        window = seen
        for _ in range(MAX_RESYNC_BYTES // 4096 + len(seen) // 4096 + 1):
            i = window.find(MAGIC, start)
            start = 1
            if i >= 0:
                self._buf = window[i:] + self._buf
                return
            window = window[-3:]
            chunk = self._buf or self._read_some(4096)
            self._buf = b""
            if not chunk:
                raise StreamClosed("stream ended while searching for the next frame")
            window += chunk
        raise StreamClosed(f"no frame magic within {MAX_RESYNC_BYTES} bytes of garbage")

    def next(self) -> Message:
        prefix = self._read(PREFIX_BYTES, "a frame prefix", allow_eof=True)
        magic, head_len, payload_len = _PREFIX.unpack(prefix)
        if magic != MAGIC:
            self._resync(prefix)
            raise FrameError(f"bad frame magic {magic!r} (expected {MAGIC!r}): garbage skipped", in_sync=True)
        if head_len > MAX_HEADER_BYTES or payload_len > self.max_payload:
            # skip what the prefix announces when plausible, so the stream stays in sync;
            # otherwise look for the next magic
            msg = (f"frame too large: header {head_len} bytes (max {MAX_HEADER_BYTES}), "
                   f"payload {payload_len} bytes (max {self.max_payload})")
            rid = None
            if head_len <= MAX_HEADER_BYTES and payload_len <= MAX_PAYLOAD_BYTES:
                try:  # read the header so the error can name the request
                    rid = _parse_header(self._read(head_len, "a frame header")).get("id")
                except FrameError:
                    pass
                self._skip(payload_len)
            else:  # no real frame looks like this: waiting for its bytes would swallow what follows
                self._resync(b"")
            raise FrameError(msg, in_sync=True, request_id=rid)
        raw = self._read(head_len, "a frame header")
        payload = self._read(payload_len, "a frame payload")
        try:
            header = _parse_header(raw)
        except FrameError:
            # a truncated frame followed by a good one: the good one's start is somewhere in the
            # bytes just consumed; search them for the next magic instead of losing it
            if MAGIC in raw or MAGIC in payload:
                self._resync(raw + payload, start=0)
            raise
        return _decode_body(header, payload)


def read_frame(stream, max_payload: int = MAX_PAYLOAD_BYTES) -> Message:
    """Read one frame from ``stream`` without resynchronisation state (see :class:`FrameReader`)."""
    return FrameReader(stream, max_payload).next()


def _parse_header(raw: bytes) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise FrameError(f"frame header is not UTF-8 JSON: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise FrameError("frame header must be a JSON object with a string 'type'")
    rid = header.get("id")
    if rid is not None and (not isinstance(rid, int) or isinstance(rid, bool)):
        raise FrameError("'id' must be an integer")
    return header


def _decode_body(header: dict, payload: bytes) -> Message:
    rid = header.get("id")
    arrays = {}
    specs = header.pop("arrays", [])
    if not isinstance(specs, list) or len(specs) > MAX_ARRAYS:
        raise FrameError(f"'arrays' must be a list of at most {MAX_ARRAYS} entries", request_id=rid)
    for spec in specs:
        name, a = _decode_array(spec, payload, rid)
        if name in arrays:
            raise FrameError(f"array {name!r} appears twice", request_id=rid)
        arrays[name] = a
    return Message(header, arrays)


def _decode_array(spec, payload: bytes, rid) -> tuple[str, np.ndarray]:
    if not isinstance(spec, dict):
        raise FrameError("array spec must be an object", request_id=rid)
    name, code, shape = spec.get("name"), spec.get("dtype"), spec.get("shape")
    offset, nbytes = spec.get("offset"), spec.get("nbytes")
    if not isinstance(name, str) or not name:
        raise FrameError("array spec needs a non-empty 'name'", request_id=rid)
    if code not in DTYPES:
        raise FrameError(f"array {name!r}: dtype {code!r} not allowed ({', '.join(DTYPES)})", request_id=rid)
    if (not isinstance(shape, list) or len(shape) > 8
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31 for s in shape)):
        raise FrameError(f"array {name!r}: bad shape {shape!r}", request_id=rid)
    ints = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (offset, nbytes))
    if not ints:
        raise FrameError(f"array {name!r}: offset and nbytes must be non-negative integers", request_id=rid)
    dt = np.dtype(code)
    expected = dt.itemsize
    for s in shape:
        expected *= s
    if expected != nbytes:
        raise FrameError(f"array {name!r}: shape {shape} x {dt.itemsize} B = {expected} B, header says {nbytes}",
                         request_id=rid)
    if offset + nbytes > len(payload):
        raise FrameError(f"array {name!r}: bytes {offset}..{offset + nbytes} outside the {len(payload)}-byte payload",
                         request_id=rid)
    a = np.frombuffer(payload, dtype=dt, count=expected // dt.itemsize, offset=offset).reshape(shape)
    return name, a


def error_header(request_id, kind: str, message: str) -> dict:
    """The header of an ``error`` frame (``kind`` from :data:`ERROR_KINDS`)."""
    if kind not in ERROR_KINDS:
        kind = "internal"
    return {"type": "error", "id": request_id, "kind": kind, "message": str(message)}


def gaussian_arrays(g) -> dict:
    """name -> float32 array for a ``GaussianSet``-like object (attributes :data:`GAUSSIAN_ARRAYS`)."""
    return {name: np.ascontiguousarray(getattr(g, name), dtype=np.float32) for name in GAUSSIAN_ARRAYS}


def gaussians_from_arrays(arrays: dict):
    """A validated ``GaussianSet`` from a result's arrays; raises :class:`FrameError` when one is
    missing or the shapes disagree (``GaussianSet.validate``)."""
    from .gaussians import GaussianSet, GaussianValidationError

    missing = [n for n in GAUSSIAN_ARRAYS if n not in arrays]
    if missing:
        raise FrameError(f"result lacks Gaussian arrays {missing}")
    g = GaussianSet(*(np.array(arrays[n], dtype=np.float32) for n in GAUSSIAN_ARRAYS))
    try:
        g.validate()
    except GaussianValidationError as e:
        raise FrameError(f"result Gaussians are invalid: {e}") from None
    return g
