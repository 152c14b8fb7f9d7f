"""The .blend stage of a batch worker: a warm Blender beside the warm engine (``fastavatar batch --blend``).

:class:`BlendStage` starts ``blender_addon/blend_writer.py`` once, in a child process (Blender as
a Python module, ``bpy``, or a Blender executable), and hands it each generated avatar as the
engine's generate reply (:func:`~fastavatar_engine.serve.avatar_result`, an ``.npz`` without
pickles), so the .blend holds the avatar exactly as the add-on's *Generate Avatar* makes it.
torch stays in the worker and Blender in its own process, as everywhere in the project. Requests
go on the child's stdin and replies come back on a pipe of their own (Blender prints to stdout).
A child that dies is started again for the next photo; a photo whose .blend fails is that
photo's failure.

Why a child process and not ``import bpy`` in the worker: Blender's module bundles its own
copies of libraries torch also loads (TBB, OpenMP), and the add-on is written to run without
torch; a separate process keeps both as they are tested.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

#: The writer script (in the add-on's folder of a checkout).
WRITER = Path(__file__).resolve().parents[2] / "blender_addon" / "blend_writer.py"
#: Seconds to wait for Blender to start, and for one .blend to be written.
START_TIMEOUT = 120.0
WRITE_TIMEOUT = 300.0


class BlendError(RuntimeError):
    """The .blend stage could not start or write a file."""


def blender_command(blender: str | None = None) -> list[str]:
    """The command that runs the writer: ``blender`` a Blender executable (``blender -b
    --factory-startup --python ...``) or a Python that has ``bpy``; None: this Python when it
    has ``bpy``. Raises :class:`BlendError` when there is none."""
    if not WRITER.is_file():
        raise BlendError(f"--blend needs the add-on's folder beside the engine ({WRITER} is missing)")
    if blender:
        exe = shutil.which(blender) or blender
        if not Path(exe).is_file():
            raise BlendError(f"--blender: {blender} is not an executable")
        if Path(exe).name.lower().startswith("blender"):
            return [exe, "-b", "--factory-startup", "--python", str(WRITER), "--"]
        return [exe, str(WRITER)]
    import importlib.util

    if importlib.util.find_spec("bpy") is None:
        raise BlendError("--blend needs Blender: pip install -e \".[blender]\" (bpy) or --blender PATH")
    return [sys.executable, str(WRITER)]


class BlendStage:
    """One warm Blender for a worker's .blend files (module docstring).

    Args:
        blender: see :func:`blender_command`.
        resolution: the .blend's render size (pixels, square); ``samples`` its Cycles samples.
    Raises :class:`BlendError` when no Blender is available.
    """

    def __init__(self, blender: str | None = None, resolution: int = 512, samples: int = 32):
        self.command = blender_command(blender)
        self.resolution, self.samples = int(resolution), int(samples)
        self._proc = None
        self._reply = None

    def _start(self) -> None:
        r, w = os.pipe()
        try:  # the writer puts the engine's folder on its own sys.path (Blender's Python ignores PYTHONPATH)
            self._proc = subprocess.Popen(self.command + ["--reply-fd", str(w)], stdin=subprocess.PIPE,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(w,))
        finally:
            os.close(w)
        self._reply = os.fdopen(r, "rb")
        first = self._read(START_TIMEOUT)
        if not first.get("ready"):
            self.close()
            raise BlendError(f"Blender did not start the .blend writer: {first}")

    def _read(self, timeout: float) -> dict:
        import select

        ready, _, _ = select.select([self._reply], [], [], timeout)
        line = self._reply.readline() if ready else b""
        if not line:
            code = self._proc.poll() if self._proc else None
            self.close()
            raise BlendError("the .blend writer " + ("timed out" if not ready else f"exited (status {code})"))
        return json.loads(line)

    def write(self, model, avatar, blend_path, label: str | None = None) -> Path:
        """Write ``avatar`` (a :class:`~fastavatar_engine.generate.Avatar`; ``model`` the engine's
        model, which decodes the plain template for the residual) to ``blend_path`` (a path ending
        ``.blend``) through the warm Blender, the avatar object named after ``label`` (default the
        file's stem); returns the path. Raises :class:`BlendError` with Blender's message when it
        fails, times out (:data:`WRITE_TIMEOUT` seconds) or the writer is gone."""
        import numpy as np

        from ..serve import avatar_result

        blend = Path(blend_path)
        header, arrays = avatar_result(model, avatar)
        payload = blend.with_name(f".{blend.stem}.{secrets.token_hex(4)}.payload.tmp")
        try:
            with open(payload, "wb") as fh:
                np.savez(fh, **arrays)
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            req = {"arrays": str(payload), "header": header, "blend": str(blend), "label": label or blend.stem,
                   "resolution": self.resolution, "samples": self.samples}
            try:
                self._proc.stdin.write((json.dumps(req) + "\n").encode("utf-8"))
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                self.close()
                raise BlendError(f"the .blend writer is gone: {exc}") from None
            out = self._read(WRITE_TIMEOUT)
        finally:
            payload.unlink(missing_ok=True)
        if not out.get("ok"):
            raise BlendError(out.get("error") or "the .blend writer failed")
        return blend

    def close(self) -> None:
        """End the child (it exits at the end of its input)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.stdin.close()
                proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        if self._reply is not None:
            self._reply.close()
            self._reply = None
