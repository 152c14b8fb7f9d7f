"""``fastavatar serve``: the engine as a long-lived process speaking :mod:`.protocol` on stdin/stdout.

The Blender add-on starts this process once and keeps it warm. Frames arrive on stdin; results,
progress events and errors leave on stdout; logs go to stderr. Nothing else may reach stdout:
at start the real stdout is moved to a private file descriptor and fd 1 is pointed at stderr, so
a stray ``print`` or a native library's log line cannot corrupt the frame stream.

A reader thread parses frames. A malformed or oversized frame is answered with an ``error``
(kind ``protocol``) and the engine carries on; ``cancel`` frames are handled by the reader
thread at once (they flag the running refinement); every other request is queued and handled
in order by the main thread. End of stdin (the add-on went away) stops the engine.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
import traceback

import numpy as np

from . import __version__
from .protocol import (
    MAX_PAYLOAD_BYTES, PROTOCOL_VERSION, FrameError, FrameReader, StreamClosed,
    encode_frame, error_header, gaussian_arrays,
)
from .gaussians import pack_gaussians
from .serve_errors import Cancelled as _Cancelled
from .serve_errors import RequestError
from .serve_expressions import ExpressionRequests

log = logging.getLogger("fastavatar.serve")

#: Largest photo accepted as pixels or from a path (pixels); the image loader has its own limit.
MAX_PIXELS = 64_000_000
MAX_REFINE_STEPS = 100_000
MAX_DIRECTIONS = 4096
MAX_PHOTOS = 64
#: step (code units) of the secant curvature returned with decode tangents
CURVATURE_STEP = 0.25
MAX_TRAIN_CODES = 100_000


def avatar_result(model, avatar, elapsed_s: float = 0.0) -> tuple[dict, dict]:
    """(header, arrays) of generate/refine for ``avatar`` (an :class:`~.generate.Avatar` of
    ``model``), as the protocol carries them (the engine's replies, and the batch's .blend
    stage): the Gaussians, ``code``, ``head`` [100] (the head model's identity coefficients the
    template sits on, when fitted), and for a refined avatar or one
    on its own head ``base_packed`` [N,59] = the plain decode of the code on the model's own
    template (packed layout), from which the client keeps the refinement and the head shape as
    a per-Gaussian residual: edits decode ``w'`` and add it back (a first-order transfer).
    Gaussians grown by the likeness fit (rows after the template's) come with ``parents``
    [E] int32, the template row each was cloned from, whose decode is their base."""
    import torch

    arrays = gaussian_arrays(avatar.gaussians)
    arrays["code"] = np.asarray(avatar.code, np.float32)
    if avatar.head is not None:
        arrays["head"] = np.asarray(avatar.head, np.float32)
    if avatar.refined_steps or avatar.head is not None:
        with torch.no_grad():
            plain = pack_gaussians(model.decode(avatar.code).to_numpy())
        if avatar.parents is not None:  # grown Gaussians: their base is their parent's decode
            arrays["parents"] = np.asarray(avatar.parents, np.int32)
            plain = np.concatenate([plain, plain[avatar.parents]])
        arrays["base_packed"] = plain
    cam = avatar.camera.to_json() if avatar.camera is not None else None
    return ({"model_id": avatar.model_id, "camera": cam, "photo": avatar.photo,
             "photos": [v.name for v in avatar.views] if avatar.views else None,
             "refined_steps": avatar.refined_steps, "refine_mode": avatar.refine_mode,
             "timings_ms": {k: round(v, 2) for k, v in avatar.timings_ms.items()},
             "elapsed_ms": round(1e3 * elapsed_s, 2)}, arrays)


class Engine(ExpressionRequests):
    """Request handlers around one model and (lazily) one :class:`AvatarGenerator`.

    ``device``: 'auto' (CUDA when available), 'cpu' or 'cuda[:N]'; ``weights``: model folder
    (None: built-in default); ``embedder``: identity backbone override. Raises ``ModelLoadError``
    when the weights cannot be loaded."""

    def __init__(self, device: str = "auto", weights=None, embedder=None):
        import torch

        from .model.io import FastAvatarModel

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = FastAvatarModel.load(weights, device=self.device)
        self.model.to(self.device)
        self.embedder_spec = embedder
        self._generator = None

    @property
    def generator(self):
        if self._generator is None:
            from .generate import AvatarGenerator

            self._generator = AvatarGenerator(self.model, device=str(self.device), embedder=self.embedder_spec)
        return self._generator

    def close(self):
        if self._generator is not None:
            self._generator.close()

    # ------------------------------------------------------------------ helpers
    def model_info(self) -> dict:
        m = self.model
        return {"model_id": m.model_id, "code_dim": m.code_dim, "num_gaussians": int(m.decoder.num_gaussians),
                "embedder": m.embedder}

    def _photo(self, header: dict, arrays: dict):
        if "pixels" in arrays:
            px = arrays["pixels"]
            if px.dtype != np.uint8 or px.ndim != 3 or px.shape[2] != 3 or min(px.shape[:2]) < 1:
                raise RequestError("bad_request", f"'pixels' must be [H,W,3] uint8, got {list(px.shape)} {px.dtype}")
            if px.shape[0] * px.shape[1] > MAX_PIXELS:
                raise RequestError("image", f"photo of {px.shape[1]}x{px.shape[0]} pixels exceeds {MAX_PIXELS}")
            return np.array(px)  # writable copy
        path = header.get("image_path")
        if not isinstance(path, str) or not path:
            raise RequestError("bad_request", "request needs 'image_path' (string) or a 'pixels' array")
        return path

    def _face_index(self, header):
        fi = header.get("face_index")
        if fi is not None and (not isinstance(fi, int) or isinstance(fi, bool) or fi < 0):
            raise RequestError("bad_request", f"'face_index' must be a non-negative integer, got {fi!r}")
        return fi

    def _code(self, arrays: dict, name: str = "code"):
        if name not in arrays:
            raise RequestError("bad_request", f"request needs a '{name}' array")
        c = arrays[name]
        if c.ndim != 1 or c.shape[0] != self.model.code_dim:
            raise RequestError("bad_request", f"'{name}' must have {self.model.code_dim} values, got shape {list(c.shape)}")
        c = c.astype(np.float32)
        if not np.isfinite(c).all():
            raise RequestError("bad_request", f"'{name}' contains non-finite values")
        return c

    def _avatar_result(self, avatar, elapsed_s: float) -> tuple[dict, dict]:
        return avatar_result(self.model, avatar, elapsed_s)

    # ------------------------------------------------------------------ requests
    def hello(self, header, arrays, emit, cancelled):
        client = header.get("protocol")
        if client is not None and client != PROTOCOL_VERSION:
            raise RequestError("version", f"client speaks protocol {client!r}, this engine {PROTOCOL_VERSION} "
                                          f"(engine {__version__}): reinstall the engine or update the add-on")
        import torch

        return {"protocol": PROTOCOL_VERSION, "engine_version": __version__, "device": str(self.device),
                "device_name": (torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"),
                "model": self.model_info(), "pid": os.getpid()}, {}

    def _photos(self, header, arrays) -> list | None:
        """The list of photo paths of a multi-photo request (``image_paths``), or None."""
        paths = header.get("image_paths")
        if paths is None:
            return None
        if (not isinstance(paths, list) or not 1 <= len(paths) <= MAX_PHOTOS
                or not all(isinstance(q, str) and q for q in paths)):
            raise RequestError("bad_request", f"'image_paths' must be a list of 1-{MAX_PHOTOS} paths")
        if "image_path" in header or "pixels" in arrays:
            raise RequestError("bad_request", "give either 'image_paths' or one photo ('image_path'/'pixels')")
        return paths

    def generate(self, header, arrays, emit, cancelled):
        t = time.perf_counter()
        photos = self._photos(header, arrays)
        from .generate import DEFAULT_FIT_STEPS

        # no refine_steps: the default likeness fit (generate.DEFAULT_FIT_STEPS); 0: feed-forward only
        steps = _int(header, "refine_steps", DEFAULT_FIT_STEPS, 0, MAX_REFINE_STEPS)
        progress, was_cancelled = self._progress(header, emit, cancelled)
        kwargs = dict(face_index=self._face_index(header), refine_steps=steps, progress=progress,
                      mode=self._mode(header), **self._preview(header, emit))
        if photos is not None:
            avatar = self.generator.generate_multi(photos, **kwargs)
        else:
            avatar = self.generator.generate(self._photo(header, arrays), **kwargs)
        if was_cancelled():
            raise _Cancelled()
        return self._avatar_result(avatar, time.perf_counter() - t)

    def decode(self, header, arrays, emit, cancelled):
        import torch

        t = time.perf_counter()
        w = self._code(arrays)
        directions = arrays.get("directions")
        amounts = header.get("amounts", [])
        if directions is not None:
            if directions.ndim != 2 or directions.shape[1] != w.shape[0] or directions.shape[0] > MAX_DIRECTIONS:
                raise RequestError("bad_request", f"'directions' must be [M<={MAX_DIRECTIONS},{w.shape[0]}], "
                                                  f"got {list(directions.shape)}")
            if (not isinstance(amounts, list) or len(amounts) != directions.shape[0]
                    or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in amounts)):
                raise RequestError("bad_request", f"'amounts' must be a list of {directions.shape[0]} numbers")
            d = directions.astype(np.float32)
            if not np.isfinite(d).all() or not np.isfinite(amounts).all():
                raise RequestError("bad_request", "'directions'/'amounts' contain non-finite values")
            w = w + np.asarray(amounts, np.float32) @ d
        elif amounts:
            raise RequestError("bad_request", "'amounts' given without 'directions'")
        want_tangents = header.get("tangents", False)
        if not isinstance(want_tangents, bool) or (want_tangents and directions is None):
            raise RequestError("bad_request", "'tangents' must be true or false, and needs 'directions'")
        head, expression = self._head_expression(arrays)
        if want_tangents and (head is not None or expression is not None):
            raise RequestError("bad_request", "'tangents' are of the model's own template: not with 'head'/'expression'")
        with torch.no_grad():
            g = self.model.decode(w, head, expression).to_numpy()
        out = gaussian_arrays(g)
        out["code"] = w.astype(np.float32)
        if want_tangents:
            out["tangents"], out["curvatures"] = self._tangents(w, d, g)
        return {"model_id": self.model.model_id, "elapsed_ms": round(1e3 * (time.perf_counter() - t), 2)}, out

    def _head_expression(self, arrays) -> tuple:
        """(head [100] or None, expression [53] or None) of a decode request: optional arrays
        ``head`` (identity coefficients, finite) and ``expression`` (53 ARKit coefficients in [0,1]);
        with either, the template is bound to that head and expression (issue 22)."""
        head, expression = arrays.get("head"), arrays.get("expression")
        if head is not None and (head.shape != (100,) or not np.isfinite(head).all()):
            raise RequestError("bad_request", f"'head' must be 100 finite identity coefficients, got {list(head.shape)}")
        if expression is not None and (expression.shape != (53,) or not np.isfinite(expression).all()
                                       or expression.min() < 0 or expression.max() > 1):
            raise RequestError("bad_request", "'expression' must be 53 coefficients in [0, 1]")
        if (head is not None or expression is not None) and self.model.head_template is None:
            raise RequestError("bad_request", "this engine has no head model: 'head'/'expression' unavailable")
        return head, expression

    def _tangents(self, w: np.ndarray, directions: np.ndarray, g) -> tuple[np.ndarray, np.ndarray]:
        """(tangents, curvatures), each [M, N, 59] float32, of the packed Gaussians at code ``w``
        along each row d_m of ``directions`` [M, D]: the tangent dG/da (forward-mode AD,
        ``torch.func.jvp``) and the secant curvature (G(w + h d) + G(w - h d) - 2 G(w)) / h^2 with
        h = :data:`CURVATURE_STEP` (code units). The add-on previews slider drags with the
        quadratic model G + a T + a^2 C / 2 (see blender_addon/editing.py)."""
        import torch

        from .gaussians import pack_gaussians

        wt = torch.as_tensor(w, device=self.device)
        g0 = pack_gaussians(g)
        tangents, curvatures = [], []
        h = CURVATURE_STEP
        for row in directions:
            d = torch.as_tensor(row, device=self.device)
            _, tangent = torch.func.jvp(lambda c: _packed_torch(self.model.decoder(c)), (wt,), (d,))
            tangents.append(tangent.detach().cpu().numpy().astype(np.float32))
            with torch.no_grad():
                plus = pack_gaussians(self.model.decode(wt + h * d).to_numpy())
                minus = pack_gaussians(self.model.decode(wt - h * d).to_numpy())
            curvatures.append(((plus + minus - 2 * g0) / (h * h)).astype(np.float32))
        empty = np.zeros((0, self.model.decoder.num_gaussians, 59), np.float32)
        return (np.stack(tangents) if tangents else empty), (np.stack(curvatures) if curvatures else empty)

    def encode(self, header, arrays, emit, cancelled):
        """Photo -> code ``w`` (no decode) and the face's expression measures
        (:func:`directions.expression_measures`), for building directions from photo sets."""
        from .directions import expression_measures

        t = time.perf_counter()
        gen = self.generator
        image, name, face, _ = gen._detect(self._photo(header, arrays), self._face_index(header))
        w = gen.model.encode(gen.embedder.embed(image, face))
        return ({"model_id": self.model.model_id, "photo": None if name == "<bytes>" else name,
                 "measures": expression_measures(face.landmarks),
                 "elapsed_ms": round(1e3 * (time.perf_counter() - t), 2)},
                {"code": w.detach().cpu().numpy().astype(np.float32)})

    def train_direction(self, header, arrays, emit, cancelled):
        """Linear SVM on ``codes`` [N,D] with ``labels`` [N] (1 = has the attribute) ->
        ``direction`` (the file format's dict, :mod:`.directions`)."""
        from .directions import DirectionError, train_direction

        codes, labels = arrays.get("codes"), arrays.get("labels")
        if codes is None or labels is None:
            raise RequestError("bad_request", "train_direction needs 'codes' [N,D] and 'labels' [N] arrays")
        if codes.ndim != 2 or codes.shape[1] != self.model.code_dim or not 4 <= codes.shape[0] <= MAX_TRAIN_CODES:
            raise RequestError("bad_request", f"'codes' must be [4..{MAX_TRAIN_CODES}, {self.model.code_dim}], "
                                              f"got {list(codes.shape)}")
        name = header.get("name")
        c = header.get("C", "auto")
        if c != "auto" and (not isinstance(c, (int, float)) or isinstance(c, bool) or not 1e-6 <= c <= 1e6):
            raise RequestError("bad_request", f"'C' must be 'auto' or a number in [1e-6, 1e6], got {c!r}")
        try:
            d = train_direction(codes, labels, name, self.model.model_id, c=c if c == "auto" else float(c),
                                source=str(header.get("source", ""))[:500])
        except DirectionError as e:
            raise RequestError("bad_request", str(e)) from None
        return {"direction": d.to_json()}, {}

    def refine(self, header, arrays, emit, cancelled):
        t = time.perf_counter()
        code = self._code(arrays)
        photos = self._photos(header, arrays)
        steps = _int(header, "steps", 300, 1, MAX_REFINE_STEPS)
        mode = self._mode(header)
        fi = self._face_index(header)
        avatar, image = self.generator.avatar_from_code(photos if photos is not None else self._photo(header, arrays),
                                                        code, face_index=fi)
        progress, was_cancelled = self._progress(header, emit, cancelled)
        self.generator.refine(avatar, image, steps, progress=progress, mode=mode, **self._preview(header, emit))
        if was_cancelled():
            raise _Cancelled()
        return self._avatar_result(avatar, time.perf_counter() - t)

    @staticmethod
    def _preview(header, emit) -> dict:
        """Refinement keyword arguments for live previews: every ``preview_every`` steps a
        ``progress`` event (stage 'preview') carries the current Gaussians as ``packed`` [N,59]."""
        every = _int(header, "preview_every", 0, 0, MAX_REFINE_STEPS)
        if not every:
            return {}
        return {"preview_every": every,
                "preview": lambda g: emit({"type": "progress", "stage": "preview"}, {"packed": pack_gaussians(g)})}

    @staticmethod
    def _mode(header) -> str:
        mode = header.get("mode", "auto")
        if mode not in ("auto", "full", "heads"):
            raise RequestError("bad_request", f"'mode' must be auto, full or heads, got {mode!r}")
        return mode

    @staticmethod
    def _progress(header, emit, cancelled):
        """(progress callback for AvatarGenerator.refine, () -> whether it cancelled): emits a
        ``progress`` event every ``progress_every`` steps and stops when the client cancels."""
        every = _int(header, "progress_every", 1, 1, MAX_REFINE_STEPS)
        state = {"cancelled": False}

        def progress(step, total, loss):
            if cancelled():
                state["cancelled"] = True
                return False
            if step % every == 0 or step == total:
                emit({"type": "progress", "stage": "refine", "step": step, "total": total, "loss": round(loss, 6)})
            return True

        return progress, lambda: state["cancelled"]


def _packed_torch(g):
    """[N, 59] torch tensor of GaussianTensors ``g`` in :data:`gaussians.PACKED_COLUMNS` order."""
    import torch

    n = g.means.shape[0]
    return torch.cat([g.means, g.sh[:, 0, :], g.sh[:, 1:16, :].transpose(1, 2).reshape(n, 45),
                      g.opacity_logits[:, None], g.log_scales, g.rotations], 1)


def _int(header, key, default, lo, hi) -> int:
    v = header.get(key)
    v = default if v is None else v
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise RequestError("bad_request", f"'{key}' must be an integer in [{lo}, {hi}], got {v!r}")
    return v


class Server:
    """The request loop. ``inp``/``out``: binary streams (stdin/stdout of the process)."""

    HANDLERS = ("hello", "generate", "decode", "refine", "encode", "train_direction", "expression", "track")

    def __init__(self, engine: Engine, inp, out, max_payload: int = MAX_PAYLOAD_BYTES):
        self.engine = engine
        self.reader = FrameReader(inp, max_payload)
        self.out = out
        self.write_lock = threading.Lock()
        self.requests: queue.Queue = queue.Queue()
        self.cancelled: set = set()

    def send(self, header: dict, arrays: dict | None = None) -> None:
        frame = encode_frame(header, arrays)
        with self.write_lock:
            self.out.write(frame)
            self.out.flush()

    def _read_loop(self):
        while True:
            try:
                msg = self.reader.next()
            except FrameError as e:
                log.warning("malformed frame: %s", e)
                self.send(error_header(e.request_id, "protocol", str(e)))
                continue
            except StreamClosed as e:
                log.info("input closed (%s): stopping", e)
                self.requests.put(None)
                return
            except Exception as e:  # noqa: BLE001 - the reader must never die silently
                log.error("reader failed: %s", e)
                self.requests.put(None)
                return
            if msg.type == "cancel":
                target = msg.header.get("target")
                if isinstance(target, int):
                    self.cancelled.add(target)
                continue
            self.requests.put(msg)
            if msg.type == "shutdown":
                return

    def run(self) -> int:
        threading.Thread(target=self._read_loop, name="fastavatar-reader", daemon=True).start()
        while True:
            msg = self.requests.get()
            if msg is None:
                return 0
            rid = msg.id
            if msg.type == "shutdown":
                self.send({"type": "result", "id": rid, "request": "shutdown"})
                return 0
            if msg.type not in self.HANDLERS:
                self.send(error_header(rid, "bad_request", f"unknown request type {msg.type!r} "
                                                           f"(known: {', '.join(self.HANDLERS + ('cancel', 'shutdown'))})"))
                continue
            t = time.perf_counter()
            try:
                header, arrays = getattr(self.engine, msg.type)(
                    msg.header, msg.arrays, lambda h, a=None: self.send(dict(h, id=rid), a),
                    lambda: rid in self.cancelled)
                self.send(dict(header, type="result", id=rid, request=msg.type), arrays)
            except BaseException as e:  # noqa: BLE001 - every request ends in a result or an error
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                kind, text = _classify(e)
                if kind == "internal":
                    log.error("request %s (%s) failed:\n%s", rid, msg.type, traceback.format_exc())
                self.send(error_header(rid, kind, text))
            finally:
                self.cancelled.discard(rid)
            log.info("%s #%s: %.1f ms", msg.type, rid, 1e3 * (time.perf_counter() - t))


def _classify(e: BaseException) -> tuple[str, str]:
    """(error kind, message) for an exception raised by a handler."""
    if isinstance(e, RequestError):
        return e.kind, str(e)
    if isinstance(e, _Cancelled):
        return "cancelled", "cancelled by the client"
    from .images import ImageLoadError

    if isinstance(e, ImageLoadError):
        return "image", str(e)
    try:
        from .face import FaceError

        if isinstance(e, FaceError):
            return "no_face", str(e)
    except ImportError:
        pass
    from .model.io import ModelLoadError

    if isinstance(e, ModelLoadError):
        return "model", str(e)
    if isinstance(e, (ValueError, FileNotFoundError)):
        return "bad_request", str(e)
    if isinstance(e, MemoryError):
        return "internal", "out of memory"
    return "internal", f"{type(e).__name__}: {e}"


def protect_stdout():
    """Move the real stdout to a private fd, point fd 1 (and ``sys.stdout``) at stderr.

    Returns the binary stream the protocol must write to."""
    sys.stdout.flush()
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(fd, "wb", buffering=0)


def serve_main(device: str = "auto", weights=None, embedder=None, verbose: bool = False,
               max_payload: int = MAX_PAYLOAD_BYTES) -> int:
    """Entry point of ``fastavatar serve``; returns the exit status."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="[fastavatar-engine %(levelname)s] %(message)s")
    out = protect_stdout()
    inp = sys.stdin.buffer
    try:
        engine = Engine(device, weights, embedder)
    except Exception as e:  # noqa: BLE001 - tell the client why, then exit
        kind, text = _classify(e)
        out.write(encode_frame(error_header(None, "model" if kind == "bad_request" else kind,
                                            f"engine could not start: {text}")))
        out.flush()
        return 3
    try:
        # announce readiness so the client can time the start-up
        out.write(encode_frame({"type": "ready", "protocol": PROTOCOL_VERSION, "engine_version": __version__,
                                "device": str(engine.device), "model": engine.model_info(), "pid": os.getpid()}))
        out.flush()
        return Server(engine, inp, out, max_payload=max_payload).run()
    finally:
        engine.close()


__all__ = ["Engine", "Server", "serve_main", "RequestError"]
