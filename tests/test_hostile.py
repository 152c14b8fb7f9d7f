"""The hostile-input corpus (tests/hostile/make_corpus.py, 45 cases): every case reaches its
entry point — the CLI, the engine service, the model loaders, the direction library — and ends
in a clear error naming the problem; nothing crashes, hangs or leaves a partial output file, and
the engine answers the next request."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mediapipe")
torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "hostile"))
import make_corpus  # noqa: E402

from fastavatar_engine.cli import main  # noqa: E402
from fastavatar_engine.client import EngineClient, EngineCrashed, EngineError, engine_command  # noqa: E402
from fastavatar_engine.directions import DirectionError, load_direction  # noqa: E402
from fastavatar_engine.model.io import FastAvatarModel, ModelLoadError  # noqa: E402
from fastavatar_engine.protocol import encode_frame  # noqa: E402

PWNED = Path("/tmp/fastavatar_pwned")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile")
    PWNED.unlink(missing_ok=True)
    cases = make_corpus.make(out)
    return out, {c["name"]: c for c in cases}


def _manifest():
    """The case list (built once in a throwaway folder at collection time, ~1 s)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return make_corpus.make(Path(d))


MANIFEST = _manifest()


def names(category):
    return [c["name"] for c in MANIFEST if c["category"] == category]


def test_corpus_has_at_least_30_cases_in_every_category(corpus):
    _, cases = corpus
    cats = {c["category"] for c in cases.values()}
    assert len(cases) >= 30
    assert {"image", "ply", "frame", "weights", "official", "direction"} <= cats


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", names("image") + names("image_no_face"))
def test_hostile_images_give_clear_cli_errors_and_no_output(corpus, tmp_path, capsys, name):
    out, cases = corpus
    case = cases[name]
    rc = main(["generate", str(out / case["file"]), "-o", str(tmp_path / "avatar.ply")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert case["file"] in err or "photo" in err.lower() or "face" in err.lower(), err
    assert case["expect"].lower() in err.lower(), err
    assert list(tmp_path.iterdir()) == []  # no PLY, no sidecar, no temporary


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", names("ply"))
def test_hostile_plys_give_clear_errors_for_export_and_render(corpus, tmp_path, capsys, name):
    out, cases = corpus
    case = cases[name]
    rc = main(["export", str(out / case["file"]), "-o", str(tmp_path / "x.spz")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert case["file"] in err and case["expect"] in err, err
    assert list(tmp_path.iterdir()) == []
    # render also draws plain point clouds (x, y, z only): a file it can read renders; others fail cleanly
    rc = main(["render", str(out / case["file"]), "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert rc in (0, 2), err
    assert (tmp_path / "x.png").exists() == (rc == 0) and len(list(tmp_path.iterdir())) == (rc == 0)
    if rc == 2:
        assert case["file"] in err, err


@pytest.fixture(scope="module")
def engine():
    client = EngineClient(engine_command(device="cpu") + ["--max-frame-mb", "8"], request_timeout=60)
    client.start()
    yield client
    client.stop()


@pytest.fixture(scope="module")
def raw_engine():
    """A bare engine process and every frame it sends (a reader thread fills the queue)."""
    import queue
    import subprocess
    import threading

    from fastavatar_engine.protocol import FrameReader, StreamClosed

    proc = subprocess.Popen(engine_command(device="cpu") + ["--max-frame-mb", "8"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    frames: queue.Queue = queue.Queue()

    def pump():
        reader = FrameReader(proc.stdout)
        while True:
            try:
                frames.put(reader.next())
            except StreamClosed:
                return

    threading.Thread(target=pump, daemon=True).start()
    assert frames.get(timeout=120).type == "ready"
    yield proc, frames
    proc.kill()
    proc.wait()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", names("frame"))
def test_hostile_frames_are_answered_and_the_engine_lives(corpus, raw_engine, name):
    out, cases = corpus
    proc, frames = raw_engine
    rid = 10_000 + sorted(cases).index(name)
    # the hostile bytes, then a valid request (a truncated frame swallows part of it: the reader resyncs)
    proc.stdin.write((out / cases[name]["file"]).read_bytes() + encode_frame({"type": "hello", "id": rid}))
    proc.stdin.flush()
    errors = []
    while True:
        msg = frames.get(timeout=60)  # a hang fails here
        if msg.type == "error":
            errors.append(msg.header)
        elif msg.type == "result" and msg.id == rid:
            break
    assert proc.poll() is None
    if name != "frame_truncated":  # the truncated hello merges with the next one: nothing to report
        assert errors, "the hostile frame got no answer"
    assert all(e["kind"] in ("protocol", "bad_request") and e["message"] for e in errors), errors


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", names("image")[:4])
def test_hostile_images_through_the_engine(corpus, engine, name):
    out, cases = corpus
    with pytest.raises(EngineError) as info:
        engine.generate(str(out / cases[name]["file"]), refine_steps=0)
    assert info.value.kind == "image" and cases[name]["file"] in str(info.value)
    assert engine.hello()["protocol"] == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", names("weights"))
def test_hostile_weights_are_refused_with_the_file_named(corpus, name):
    out, cases = corpus
    with pytest.raises(ModelLoadError) as info:
        FastAvatarModel.load(out / cases[name]["file"])
    msg = str(info.value)
    assert cases[name]["expect"] in msg and str(out / cases[name]["file"]) in msg, msg


@pytest.mark.timeout(120)
def test_engine_with_bad_weights_reports_and_exits(corpus):
    out, _ = corpus
    client = EngineClient(engine_command(device="cpu", weights=str(out / "weights_corrupt_card")), start_timeout=120)
    with pytest.raises((EngineError, EngineCrashed)) as info:
        client.start()
    assert "model card" in str(info.value)
    client.kill()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", names("official"))
def test_official_loader_refuses_foreign_pickles_and_layouts(corpus, name):
    out, cases = corpus
    d = out / cases[name]["file"]
    with pytest.raises(ModelLoadError) as info:
        FastAvatarModel.load_official(d / "decoder_neutral_flame.pth", d / "encoder_neutral_flame.pth",
                                      d / "averaged_model.ply")
    assert cases[name]["expect"] in str(info.value)
    assert not PWNED.exists()  # the exploit's payload never ran


@pytest.mark.parametrize("name", names("direction"))
def test_hostile_direction_files_are_refused(corpus, name):
    out, cases = corpus
    with pytest.raises(DirectionError) as info:
        load_direction(out / cases[name]["file"]).check_model("fastavatar-default-v2", 512)
    assert cases[name]["expect"] in str(info.value)


def test_corpus_script_runs_standalone(tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "hostile" / "make_corpus.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0 and "hostile inputs" in proc.stdout
    assert len(json.loads((tmp_path / "manifest.json").read_text())) >= 30
    assert np.all([(tmp_path / c["file"]).exists() for c in json.loads((tmp_path / "manifest.json").read_text())])
