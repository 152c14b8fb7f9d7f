"""The add-on side of the engine: which interpreter runs it, one warm client, background jobs.

Blender's own Python never imports torch: the engine runs as ``<python> -m fastavatar_engine
serve`` in its own interpreter, found in this order:

1. the add-on preference *Engine Python* (an existing environment with the engine installed),
2. the environment variable ``FASTAVATAR_ENGINE_PYTHON``,
3. the environment made by the *Install Engine* button (``<extension user dir>/engine-venv``),
4. the interpreter running Blender's Python itself when it is not Blender's bundled one and
   has torch (Blender as a Python module, ``pip install bpy``, in the engine's venv).

The client (:class:`fastavatar_engine.client.EngineClient`) starts the engine on first use,
keeps it warm, and starts a fresh one after a crash. In the UI, requests run on a worker thread
(:class:`Job`) and operators poll them from a modal timer; in background mode (``blender -b``)
they run synchronously because timers do not fire while a script blocks.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import sys
import threading
from pathlib import Path

_client = None
_client_key = None
_lock = threading.Lock()


class EngineNotInstalled(Exception):
    """No interpreter with the engine was found (the panel offers Install Engine)."""


def addon_package() -> str:
    return __package__ or "fastavatar"


def preferences():
    import bpy

    addon = bpy.context.preferences.addons.get(addon_package())
    return addon.preferences if addon is not None else None


def managed_venv_dir() -> Path | None:
    """Where Install Engine puts the engine's virtual environment (None outside Blender's extension system)."""
    import bpy

    try:
        return Path(bpy.utils.extension_path_user(addon_package(), path="engine-venv", create=False))
    except (ValueError, AttributeError, TypeError):
        return None


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _is_blender_bundled_python(exe: str) -> bool:
    import bpy

    try:
        return Path(exe).resolve().is_relative_to(Path(bpy.utils.resource_path("LOCAL")).resolve())
    except (ValueError, OSError, AttributeError):
        return False


def engine_python() -> str:
    """The interpreter that runs the engine; raises :class:`EngineNotInstalled`."""
    prefs = preferences()
    choice = (prefs.engine_python if prefs is not None else "").strip()
    if choice:
        if not Path(choice).is_file():
            raise EngineNotInstalled(f"Engine Python {choice!r} does not exist (add-on preferences)")
        return choice
    env = os.environ.get("FASTAVATAR_ENGINE_PYTHON", "").strip()
    if env:
        if not Path(env).is_file():
            raise EngineNotInstalled(f"FASTAVATAR_ENGINE_PYTHON={env!r} does not exist")
        return env
    venv = managed_venv_dir()
    if venv is not None and venv_python(venv).is_file():
        return str(venv_python(venv))
    if (not _is_blender_bundled_python(sys.executable) and importlib.util.find_spec("torch") is not None
            and importlib.util.find_spec("fastavatar_engine") is not None):
        return sys.executable
    raise EngineNotInstalled("FastAvatar engine not installed: use Install Engine in the FastAvatar panel "
                             "or the add-on preferences, or set Engine Python")


def engine_settings() -> tuple[str, str, str]:
    """(python, device, weights folder or '') from the preferences."""
    prefs = preferences()
    device = prefs.device.lower() if prefs is not None else "auto"
    weights = prefs.weights_dir.strip() if prefs is not None else ""
    return engine_python(), device, weights


def get_client():
    """The shared warm :class:`EngineClient` for the current settings (a new one when they changed)."""
    global _client, _client_key
    from fastavatar_engine.client import EngineClient, engine_command

    python, device, weights = engine_settings()
    key = (python, device, weights)
    with _lock:
        if _client is None or _client_key != key:
            if _client is not None:
                _client.stop()
            env = dict(os.environ)
            env.pop("PYTHONPATH", None)  # Blender's own paths must not leak into the engine
            env.pop("PYTHONHOME", None)
            _client = EngineClient(engine_command(python, device, weights or None), env=env,
                                   request_timeout=float(os.environ.get("FASTAVATAR_REQUEST_TIMEOUT", "300")))
            _client_key = key
        return _client


def client_busy() -> bool:
    """Whether the warm engine is serving a request (e.g. a refinement on a worker thread)."""
    with _lock:
        return _client is not None and _client.busy


def stop_engine() -> None:
    """Stop the engine subprocess (add-on disabled, Blender quitting)."""
    global _client, _client_key
    with _lock:
        if _client is not None:
            _client.stop()
        _client, _client_key = None, None


atexit.register(stop_engine)


class Job:
    """Run ``fn(progress, cancelled)`` on a worker thread; poll :attr:`done` from a timer.

    ``progress(text, fraction)`` may be called from the worker; :attr:`status`/:attr:`fraction`
    carry the latest values. After completion :attr:`result` or :attr:`error` is set."""

    def __init__(self, fn):
        self.fn = fn
        self.status = ""
        self.fraction = 0.0
        self.result = None
        self.error: BaseException | None = None
        self.cancel_requested = False
        self._done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="fastavatar-job")

    def start(self) -> "Job":
        self.thread.start()
        return self

    def run_sync(self) -> "Job":
        self._run()
        return self

    def _run(self):
        try:
            self.result = self.fn(self._progress, lambda: self.cancel_requested)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            self.error = e
        finally:
            self._done.set()

    def _progress(self, text: str, fraction: float | None = None):
        self.status = text
        if fraction is not None:
            self.fraction = fraction

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self):
        self.cancel_requested = True


def describe_error(e: BaseException) -> str:
    """One line for the status bar."""
    from fastavatar_engine.client import EngineCrashed, EngineError, EngineTimeout, EngineUnavailable

    if isinstance(e, EngineNotInstalled):
        return str(e)
    if isinstance(e, EngineError):
        prefix = {"no_face": "No face found", "image": "Cannot read the photo", "version": "Engine version mismatch",
                  "model": "Model weights problem", "cancelled": "Cancelled"}.get(e.kind, "Engine error")
        return f"{prefix}: {e}"
    if isinstance(e, EngineCrashed):
        return f"The engine stopped unexpectedly ({e.short}); a fresh engine starts on the next request"
    if isinstance(e, EngineTimeout):
        return str(e)
    if isinstance(e, EngineUnavailable):
        return f"Engine unavailable: {e}"
    return f"{type(e).__name__}: {e}"
