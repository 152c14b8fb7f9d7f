"""build_addon.py: the extension zip, its manifest, and the numpy-only engine client inside it."""

import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import build_addon  # noqa: E402


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory):
    return build_addon.build(download=True, dist=tmp_path_factory.mktemp("dist"))


def test_zip_layout_and_manifest(built_zip):
    with zipfile.ZipFile(built_zip) as zf:
        names = set(zf.namelist())
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
    assert {"__init__.py", "blender_manifest.toml"} <= names
    assert manifest["id"] == "fastavatar" and manifest["type"] == "add-on"
    assert manifest["version"] == build_addon.project_version()
    assert manifest["blender_version_min"] == "4.2.0"
    assert manifest["wheels"], "no wheels listed"
    for entry in manifest["wheels"]:
        assert entry.startswith("./wheels/") and entry.endswith("-py3-none-any.whl")
        assert entry[2:] in names, f"{entry} listed but not in the zip"


def test_engine_wheel_imports_without_torch_or_face_models(built_zip, tmp_path):
    """The client side must work in Blender's Python: numpy + the bundled wheels, nothing else."""
    with zipfile.ZipFile(built_zip) as zf:
        wheels = [n for n in zf.namelist() if n.endswith(".whl")]
        zf.extractall(tmp_path, members=wheels)
    paths = [str(tmp_path / w) for w in wheels]
    script = textwrap.dedent(f"""
        import sys
        for blocked in ("torch", "mediapipe", "cv2", "dlib", "onnxruntime", "insightface"):
            sys.modules[blocked] = None  # any import of these now raises ImportError
        sys.path[:0] = {paths!r}
        import numpy as np
        import fastavatar_engine, fastavatar_engine.ply, fastavatar_engine.cameras, fastavatar_engine.face
        assert fastavatar_engine.__file__.startswith({str(tmp_path)!r}), fastavatar_engine.__file__
        from fastavatar_engine.gaussians import GaussianSet
        from fastavatar_engine.ply import write_ply, read_ply
        g = GaussianSet.from_points(np.zeros((3, 3)))
        p = write_ply({str(tmp_path / "t.ply")!r}, g)
        assert read_ply(p).count == 3
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_manifest_validation_rejects_problems(tmp_path):
    good = (ROOT / "blender_addon" / "blender_manifest.toml").read_text()
    version = build_addon.project_version()
    with pytest.raises(build_addon.BuildError, match="wheel listed but missing"):
        build_addon.validate_manifest(good, tmp_path, version)
    with pytest.raises(build_addon.BuildError, match="blender_version_min"):
        build_addon.validate_manifest(good.replace('"4.2.0"', '"3.6.0"').replace("wheels = [", "old = ["), tmp_path, version)
    with pytest.raises(build_addon.BuildError, match="missing key 'tagline'"):
        build_addon.validate_manifest(good.replace("tagline =", "# tagline ="), tmp_path, version)
    (tmp_path / "native-1.0-cp311-cp311-linux_x86_64.whl").write_bytes(b"")
    text = build_addon.manifest_with_wheels(good, [tmp_path / "native-1.0-cp311-cp311-linux_x86_64.whl"])
    with pytest.raises(build_addon.BuildError, match="not pure Python"):
        build_addon.validate_manifest(text, tmp_path, version)
