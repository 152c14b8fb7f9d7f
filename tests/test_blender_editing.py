"""Editing in Blender (each Blender line in a driver subprocess, real engine): directions, keyframes,
interpolation, refinement (cancel + residual storage), direction training, save/reload and
append. Every number is checked here against an independent decode with the engine's model."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import BLENDER_LINES  # noqa: E402

if not BLENDER_LINES:
    pytest.skip("Blender as a Python module is not installed (pip install bpy==4.5.*)", allow_module_level=True)
pytest.importorskip("mediapipe")
torch = pytest.importorskip("torch")
cbook = pytest.importorskip("matplotlib.cbook")

from fastavatar_engine.directions import Direction, load_direction, save_direction  # noqa: E402
from fastavatar_engine.gaussians import pack_gaussians  # noqa: E402
from fastavatar_engine.model.io import FastAvatarModel  # noqa: E402
from test_blender_addon import run_driver  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return FastAvatarModel.load(None)


@pytest.fixture(scope="module")
def edited(blender_python, model, astronaut_png, tmp_path_factory):
    out = tmp_path_factory.mktemp("editing")
    rng = np.random.default_rng(1)
    planted = rng.standard_normal(model.code_dim)
    if model.decoder.basis_components:  # default v2 decodes w[:N] through its basis; the rest only via its
        planted[model.decoder.basis_components:] = 0  # untrained (zero-output) MLP, so a move there shows nothing
    save_direction(Direction("planted", model.model_id, planted), out / "dirs" / "planted.json")
    save_direction(Direction("foreign", "some-other-model", rng.standard_normal(model.code_dim)),
                   out / "other" / "foreign.json")
    hopper = out / "hopper.jpg"
    shutil.copy(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), hopper)
    run_driver(blender_python, "editing", out, astronaut_png, hopper, out / "other",
               env=dict(os.environ, FASTAVATAR_DIRECTIONS_DIR=str(out / "dirs")))
    return out, json.loads((out / "editing.json").read_text()), dict(np.load(out / "editing.npz"))


def decode(model, w):
    with torch.no_grad():
        return pack_gaussians(model.decode(np.asarray(w, np.float32)).to_numpy())


def test_keyed_slider_at_frame_12_equals_exact_decode(edited, model):
    out, info, z = edited
    d = load_direction(out / "dirs" / "planted.json").vector
    # Blender's default Bezier easing between (1, 0) and (24, 2): strictly between, not linear
    assert 0.0 < info["amount_12"] < 2.0 and abs(info["amount_12"] - 2.0 * 11 / 23) < 0.2
    expected = decode(model, z["a_code"] + np.float32(info["amount_12"]) * d) + z["a_res0"]  # + its head shape
    np.testing.assert_allclose(z["a_12"], expected, rtol=0, atol=1e-5)
    assert np.abs(z["a_12"] - z["a_plain"]).max() > 1e-3  # the edit did move the avatar
    # after save + reload, re-evaluating frame 12 gives the same arrays
    np.testing.assert_allclose(z["a_12_reloaded"], z["a_12"], rtol=0, atol=1e-6)


def test_slider_preview_from_the_engine_expansion_is_close_to_exact(edited):
    _, info, z = edited
    assert info["expanded"] and info["previewed_move"]
    err_mm = 1e3 * np.linalg.norm(z["a_preview"][:, :3] - z["a_exact_at_preview"][:, :3], axis=1)
    moved_mm = 1e3 * np.linalg.norm(z["a_exact_at_preview"][:, :3] - z["a_12"][:, :3], axis=1)
    assert moved_mm.max() > 0.1  # the slider did move the splats
    assert np.median(err_mm) < 0.05 and np.percentile(err_mm, 99) < 0.1 * moved_mm.max() + 0.5
    # colours etc. follow too
    assert np.abs(z["a_preview"][:, 3:] - z["a_exact_at_preview"][:, 3:]).mean() < 1e-3


def test_direction_of_another_model_is_refused(edited):
    _, info, _ = edited
    assert "belongs to model 'some-other-model'" in info["foreign"]
    assert info["a_edits"] == ["planted"]


def test_interpolation_endpoints_are_the_inputs_and_midpoint_is_exact(edited, model):
    out, info, z = edited
    assert np.array_equal(z["blend_0"], z["a_12"])  # A as shown (with its edit)
    assert np.array_equal(z["blend_1"], z["b_plain"])
    d = load_direction(out / "dirs" / "planted.json").vector
    wa = z["a_code"] + np.float32(info["amount_12"]) * d
    # each input's residual (its head shape on the model's template) mixes linearly with the code
    expected = decode(model, 0.5 * wa + 0.5 * z["b_code"]) + 0.5 * z["a_res0"] + 0.5 * z["b_res0"]
    np.testing.assert_allclose(z["blend_05"], expected, rtol=0, atol=1e-5)
    assert np.abs(z["a_res0"]).max() > 1e-4  # the avatars sit on their photos' heads


def test_cancelled_refinement_leaves_the_object_exactly_as_it_was(edited):
    _, info, z = edited
    n = len(z["b_plain"])  # a preview from the detail stage has more rows (grown Gaussians, the mouth interior)
    assert info["previewed"] and len(z["b_preview"]) >= n
    assert np.abs(z["b_preview"][:n] - z["b_plain"]).max() > 1e-4  # a live preview was shown
    assert info["cancel_error"] == "EngineError"  # the engine acknowledged the cancel
    assert np.array_equal(z["b_after_cancel"], z["b_plain"])


def test_refined_avatar_is_stored_as_code_plus_residual_and_edits_ride_on_top(edited, model):
    out, info, z = edited
    assert info["b_refined_steps"] == 3
    # the default model's fit (untrained MLP) is all in the per-Gaussian stage: the code stays
    np.testing.assert_array_equal(z["b_code_refined"], z["b_code"])
    parents = z["b_parents"]  # Gaussians grown by the fit are based on their template parent's decode

    def base_of(code):
        g = decode(model, code)
        return np.concatenate([g, g[parents]]) if len(parents) else g

    base = base_of(z["b_code_refined"])
    np.testing.assert_allclose(z["b_refined"], base + z["b_residual"], rtol=0, atol=1e-5)
    assert np.abs(z["b_residual"]).max() > 1e-4  # the fine-tuned decoder changed the Gaussians
    d = load_direction(out / "dirs" / "planted.json").vector
    np.testing.assert_allclose(z["b_refined_edited"], base_of(z["b_code_refined"] - 1.5 * d) + z["b_residual"],
                               rtol=0, atol=1e-5)


def test_edited_and_refined_avatars_survive_save_reload_and_append(edited):
    _, info, z = edited
    assert np.array_equal(z["a_reloaded"], z["a_12"])
    assert np.array_equal(z["b_reloaded"], z["b_refined_edited"])
    assert np.array_equal(z["b_residual_reloaded"], z["b_residual"])
    assert info["reloaded_edits"]["Avatar_hopper"] == [["planted", -1.5]]
    assert info["reloaded_blend"] == ["Avatar_astronaut", "Avatar_hopper", 0.5]
    assert np.array_equal(z["b_appended"], z["b_refined_edited"])
    assert np.array_equal(z["b_residual_appended"], z["b_residual"])
    assert info["appended_edits"] == [["planted", -1.5]] and info["appended_code_equal"]
    assert info["appended_directions"] == ["planted"]
    assert info["appended_keyframes"] == 2


def test_train_direction_operator_writes_a_library_file(edited, model):
    out, info, _ = edited
    d = load_direction(out / "dirs" / "trained.json")
    assert d.model_id == model.model_id and d.accuracy["train"] == 1.0
    planted = load_direction(out / "dirs" / "planted.json").vector
    # 8 labelled codes in 512-D: the max-margin normal leans towards the offset (random: ~0.04);
    # exact recovery from many samples is tested in test_directions.py
    assert float(d.vector @ planted) > 0.5
    assert "cross-validated" in info["train_status"]


def test_batch_renders_an_animation_of_a_latent_edit(blender_python, edited, astronaut_png):
    """Headless: blend with another face, a direction slider, the mix animated over 3 frames."""
    import subprocess
    import sys

    from PIL import Image

    out, _, _ = edited
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [blender_python, str(root / "blender_addon" / "batch.py"), str(astronaut_png), str(out / "anim"),
         "--name", "edit", "--fit", "2", "--refine", "2", "--blend-with", str(out / "hopper.jpg"), "--direction", f"{out / 'dirs' / 'planted.json'}=0.5",
         "--animate", "mix:0:1", "--frames", "3", "--render", "--resolution", "64", "--samples", "2"],
        capture_output=True, text=True, timeout=600, cwd=out,
        env=dict(os.environ, FASTAVATAR_ENGINE_PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((out / "anim" / "batch_summary.json").read_text())["results"][0]
    assert row["animation"] == {"property": "fastavatar.mix", "from": 0.0, "to": 1.0, "frames": 3}
    assert row["directions"] == {"planted": 0.5} and row["blended"]["mix"] == 0.5 and row["refined_steps"] == 4  # --fit 2 at Generate, then --refine 2
    frames = [np.asarray(Image.open(f).convert("RGB"), np.float32) for f in row["frames"]]
    assert len(frames) == 3 and frames[0].shape == (64, 64, 3)
    diffs = [np.abs(frames[i + 1] - frames[i]).mean() for i in range(2)]
    assert min(diffs) > 0.5  # the face changes from frame to frame


def test_direction_from_photos_and_generate_from_photos(edited, model):
    out, info, z = edited
    d = load_direction(out / "dirs" / "smile_test.json")
    assert d.model_id == model.model_id and d.provenance["samples"] == {"positive": 2, "negative": 2}
    assert "smile above its median" in d.provenance["source"] and "from 4 photos" in info["from_photos_status"]
    assert info["multi_photos"] == ["hopper.png", "hopper_flipped.png"]
    # the fused code is the mean of the two photos' codes (each encoded by the engine's model)
    from fastavatar_engine.generate import AvatarGenerator

    with AvatarGenerator(model) as gen:
        codes = [gen.generate(str(out / "expression_photos" / n)).code for n in info["multi_photos"]]
    np.testing.assert_allclose(z["multi_code"], np.mean(codes, axis=0), atol=1e-5)


def test_export_operator_writes_the_avatar_as_shown_or_without_sliders(edited, model):
    from fastavatar_engine.gaussians import sigmoid
    from fastavatar_engine.ply import read_ply

    out, info, z = edited
    shown = pack_gaussians(read_ply(out / "b_shown.ply"))  # plyfile-based reader, engine axes
    np.testing.assert_array_equal(shown, z["b_refined_edited"])
    base = pack_gaussians(read_ply(out / "b_base.ply"))
    plain = decode(model, z["b_code_refined"])
    if len(z["b_parents"]):  # grown Gaussians: their parents' decode
        plain = np.concatenate([plain, plain[z["b_parents"]]])
    np.testing.assert_allclose(base, plain + z["b_residual"], rtol=0, atol=1e-5)
    assert (out / "b.glb").is_file() and not (out / "b.ply").exists()
    kept = int((sigmoid(z["b_refined_edited"][:, 51].astype(np.float64)) >= 0.1).sum())
    assert f"Exported {kept} splats to b.glb" in info["export_status"] and "left out" in info["export_status"]


def test_add_all_directions_takes_every_direction_of_the_model_only(edited):
    _, info, _ = edited
    # the folder's directions and the default model's shipped ones (age, gender, smile), not the foreign model's
    assert info["all_directions"] == ["age", "gender", "planted", "smile", "smile_test", "trained"]
    assert info["after_remove"] == ["planted"]
