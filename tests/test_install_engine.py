"""Install Engine end to end (slow: creates a virtual environment and installs torch and the
face models from the package registries): the extension zip installed into a temporary Blender
user folder, its Install Engine operator run headless, then Generate Avatar with the engine from
that new environment."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BLENDER_LINES  # noqa: E402

if not BLENDER_LINES:
    pytest.skip("Blender as a Python module is not installed (pip install bpy==4.5.*)", allow_module_level=True)
skimage_data = pytest.importorskip("skimage.data")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_install_engine_creates_a_working_engine_environment(blender_python, tmp_path, astronaut_png):
    sys.path.insert(0, str(ROOT))
    import build_addon

    zip_path = build_addon.build(download=True, dist=tmp_path / "dist")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTAVATAR_") and k != "VIRTUAL_ENV"}
    env["BLENDER_USER_RESOURCES"] = str(tmp_path / "user")
    script = f"""
import bpy, addon_utils, json, sys, time
bpy.ops.extensions.package_install_files(filepath={str(zip_path)!r}, repo='user_default', enable_on_install=True)
name = [m.__name__ for m in addon_utils.modules() if m.__name__.endswith('.fastavatar')][0]
pkg = sys.modules[name]
venv = pkg.engine.managed_venv_dir()
t = time.time()
result = sorted(bpy.ops.fastavatar.install_engine())
install_s = time.time() - t
python = pkg.engine.engine_python()
bpy.context.scene.fastavatar.photo_path = {str(astronaut_png)!r}
gen = sorted(bpy.ops.fastavatar.generate())
obj = bpy.context.active_object
client = pkg.engine.get_client()
out = {{'install': result, 'install_s': install_s, 'venv': str(venv), 'python': python, 'generate': gen,
       'splats': pkg.avatar.splat_count(obj.data), 'engine_cmd': client.command[0], 'device': client.info.get('device')}}
pkg.engine.stop_engine()
addon_utils.disable(name)
print(json.dumps(out))
"""
    # on Blender 5.x (Python 3.13) the venv is built from python3.12/3.11 on PATH (MediaPipe 0.10.21's wheels)
    proc = subprocess.run([blender_python, "-c", script], capture_output=True, text=True, timeout=2400, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    venv = Path(r["venv"])
    assert r["install"] == ["FINISHED"] and venv.is_relative_to(tmp_path / "user")
    assert Path(r["python"]).is_relative_to(venv) and Path(r["engine_cmd"]).is_relative_to(venv)
    # the template's 10,144 splats, plus any the default likeness fit grew where the hair reaches past it
    assert r["generate"] == ["FINISHED"] and r["splats"] >= 10144 and r["device"] == "cpu"
    # the new environment holds the CPU torch pin and the engine from the bundled wheel, not this checkout
    check = subprocess.run([r["python"], "-c", "import torch, fastavatar_engine, json; "
                            "print(json.dumps([torch.__version__, fastavatar_engine.__file__]))"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    torch_version, engine_file = json.loads(check.stdout)
    assert torch_version.startswith("2.13.0") and Path(engine_file).is_relative_to(venv)
    print(f"install took {r['install_s']:.0f} s")
