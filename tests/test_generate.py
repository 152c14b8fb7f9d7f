"""The built-in default model, photo -> avatar generation, refinement and evaluation."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from plyfile import PlyData

pytest.importorskip("mediapipe")
skimage_data = pytest.importorskip("skimage.data")

from fastavatar_engine.cli import main  # noqa: E402
from fastavatar_engine.model.io import DEFAULT_MODEL_DIR, FastAvatarModel  # noqa: E402
from fastavatar_engine.ply import inria_property_names  # noqa: E402

from conftest import needs_samples, SAMPLES  # noqa: E402


@pytest.fixture(scope="module")
def astronaut(astronaut_png):
    return astronaut_png


@pytest.fixture(scope="module")
def generator():
    from fastavatar_engine.generate import AvatarGenerator

    with AvatarGenerator() as gen:
        yield gen


def test_default_model_ships_with_a_complete_card():
    files = {p.name: p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir()}
    assert {"decoder.safetensors", "encoder.safetensors", "codes.safetensors", "model_card.json"} <= set(files)
    assert sum(files.values()) < 22 * 2**20  # float16, the linear basis (128 components) int8: most of it
    card = json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())
    for key in ("model_id", "data", "commands", "stages", "evaluation", "code_revision", "device", "training_time_s"):
        assert card.get(key), key
    assert "research" in card["data"]["nersemble_terms"] and "camera 8" in card["data"]["held_out_rule"]
    # the London Set is CC BY 4.0: its citation travels with the weights, in the card and the README
    assert "10.6084/m9.figshare.5047666" in card["data"]["london"]
    assert "10.6084/m9.figshare.5047666" in (DEFAULT_MODEL_DIR / "README.md").read_text()
    assert any("fastavatar train" in c for c in card["commands"])
    # no held-out person's entry is among the training entries
    assert not {e.rsplit("-", 1)[0] if e.startswith("london") else e for e in card["data"]["entries"]} \
        & set(card["data"]["held_out"])
    model = FastAvatarModel.load()
    assert model.decoder.num_gaussians == 10144 and model.encoder.in_dim == 128 and model.code_dim == 512
    assert model.decoder.basis_components > 0
    assert {"128", "306", "369"} <= set(model.codes) and len(model.codes) > 100
    codes = torch.stack(list(model.codes.values()))
    assert float(torch.cdist(codes, codes).max()) > 0  # distinct subjects have distinct codes
    with torch.no_grad():
        for name in ["128", "306", "369"] + sorted(model.codes)[:5]:
            g = model.decode(model.codes[name]).validate()
            assert g.means.abs().max() < 0.5  # a head-sized object around the origin, metres


def test_generate_cli_writes_ply_sidecar_and_preview(astronaut, tmp_path, capsys):
    out = tmp_path / "avatar.ply"
    preview = tmp_path / "preview.png"
    assert main(["generate", str(astronaut), "-o", str(out), "--preview", str(preview), "--refine", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["gaussians"] == 10144 and report["refined_steps"] == 0  # --refine 0: feed-forward only
    ply = PlyData.read(str(out))  # independent reader
    assert ply["vertex"].count == 10144
    assert [p.name for p in ply["vertex"].properties] == inria_property_names(3)
    xyz = np.stack([ply["vertex"][k] for k in "xyz"], 1)
    assert np.isfinite(xyz).all() and np.abs(xyz).max() < 0.5
    meta = json.loads(out.with_suffix(".fastavatar.json").read_text())
    assert len(meta["code_w"]) == 512 and np.isfinite(meta["code_w"]).all()
    assert meta["model_id"] == FastAvatarModel.load().model_id and meta["camera"]["focal_source"] == "default_fov"
    img = np.asarray(Image.open(preview).convert("RGB"))
    assert img.shape == (320, 6 * 320, 3)
    for k in range(1, 6):  # every yaw shows a head: non-white pixels in the middle of each tile
        tile = img[:, k * 320:(k + 1) * 320]
        assert (tile[80:240, 100:220] < 230).any(axis=2).mean() > 0.3, f"tile {k} is empty"


def test_generate_cli_fits_the_photo_by_default(astronaut, tmp_path, capsys):
    """Without --refine the CLI runs the likeness fit."""
    from fastavatar_engine.generate import DEFAULT_FIT_STEPS

    out = tmp_path / "fit.ply"
    assert main(["generate", str(astronaut), "-o", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["refined_steps"] == DEFAULT_FIT_STEPS > 0 and "refine" in report["timings_ms"]
    meta = json.loads(out.with_suffix(".fastavatar.json").read_text())
    # the fit refines the photo's camera: the sidecar says where its focal length came from and that it moved
    assert meta["camera"]["focal_source"] == "default_fov+refined" and meta["refined_steps"] == DEFAULT_FIT_STEPS


def test_refinement_lowers_the_photo_loss_and_cancel_leaves_avatar_unchanged(generator, astronaut):
    from fastavatar_engine.images import load_image

    image = load_image(astronaut)
    avatar = generator.generate(image)
    before_means, before_code = avatar.gaussians.means.copy(), avatar.code.copy()
    generator.refine(avatar, image, 4, refine_size=96, progress=lambda s, n, loss: s < 2)  # cancel at step 2
    np.testing.assert_array_equal(avatar.gaussians.means, before_means)
    np.testing.assert_array_equal(avatar.code, before_code)
    assert avatar.refined_steps == 0
    # heads mode (the CPU default): appearance moves, geometry and the code stay
    before_sh = avatar.gaussians.sh.copy()
    generator.refine(avatar, image, 12, refine_size=96, mode="heads", lr_heads=3e-3)
    assert avatar.refined_steps == 12 and avatar.refine_mode == "heads"
    assert avatar.refine_losses[-1] < avatar.refine_losses[0]
    np.testing.assert_allclose(avatar.gaussians.means, before_means, atol=1e-6)
    assert np.abs(avatar.gaussians.sh - before_sh).max() > 1e-3
    np.testing.assert_array_equal(avatar.code, before_code)
    # full mode (the paper's): the code and the whole decoder move together
    generator.refine(avatar, image, 4, refine_size=96, mode="full", lr_code=1e-2, lr_decoder=2e-4, detail_steps=0)
    assert avatar.refined_steps == 16 and avatar.refine_mode == "full"
    assert avatar.refine_losses[-1] < avatar.refine_losses[0]
    assert not np.array_equal(avatar.code, before_code)


def test_default_fit_schedule_follows_the_decoder(generator, astronaut):
    """A decoder whose MLP adds nothing (default v2.1) spends every step after the camera warm-up
    in the per-Gaussian detail stage: the code stays the feed-forward one while the avatar moves.
    A trained MLP (default v1) keeps its decoder stage (a third in detail): the code moves."""
    from fastavatar_engine.generate import AvatarGenerator
    from fastavatar_engine.images import load_image

    image = load_image(astronaut)
    assert generator.model.decoder.conditioning_mlp.heads_zero()
    avatar = generator.generate(image)
    ff_code, ff_sh = avatar.code.copy(), avatar.gaussians.sh.copy()
    generator.refine(avatar, image, 10, refine_size=96)
    np.testing.assert_array_equal(avatar.code, ff_code)
    k = len(ff_sh)  # rows past the template's are Gaussians the detail stage grew
    assert avatar.gaussians.count >= k and np.abs(avatar.gaussians.sh[:k, 0] - ff_sh[:, 0]).max() > 1e-2
    with AvatarGenerator(DEFAULT_MODEL_DIR.parent / "default_v1") as v1:
        assert not v1.model.decoder.conditioning_mlp.heads_zero()
        avatar = v1.generate(image)
        ff_code = avatar.code.copy()
        v1.refine(avatar, image, 10, refine_size=96)
        assert np.abs(avatar.code - ff_code).max() > 1e-4


def test_geometry_anchor_limits_drift_and_refine_from_code_matches(generator, astronaut):
    from fastavatar_engine.images import load_image

    image = load_image(astronaut)
    drift = {}
    for anchor in (0.0, 10.0):
        avatar = generator.generate(image)
        ff = avatar.gaussians.means.copy()
        generator.refine(avatar, image, 6, refine_size=96, mode="full", lr_code=1e-2, lr_decoder=5e-4,
                         geometry_anchor=anchor, detail_steps=0, camera=False, symmetry=False,
                         landmark_weight=0.0, prior_weight=0.0, silhouette_weight=0.0)
        drift[anchor] = float(np.linalg.norm(avatar.gaussians.means - ff, axis=1).mean())
    assert drift[0.0] > 0 and drift[10.0] < 0.7 * drift[0.0], drift
    # avatar_from_code: the same code decodes to the same Gaussians, with the photo's camera
    ff_avatar = generator.generate(image)
    again, img = generator.avatar_from_code(image, ff_avatar.code)
    np.testing.assert_array_equal(again.gaussians.means, ff_avatar.gaussians.means)
    np.testing.assert_allclose(again.camera.c2w, ff_avatar.camera.c2w)
    assert img.shape == image.shape
    with pytest.raises(ValueError, match="512 values"):
        generator.avatar_from_code(image, ff_avatar.code[:100])


def test_generate_errors_are_clear(generator, astronaut, tmp_path, capsys):
    from fastavatar_engine.face import NoFaceError

    with pytest.raises(NoFaceError, match="no face"):
        generator.generate(np.full((200, 200, 3), 128, np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        generator.generate(np.zeros((20, 20, 3), np.float32))
    assert main(["generate", str(tmp_path / "missing.jpg"), "-o", str(tmp_path / "a.ply")]) == 2
    assert "missing.jpg" in capsys.readouterr().err
    assert main(["generate", str(astronaut), "-o", str(tmp_path / "a.ply"), "--weights", str(tmp_path / "no_model")]) == 2
    assert "no_model: model folder not found" in capsys.readouterr().err
    assert not (tmp_path / "a.ply").exists()


@needs_samples
@pytest.mark.sample_data
def test_short_evaluation_run_on_a_sample_subject(tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--data", str(SAMPLES), "--subject", "306", "--input-view", "8", "--refine", "3",
                 "--image-scale", "0.25", "--oracle", "--refine-option", "prior_samples=64",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["evaluated_cameras"] == [c for c in range(16) if c != 8]
    assert result["refined_options"] == {"prior_samples": 64}
    for mode in ("feed_forward", "refined", "oracle_refined"):
        mean = result[mode]["mean"]
        for key in ("psnr", "psnr_masked", "ssim", "ssim_masked", "l1", "l1_masked"):
            assert np.isfinite(mean[key]), (mode, key)
        assert len(result[mode]["views"]) == 15
    # a training subject seen from its held-out frontal view: far above the trivial baselines
    assert result["feed_forward"]["mean"]["psnr"] > 15.0
    assert result["refined"]["loss_last"] <= result["refined"]["loss_first"]
    summary = json.loads(capsys.readouterr().out)
    assert summary["subject"] == "306" and "refined" in summary and "oracle_refined" in summary
    # the product path is not the oracle: the first refines at the estimated camera, the other at camera 8
    assert result["refined"]["views"] != result["oracle_refined"]["views"]
    # photo-only avatars are also scored in the landmark template's frame; the oracle is not
    al = result["frame_alignment"]
    assert al["landmarks"] >= 400 and al["rotation_deg"] < 5 and np.linalg.norm(al["translation_mm"]) < 60
    assert al["residual_mm"] < 6
    for mode in ("feed_forward", "refined"):
        assert len(result[mode]["frame_aligned"]["views"]) == 15 and np.isfinite(result[mode]["frame_aligned"]["mean"]["psnr"])
        assert summary[mode]["frame_aligned"] == result[mode]["frame_aligned"]["mean"]
    assert "frame_aligned" not in result["oracle_refined"]
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage error, exit status 2
        main(["evaluate", "--data", str(SAMPLES), "--subject", "306", "--refine-option", "nonsense=1"])
    assert exit_info.value.code == 2


def test_several_photos_fuse_codes_and_refine_against_every_view(generator, astronaut, tmp_path, capsys):
    flipped = tmp_path / "flipped.png"
    Image.open(astronaut).transpose(Image.FLIP_LEFT_RIGHT).save(flipped)
    one = generator.generate(str(astronaut))
    two = generator.generate(str(flipped))
    fused = generator.generate_multi([str(astronaut), str(flipped)])
    np.testing.assert_allclose(fused.code, (one.code + two.code) / 2, atol=1e-6)
    assert len(fused.views) == 2 and fused.views[1].name == str(flipped)
    # the two cameras are mirror images: yaw of opposite sign
    yaws = [v.c2w[0, 2] for v in fused.views]
    assert yaws[0] * yaws[1] < 0 or max(abs(y) for y in yaws) < 0.05
    seen = []
    generator.refine(fused, None, 4, progress=lambda s, n, loss: seen.append(loss), precision="fp32")
    assert fused.refined_steps == 4 and len(fused.refine_losses) == 4
    # the CLI takes several photos and records them in the sidecar
    out = tmp_path / "fused.ply"
    assert main(["generate", str(astronaut), str(flipped), "-o", str(out), "--refine", "0"]) == 0
    meta = json.loads(out.with_suffix(".fastavatar.json").read_text())
    assert meta["photos"] == [str(astronaut), str(flipped)]
    np.testing.assert_allclose(meta["code_w"], (one.code + two.code) / 2, atol=1e-5)


def test_bf16_refinement_matches_fp32_closely(generator, astronaut):
    from fastavatar_engine.generate import _cpu_has_bf16

    from fastavatar_engine.render import render_to_uint8

    a32 = generator.generate(str(astronaut))
    a16 = generator.generate(str(astronaut))
    ff = a32.gaussians
    image = np.asarray(Image.open(astronaut).convert("RGB"))
    generator.refine(a32, image, 5, precision="fp32")
    generator.refine(a16, image, 5, precision="bf16")
    # bf16 products in the MLP only: the losses and the resulting avatars stay close. Compared
    # where it matters, in the photo's view: bf16 against fp32 differs far less than the fit
    # changed the feed-forward avatar.
    np.testing.assert_allclose(a16.refine_losses, a32.refine_losses, rtol=0.05)
    h, w = image.shape[:2]

    def psnr(ga, gb):
        ra, rb = (render_to_uint8(g, a32.camera.c2w, a32.camera.K, w, h).astype(np.float64) for g in (ga, gb))
        return 10 * np.log10(255.0 ** 2 / max(float(((ra - rb) ** 2).mean()), 1e-12))

    p16, pfit = psnr(a32.gaussians, a16.gaussians), psnr(a32.gaussians, ff)
    assert p16 > 30.0 and p16 > pfit + 10.0, (p16, pfit)
    with pytest.raises(ValueError, match="precision"):
        generator.refine(a32, image, 1, precision="fp8")
    assert isinstance(_cpu_has_bf16(), bool)
