"""Shared test helpers: where the NeRSemble sample data lives, a skip when it is absent, and the
public-domain astronaut photo (scikit-image) as a PNG file."""

from pathlib import Path

import pytest

#: ../shared/data/nersemble_samples next to the repository (never copied into it).
SAMPLES = Path(__file__).resolve().parents[1].parent / "shared/data/nersemble_samples"
SUBJECTS = ("128", "306", "369")
#: ../shared/data (London Set, faces, videos), read in place.
SHARED_DATA = SAMPLES.parent


#: Marker for tests that need the sample data (skipped when it is absent).
needs_samples = pytest.mark.skipif(
    not all((SAMPLES / s / "transforms.json").is_file() for s in SUBJECTS),
    reason=f"sample data not found at {SAMPLES}",
)


def require_samples() -> Path:
    """Return :data:`SAMPLES`, or skip the calling test when the sample data is not present."""
    if not (SAMPLES / SUBJECTS[0] / "transforms.json").is_file():
        pytest.skip(f"sample data not found at {SAMPLES}")
    return SAMPLES


@pytest.fixture
def samples() -> Path:
    """The sample-data folder (skips the test when it is absent)."""
    return require_samples()


@pytest.fixture(scope="session")
def astronaut_png(tmp_path_factory) -> Path:
    """``skimage.data.astronaut()`` (512x512 RGB, public domain) saved as a PNG; skips without scikit-image."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(path)
    return path


# --------------------------------------------------------------------------- Blender lines
ROOT = Path(__file__).resolve().parents[1]


def _bpy_version(python: str) -> str | None:
    import subprocess

    try:
        r = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('bpy'))"],
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def blender_lines() -> list[tuple[str, str]]:
    """(``bpy-<version>``, interpreter) for each Blender-as-a-Python-module the add-on tests run
    under: this interpreter when it has bpy (the mesh line, bpy 4.5 beside torch), then each
    interpreter in ``$FASTAVATAR_BLENDER_PYTHONS`` (``os.pathsep``-separated), else
    ``.venv-bpy53/bin/python`` when that venv exists (bpy 5.3 on Python 3.13, which `.ci/run`
    builds). The engine always runs in this interpreter's environment (torch)."""
    import importlib.util
    import os
    import sys

    found = []
    if importlib.util.find_spec("bpy") is not None:
        found.append(sys.executable)
    extra = os.environ.get("FASTAVATAR_BLENDER_PYTHONS")
    if extra is not None:
        found += [p for p in extra.split(os.pathsep) if p]
    elif (ROOT / ".venv-bpy53" / "bin" / "python").is_file():
        found.append(str(ROOT / ".venv-bpy53" / "bin" / "python"))
    out = []
    for python in found:
        version = _bpy_version(python)
        if version is not None and all(v != f"bpy-{version}" for v, _ in out):
            out.append((f"bpy-{version}", python))
    return out


#: Computed once per session (each probe starts an interpreter).
BLENDER_LINES = blender_lines()


@pytest.fixture(scope="session", params=[p for _, p in BLENDER_LINES] or [None],
                ids=[v for v, _ in BLENDER_LINES] or ["no-bpy"])
def blender_python(request) -> str:
    """The interpreter of one Blender line (tests using it run once per line, see :func:`blender_lines`)."""
    if request.param is None:
        pytest.skip("Blender as a Python module is not installed (pip install bpy==4.5.*, or a .venv-bpy53 with bpy 5.3)")
    return request.param


def native_splat_line(python: str) -> bool:
    """Whether the Blender line ``python`` (one of :data:`BLENDER_LINES`) has Gaussian-splat point
    clouds (bpy >= 5.3), so avatars are native splats there rather than the mesh display."""
    version = next(v for v, p in BLENDER_LINES if p == python)
    return tuple(int(x) for x in version.removeprefix("bpy-").split(".")[:2]) >= (5, 3)
