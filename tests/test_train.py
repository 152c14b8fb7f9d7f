"""Training pipeline pieces: template averaging, resumable per-subject fits, distillation loss."""

import json

import numpy as np
import pytest

from fastavatar_engine.gaussians import GaussianSet
from fastavatar_engine.render import GaussianTensors
from fastavatar_engine.train.autodecoder import distill_loss
from fastavatar_engine.train.template import mean_gaussians

from conftest import SAMPLES, needs_samples


def _set(n=5, seed=0):
    rng = np.random.default_rng(seed)
    g = GaussianSet.from_points(rng.normal(size=(n, 3)), colors=rng.uniform(0, 1, (n, 3)))
    g.rotations[:] = rng.normal(size=(n, 4))
    return g


def test_template_sign_aligns_quaternions_before_averaging():
    a = _set()
    b = a.copy()
    b.rotations *= -1.0  # the same rotations, opposite signs
    b.means += 0.5
    m = mean_gaussians([a, b])
    np.testing.assert_allclose(np.abs((m.rotations * a.unit_rotations).sum(1)), 1.0, atol=1e-6)
    np.testing.assert_allclose(m.means, a.means + 0.25, atol=1e-6)
    np.testing.assert_allclose(m.sh, a.sh, atol=1e-6)
    with pytest.raises(ValueError, match="differ in size"):
        mean_gaussians([a, _set(6)])


def test_distill_loss_is_zero_for_the_target_and_sign_invariant():
    g = GaussianTensors.from_numpy(_set())
    flipped = GaussianTensors(g.means, g.log_scales, -g.rotations, g.opacity_logits, g.sh)
    unit = GaussianTensors(g.means, g.log_scales, g.rotations / g.rotations.norm(dim=-1, keepdim=True),
                           g.opacity_logits, g.sh)
    assert float(distill_loss(unit, flipped)) < 1e-6
    moved = GaussianTensors(g.means + 0.01, g.log_scales, unit.rotations, g.opacity_logits, g.sh)
    assert float(distill_loss(moved, g)) == pytest.approx(1.0, rel=1e-4)  # 100 per metre x 1 cm


@needs_samples
@pytest.mark.sample_data
def test_fit_is_resumable_and_writes_its_outputs(tmp_path, monkeypatch):
    import fastavatar_engine.train.fit as fit_mod
    from fastavatar_engine.ply import read_ply
    from fastavatar_engine.train.data import subject_points

    cfg = fit_mod.FitConfig(steps=4, image_scale=0.08, checkpoint_every=2)

    class Crash(Exception):
        pass

    real_render, calls = fit_mod.render, {"n": 0}

    def crashing_render(*args, **kwargs):  # the third training step dies (after the step-2 checkpoint)
        calls["n"] += 1
        if calls["n"] == 3:
            raise Crash()
        return real_render(*args, **kwargs)

    monkeypatch.setattr(fit_mod, "render", crashing_render)
    with pytest.raises(Crash):
        fit_mod.fit_subject(SAMPLES / "306", tmp_path, cfg, progress=lambda m: None)
    assert (tmp_path / "fits" / "306.ckpt.pt").is_file()
    assert not (tmp_path / "fits" / "306.ply").exists()

    monkeypatch.setattr(fit_mod, "render", real_render)
    messages = []
    metrics = fit_mod.fit_subject(SAMPLES / "306", tmp_path, cfg, progress=messages.append)
    assert any("resuming at step 2" in m for m in messages)
    assert not (tmp_path / "fits" / "306.ckpt.pt").exists()
    g = read_ply(tmp_path / "fits" / "306.ply")
    assert g.count == 10144
    saved = json.loads((tmp_path / "fits" / "306.json").read_text())
    assert saved["steps"] == 4 and saved == metrics
    assert np.isfinite(saved["psnr_train"]) and np.isfinite(saved["psnr_held_out_view_8"])
    # Gaussian k stays at point k of points3d.ply (the correspondence the template needs)
    pts = subject_points(SAMPLES / "306")
    assert np.median(np.linalg.norm(g.means - pts, axis=1)) < 0.005
