"""Decoder / encoder networks and weight files, checked against independent NumPy computations."""

import pickle

import numpy as np
import pytest
import torch

from fastavatar_engine.gaussians import GaussianSet
from fastavatar_engine.model import FastAvatarDecoder, FastAvatarEncoder
from fastavatar_engine.model.io import FastAvatarModel, ModelLoadError
from fastavatar_engine.ply import write_ply

K = 40


def random_template(k=K, seed=0) -> GaussianSet:
    rng = np.random.default_rng(seed)
    g = GaussianSet.from_points(rng.normal(0, 0.08, (k, 3)), colors=rng.uniform(0, 1, (k, 3)), scale=0.004)
    g.rotations[:] = rng.normal(size=(k, 4))
    g.sh[:, 1:] = rng.normal(0, 0.1, (k, 15, 3))
    g.opacity_logits[:] = rng.normal(0, 1, k)
    g.log_scales[:] = np.log(rng.uniform(0.002, 0.01, (k, 3)))
    return g


def randomise(module: torch.nn.Module, seed=1, std=0.08):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


def numpy_decoder(sd: dict, w: np.ndarray) -> dict:
    """The paper's decoder written directly in NumPy from the official state-dict layout."""
    sd = {k: v.detach().double().numpy() for k, v in sd.items()}
    e = sd["gaussian_embeddings.weight"]
    x = np.concatenate([np.repeat(w[None].astype(np.float64), len(e), 0), e], 1)  # [K, 544]: w first
    for i in (0, 2, 4, 6, 8, 10):
        x = np.maximum(x @ sd[f"conditioning_mlp.shared_body.{i}.weight"].T + sd[f"conditioning_mlp.shared_body.{i}.bias"], 0)
    out = {}
    for name in ("scale", "rotation", "color", "opacity", "means"):
        h = np.maximum(x @ sd[f"conditioning_mlp.{name}_head.0.weight"].T + sd[f"conditioning_mlp.{name}_head.0.bias"], 0)
        out[name] = h @ sd[f"conditioning_mlp.{name}_head.2.weight"].T + sd[f"conditioning_mlp.{name}_head.2.bias"]
    q = sd["base_rotations"] + out["rotation"]
    sh = np.concatenate([sd["base_sh0"], sd["base_shN"]], 1) + out["color"].reshape(-1, 16, 3)
    return {
        "means": sd["base_means"] + 0.1 * np.tanh(out["means"]),
        "log_scales": sd["base_scales"] + out["scale"],
        "scales": np.exp(sd["base_scales"]) * np.exp(out["scale"]),  # s = s_T * exp(ds)
        "rotations": q / np.linalg.norm(q, axis=1, keepdims=True),
        "opacity": 1 / (1 + np.exp(-(sd["base_opacity"] + out["opacity"][:, 0]))),
        "sh": sh,
    }


def test_decoder_matches_paper_equations_in_numpy():
    dec = randomise(FastAvatarDecoder(random_template()))
    w = np.random.default_rng(3).normal(0, 0.5, 512).astype(np.float32)
    with torch.no_grad():
        g = dec(torch.from_numpy(w))
    ref = numpy_decoder(dec.state_dict(), w)
    np.testing.assert_allclose(g.means.numpy(), ref["means"], atol=1e-5)
    np.testing.assert_allclose(g.log_scales.numpy(), ref["log_scales"], atol=1e-5)
    np.testing.assert_allclose(np.exp(g.log_scales.numpy()), ref["scales"], rtol=1e-4)
    np.testing.assert_allclose(g.rotations.numpy(), ref["rotations"], atol=1e-5)
    np.testing.assert_allclose(torch.sigmoid(g.opacity_logits).numpy(), ref["opacity"], atol=1e-5)
    np.testing.assert_allclose(g.sh.numpy(), ref["sh"], atol=1e-5)
    # residuals are non-trivial (the test would not notice a decoder that ignores its heads otherwise)
    assert np.abs(ref["means"] - dec.base_means.numpy()).max() > 1e-3


def test_fresh_decoder_reproduces_template_and_embeddings_encode_position():
    t = random_template()
    dec = FastAvatarDecoder(t)
    with torch.no_grad():
        g = dec(torch.randn(512))
    np.testing.assert_allclose(g.means.numpy(), t.means, atol=1e-6)  # zero-initialised heads
    np.testing.assert_allclose(g.sh.numpy(), t.sh, atol=1e-6)
    e = dec.gaussian_embeddings.weight.detach().numpy()
    assert e.shape == (K, 32)
    lo, hi = t.means.min(0), t.means.max(0)
    np.testing.assert_allclose(e[:, :3], 2 * (t.means - lo) / (hi - lo) - 1, atol=1e-5)


def test_decoder_shapes_and_code_validation():
    dec = FastAvatarDecoder(random_template())
    sd = dec.state_dict()
    assert sd["gaussian_embeddings.weight"].shape == (K, 32)
    assert sd["conditioning_mlp.shared_body.0.weight"].shape == (256, 544)
    assert all(sd[f"conditioning_mlp.shared_body.{i}.weight"].shape == (256, 256) for i in (2, 4, 6, 8, 10))
    for name, out in {"scale": 3, "rotation": 4, "color": 48, "opacity": 1, "means": 3}.items():
        assert sd[f"conditioning_mlp.{name}_head.0.weight"].shape == (256, 256)
        assert sd[f"conditioning_mlp.{name}_head.2.weight"].shape == (out, 256)
    assert sd["base_sh0"].shape == (K, 1, 3) and sd["base_shN"].shape == (K, 15, 3) and sd["base_opacity"].shape == (K,)
    with pytest.raises(ValueError, match="code w"):
        dec(torch.zeros(100))


def test_encoder_layout_and_shapes():
    enc = FastAvatarEncoder(in_dim=512)
    sd = enc.state_dict()
    assert [tuple(sd[f"projector.{i}.weight"].shape) for i in (0, 4, 8, 11)] == [(1024, 512), (768, 1024), (512, 768), (512, 512)]
    assert {f"projector.{i}.running_mean" for i in (1, 5, 9)} <= set(sd)
    assert sd["temperature"].shape == ()
    enc.eval()
    x = torch.nn.functional.normalize(torch.randn(4, 512), dim=1)
    assert enc(x).shape == (4, 512) and enc(x[0]).shape == (512,)
    torch.testing.assert_close(enc(x)[1], enc(x[1]))
    with pytest.raises(ValueError, match="expected 512"):
        enc(torch.randn(128))


# ---------------------------------------------------------------- official release layout
def official_files(tmp_path, k=K):
    """Checkpoints with the official key names and shapes, written the way the release was."""
    dec = randomise(FastAvatarDecoder(random_template(k)))
    dec_sd = {name: v.clone() for name, v in dec.state_dict().items() if name != "base_means"}
    enc = randomise(FastAvatarEncoder(in_dim=512), seed=2)
    enc_sd = {name: v.clone() for name, v in enc.state_dict().items()}
    torch.save({"model_dict": dec_sd}, tmp_path / "decoder_neutral_flame.pth")
    torch.save({"model_dict": enc_sd}, tmp_path / "encoder_neutral_flame.pth")
    avg = random_template(k)
    write_ply(tmp_path / "averaged_model.ply", avg)
    return dec, enc, avg


def test_official_checkpoints_load_and_decode(tmp_path):
    dec, enc, avg = official_files(tmp_path)
    model = FastAvatarModel.load_official(tmp_path / "decoder_neutral_flame.pth", tmp_path / "encoder_neutral_flame.pth",
                                          tmp_path / "averaged_model.ply")
    assert model.embedder == "arcface" and model.encoder.in_dim == 512
    w = np.random.default_rng(5).normal(0, 0.3, 512).astype(np.float32)
    sd = dict(dec.state_dict())
    sd["base_means"] = torch.from_numpy(avg.means)  # positions come from averaged_model.ply
    ref = numpy_decoder(sd, w)
    with torch.no_grad():
        g = model.decode(w)
    np.testing.assert_allclose(g.means.numpy(), ref["means"], atol=1e-5)
    np.testing.assert_allclose(g.sh.numpy(), ref["sh"], atol=1e-5)
    emb = torch.nn.functional.normalize(torch.randn(512), dim=0)
    enc.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode(emb.numpy()), enc(emb))


def test_official_loading_rejects_bad_files(tmp_path):
    official_files(tmp_path)
    d, e, a = tmp_path / "decoder_neutral_flame.pth", tmp_path / "encoder_neutral_flame.pth", tmp_path / "averaged_model.ply"
    with pytest.raises(ModelLoadError, match="not found"):
        FastAvatarModel.load_official(tmp_path / "nope.pth", e, a)
    # decoder and encoder swapped: another layout
    with pytest.raises(ModelLoadError, match="decoder"):
        FastAvatarModel.load_official(e, e, a)
    # a state dict without the {"model_dict": ...} wrapper
    bare = tmp_path / "bare.pth"
    torch.save(torch.load(d, weights_only=True)["model_dict"], bare)
    with pytest.raises(ModelLoadError, match="model_dict"):
        FastAvatarModel.load_official(bare, e, a)
    # wrong shapes
    sd = torch.load(d, weights_only=True)["model_dict"]
    sd["conditioning_mlp.color_head.2.weight"] = torch.zeros(12, 256)
    torch.save({"model_dict": sd}, tmp_path / "wrong.pth")
    with pytest.raises(ModelLoadError, match="color_head.2.weight"):
        FastAvatarModel.load_official(tmp_path / "wrong.pth", e, a)
    # a foreign pickle (arbitrary object) is refused by weights_only=True, never executed
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"model_dict": ForeignObject()}))
    with pytest.raises(ModelLoadError, match="weights_only"):
        FastAvatarModel.load_official(evil, e, a)
    assert not (tmp_path / "pwned").exists()
    # corrupt bytes
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match="junk.pth"):
        FastAvatarModel.load_official(tmp_path / "junk.pth", e, a)
    # averaged model with another Gaussian count
    write_ply(tmp_path / "small.ply", random_template(K - 1))
    with pytest.raises(ModelLoadError, match="Gaussians"):
        FastAvatarModel.load_official(d, e, tmp_path / "small.ply")


class ForeignObject:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


# ---------------------------------------------------------------- our bundle
def test_bundle_round_trip_float16_and_errors(tmp_path):
    dec = randomise(FastAvatarDecoder(random_template()))
    enc = randomise(FastAvatarEncoder(in_dim=128), seed=4).eval()
    model = FastAvatarModel(dec, enc, {"model_id": "test"}, {"a": torch.randn(512)})
    folder = model.save(tmp_path / "m")
    back = FastAvatarModel.load(folder)
    assert back.model_id == "test" and back.encoder.in_dim == 128 and set(back.codes) == {"a"}
    w = torch.randn(512) * 0.3
    with torch.no_grad():
        a, b = model.decode(w), back.decode(w)
    torch.testing.assert_close(a.means, b.means, atol=2e-3, rtol=2e-3)  # float16 storage
    with pytest.raises(ValueError, match="512 values"):
        back.decode(np.zeros(511))
    with pytest.raises(ValueError, match="non-finite"):
        back.decode(np.full(512, np.nan))
    # corrupt / missing / wrong-shape weights name the file
    (folder / "encoder.safetensors").write_bytes(b"broken")
    with pytest.raises(ModelLoadError, match="encoder.safetensors"):
        FastAvatarModel.load(folder)
    (folder / "encoder.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="encoder.safetensors: weights file not found"):
        FastAvatarModel.load(folder)
    from safetensors.torch import save_file

    sd = {k: v for k, v in enc.state_dict().items()}
    sd["projector.11.weight"] = torch.zeros(256, 512)
    save_file(sd, str(folder / "encoder.safetensors"))
    with pytest.raises(ModelLoadError, match="256-D codes|projector.11"):
        FastAvatarModel.load(folder)
    with pytest.raises(ModelLoadError, match="model folder not found"):
        FastAvatarModel.load(tmp_path / "absent")


def test_decoding_a_subset_equals_the_full_decode_restricted_to_it():
    dec = randomise(FastAvatarDecoder(random_template()))
    w = torch.randn(512) * 0.3
    idx = torch.tensor([3, 0, 17, 39, 5])
    with torch.no_grad():
        full, part = dec(w), dec(w, idx)
    for name in ("means", "log_scales", "rotations", "opacity_logits", "sh"):
        torch.testing.assert_close(getattr(part, name), getattr(full, name)[idx], atol=1e-5, rtol=1e-5)


def test_linear_projector_is_the_linear_map_in_the_official_layout(tmp_path):
    from fastavatar_engine.model.encoder import linear_projector

    gen = torch.Generator().manual_seed(0)
    W, b = torch.randn(512, 128, generator=gen), torch.randn(512, generator=gen)
    enc = linear_projector(W, b)
    x = torch.nn.functional.normalize(torch.randn(7, 128, generator=gen), dim=1)
    with torch.no_grad():
        np.testing.assert_allclose(enc(x).numpy(), (x @ W.T + b).numpy(), atol=1e-4)
    # it is an ordinary projector: same keys and shapes as the official encoder, round-trips a bundle
    assert {k: v.shape for k, v in enc.state_dict().items()} == \
        {k: v.shape for k, v in FastAvatarEncoder(128, 512).state_dict().items()}
    with pytest.raises(ValueError):
        linear_projector(torch.zeros(512, 300), torch.zeros(512))


def test_linear_basis_adds_mean_plus_codes_times_basis_and_round_trips(tmp_path):
    from fastavatar_engine.model.decoder import MEANS_SCALE

    t = random_template()
    k = t.count
    dec = randomise(FastAvatarDecoder(t))
    gen = torch.Generator().manual_seed(3)
    mean, basis = 0.01 * torch.randn(k, 10, generator=gen), 0.01 * torch.randn(6, k, 10, generator=gen)
    w = torch.randn(512, generator=gen)
    with torch.no_grad():
        r0 = dec.residuals(w)
        dec.set_linear_basis(mean, basis)
        g = dec(w)
    assert dec.basis_components == 6
    # independent: the paper's equations (numpy) with the basis's columns added to the MLP's residuals
    lin = mean.numpy() + np.einsum("n,nkf->kf", w[:6].numpy(), basis.numpy())
    np.testing.assert_allclose(g.means.numpy(), t.means + r0["d_means"].numpy() + lin[:, :3], atol=1e-5)
    np.testing.assert_allclose(g.log_scales.numpy(), t.log_scales + r0["d_log_scales"].numpy() + lin[:, 3:6], atol=1e-5)
    np.testing.assert_allclose(g.opacity_logits.numpy(), t.opacity_logits + r0["d_opacity"].numpy() + lin[:, 6], atol=1e-5)
    np.testing.assert_allclose(g.sh[:, 0].numpy(), t.sh[:, 0] + r0["d_sh"][:, 0].numpy() + lin[:, 7:], atol=1e-5)
    np.testing.assert_allclose(g.sh[:, 1:].numpy(), t.sh[:, 1:] + r0["d_sh"][:, 1:].numpy(), atol=1e-5)
    assert float(r0["d_means"].abs().max()) <= MEANS_SCALE
    idx = torch.tensor([4, 0, 9])
    with torch.no_grad():
        torch.testing.assert_close(dec(w, idx).sh, g.sh[idx], atol=1e-5, rtol=1e-5)
    # a bundle keeps the basis (int8 with scales); v1-style bundles without one still load
    model = FastAvatarModel(dec, randomise(FastAvatarEncoder(in_dim=128), seed=4).eval(), {"model_id": "lin"})
    back = FastAvatarModel.load(model.save(tmp_path / "m"))
    assert back.decoder.basis_components == 6
    with torch.no_grad():
        torch.testing.assert_close(back.decode(w).sh, g.sh, atol=3e-3, rtol=3e-3)
    with pytest.raises(ValueError, match="linear basis"):
        dec.set_linear_basis(mean, torch.zeros(6, k + 1, 10))
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tmp_path / "m" / "decoder.safetensors"))
    sd["linear_basis_int8"] = sd["linear_basis_int8"][:, :-1].contiguous()
    save_file(sd, str(tmp_path / "m" / "decoder.safetensors"))
    with pytest.raises(ModelLoadError, match="linear basis"):
        FastAvatarModel.load(tmp_path / "m")


def test_zero_heads_skip_the_mlp_exactly_and_still_train():
    """With every head's last layer at zero (a fresh decoder; default v2.1's untrained MLP) the
    decode skips the MLP: the same Gaussians as the paper's equations in NumPy, with and without a
    subset. Once the heads take gradients the MLP runs, so refinement's heads mode still trains."""
    dec = FastAvatarDecoder(random_template())
    randomise(dec.conditioning_mlp.shared_body)
    w = torch.randn(512) * 0.3
    with torch.no_grad():
        assert dec.conditioning_mlp.outputs_zero()
        g = dec(w)
        part = dec(w, torch.tensor([4, 1]))
    ref = numpy_decoder(dec.state_dict(), w.numpy())
    np.testing.assert_allclose(g.means.numpy(), ref["means"], atol=1e-6)
    np.testing.assert_allclose(g.sh.numpy(), ref["sh"], atol=1e-6)
    torch.testing.assert_close(part.means, g.means[[4, 1]])
    last = dec.conditioning_mlp.means_head[2]
    assert not dec.conditioning_mlp.outputs_zero()  # heads take gradients (grad mode on): the MLP runs
    dec(w).means.sum().backward()
    assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0
    with torch.no_grad():
        last.bias.fill_(0.5)
        assert not dec.conditioning_mlp.outputs_zero()  # non-zero heads always run


def test_linear_basis_is_stored_as_int8_and_restored_within_its_step(tmp_path):
    """The bundle keeps a linear basis as int8 with a scale per component and column: half the
    bytes of float16; each value comes back within half a quantisation step; a broken scale is refused."""
    from safetensors.torch import load_file, save_file

    dec = FastAvatarDecoder(random_template(), basis_components=3)
    basis = torch.randn(3, dec.num_gaussians, 10) * torch.tensor([0.001] * 3 + [0.1] * 7)
    dec.set_linear_basis(torch.zeros(dec.num_gaussians, 10), basis)
    model = FastAvatarModel(dec, FastAvatarEncoder(in_dim=128), {"model_id": "q"}, {}, "dlib")
    model.save(tmp_path)
    sd = load_file(tmp_path / "decoder.safetensors")
    assert "linear_basis" not in sd and sd["linear_basis_int8"].dtype == torch.int8
    step = basis.abs().amax(1) / 127
    back = FastAvatarModel.load(tmp_path).decoder.linear_basis
    assert bool(((back - basis).abs() <= 0.5 * step[:, None, :] + 1e-7).all())
    sd["linear_basis_scale"] = torch.full_like(sd["linear_basis_scale"], float("nan"))
    save_file(sd, tmp_path / "decoder.safetensors")
    with pytest.raises(ModelLoadError, match="int8 linear basis"):
        FastAvatarModel.load(tmp_path)
