"""``fastavatar edit``: directions and interpolation on a generated avatar, checked against the
equations computed independently here (decode(w') + the avatar's own residual)."""

import json

import numpy as np
import pytest
import torch

from fastavatar_engine.cli import main
from fastavatar_engine.directions import Direction, save_direction
from fastavatar_engine.edit import EditError, edit_avatar, read_coded_avatar
from fastavatar_engine.gaussians import pack_gaussians, sigmoid
from fastavatar_engine.model import FastAvatarDecoder, FastAvatarEncoder
from fastavatar_engine.model.io import FastAvatarModel
from fastavatar_engine.ply import read_ply, write_ply
from test_model import random_template, randomise

K = 40


@pytest.fixture
def model(tmp_path):
    dec = randomise(FastAvatarDecoder(random_template(K)), seed=3, std=0.05)
    enc = FastAvatarEncoder(in_dim=8, code_dim=512).eval()
    m = FastAvatarModel(dec, enc, {"model_id": "m-test"})
    folder = m.save(tmp_path / "model")
    d = np.zeros(512)
    d[:4] = 1.0
    save_direction(Direction("smile", "m-test", d, {"unit_amount": 0.5}), folder / "directions" / "smile.json")
    return FastAvatarModel.load(folder)


def make_avatar(model, path, seed, grown=0):
    """An avatar PLY + sidecar: decode(w) plus a random per-Gaussian residual and ``grown`` clones."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.3, 512).astype(np.float32)
    with torch.no_grad():
        g = model.decode(w).to_numpy()
    parents = rng.integers(0, K, grown) if grown else None
    if grown:
        g = type(g)(*(np.concatenate([getattr(g, f), getattr(g, f)[parents]]) for f in
                      ("means", "log_scales", "rotations", "opacity_logits", "sh")))
    g.means += rng.normal(0, 0.002, g.means.shape).astype(np.float32)
    g.sh[:, 0] += rng.normal(0, 0.1, (g.count, 3)).astype(np.float32)
    write_ply(path, g)
    meta = {"format": "fastavatar-avatar/1", "model_id": model.model_id, "code_w": w.tolist(),
            "head_identity": None, "parents": None if parents is None else parents.tolist()}
    path.with_suffix(".fastavatar.json").write_text(json.dumps(meta))
    return read_coded_avatar(path)


def plain(model, w, parents=None):
    with torch.no_grad():
        p = pack_gaussians(model.decode(np.asarray(w, np.float32)).to_numpy())
    return p if parents is None else np.concatenate([p, p[parents]])


def test_no_edit_returns_the_avatar_and_a_direction_moves_the_code_by_strength_times_unit(model, tmp_path):
    a = make_avatar(model, tmp_path / "a.ply", 0, grown=5)
    g, code, _, parents = edit_avatar(model, a)
    np.testing.assert_allclose(pack_gaussians(g), pack_gaussians(a.gaussians), atol=2e-5)
    d = model_dir_direction(model)
    g, code, _, _ = edit_avatar(model, a, [(d, 2.0)])
    np.testing.assert_allclose(code, a.code + 2.0 * 0.5 * d.vector, atol=1e-6)
    residual = pack_gaussians(a.gaussians) - plain(model, a.code, a.parents)
    np.testing.assert_allclose(pack_gaussians(g), plain(model, code, a.parents) + residual, atol=3e-5)
    assert not np.allclose(pack_gaussians(g)[:, :3], pack_gaussians(a.gaussians)[:, :3], atol=1e-6)


def model_dir_direction(model):
    from fastavatar_engine.edit import library

    return library(model)["smile"]


def test_mix_interpolates_codes_and_residuals_and_fades_grown_gaussians(model, tmp_path):
    a = make_avatar(model, tmp_path / "a.ply", 1, grown=3)
    b = make_avatar(model, tmp_path / "b.ply", 2, grown=2)
    for t in (0.0, 0.3, 1.0):
        g, code, _, parents = edit_avatar(model, a, (), b, t)
        np.testing.assert_allclose(code, (1 - t) * a.code + t * b.code, atol=1e-6)
        assert g.count == K + 3 + 2 and list(parents) == list(a.parents) + list(b.parents)
        ra = pack_gaussians(a.gaussians) - plain(model, a.code, a.parents)
        rb = pack_gaussians(b.gaussians) - plain(model, b.code, b.parents)
        expect = plain(model, code, parents) + np.concatenate([(1 - t) * ra[:K] + t * rb[:K], ra[K:], rb[K:]])
        out = pack_gaussians(g)
        np.testing.assert_allclose(out[:K], expect[:K], atol=3e-5)
        # opacity of A's grown Gaussians times (1 - t), of B's times t
        np.testing.assert_allclose(sigmoid(out[K:K + 3, 51]), sigmoid(expect[K:K + 3, 51]) * (1 - t), atol=2e-5)
        np.testing.assert_allclose(sigmoid(out[K + 3:, 51]), sigmoid(expect[K + 3:, 51]) * t, atol=2e-5)
        if t == 0.0:
            np.testing.assert_allclose(out[:K], pack_gaussians(a.gaussians)[:K], atol=3e-5)
        if t == 1.0:
            np.testing.assert_allclose(out[:K], pack_gaussians(b.gaussians)[:K], atol=3e-5)


def test_edit_refuses_other_models_and_missing_sidecars(model, tmp_path):
    a = make_avatar(model, tmp_path / "a.ply", 0)
    a.model_id = "another"
    with pytest.raises(EditError, match="another"):
        edit_avatar(model, a)
    write_ply(tmp_path / "bare.ply", read_ply(tmp_path / "a.ply"))
    with pytest.raises(EditError, match="sidecar"):
        read_coded_avatar(tmp_path / "bare.ply")


def test_cli_lists_and_applies_directions(model, tmp_path, capsys):
    folder = str(tmp_path / "model")
    assert main(["edit", "--list", "--weights", folder]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["model_id"] == "m-test" and [d["name"] for d in listed["directions"]] == ["smile"]
    assert listed["directions"][0]["unit_amount"] == 0.5
    a = make_avatar(model, tmp_path / "a.ply", 4)
    b = make_avatar(model, tmp_path / "b.ply", 5)
    out = tmp_path / "out.ply"
    assert main(["edit", str(tmp_path / "a.ply"), "-o", str(out), "--direction", "smile", "--strength", "-1",
                 "--mix", str(tmp_path / "b.ply"), "--amount", "0.25", "--weights", folder]) == 0
    meta = json.loads(out.with_suffix(".fastavatar.json").read_text())
    d = model_dir_direction(model)
    np.testing.assert_allclose(meta["code_w"], 0.75 * a.code + 0.25 * b.code - 0.5 * d.vector, atol=1e-5)
    assert meta["edits"]["directions"] == {"smile": -1.0} and read_ply(out).count == K
    assert main(["edit", str(tmp_path / "a.ply"), "-o", str(out), "--direction", "frown", "--weights", folder]) == 2
    assert "frown" in capsys.readouterr().err
    assert main(["edit", str(tmp_path / "a.ply"), "-o", str(out), "--amount", "0.5", "--weights", folder]) == 2
