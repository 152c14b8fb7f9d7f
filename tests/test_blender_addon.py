"""The Blender extension with Blender as a Python module, driven in subprocesses
(tests/blender/driver.py) against a real engine subprocess, once per Blender line
(:func:`conftest.blender_lines`: bpy 4.5 beside torch, bpy 5.3 on Python 3.13); checked here with
numpy, torch and the engine's own model, independently of the add-on's code."""

import json

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import BLENDER_LINES, native_splat_line  # noqa: E402

if not BLENDER_LINES:  # not imported here: bpy runs in the driver subprocesses only
    pytest.skip("Blender as a Python module is not installed (pip install bpy==4.5.*)", allow_module_level=True)
pytest.importorskip("mediapipe")
skimage_data = pytest.importorskip("skimage.data")

from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "blender" / "driver.py"
SH_C0 = 0.28209479177387814


def run_driver(python, scenario, out: Path, *args, env=None, timeout=600):
    """Run the driver's ``scenario`` under the Blender interpreter ``python``; the engine runs in
    this (torch) interpreter unless ``env`` names another. Returns its result.json."""
    env = dict(os.environ if env is None else env)
    env.setdefault("FASTAVATAR_ENGINE_PYTHON", sys.executable)
    proc = subprocess.run([python, str(DRIVER), scenario, str(out), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage_data.astronaut()).save(d / "astronaut.png")
    Image.fromarray(np.full((200, 200, 3), 120, np.uint8)).save(d / "grey.png")
    return d


def test_register_and_unregister_cleanly(blender_python, tmp_path):
    r = run_driver(blender_python, "register", tmp_path)
    assert r["operators"] == [True, True, True] and r["panel"]
    assert r["after_unregister"] == [False, False]
    assert r["registered_twice"] == [True, True, 1]  # a second unregister/register is a no-op


@pytest.fixture(scope="module")
def generated(blender_python, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    return out, run_driver(blender_python, "generate", out, photos / "astronaut.png", photos / "grey.png")


def test_generate_avatar_attributes_equal_the_engine_arrays(blender_python, generated, photos):
    from fastavatar_engine.generate import AvatarGenerator

    out, r = generated
    assert r["op"] == [["FINISHED"], ""]
    obj = r["object"]
    assert obj["vertices"] == 10144 and obj["edges"] == 0 and obj["faces"] == 0  # vertices only
    assert obj["model_id"] == "fastavatar-default-v2.1" and obj["photo"].endswith("astronaut.png")
    assert obj["camera_json"]
    if native_splat_line(blender_python):  # Blender's own Gaussian splats, with the screen-space dilation
        assert obj["type"] == "POINTCLOUD" and obj["data_type"] == "GAUSSIAN_SPLAT" and obj["modifiers"] == ["NODES"]
        assert obj["node_group"] == "FastAvatar Splat Filter"
    else:
        assert obj["type"] == "MESH" and obj["modifiers"] == ["NODES"] and obj["node_group"] == "FastAvatar Splats"
    data = np.load(out / "generated.npz")
    # an independent engine run on the same photo
    with AvatarGenerator() as gen:
        avatar = gen.generate(str(photos / "astronaut.png"))
    np.testing.assert_allclose(data["code"], avatar.code, atol=1e-6)
    g = avatar.gaussians
    np.testing.assert_allclose(data["co"], g.means, atol=1e-5)
    rest = g.sh[:, 1:, :].transpose(0, 2, 1).reshape(len(g), 45)  # INRIA channel-major f_rest
    expected = {**{f"f_dc_{c}": g.sh[:, 0, c] for c in range(3)}, **{f"f_rest_{i}": rest[:, i] for i in range(45)},
                "opacity": g.opacity_logits, **{f"scale_{i}": g.log_scales[:, i] for i in range(3)},
                **{f"rot_{i}": g.rotations[:, i] for i in range(4)}}
    for name, values in expected.items():
        np.testing.assert_allclose(data[name], values, atol=1e-5, err_msg=name)
    # placed z-up at the 3D cursor (1, 2, 3): rotation +90 deg about X maps (x, y, z) -> (x, -z, y)
    m = data["matrix_world"]
    np.testing.assert_allclose(m[:3, 3], [1, 2, 3], atol=1e-6)
    np.testing.assert_allclose(m[:3, :3] @ np.array([0.3, 0.5, 0.7]), [0.3, -0.7, 0.5], atol=1e-6)
    if native_splat_line(blender_python):
        # Blender's splat attributes hold what its own INRIA importer makes of the engine's PLY of the
        # same Gaussians, and that is sigmoid(opacity), exp(log-scale), the unit quaternion
        imp = np.load(out / "ply_import.npz")
        assert r["ply_import"]["data_type"] == "GAUSSIAN_SPLAT" and r["ply_import"]["vertices"] == len(g)
        for name in [k for k in imp.files if k.startswith("native:")]:
            np.testing.assert_allclose(data[name], imp[name], rtol=1e-6, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(data["native:radiance:base"][:, 3], 1 / (1 + np.exp(-g.opacity_logits)), atol=1e-6)
        np.testing.assert_allclose(data["native:scale"], np.exp(g.log_scales), rtol=1e-5)
        q = g.rotations / np.linalg.norm(g.rotations, axis=1, keepdims=True)
        np.testing.assert_allclose(data["native:rotation"], q, atol=1e-6)
        return
    # the displayed splats: one instance per point at the point, scaled 3 * exp(log-scale) (the 3-sigma
    # proxy the material evaluates the Gaussian in), rotated by rot
    inst = np.load(out / "instances.npy")
    assert inst.shape == (10144, 4, 4)
    i = 123
    local = np.linalg.inv(m) @ inst[i]
    np.testing.assert_allclose(local[:3, 3], g.means[i], atol=1e-5)
    q = g.rotations[i] / np.linalg.norm(g.rotations[i])
    w, x, y, z = q
    R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                  [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                  [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    np.testing.assert_allclose(local[:3, :3], R * (3.0 * np.exp(g.log_scales[i])), rtol=1e-3, atol=1e-7)



def test_display_dilation_is_the_reference_rasterisers_eps2d(blender_python, generated):
    """With a scene camera, every displayed splat's std-devs are sqrt(sigma^2 + eps2d (z / f)^2):
    the engine rasteriser's 0.3 px^2 low-pass as a 3D dilation (checked against the projection in
    tests/test_render.py), z the splat's depth from the camera, f its focal length in pixels."""
    import inspect

    from fastavatar_engine.render.torch_rasterizer import rasterize

    out, r = generated
    d = r["dilation"]
    assert d["eps2d"] == inspect.signature(rasterize).parameters["eps2d"].default
    f = 0.5 * 256 / np.tan(0.5 * d["fov"])  # the benchmark's and the batch camera's focal length (px)
    assert d["pixel_angle"] == pytest.approx(1.0 / f, rel=1e-6)
    data = np.load(out / "generated.npz")
    means = data["co"]
    log_scales = np.stack([data[f"scale_{i}"] for i in range(3)], 1)
    c2w = np.array(d["c2w"])  # OpenGL camera in the avatar's frame: it looks down its -Z
    z = (means - c2w[:3, 3]) @ -c2w[:3, 2]
    assert z.min() > 0.3
    expected = np.sqrt(np.exp(2 * log_scales) + d["eps2d"] * (z / f)[:, None] ** 2)
    assert (expected / np.exp(log_scales)).max() > 1.5  # the dilation matters for the smallest splats
    if native_splat_line(blender_python):
        np.testing.assert_allclose(np.load(out / "scale_stored.npy"), np.exp(log_scales), rtol=1e-5)  # data untouched
        np.testing.assert_allclose(np.load(out / "scale_dilated.npy"), expected, rtol=1e-4)
    else:
        inst = np.load(out / "instances_dilated.npy")
        local = np.linalg.inv(data["matrix_world"]) @ inst
        got = np.linalg.norm(local[:, :3, :3], axis=1) / 3.0  # column norms: the 3-sigma proxy's radii
        np.testing.assert_allclose(got, expected, rtol=1e-3)
        np.testing.assert_allclose(local[:, :3, 3], means, atol=1e-5)


def _read_dump(npz):
    """The :class:`~fastavatar_engine.gaussians.GaussianSet` in a dump ``npz`` written by Blender."""
    from fastavatar_engine.gaussians import GaussianSet

    d = np.load(npz)
    n = len(d["co"])
    rest = np.stack([d[f"f_rest_{i}"] for i in range(45)], 1).reshape(n, 3, 15).transpose(0, 2, 1)
    sh = np.concatenate([np.stack([d[f"f_dc_{c}"] for c in range(3)], 1)[:, None], rest], 1)
    return GaussianSet(d["co"], np.stack([d[f"scale_{i}"] for i in range(3)], 1),
                       np.stack([d[f"rot_{i}"] for i in range(4)], 1), d["opacity"], sh)


def test_generate_avatar_fits_the_photo_by_default(generated, photos):
    """Generate Avatar as a user runs it (the default likeness fit) lands closer to the photo than
    the bare feed-forward avatar, each rendered at its own camera, inside the face."""
    import torch

    from fastavatar_engine.face import FaceFrontEnd
    from fastavatar_engine.generate import DEFAULT_FIT_STEPS, face_mask
    from fastavatar_engine.images import load_image
    from fastavatar_engine.render import render

    out, r = generated
    assert r["fit_op"] == [["FINISHED"], ""]
    assert r["fit_default"] == DEFAULT_FIT_STEPS  # the add-on's default is the engine's
    fit = r["fit_object"]
    assert fit["refined_steps"] == DEFAULT_FIT_STEPS and fit["residual"]
    # the template's splats plus those the fit grew where her hair reaches past the template
    assert fit["vertices"] == 10144 + fit["parents"]
    photo = load_image(photos / "astronaut.png")
    with FaceFrontEnd() as fe:
        face = fe.detect_one(photo)
    mask = torch.from_numpy(face_mask(photo.shape[:2], face.landmarks))
    target = torch.from_numpy(photo.astype(np.float32) / 255)
    with open(out / "result.json") as fh:
        ff_cam = json.load(fh)["object"]
    errors = {}
    for tag, cam in (("generated", None), ("fitted", fit["camera"])):
        g = _read_dump(out / f"{tag}.npz")
        if cam is None:  # the feed-forward avatar: the photo's camera, as the engine estimates it (head fit)
            from fastavatar_engine.generate import photo_camera

            est = photo_camera(face)
            c2w, K = est.c2w, est.K
        else:
            c2w, K = np.array(cam["c2w_opengl"]), np.array(cam["K"])
        rgb, _ = render(g, c2w, K, photo.shape[1], photo.shape[0])
        errors[tag] = float(((rgb - target).abs().mean(-1) * mask).sum() / mask.sum())
    assert errors["fitted"] < 0.8 * errors["generated"], errors
    assert ff_cam["name"] != fit["name"]


def test_faults_leave_the_scene_untouched_with_clear_messages(generated):
    _, r = generated
    assert r["no_face_op"][0] == ["CANCELLED"] and "No face found" in r["no_face_status"] and r["objects_unchanged"]
    assert r["killed_op"][0] == ["CANCELLED"] and "engine stopped unexpectedly" in r["killed_status"]
    assert r["objects_unchanged_after_kill"]
    assert r["again_op"] == [["FINISHED"], ""] and r["new_pid"]  # a fresh engine on the next request


def test_saved_blend_reopens_with_avatar_attributes_and_code(generated):
    out, r = generated
    assert r["reloaded"] == r["object"]
    a, b = np.load(out / "generated.npz"), np.load(out / "reloaded.npz")
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_missing_engine_says_so(blender_python, photos, tmp_path):
    r = run_driver(blender_python, "no_engine", tmp_path, photos / "astronaut.png")
    assert r["op"][0] == ["CANCELLED"] and "does not exist" in r["status"] and r["objects"] == 0


def test_headless_batch_continues_past_failures_and_renders(blender_python, photos, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([blender_python, str(ROOT / "blender_addon" / "batch.py"), str(photos), str(out),
                           "--render", "--ply", "--samples", "4", "--resolution", "128"],
                          capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, FASTAVATAR_ENGINE_PYTHON=sys.executable))
    assert proc.returncode == 1, proc.stderr[-2000:]  # grey.png has no face
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["photos"] == 2 and summary["succeeded"] == 1 and summary["failed"] == 1
    bad = [r for r in summary["results"] if not r["ok"]][0]
    assert bad["photo"].endswith("grey.png") and "No face" in bad["error"]
    assert (out / "astronaut.blend").is_file() and not (out / "grey.blend").exists()
    from fastavatar_engine.ply import read_ply

    good = [r for r in summary["results"] if r["ok"]][0]
    n = len(read_ply(out / "astronaut.ply"))  # the template's splats and those the default fit grew
    assert n == good["splats"] and n >= 10144
    img = np.asarray(Image.open(out / "astronaut.png").convert("RGB"), np.float32)
    assert img.shape == (128, 128, 3)
    # a head in the middle on a white background: the centre differs from the corners
    assert img[:8, :8].mean() > 240 and img[48:80, 48:80].mean() < 220


def test_extension_zip_installs_and_enables(blender_python, tmp_path):
    sys.path.insert(0, str(ROOT))
    import build_addon

    zip_path = build_addon.build(download=True, dist=tmp_path / "dist")
    with zipfile.ZipFile(zip_path) as zf:
        assert {"batch.py", "avatar.py", "engine.py", "editing.py", "constraints.txt"} <= set(zf.namelist())
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"))
    script = f"""
import bpy, addon_utils, json, sys
bpy.ops.extensions.package_install_files(filepath={str(zip_path)!r}, repo='user_default', enable_on_install=True)
mods = [m for m in addon_utils.modules() if m.__name__.endswith('.fastavatar')]
enabled = [m.__name__ for m in mods if addon_utils.check(m.__name__)[1]]
ok = hasattr(bpy.types.Scene, 'fastavatar') and hasattr(bpy.ops.fastavatar, 'generate')
import fastavatar_engine.protocol as p
for name in enabled:
    addon_utils.disable(name)
print(json.dumps({{'enabled': enabled, 'ok': ok, 'protocol': p.PROTOCOL_VERSION, 'gone': not hasattr(bpy.types.Scene, 'fastavatar')}}))
"""
    proc = subprocess.run([blender_python, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["enabled"] == ["bl_ext.user_default.fastavatar"] and r["ok"] and r["protocol"] == 1 and r["gone"]

    # the interpreter exits with the add-on still enabled (what a user's script does): one clean
    # unregister, no "Scene has no attribute 'fastavatar'" from a second one
    exit_script = ("import bpy, addon_utils; addon_utils.enable('bl_ext.user_default.fastavatar', default_set=True); "
                   "print(hasattr(bpy.types.Scene, 'fastavatar'))")
    proc = subprocess.run([blender_python, "-c", exit_script],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "True", proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "AttributeError" not in proc.stderr, proc.stderr[-3000:]
