"""The engine process from Blender: *Install Engine* (a virtual environment with the bundled
engine wheel and the pinned CPU torch) and *Stop Engine*."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import bpy

from .. import engine

#: The extension's folder (the bundled wheels and constraints.txt live there).
ADDON_DIR = Path(__file__).parent.parent


INSTALL: dict = {}


#: Python versions the engine's pinned face front-end has wheels for (MediaPipe 0.10.21, the last
#: release with ``mp.solutions``, ships CPython 3.9-3.12; Blender 5.x runs Python 3.13).
ENGINE_PYTHON_VERSIONS = ("3.12", "3.11")


def base_python() -> str:
    """The interpreter Install Engine builds the engine's venv from: Blender's own Python when the
    engine's wheels exist for it, else ``python3.12`` / ``python3.11`` from PATH. Raises
    ``FileNotFoundError`` with what to install when there is none."""
    if sys.version_info[:2] <= (3, 12):
        return sys.executable
    for version in ENGINE_PYTHON_VERSIONS:
        found = shutil.which(f"python{version}")
        if found is None:
            continue
        try:  # a launcher on PATH (pyenv's shims) may exist without that Python installed
            probe = subprocess.run([found, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                   capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return found
    raise FileNotFoundError(
        f"Install Engine needs Python {' or '.join(ENGINE_PYTHON_VERSIONS)} on PATH: this Blender runs Python "
        f"{sys.version_info[0]}.{sys.version_info[1]}, for which the engine's face front-end (MediaPipe 0.10.21) "
        "has no wheels. Install one, or set Engine Python in the preferences to an existing engine environment")


def install_commands(venv: Path, wheel: Path, constraints: Path | None, python: str | None = None) -> list[list[str]]:
    """The commands Install Engine runs: create ``venv`` with ``python`` (default
    :func:`base_python`), install the CPU torch pin first, then the bundled engine wheel with its
    engine and face extras (CUDA users add gsplat themselves)."""
    vpy = str(engine.venv_python(venv))
    pin = ["-c", str(constraints)] if constraints is not None and constraints.is_file() else []
    return [
        [python or base_python(), "-m", "venv", str(venv)],
        [vpy, "-m", "pip", "install", "--upgrade", "pip"],
        [vpy, "-m", "pip", "install", "torch==2.13.0"],
        [vpy, "-m", "pip", "install", *pin, f"{wheel}[engine,face]"],
    ]


def bundled_wheel() -> Path:
    here = ADDON_DIR
    wheels = sorted((here / "wheels").glob("fastavatar-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no fastavatar wheel in {here / 'wheels'} (rebuild the add-on with build_addon.py)")
    return wheels[-1]


def run_install(commands, progress, cancelled) -> None:
    """Run the install commands one by one, reporting each output line; raises on failure."""
    for i, cmd in enumerate(commands):
        progress(f"[{i + 1}/{len(commands)}] {' '.join(Path(c).name if j == 0 else c for j, c in enumerate(cmd))[:70]}",
                 i / len(commands))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail = []
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-20:]
            progress(f"[{i + 1}/{len(commands)}] {line.strip()[:70]}", None)
            if cancelled():
                proc.kill()
                raise RuntimeError("engine installation cancelled")
        if proc.wait() != 0:
            raise RuntimeError(f"'{' '.join(cmd)}' failed:\n" + "\n".join(tail))
    progress("Engine installed", 1.0)


class FASTAVATAR_OT_install_engine(bpy.types.Operator):
    """Create a virtual environment for the FastAvatar engine and install it from the bundled wheel (downloads PyTorch from PyPI)"""

    bl_idname = "fastavatar.install_engine"
    bl_label = "Install Engine"

    _timer = None

    def execute(self, context):
        venv = engine.managed_venv_dir()
        if venv is None:
            self.report({"ERROR"}, "Install Engine needs the add-on installed as an extension; set Engine Python instead")
            return {"CANCELLED"}
        try:
            cmds = install_commands(venv, bundled_wheel(), ADDON_DIR / "constraints.txt")
        except FileNotFoundError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        job = engine.Job(lambda progress, cancelled: run_install(cmds, progress, cancelled))
        INSTALL["job"] = job
        if bpy.app.background:
            job.run_sync()
            return self._done(context, job)
        job.start()
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.2, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def _done(self, context, job):
        if job.error is not None:
            self.report({"ERROR"}, f"Engine installation failed: {job.error}")
            return {"CANCELLED"}
        engine.stop_engine()
        self.report({"INFO"}, "FastAvatar engine installed")
        return {"FINISHED"}

    def modal(self, context, event):
        job = INSTALL["job"]
        if event.type == "ESC":
            job.cancel()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        if not job.done:
            context.workspace.status_text_set(f"Installing FastAvatar engine: {job.status}")
            for area in context.screen.areas:
                area.tag_redraw()
            return {"RUNNING_MODAL"}
        context.window_manager.event_timer_remove(self._timer)
        context.workspace.status_text_set(None)
        return self._done(context, job)


class FASTAVATAR_OT_stop_engine(bpy.types.Operator):
    """Stop the engine process (it starts again on the next request)"""

    bl_idname = "fastavatar.stop_engine"
    bl_label = "Stop Engine"

    def execute(self, context):
        engine.stop_engine()
        return {"FINISHED"}
