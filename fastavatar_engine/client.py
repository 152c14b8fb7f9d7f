"""Engine client: starts ``fastavatar serve`` in a subprocess and talks :mod:`.protocol` to it.

numpy only (the Blender add-on uses it inside Blender's Python; torch lives in the engine's own
interpreter). One request at a time; responses are read by a thread so every wait has a timeout.
A crashed, killed or hung engine raises :class:`EngineCrashed` / :class:`EngineTimeout`; the next
request starts a fresh engine. The engine's stderr is kept (last 200 lines) for error messages.
"""

from __future__ import annotations

import collections
import os
import queue
import subprocess
import sys
import threading
import time

import numpy as np

from .protocol import (
    GAUSSIAN_ARRAYS, PROTOCOL_VERSION, FrameError, FrameReader, StreamClosed, encode_frame, gaussians_from_arrays,
)


class EngineError(Exception):
    """The engine answered a request with an error. ``kind`` is the protocol's error kind
    ('no_face', 'image', 'bad_request', 'version', 'model', 'cancelled', 'protocol', 'internal')."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class EngineUnavailable(Exception):
    """The engine could not be started or stopped working (base of crash and timeout)."""


class EngineCrashed(EngineUnavailable):
    """The engine process exited or closed its pipes; ``log`` holds its last stderr lines."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message + (f"\n--- engine log ---\n{log}" if log else ""))
        self.short = message
        self.log = log


class EngineTimeout(EngineUnavailable):
    """The engine did not answer in time (it was stopped)."""


def engine_command(python: str | None = None, device: str = "auto", weights: str | None = None) -> list[str]:
    """The command line that starts the engine service with interpreter ``python`` (default: this one)."""
    cmd = [python or sys.executable, "-m", "fastavatar_engine", "serve", "--device", device]
    if weights:
        cmd += ["--weights", str(weights)]
    return cmd


class EngineClient:
    """A warm engine subprocess. ``command``: argv (see :func:`engine_command`); ``env``: its
    environment (default: this process's); ``start_timeout`` / ``request_timeout`` in seconds
    (refinement waits ``request_timeout`` between two progress events, not in total).

    Use :meth:`request` for any message, or the helpers :meth:`hello`, :meth:`generate`,
    :meth:`decode`, :meth:`refine`. Thread-safe: requests are serialised by a lock."""

    def __init__(self, command: list[str], env: dict | None = None, start_timeout: float = 120.0,
                 request_timeout: float = 120.0, cwd: str | None = None):
        self.command = list(command)
        self.env = env
        self.cwd = cwd
        self.start_timeout = start_timeout
        self.request_timeout = request_timeout
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}
        self.start_seconds: float | None = None
        self._lock = threading.RLock()
        self._in_flight = 0  # requests sent or waiting to be sent (any thread)
        self._count_lock = threading.Lock()
        self._messages: queue.Queue = queue.Queue()
        self._log = collections.deque(maxlen=200)
        self._next_id = 1

    # ------------------------------------------------------------------ lifecycle
    @property
    def busy(self) -> bool:
        """Whether a request is in flight (a new one would wait for it): UI code checks this to
        avoid blocking Blender's main thread behind a long refinement."""
        return self._in_flight > 0

    @property
    def alive(self) -> bool:
        """Whether the engine process is running."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The engine's last ``lines`` stderr lines (for error messages)."""
        return "\n".join(list(self._log)[-lines:])

    def start(self) -> dict:
        """Start the engine (if not running) and wait for its ``ready`` frame; returns its info."""
        with self._lock:
            if self.alive:
                return self.info
            self.stop()
            t = time.perf_counter()
            env = dict(os.environ if self.env is None else self.env)
            env.setdefault("PYTHONUNBUFFERED", "1")
            try:
                self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, env=env, cwd=self.cwd, bufsize=0)
            except OSError as e:
                self.proc = None
                raise EngineUnavailable(f"cannot start the engine ({self.command[0]}): {e}") from None
            self._messages = queue.Queue()
            self._log.clear()
            threading.Thread(target=self._read_stdout, args=(self.proc, self._messages), daemon=True).start()
            threading.Thread(target=self._read_stderr, args=(self.proc,), daemon=True).start()
            msg = self._wait(self.start_timeout, "start")
            if msg.type == "error":
                self.stop()
                raise EngineError(msg.header.get("kind", "internal"), msg.header.get("message", "engine failed"))
            if msg.type != "ready":
                self.stop()
                raise EngineCrashed(f"engine sent {msg.type!r} instead of 'ready'", self.log_tail())
            if msg.header.get("protocol") != PROTOCOL_VERSION:
                self.stop()
                raise EngineError("version", f"engine speaks protocol {msg.header.get('protocol')!r}, this add-on "
                                             f"{PROTOCOL_VERSION}: reinstall the engine from this add-on's wheel")
            self.info = dict(msg.header)
            self.start_seconds = time.perf_counter() - t
            return self.info

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the engine to shut down; kill it if it does not within ``timeout`` seconds."""
        with self._lock:
            proc, self.proc = self.proc, None
            if proc is None:
                return
            if proc.poll() is None:
                try:
                    proc.stdin.write(encode_frame({"type": "shutdown", "id": 0}))
                    proc.stdin.flush()
                    proc.stdin.close()
                except (OSError, ValueError):
                    pass
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            for s in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    s.close()
                except (OSError, ValueError):
                    pass

    def kill(self) -> None:
        """Kill the engine at once (used after a timeout)."""
        with self._lock:
            proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def _read_stdout(self, proc, messages):
        reader = FrameReader(proc.stdout)
        while True:
            try:
                messages.put(reader.next())
            except FrameError as e:  # garbage on the engine's stdout: report and keep reading
                messages.put(e)
            except (StreamClosed, OSError, ValueError) as e:
                messages.put(StreamClosed(str(e)))
                return

    def _read_stderr(self, proc):
        for line in iter(proc.stderr.readline, b""):
            self._log.append(line.decode("utf-8", "replace").rstrip())

    def _wait(self, timeout: float, what: str):
        try:
            item = self._messages.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise EngineTimeout(f"the engine did not answer {what} within {timeout:.0f} s; it was stopped "
                                f"and a fresh one starts with the next request") from None
        return self._check(item, what)

    def _check(self, item, what: str):
        """``item`` from the reader thread as a Message; raises EngineCrashed for a closed stream
        or garbage on the engine's stdout."""
        if isinstance(item, StreamClosed):
            proc, self.proc = self.proc, None
            code = None
            if proc is not None:
                try:
                    code = proc.wait(2)
                except subprocess.TimeoutExpired:
                    proc.kill()
            time.sleep(0.05)  # let the stderr thread collect the last lines
            raise EngineCrashed(f"the engine stopped during {what} (exit code {code})", self.log_tail())
        if isinstance(item, FrameError):
            self.kill()
            raise EngineCrashed(f"the engine sent a malformed frame during {what}: {item}", self.log_tail())
        return item

    # ------------------------------------------------------------------ requests
    def request(self, type_: str, header: dict | None = None, arrays: dict | None = None, progress=None,
                cancel=None, timeout: float | None = None, preview=None):
        """Send one request and wait for its result; returns the result :class:`Message`.

        ``progress(header)`` receives progress events; ``preview(header, arrays)`` those that carry
        arrays (refinement previews); ``cancel()`` is polled while waiting and,
        once true, a ``cancel`` frame is sent (the engine then answers with an error of kind
        'cancelled'). Raises :class:`EngineError`, :class:`EngineCrashed`, :class:`EngineTimeout`."""
        timeout = self.request_timeout if timeout is None else timeout
        with self._count_lock:
            self._in_flight += 1
        try:
            return self._request(type_, header, arrays, progress, cancel, timeout, preview)
        finally:
            with self._count_lock:
                self._in_flight -= 1

    def _request(self, type_, header, arrays, progress, cancel, timeout, preview):
        with self._lock:
            self.start()
            rid = self._next_id
            self._next_id += 1
            frame = encode_frame(dict(header or {}, type=type_, id=rid), arrays)
            try:
                self.proc.stdin.write(frame)
                self.proc.stdin.flush()
            except (OSError, ValueError, AttributeError):
                self._wait(2.0, type_)  # surfaces the crash with the engine's log
                raise EngineCrashed(f"the engine stopped during {type_}", self.log_tail()) from None
            cancel_sent = False
            deadline = time.monotonic() + timeout
            while True:
                if cancel is not None and not cancel_sent and cancel():
                    try:
                        self.proc.stdin.write(encode_frame({"type": "cancel", "target": rid}))
                        self.proc.stdin.flush()
                    except (OSError, ValueError, AttributeError):
                        pass
                    cancel_sent = True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.kill()
                    raise EngineTimeout(f"the engine did not answer {type_} within {timeout:.0f} s; it was "
                                        f"stopped and a fresh one starts with the next request")
                try:
                    item = self._messages.get(timeout=min(remaining, 0.1))
                except queue.Empty:
                    continue
                msg = self._check(item, type_)
                if msg.id != rid:
                    continue  # a stale answer (e.g. a protocol error about an earlier frame)
                if msg.type == "progress":
                    deadline = time.monotonic() + timeout
                    if msg.arrays:
                        if preview is not None:
                            preview(msg.header, msg.arrays)
                    elif progress is not None:
                        progress(msg.header)
                    continue
                if msg.type == "error":
                    raise EngineError(msg.header.get("kind", "internal"), msg.header.get("message", ""))
                return msg

    def hello(self) -> dict:
        """The engine's hello result header (protocol, device, model)."""
        return self.request("hello", {"protocol": PROTOCOL_VERSION}).header

    def generate(self, image_path: str | None = None, pixels: np.ndarray | None = None,
                 face_index: int | None = None, refine_steps: int | None = None, image_paths=None, **kw):
        """(GaussianSet, code [D] float32, result header) for a photo given by path or pixels, or
        for several photos of one person (``image_paths``: fused code). ``refine_steps``: None runs
        the engine's default likeness fit (``generate.DEFAULT_FIT_STEPS`` steps of refinement
        against the photo), 0 the bare feed-forward avatar. A refined result's arrays
        (``header['arrays']``) include ``base_packed``; pass ``progress`` for its step events."""
        header = {"face_index": face_index, "refine_steps": refine_steps}
        if image_paths is not None:
            header["image_paths"] = [str(q) for q in image_paths]
        if image_path is not None:
            header["image_path"] = str(image_path)
        arrays = {"pixels": np.ascontiguousarray(pixels, np.uint8)} if pixels is not None else None
        msg = self.request("generate", header, arrays, **kw)
        return gaussians_from_arrays(msg.arrays), np.array(msg.arrays["code"], np.float32), _with_arrays(msg)

    def decode(self, code, directions=None, amounts=None, tangents: bool = False, head=None, expression=None, **kw):
        """(GaussianSet, effective code, result header) for code ``w`` (+ sum amounts_m directions_m).
        With ``tangents`` the header's ``arrays['tangents']`` is [M, N, 59]: d(packed Gaussians)/d(amount_m),
        and ``arrays['curvatures']`` [M, N, 59] the secant second derivatives along each direction.
        ``head`` [100] identity coefficients and ``expression`` [53] ARKit coefficients in [0,1]:
        the template on that head with that expression (not with ``tangents``)."""
        arrays = {"code": np.asarray(code, np.float32)}
        if head is not None:
            arrays["head"] = np.asarray(head, np.float32)
        if expression is not None:
            arrays["expression"] = np.asarray(expression, np.float32)
        header = {"tangents": True} if tangents else {}
        if directions is not None:
            arrays["directions"] = np.asarray(directions, np.float32)
            header["amounts"] = [float(a) for a in amounts]
        msg = self.request("decode", header, arrays, **kw)
        if tangents:
            n = len(msg.arrays["means"])
            for key in ("tangents", "curvatures"):
                t = msg.arrays.get(key)
                if t is None or t.shape != (len(arrays["directions"]), n, 59):
                    raise EngineCrashed(f"decode returned {key} of shape {None if t is None else list(t.shape)}")
        return gaussians_from_arrays(msg.arrays), np.array(msg.arrays["code"], np.float32), _with_arrays(msg)

    def expression(self, code, head, expression=None, basis: bool = False, **kw) -> dict:
        """What ``expression`` [53] (ARKit, head model order, in [0,1]; None: all 0) does to the
        avatar with code ``w`` [D] on ``head`` [100]: ``{'delta': [K,59]}`` float32, the packed
        Gaussians' change (model template rows), and with ``basis`` also ``'basis'`` [53,K,C]
        (one secant per shape, on the C ``'columns'`` [C] any shape moves). Raises
        :class:`EngineCrashed` for a result of the wrong shape (see ``serve_expressions``)."""
        arrays = {"code": np.asarray(code, np.float32), "head": np.asarray(head, np.float32)}
        if expression is not None:
            arrays["expression"] = np.asarray(expression, np.float32)
        msg = self.request("expression", {"basis": bool(basis)}, arrays, **kw)
        out = dict(msg.arrays)
        d = out.get("delta")
        if d is None or d.ndim != 2 or d.shape[1] != 59:
            raise EngineCrashed(f"expression returned delta of shape {None if d is None else list(d.shape)}")
        if basis:
            b, c = out.get("basis"), out.get("columns")
            if (b is None or c is None or b.ndim != 3 or b.shape[1] != d.shape[0] or c.ndim != 1
                    or b.shape[2] != len(c) or (len(c) and (c.min() < 0 or c.max() >= 59))):
                raise EngineCrashed("expression returned a malformed basis")
        return out

    def track(self, path, head=None, fps: float | None = None, smooth: float = 1.0, progress=None, cancel=None,
              **kw) -> tuple[dict, dict]:
        """(header, arrays) of an expression sequence from ``path`` (a video, a folder of frames, a
        Live Link Face .csv or an expressions .json): ``arrays`` = coefficients [F,53], rotations
        [F,4] (w,x,y,z), translations [F,3] metres, missing [F]; ``header`` = fps, names, frames.
        ``head`` [100]: hold that identity (the video shows the avatar's person). ``progress``
        receives ``{'stage': 'track', 'step', 'total'}`` events; ``cancel()`` True stops it."""
        arrays = {"head": np.asarray(head, np.float32)} if head is not None else None
        msg = self.request("track", {"path": str(path), "fps": fps, "smooth": float(smooth)}, arrays,
                           progress=progress, cancel=cancel, **kw)
        a, f = msg.arrays, int(msg.header.get("frames", -1))
        shapes = {"coefficients": (f, 53), "rotations": (f, 4), "translations": (f, 3), "missing": (f,)}
        for key, shape in shapes.items():
            if key not in a or a[key].shape != shape or not np.isfinite(a[key]).all():
                raise EngineCrashed(f"track returned {key} of shape {list(a[key].shape) if key in a else None}")
        if not (isinstance(msg.header.get("fps"), (int, float)) and msg.header["fps"] > 0):
            raise EngineCrashed(f"track returned fps {msg.header.get('fps')!r}")
        return dict(msg.header), dict(a)

    def encode(self, image_path: str | None = None, pixels: np.ndarray | None = None,
               face_index: int | None = None, **kw):
        """(code [D] float32, result header with ``measures`` {'mouth_open', 'smile'}) for one photo."""
        header = {"face_index": face_index}
        if image_path is not None:
            header["image_path"] = str(image_path)
        arrays = {"pixels": np.ascontiguousarray(pixels, np.uint8)} if pixels is not None else None
        msg = self.request("encode", header, arrays, **kw)
        code = np.array(msg.arrays.get("code", np.zeros(0)), np.float32)
        if code.ndim != 1:
            raise EngineCrashed(f"encode returned a code of shape {list(code.shape)}")
        return code, msg.header

    def train_direction(self, codes, labels, name: str, source: str = "", c: float | str = "auto", **kw) -> dict:
        """The direction dict (file format of :mod:`fastavatar_engine.directions`) learnt by a linear
        SVM from ``codes`` [N,D] and ``labels`` [N] (1 = has the attribute)."""
        msg = self.request("train_direction", {"name": name, "source": source, "C": c if c == "auto" else float(c)},
                           {"codes": np.asarray(codes, np.float32), "labels": np.asarray(labels, np.uint8)}, **kw)
        return msg.header["direction"]

    def refine(self, code, image_path=None, steps: int = 300, face_index: int | None = None,
               mode: str = "auto", progress=None, cancel=None, image_paths=None, preview_every: int = 0,
               preview=None, pixels=None, **kw):
        """(GaussianSet, refined code, result header): refine ``code`` against the photo (path or
        pixels) or several (``image_paths``). ``preview(header, arrays)`` gets ``arrays['packed']``
        [N,59] every ``preview_every`` steps. ``header['arrays']['base_packed']`` is the plain decode
        of the refined code."""
        header = {"steps": int(steps), "face_index": face_index, "mode": mode, "preview_every": int(preview_every)}
        arrays = {"code": np.asarray(code, np.float32)}
        if image_paths is not None:
            header["image_paths"] = [str(q) for q in image_paths]
        elif pixels is not None:
            arrays["pixels"] = np.ascontiguousarray(pixels, np.uint8)
        else:
            header["image_path"] = str(image_path)
        msg = self.request("refine", header, arrays, progress=progress, cancel=cancel, preview=preview, **kw)
        return gaussians_from_arrays(msg.arrays), np.array(msg.arrays["code"], np.float32), _with_arrays(msg)


def _with_arrays(msg) -> dict:
    """The result header with the frame's extra arrays (beyond the Gaussians) under 'arrays'."""
    return dict(msg.header, arrays={k: v for k, v in msg.arrays.items() if k not in GAUSSIAN_ARRAYS})
