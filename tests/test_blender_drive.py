"""Expressions in Blender (each Blender line in a driver subprocess, real engine): *Drive from
Video* keys a known performance, the keyed frames equal the engine's own driven decode
(``fastavatar animate``'s formula, computed here with the model), the head motion lands on the
object, the scrubbing preview stays close to exact, and a real video goes through the tracker."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import BLENDER_LINES  # noqa: E402

if not BLENDER_LINES:
    pytest.skip("Blender as a Python module is not installed (pip install bpy==4.5.*)", allow_module_level=True)
pytest.importorskip("mediapipe")
torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

from scipy.spatial.transform import Rotation  # noqa: E402

from fastavatar_engine.expressions import ExpressionSequence  # noqa: E402
from fastavatar_engine.expressions.names import EXPRESSION_NAMES  # noqa: E402
from fastavatar_engine.gaussians import pack_gaussians  # noqa: E402
from fastavatar_engine.model.io import FastAvatarModel  # noqa: E402
from test_blender_addon import run_driver  # noqa: E402

FPS, FRAMES, START = 12.0, 8, 5  # the scene runs at 24 fps: sequence frame k lands on scene frame 5 + 2k


@pytest.fixture(scope="module")
def model():
    return FastAvatarModel.load(None)


def performance() -> ExpressionSequence:
    C = np.zeros((FRAMES, 53))
    idx = {n: i for i, n in enumerate(EXPRESSION_NAMES)}
    C[:, idx["jawOpen"]] = np.linspace(0.0, 0.9, FRAMES)
    C[:, idx["eyeBlink_L"]] = [0, 0, 0.5, 1, 1, 0.5, 0, 0]
    C[:, idx["mouthSmile_R"]] = 0.6
    yaw = np.radians(np.linspace(-10, 15, FRAMES))
    quats = Rotation.from_euler("yx", np.stack([yaw, np.radians(np.linspace(0, 5, FRAMES))], 1)).as_quat()
    rot = np.concatenate([quats[:, 3:], quats[:, :3]], 1)  # w, x, y, z
    trans = np.stack([np.linspace(0, 0.02, FRAMES), np.zeros(FRAMES), np.linspace(0, -0.01, FRAMES)], 1)
    return ExpressionSequence(FPS, list(EXPRESSION_NAMES), C, rot, trans, np.zeros(FRAMES, bool), source="test")


@pytest.fixture(scope="module")
def driven(blender_python, astronaut_png, tmp_path_factory):
    out = tmp_path_factory.mktemp("drive")
    seq = performance()
    seq.save(out / "performance.json")
    img = cv2.imread(str(astronaut_png))
    writer = cv2.VideoWriter(str(out / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (512, 512))
    for k in range(12):  # the astronaut drifting right by 2 px a frame
        writer.write(np.roll(img, 2 * k, axis=1))
    writer.release()
    info = run_driver(blender_python, "drive", out, astronaut_png, out / "performance.json", out / "clip.avi")
    assert info["ok"]
    return (ExpressionSequence.load(out / "performance.json"), json.loads((out / "drive.json").read_text()),
            dict(np.load(out / "drive.npz")))


def driven_decode(model, z, e):
    """What the engine's animate shows for expression ``e`` (relative to the avatar's own, the
    template's rest expression e_rest): the avatar's Gaussians + decode(w, head, e_rest + e) -
    decode(w, head, e_rest); grown Gaussians move with their parent."""
    rest = model.head_template.rest_expression

    def plain(expression):
        with torch.no_grad():
            p = pack_gaussians(model.decode(z["code"], z["head"], expression).to_numpy()).astype(np.float64)
        return np.concatenate([p, p[z["parents"]]]) if len(z["parents"]) else p

    return z["rest"] + (plain(rest + np.asarray(e, np.float64)) - plain(rest))


def test_drive_keys_every_coefficient_and_the_head_motion(driven):
    seq, info, _ = driven
    assert info["has_rig"] and info["panel"] and info["names"] == list(EXPRESSION_NAMES)
    assert info["drive_op"] == ["FINISHED"], info.get("drive_error")
    assert f"{FRAMES} frames" in info["status"] and "head motion" in info["status"]
    expected = {f"fastavatar.expression.{n}" for n in EXPRESSION_NAMES} | {"location", "rotation_quaternion"}
    assert set(info["curves"]) == expected
    keys = np.array(info["jaw_keys"])
    np.testing.assert_allclose(keys[:, 0], START + 2 * np.arange(FRAMES))  # 12 fps on a 24 fps scene
    np.testing.assert_allclose(keys[:, 1], seq.coefficients[:, EXPRESSION_NAMES.index("jawOpen")], atol=1e-6)
    assert info["frame_range"][1] >= START + 2 * (FRAMES - 1)


def test_driven_frame_is_the_engines_driven_decode(driven, model):
    seq, _, z = driven
    k = (11 - START) // 2
    np.testing.assert_allclose(z["values_11"], seq.coefficients[k], atol=1e-6)
    np.testing.assert_allclose(z["frame_11"], driven_decode(model, z, seq.coefficients[k]), rtol=0, atol=2e-5)
    # the expression really moved the face: jawOpen 0.39 drops the chin by millimetres
    assert 1e3 * np.abs(z["frame_11"][:, :3] - z["rest"][:, :3]).max() > 2.0
    # between two keys (frame 12 = half-way from sequence frame 3 to 4): linear
    np.testing.assert_allclose(z["values_12"], 0.5 * (seq.coefficients[k] + seq.coefficients[k + 1]), atol=1e-6)
    np.testing.assert_allclose(z["frame_12"], driven_decode(model, z, z["values_12"]), rtol=0, atol=2e-5)
    # the head motion: object = rest @ M_k (head frame = the object's local frame)
    M = np.eye(4)
    w, x, y, zz = seq.rotations[k]
    M[:3, :3] = Rotation.from_quat([x, y, zz, w]).as_matrix()
    M[:3, 3] = seq.translations[k]
    np.testing.assert_allclose(z["world_11"], z["rest_world"] @ M, atol=1e-5)
    np.testing.assert_allclose(z["values_5"], seq.coefficients[0], atol=1e-6)


def test_a_slider_moved_by_hand_decodes_exactly_and_back(driven, model):
    _, _, z = driven
    e = np.zeros(53, np.float32)
    e[EXPRESSION_NAMES.index("jawOpen")] = 0.8
    np.testing.assert_allclose(z["jaw_08"], driven_decode(model, z, e), rtol=0, atol=2e-5)
    np.testing.assert_allclose(z["jaw_0"], z["rest"], rtol=0, atol=1e-5)


def test_scrubbing_preview_stays_close_to_the_exact_decode(driven):
    _, info, z = driven
    assert info["rig"] and info["previewed"]
    err_mm = 1e3 * np.linalg.norm(z["preview"][:, :3] - z["exact_at_preview"][:, :3], axis=1)
    moved_mm = 1e3 * np.linalg.norm(z["exact_at_preview"][:, :3] - z["frame_12"][:, :3], axis=1)
    assert moved_mm.max() > 1.0
    assert np.median(err_mm) < 0.05 and np.percentile(err_mm, 99) < 0.1 * moved_mm.max()
    assert np.abs(z["preview"][:, 3:51] - z["exact_at_preview"][:, 3:51]).max() < 1e-6  # colours untouched


def test_save_reload_and_clear_performance(driven):
    _, info, z = driven
    np.testing.assert_allclose(z["frame_11_reloaded"], z["frame_11"], rtol=0, atol=1e-6)
    assert not [c for c in info["curves_after_clear"] if c.startswith("fastavatar.expression") or c in
                ("location", "rotation_quaternion")]
    np.testing.assert_allclose(z["world_after_clear"], z["rest_world"], atol=1e-6)
    np.testing.assert_allclose(z["after_clear"], z["rest"], rtol=0, atol=1e-5)


def test_drive_from_a_video_and_refusal_without_a_rig(driven):
    _, info, _ = driven
    assert info["video_op"] == ["FINISHED"], info.get("video_error")
    assert "12 frames at 25 fps" in info["video_status"]
    assert "fastavatar.expression.jawOpen" in info["video_curves"] and "location" not in info["video_curves"]
    assert info["norig_op"] == ["CANCELLED"] and "no face rig" in info["norig_error"]


def test_batch_drive_renders_the_performance(blender_python, driven, astronaut_png, tmp_path):
    """Headless: ``batch.py --drive`` keys the performance and renders its first frames."""
    import os
    import subprocess
    import sys

    from PIL import Image

    perf = tmp_path / "performance.json"
    driven[0].save(perf)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [blender_python, str(root / "blender_addon" / "batch.py"), str(astronaut_png), str(tmp_path / "out"),
         "--name", "driven", "--fit", "0", "--drive", str(perf), "--frames", "3", "--render", "--resolution", "64",
         "--samples", "2"], capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env=dict(os.environ, FASTAVATAR_ENGINE_PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "out" / "batch_summary.json").read_text())["results"][0]
    assert row["drive"]["frames"] == [1, 1 + 2 * (FRAMES - 1)]  # 12 fps on the factory scene's 24
    frames = [np.asarray(Image.open(f).convert("RGB"), np.float32) for f in row["frames"]]
    assert len(frames) == 3 and frames[0].shape == (64, 64, 3)
    assert min(np.abs(frames[i + 1] - frames[i]).mean() for i in range(2)) > 0.3  # the head moves and talks
