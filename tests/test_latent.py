"""Default v2's latent stages: template mean, auto-decoder, encoder, attribute directions, the split."""

import json

import numpy as np
import pytest
import torch

from fastavatar_engine.gaussians import GaussianSet
from fastavatar_engine.train.encoder_train import LatentEncoderConfig, train_encoder_targets
from fastavatar_engine.train.latent import LatentDecoderConfig, canonical_template, train_decoder_targets
from fastavatar_engine.train.people import (SPLIT_FILE, PeopleEntry, faces_entries, held_out_entries, load_split,
                                            london_entries, training_entries)
from fastavatar_engine.train.prior import train_attribute_directions
from fastavatar_engine.train.targets import Target, person_codes
from conftest import SHARED_DATA
from test_model import random_template


def perturbed(g: GaussianSet, seed: int, size: float = 0.01) -> GaussianSet:
    rng = np.random.default_rng(seed)
    h = g.copy()
    h.means += rng.normal(0, size, h.means.shape)
    h.log_scales += rng.normal(0, 0.1, h.log_scales.shape)
    h.opacity_logits += rng.normal(0, 0.3, h.opacity_logits.shape)
    h.sh += rng.normal(0, 0.1, h.sh.shape)
    h.rotations = h.unit_rotations * (-1 if seed % 2 else 1)  # the same rotations, opposite sign
    return h


def test_canonical_template_is_the_per_parameter_mean_over_identities():
    t = random_template(30)
    fits = [perturbed(t, s) for s in range(4)]
    targets = [Target(f"t{i}", f"p{i}", g, None, np.zeros((1, 4), np.float32)) for i, g in enumerate(fits)]
    new, stats = canonical_template(t, targets)
    for f in ("means", "log_scales", "opacity_logits", "sh"):
        np.testing.assert_allclose(getattr(new, f), np.mean([getattr(g, f) for g in fits], 0), atol=1e-5)
    # q and -q are one rotation: the mean of sign-flipped copies is the rotation itself
    np.testing.assert_allclose(np.abs((new.unit_rotations * t.unit_rotations).sum(1)), 1.0, atol=1e-5)
    assert stats["targets"] == 4 and stats["mean_residual_mm"] > 0
    with pytest.raises(ValueError, match="Gaussians"):
        canonical_template(t, [Target("bad", "p", random_template(10), None, np.zeros((1, 4)))])


def test_auto_decoder_learns_one_code_per_target(tmp_path):
    t = random_template(48)
    fits = [perturbed(t, s, 0.02) for s in range(3)]
    targets = [Target(f"t{i}", f"p{i}", g, None, np.zeros((1, 4), np.float32)) for i, g in enumerate(fits)]
    cfg = LatentDecoderConfig(steps=300, batch=2, gaussians_per_step=48, checkpoint_every=100, lr_codes=3e-2)
    dec, codes, metrics = train_decoder_targets(tmp_path, t, targets, cfg, resume=False, progress=lambda m: None)
    with torch.no_grad():
        err = np.array([[np.abs(dec(codes[i]).means.numpy() - g.means).mean() for g in fits] for i in range(3)])
    # each code decodes its own target better than the others', and much better than the template
    assert (err.argmin(1) == np.arange(3)).all()
    assert err.diagonal().max() < 0.6 * np.abs(t.means - fits[0].means).mean()
    saved = json.loads((tmp_path / "decoder.json").read_text())
    assert saved["targets"] == ["t0", "t1", "t2"] and not (tmp_path / "decoder.ckpt.pt").exists()
    from safetensors.torch import load_file

    assert sorted(load_file(str(tmp_path / "codes.safetensors"))) == ["t0", "t1", "t2"]


@pytest.mark.parametrize("method,min_cos", [("ridge", 0.7), ("mlp", 0.9)])
def test_encoder_maps_each_persons_photos_to_their_code(tmp_path, method, min_cos):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16))
    codes = {f"p{i}": rng.normal(0, 0.3, 512).astype(np.float32) for i in range(6)}
    x, persons = [], []
    for i in range(6):
        for _ in range(5):
            v = centres[i] + rng.normal(0, 0.15, 16)
            x.append(v / np.linalg.norm(v))
            persons.append(f"p{i}")
    enc, m = train_encoder_targets(tmp_path, np.array(x), persons, codes, LatentEncoderConfig(steps=200, dropout=0.1, method=method),
                                   progress=lambda s: None)
    assert m["train_nearest_code_is_own"] == 1.0 and m["train_cosine_mean"] > min_cos
    with torch.no_grad():
        u = centres[0] / np.linalg.norm(centres[0])
        w = enc(torch.tensor(u, dtype=torch.float32)).numpy()
    cos = {p: float(w @ c / np.linalg.norm(w) / np.linalg.norm(c)) for p, c in codes.items()}
    assert max(cos, key=cos.get) == "p0"
    assert (tmp_path / "encoder.safetensors").is_file()


def test_attribute_directions_recover_planted_smile_age_and_gender():
    rng = np.random.default_rng(1)
    d = 64
    smile, age, male = (np.eye(d)[i] for i in range(3))
    targets, codes = [], []
    for p in range(40):
        base = rng.normal(0, 0.2, d)
        a, g = float(rng.uniform(18, 60)), ("male" if p % 2 else "female")
        base += 0.06 * (a - 39) * age + (0.5 if g == "male" else -0.5) * male
        for s in (0, 1):
            targets.append(Target(f"l{p}-{s}", f"l{p}", None, None, None, {"smiling": s, "age": a, "gender": g}))
            codes.append(base + 0.8 * s * smile)
    dirs = {x.name: x for x in train_attribute_directions(targets, np.array(codes), "m")}
    assert set(dirs) == {"smile", "age", "gender"}
    assert dirs["smile"].vector @ smile > 0.9 and dirs["gender"].vector @ male > 0.8 and dirs["age"].vector @ age > 0.6
    # strength 1 of smile = the mean neutral->smiling move along the direction (0.8 x cos)
    assert dirs["smile"].unit_amount == pytest.approx(0.8 * float(dirs["smile"].vector @ smile), rel=1e-3)
    assert dirs["smile"].provenance["samples"]["pairs"] == 40 and dirs["smile"].accuracy["cross_validated"] == 1.0


def test_person_codes_prefer_the_neutral_entry():
    ts = [Target("a-smiling", "a", None, None, None, {"smiling": 1}), Target("a-neutral", "a", None, None, None,
                                                                          {"smiling": 0}),
          Target("f", "f", None, None, None, {})]
    out = person_codes(ts, np.array([[1.0], [2.0], [3.0]]))
    assert out["a"][0] == 2.0 and out["f"][0] == 3.0


def test_split_holds_out_enough_people_and_entries_never_cross_it(tmp_path):
    split = load_split()
    held = split["held_out"]
    assert sum(p.startswith("london-") for p in held) >= 20 and sum(p.startswith("faces-") for p in held) >= 3
    assert len(set(held)) == len(held)
    # a fake data root: two London people (one held out), two faces people
    (tmp_path / "london" / "neutral").mkdir(parents=True)
    (tmp_path / "london" / "smiling").mkdir()
    (tmp_path / "faces").mkdir()
    pid_held = held[0].split("-")[1]
    rows = ["face_id,face_age,face_gender,face_eth", f"{pid_held},30,male,white", "999,NA,female,black"]
    (tmp_path / "london" / "london_info.csv").write_text("\n".join(rows) + "\n")
    for pid in (pid_held, "999"):
        (tmp_path / "london" / "neutral" / f"{pid}_03.jpg").write_bytes(b"x")
        (tmp_path / "london" / "smiling" / f"{pid}_08.jpg").write_bytes(b"x")
    (tmp_path / "faces" / "identities.json").write_text(json.dumps([["a.jpg", "b.jpg"]] * 5))
    for n in ("a.jpg", "b.jpg"):
        (tmp_path / "faces" / n).write_bytes(b"x")
    train = training_entries(tmp_path, split)
    names = {e.name for e in train}
    assert "london-999-neutral" in names and "london-999-smiling" in names
    assert not any(e.person in held for e in train)
    assert {e.person for e in held_out_entries(tmp_path, split)} >= {held[0]}
    e999 = [e for e in london_entries(tmp_path / "london") if e.person == "london-999"][0]
    assert e999.attributes["age"] is None and e999.attributes["gender"] == "female"
    assert [len(e.photos) for e in faces_entries(tmp_path / "faces")] == [2] * 5
    assert PeopleEntry("x", "x", ["a"]).steps == 40 and PeopleEntry("x", "x", ["a"] * 9).steps == 100
    assert SPLIT_FILE.is_file()


def test_committed_split_names_real_people():
    if not (SHARED_DATA / "london" / "london_info.csv").is_file():
        pytest.skip("shared data not found")
    held = set(load_split()["held_out"])
    entries = held_out_entries(SHARED_DATA)
    assert {e.person for e in entries} == held


def test_pca_codes_keep_the_targets_distances():
    from fastavatar_engine.train.latent import _residual_features, pca_codes

    t = random_template(30)
    targets = [Target(f"t{i}", f"p{i}", perturbed(t, i), None, None) for i in range(5)]
    codes, info = pca_codes(t, targets, whiten=False)
    assert codes.shape == (5, 512) and info["components"] == 4 and not codes[:, 4:].any()
    # all components kept: code distances are the residual features' distances over one scale
    x = _residual_features(t, targets, None).astype(np.float64)
    dx = np.linalg.norm(x[:, None] - x[None], axis=-1)
    dc = np.linalg.norm(codes[:, None].astype(np.float64) - codes[None], axis=-1)
    np.testing.assert_allclose(dc * info["scale"], dx, rtol=1e-3, atol=1e-3)
    assert codes[:, 0].std() == pytest.approx(1.0, rel=1e-4)
    white, info = pca_codes(t, targets, components=3)
    assert info["components"] == 3 and np.allclose(white[:, :3].std(0), 1.0, rtol=1e-4) and not white[:, 3:].any()


def test_latent_decoder_resumes_from_its_checkpoint(tmp_path):
    t = random_template(24)
    targets = [Target(f"t{i}", f"p{i}", perturbed(t, i), None, None) for i in range(3)]
    cfg = LatentDecoderConfig(steps=40, batch=1, gaussians_per_step=24, checkpoint_every=20)
    # a run killed after its checkpoint at step 20: rebuild that state and resume from it
    from fastavatar_engine.train.autodecoder import save_checkpoint

    dec, codes, _ = train_decoder_targets(tmp_path, t, targets, LatentDecoderConfig(steps=20, batch=1,
                                          gaussians_per_step=24), resume=False, progress=lambda m: None)
    opt = torch.optim.Adam([{"params": dec.conditioning_mlp.parameters()}, {"params": dec.gaussian_embeddings.parameters()}])
    save_checkpoint(tmp_path / "decoder.ckpt.pt", dec, codes, opt, 20, 1.0)
    said = []
    train_decoder_targets(tmp_path, t, targets, cfg, resume=True, progress=said.append)
    assert any("resuming at step 20" in m for m in said) and not (tmp_path / "decoder.ckpt.pt").exists()


def test_pca_basis_decodes_each_targets_pca_reconstruction(tmp_path):
    from fastavatar_engine.train.latent import pca_basis

    t = random_template(30)
    targets = [Target(f"t{i}", f"p{i}", perturbed(t, i), None, np.zeros((1, 4), np.float32)) for i in range(5)]
    codes, mean, basis, info = pca_basis(t, targets)
    assert basis.shape == (4, 30, 10) and mean.shape == (30, 10) and info["components"] == 4
    # 4 components of 5 targets keep everything: mean + code @ basis is each target's own residual
    for i, g in enumerate(targets):
        rec = mean + np.einsum("n,nkf->kf", codes[i, :4], basis)
        np.testing.assert_allclose(rec[:, :3], g.gaussians.means - t.means, atol=1e-4)
        np.testing.assert_allclose(rec[:, 3:6], g.gaussians.log_scales - t.log_scales, atol=1e-4)
        np.testing.assert_allclose(rec[:, 6], g.gaussians.opacity_logits - t.opacity_logits, atol=1e-4)
        np.testing.assert_allclose(rec[:, 7:], g.gaussians.sh[:, 0] - t.sh[:, 0], atol=1e-4)
    # the decoder trained with the basis and no MLP steps decodes each target's code to it
    dec, got, _ = train_decoder_targets(tmp_path, t, targets, LatentDecoderConfig(steps=0), resume=False,
                                        progress=lambda m: None)
    assert dec.basis_components == 4
    with torch.no_grad():
        g = dec(got[2])
    np.testing.assert_allclose(g.means.numpy(), targets[2].gaussians.means, atol=1e-4)
    np.testing.assert_allclose(g.sh[:, 0].numpy(), targets[2].gaussians.sh[:, 0], atol=1e-4)


def test_with_expressions_adds_the_expression_displacement_on_the_targets_head():
    from fastavatar_engine.model.io import FastAvatarModel
    from fastavatar_engine.train.prior import decoder_template
    from fastavatar_engine.train.targets import with_expressions

    model = FastAvatarModel.load()
    bound = model.head_template
    if bound is None:
        pytest.skip("head model data not installed")
    t = decoder_template(model.decoder)
    rng = np.random.default_rng(0)
    head = rng.normal(0, 0.5, 100).astype(np.float32)
    expr = np.zeros(53, np.float32)
    expr[rng.choice(53, 4, replace=False)] = 0.8
    smiling = Target("s", "p", t, head, np.zeros((1, 4), np.float32), {}, expr)
    plain = Target("n", "p", t, head, np.zeros((1, 4), np.float32), {}, None)
    still = Target("z", "p", t, head, np.zeros((1, 4), np.float32), {}, np.asarray(bound.rest_expression, np.float32))
    out = with_expressions([smiling, plain, still], bound)
    mu0, ls0, _ = (x.double().numpy() for x in bound.deform(identity=head))
    mu1, ls1, _ = (x.double().numpy() for x in bound.deform(identity=head, expression=expr))
    np.testing.assert_allclose(out[0].gaussians.means, t.means + (mu1 - mu0), atol=1e-5)
    np.testing.assert_allclose(out[0].gaussians.log_scales, t.log_scales + (ls1 - ls0), atol=1e-5)
    assert np.abs(mu1 - mu0).max() > 1e-3  # the expression does move the face
    np.testing.assert_array_equal(out[0].gaussians.sh, t.sh)
    assert out[1] is plain  # no expression: unchanged
    np.testing.assert_allclose(out[2].gaussians.means, t.means, atol=1e-6)  # the template's own (rest) expression moves nothing
    np.testing.assert_array_equal(t.means, decoder_template(model.decoder).means)  # the input is not modified
    # a neutral/smiling pair: the neutral photo's expression is the baseline
    e_n = np.zeros(53, np.float32)
    e_n[rng.choice(53, 3, replace=False)] = 0.4
    pair = [Target("q-neutral", "q", t, head, np.zeros((1, 4), np.float32), {"smiling": 0}, e_n),
            Target("q-smiling", "q", t, head, np.zeros((1, 4), np.float32), {"smiling": 1}, expr)]
    out = with_expressions(pair, bound)
    mun, _, _ = (x.double().numpy() for x in bound.deform(identity=head, expression=e_n))
    np.testing.assert_allclose(out[0].gaussians.means, t.means, atol=1e-6)
    np.testing.assert_allclose(out[1].gaussians.means, t.means + (mu1 - mun), atol=1e-5)


def test_one_head_per_person_puts_every_entry_on_the_neutral_head():
    from fastavatar_engine.train.targets import one_head_per_person

    t = random_template(8)
    h_neutral, h_smile, h_other = (np.full(100, v, np.float32) for v in (0.1, 0.2, 0.3))
    emb = np.zeros((1, 4), np.float32)
    targets = [Target("a-smiling", "a", t, h_smile, emb, {"smiling": 1}),
               Target("a-neutral", "a", t, h_neutral, emb, {"smiling": 0}),
               Target("b", "b", t, h_other, emb, {}),  # no neutral entry: unchanged
               Target("128", "nersemble-128", t, None, emb, {})]
    out = one_head_per_person(targets)
    assert [o.name for o in out] == [t_.name for t_ in targets]
    np.testing.assert_array_equal(out[0].head, h_neutral)
    assert out[0].gaussians is t and out[0].attributes == {"smiling": 1}  # the Gaussians stay as fitted
    assert out[1] is targets[1] and out[2] is targets[2] and out[3] is targets[3]
    np.testing.assert_array_equal(targets[0].head, h_smile)  # the input is not modified
