"""``fastavatar serve`` as a real subprocess, driven by the numpy-only EngineClient."""

import os
import signal
import struct

import numpy as np

from fastavatar_engine.gaussians import pack_gaussians
import pytest
import torch

pytest.importorskip("mediapipe")
skimage_data = pytest.importorskip("skimage.data")

from fastavatar_engine.client import (  # noqa: E402
    EngineClient, EngineCrashed, EngineError, EngineTimeout, engine_command,
)
from fastavatar_engine.model.io import FastAvatarModel  # noqa: E402
from fastavatar_engine.protocol import GAUSSIAN_ARRAYS, MAGIC, encode_frame  # noqa: E402


@pytest.fixture(scope="module")
def astronaut(astronaut_png):
    return astronaut_png


@pytest.fixture(scope="module")
def engine():
    client = EngineClient(engine_command(device="cpu") + ["--max-frame-mb", "8"], request_timeout=30)
    client.start()
    yield client
    client.stop()


@pytest.fixture(scope="module")
def model():
    return FastAvatarModel.load()


def _raw(client, data: bytes):
    client.proc.stdin.write(data)
    client.proc.stdin.flush()


def test_hello_reports_protocol_device_and_model(engine):
    info = engine.hello()
    assert info["protocol"] == 1 and info["device"] == "cpu"
    assert info["model"] == {"model_id": "fastavatar-default-v2.1", "code_dim": 512, "num_gaussians": 10144,
                             "embedder": "dlib"}
    assert info["pid"] == engine.proc.pid


def test_generate_and_decode_equal_the_in_process_model(engine, model, astronaut):
    g, code, header = engine.generate(str(astronaut), refine_steps=0)
    assert code.shape == (512,) and len(g) == 10144
    assert header["model_id"] == "fastavatar-default-v2.1" and len(header["camera"]["c2w_opengl"]) == 4
    head = header["arrays"]["head"]  # the photo's head-model identity: the template sits on it
    assert head.shape == (100,)
    with torch.no_grad():
        ref = model.decode(code, head).to_numpy()
        plain = model.decode(code).to_numpy()
    for name in GAUSSIAN_ARRAYS:
        np.testing.assert_allclose(getattr(g, name), getattr(ref, name), atol=1e-5, err_msg=name)
    # the plain decode comes along, so that the client keeps the head shape as a residual
    np.testing.assert_allclose(header["arrays"]["base_packed"], pack_gaussians(plain), atol=1e-5)
    # pixels instead of a path give the same avatar
    g2, code2, _ = engine.generate(pixels=skimage_data.astronaut(), refine_steps=0)
    np.testing.assert_allclose(code2, code, atol=1e-6)
    # decode with a direction edit = decode of the moved code
    d = np.zeros((2, 512), np.float32)
    d[0, 3], d[1, 7] = 1.0, 1.0
    g3, w3, _ = engine.decode(code, d, [0.5, -2.0])
    expected = code.copy()
    expected[3] += 0.5
    expected[7] -= 2.0
    np.testing.assert_allclose(w3, expected, atol=1e-6)
    with torch.no_grad():
        ref3 = model.decode(expected).to_numpy()
    np.testing.assert_allclose(g3.means, ref3.means, atol=1e-5)


def test_request_errors_are_structured(engine, astronaut, tmp_path):
    bad = [
        (lambda: engine.generate(pixels=np.full((120, 120, 3), 128, np.uint8)), "no_face", "no face"),
        (lambda: engine.generate(str(tmp_path / "missing.png"), refine_steps=0), "image", "missing.png"),
        (lambda: engine.decode(np.zeros(10, np.float32)), "bad_request", "512 values"),
        (lambda: engine.decode(np.full(512, np.nan, np.float32)), "bad_request", "non-finite"),
        (lambda: engine.decode(np.zeros(512), np.zeros((1, 512)), [1.0, 2.0]), "bad_request", "amounts"),
        (lambda: engine.request("generate", {}), "bad_request", "image_path"),
        (lambda: engine.request("generate", {"image_path": str(astronaut), "face_index": -1}), "bad_request",
         "face_index"),
        (lambda: engine.request("refine", {"image_path": str(astronaut), "steps": 0},
                                {"code": np.zeros(512, np.float32)}), "bad_request", "steps"),
        (lambda: engine.request("generate", {}, {"pixels": np.zeros((4, 4), np.uint8)}), "bad_request", "pixels"),
        (lambda: engine.request("launch_rockets"), "bad_request", "unknown request"),
        (lambda: engine.request("hello", {"protocol": 99}), "version", "protocol 99"),
    ]
    for call, kind, text in bad:
        with pytest.raises(EngineError, match=text) as info:
            call()
        assert info.value.kind == kind
    assert engine.alive and engine.hello()["protocol"] == 1


def test_malformed_and_oversized_frames_leave_the_engine_alive(engine):
    pid = engine.proc.pid
    frames = [
        b"\x00" * 7,
        b"hello world, this is not a frame" * 100,
        struct.pack("<4sIQ", MAGIC, 5, 0) + b"{oops",
        struct.pack("<4sIQ", MAGIC, 2**31, 2**40),  # absurd sizes: resynchronises on the next magic
        encode_frame({"type": "decode", "id": 10_000}) [:20] + b"garbage",
    ]
    for data in frames:
        _raw(engine, data)
    # a real frame after the garbage is still answered, by the same process
    assert engine.hello()["pid"] == pid
    # a frame above the engine's limit (8 MiB here) is skipped whole and answered with an error
    with pytest.raises(EngineError, match="too large") as info:
        engine.request("decode", {}, {"code": np.zeros(3 << 20, np.float32)})
    assert info.value.kind == "protocol"
    assert engine.hello()["pid"] == pid


def test_refine_streams_progress_and_cancels(engine, astronaut):
    g0, code, _ = engine.generate(str(astronaut), refine_steps=0)
    events = []
    g, code2, header = engine.refine(code, str(astronaut), steps=3, progress=events.append)
    assert [e["step"] for e in events] == [1, 2, 3] and all(e["total"] == 3 for e in events)
    # the default model's fit is per-Gaussian (its MLP is untrained): the Gaussians move, the code may stay
    k = g0.count  # rows past the template's are Gaussians the fit grew
    assert header["refined_steps"] == 3 and g.count >= k and np.abs(g.sh[:k, 0] - g0.sh[:, 0]).max() > 1e-3
    seen = []

    def cancel():
        return len(seen) >= 1

    with pytest.raises(EngineError) as info:
        engine.refine(code, str(astronaut), steps=500, progress=seen.append, cancel=cancel)
    assert info.value.kind == "cancelled" and len(seen) < 50
    assert engine.hello()["protocol"] == 1


def test_killed_engine_is_reported_and_replaced(astronaut):
    client = EngineClient(engine_command(device="cpu"), request_timeout=60)
    try:
        client.start()
        first = client.proc.pid
        _, code, _ = client.generate(str(astronaut), refine_steps=0)
        os.kill(first, signal.SIGKILL)
        with pytest.raises(EngineCrashed, match="stopped"):
            client.decode(code)
        assert client.hello()["pid"] != first  # a fresh engine on the next request
        # a hung engine: SIGSTOP it, the request times out and the engine is replaced
        hung = client.proc.pid
        os.kill(hung, signal.SIGSTOP)
        with pytest.raises(EngineTimeout):
            client.request("hello", timeout=2)
        assert client.hello()["pid"] not in (first, hung)
    finally:
        client.stop()


def test_engine_that_cannot_start_says_why(tmp_path):
    client = EngineClient(engine_command(device="cpu", weights=str(tmp_path / "nowhere")), start_timeout=60)
    with pytest.raises(EngineError, match="nowhere") as info:
        client.start()
    assert info.value.kind == "model"
    with pytest.raises(Exception, match="cannot start"):
        EngineClient([str(tmp_path / "no-python"), "-m", "x"]).start()


def test_decode_tangents_match_finite_differences(engine, model):

    rng = np.random.default_rng(0)
    w = rng.standard_normal(512).astype(np.float32) * 0.1
    dirs = rng.standard_normal((2, 512)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    g, code, header = engine.decode(w, dirs, [0.3, -0.2], tangents=True)
    tangents = header["arrays"]["tangents"]
    assert tangents.shape == (2, 10144, 59)
    w_eff = w + 0.3 * dirs[0] - 0.2 * dirs[1]
    np.testing.assert_allclose(code, w_eff, atol=1e-6)
    # independent: central differences of a float64 copy of the decoder (ReLU kinks make a few
    # Gaussians' differences inexact, hence the max bound is looser than the typical one)
    import copy

    from fastavatar_engine.serve import _packed_torch

    dec64 = copy.deepcopy(model.decoder).double()
    h = 1e-5
    for m in range(2):
        wd, dd = torch.tensor(w_eff, dtype=torch.float64), torch.tensor(dirs[m], dtype=torch.float64)
        with torch.no_grad():
            fd = ((_packed_torch(dec64(wd + h * dd)) - _packed_torch(dec64(wd - h * dd))) / (2 * h)).numpy()
        err = np.abs(tangents[m] - fd)
        scale = np.abs(fd).max()
        assert err.max() < 2e-2 * scale and np.median(err) < 1e-4 * scale, (m, err.max(), np.median(err), scale)
        # secant curvature at the engine's step (0.25 code units)
        k = 0.25
        with torch.no_grad():
            curv = ((_packed_torch(dec64(wd + k * dd)) + _packed_torch(dec64(wd - k * dd))
                     - 2 * _packed_torch(dec64(wd))) / k**2).numpy()
            f0 = np.abs(_packed_torch(dec64(wd)).numpy()).max()
        # the engine's float32 secant has a round-off floor of ~eps32 * |f| / k^2 (the default v2
        # decoder is nearly linear in w, so its true curvature is close to 0)
        floor = 4 * np.finfo(np.float32).eps * f0 / k**2
        np.testing.assert_allclose(header["arrays"]["curvatures"][m], curv, rtol=0,
                                   atol=2e-3 * np.abs(curv).max() + floor)
    with pytest.raises(EngineError, match="needs 'directions'"):
        engine.request("decode", {"tangents": True}, {"code": w})


def test_encode_returns_the_code_and_expression_measures(engine, model, astronaut):
    g, code_gen, _ = engine.generate(str(astronaut), refine_steps=0)
    code, header = engine.encode(image_path=str(astronaut))
    np.testing.assert_allclose(code, code_gen, atol=1e-6)
    m = header["measures"]
    assert set(m) == {"mouth_open", "smile"} and 0 <= m["mouth_open"] < 0.1 and 0.5 < m["smile"] < 1.5


def test_train_direction_request(engine):
    rng = np.random.default_rng(1)
    d0 = rng.standard_normal(512)
    d0 /= np.linalg.norm(d0)
    labels = np.arange(40) % 2
    codes = rng.standard_normal((40, 512)) * 0.05 + np.outer(np.where(labels == 1, 1.0, -1.0), d0)
    d = engine.train_direction(codes, labels, "planted")
    assert d["model_id"] == "fastavatar-default-v2.1" and d["name"] == "planted"
    assert float(np.dot(d["vector"], d0)) > 0.9 and d["accuracy"]["train"] == 1.0
    with pytest.raises(EngineError, match="at least 2"):
        engine.train_direction(codes[:4], np.array([1, 0, 0, 0]), "x")
    with pytest.raises(EngineError, match="'codes' must be"):
        engine.train_direction(codes[:, :10], labels, "x")


def test_generate_from_several_photos_fuses_the_codes(engine, astronaut, tmp_path):
    from PIL import Image

    flipped = tmp_path / "flipped.png"
    Image.open(astronaut).transpose(Image.FLIP_LEFT_RIGHT).save(flipped)
    _, c1, _ = engine.generate(str(astronaut), refine_steps=0)
    _, c2, _ = engine.generate(str(flipped), refine_steps=0)
    g, fused, header = engine.generate(image_paths=[str(astronaut), str(flipped)], refine_steps=0)
    np.testing.assert_allclose(fused, (c1 + c2) / 2, atol=1e-5)
    assert header["photos"] == [str(astronaut), str(flipped)] and len(g) == 10144
    with pytest.raises(EngineError, match="either 'image_paths' or one photo"):
        engine.request("generate", {"image_paths": [str(astronaut)], "image_path": str(astronaut)})
    # refining the fused avatar fits both photos: the result names them and moves the Gaussians
    # (the default model's fit is per-Gaussian, its MLP untrained: the code stays)
    g2, refined, header2 = engine.refine(fused, image_paths=[str(astronaut), str(flipped)], steps=2)
    assert header2["photos"] == [str(astronaut), str(flipped)] and header2["refined_steps"] == 2
    assert np.abs(g2.sh[:10144, 0] - g.sh[:, 0]).max() > 1e-3 and "base_packed" in header2["arrays"]


def test_refine_streams_live_previews_and_returns_the_base_decode(engine, model, astronaut):
    from fastavatar_engine.gaussians import pack_gaussians

    _, code, _ = engine.generate(str(astronaut), refine_steps=0)
    previews = []
    g, code2, header = engine.refine(code, str(astronaut), steps=4, preview_every=2,
                                     preview=lambda h, a: previews.append(a["packed"]))
    # at step 2 (not at the end); the detail stage's preview includes the Gaussians it grew
    assert len(previews) == 1 and previews[0].shape[0] >= 10144 and previews[0].shape[1] == 59
    base = header["arrays"]["base_packed"]
    with torch.no_grad():
        plain = pack_gaussians(model.decode(code2).to_numpy())
    parents = header["arrays"].get("parents")  # Gaussians grown by the fit: their parent's decode
    if parents is not None:
        assert len(base) == 10144 + len(parents) == len(g) and parents.max() < 10144
        plain = np.concatenate([plain, plain[parents]])
    np.testing.assert_allclose(base, plain, atol=1e-5)
    assert np.abs(pack_gaussians(g) - base).max() > 1e-5  # the fine-tuned decoder differs from the base


def test_client_reports_busy_while_a_request_is_in_flight(engine, astronaut):
    import threading
    import time

    _, code, _ = engine.generate(str(astronaut), refine_steps=0)
    assert not engine.busy
    seen = []
    t = threading.Thread(target=lambda: engine.refine(code, str(astronaut), steps=20,
                                                      progress=lambda h: seen.append(engine.busy)))
    t.start()
    deadline = time.time() + 60
    while not seen and time.time() < deadline:
        time.sleep(0.01)
    assert engine.busy  # the UI would defer its own requests now
    t.join(120)
    assert seen and all(seen) and not engine.busy


def test_decode_carries_a_head_and_an_expression(engine, model, astronaut):
    """The protocol's decode on the avatar's head with an expression (issue 22) equals the
    in-process decode; malformed heads and expressions are refused with a clear message."""
    _, code, header = engine.generate(str(astronaut), refine_steps=0)
    head = header["arrays"]["head"]
    e = np.zeros(53, np.float32)
    e[26] = 0.8  # jawOpen
    g, _, _ = engine.decode(code, head=head, expression=e)
    with torch.no_grad():
        ref = model.decode(code, head, e).to_numpy()
        rest = model.decode(code, head).to_numpy()
    np.testing.assert_allclose(g.means, ref.means, atol=1e-5)
    assert np.abs(g.means - rest.means).max() > 5e-3  # the jaw moved
    for kw, msg in ((dict(expression=np.full(53, 1.5, np.float32)), "in \\[0, 1\\]"),
                    (dict(expression=np.zeros(7, np.float32)), "53 coefficients"),
                    (dict(head=np.zeros(3, np.float32)), "100 finite")):
        with pytest.raises(EngineError, match=msg):
            engine.decode(code, **kw)
