"""``fastavatar batch`` in process (issue 23): INPUT forms, the manifest, hostile photos recorded as
failed while the rest succeed, and a re-run after a killed run that redoes only what was not
finished. Outputs are read back with the independent plyfile reader."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastavatar_engine.batch.inputs import BatchInputError, collect_jobs
from fastavatar_engine.batch.manifest import ManifestWriter, finished, read_manifest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from PIL import Image
    from skimage import data

    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.astronaut()).save(d / "astronaut.jpg", quality=92)
    return d / "astronaut.jpg"


def test_input_forms_and_unique_names(tmp_path, photo):
    (tmp_path / "a").mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / "a" / name).write_bytes(b"x")
    assert [j.name for j in collect_jobs(tmp_path / "a")] == ["a", "b"]  # images only, sorted
    lst = tmp_path / "list.txt"
    lst.write_text("# a crowd\na/a.jpg\n\na/a.jpg\n" + str(photo) + "\na/a_2.jpg\n")
    jobs = collect_jobs(lst)
    assert [j.name for j in jobs] == ["a", "a_2", "astronaut", "a_2_2"]  # repeats and clashes kept apart
    assert jobs[0].photo == str(tmp_path / "a" / "a.jpg")  # relative to the list's folder
    csv = tmp_path / "list.csv"
    csv.write_text("id,photo\n1,a/b.png\n2,a/a.jpg\n")
    assert [j.photo for j in collect_jobs(csv)] == [str(tmp_path / "a" / "b.png"), str(tmp_path / "a" / "a.jpg")]
    assert [j.name for j in collect_jobs(str(tmp_path / "a" / "*.png"))] == ["b"]
    for bad in (tmp_path / "nothing", str(tmp_path / "*.webp")):
        with pytest.raises(BatchInputError):
            collect_jobs(bad)


def test_manifest_survives_a_cut_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    out = tmp_path / "x.ply"
    out.write_bytes(b"ply")
    with ManifestWriter(path) as w:
        w.append({"name": "x", "status": "failed", "error": "E: no face"})
        w.append({"name": "x", "status": "done", "outputs": {"ply": str(out)}})
    with open(path, "ab") as fh:
        fh.write(b'{"name": "y", "status": "do')  # killed mid-write
    recs = read_manifest(path)
    assert set(recs) == {"x"} and finished(recs["x"])  # the last record wins; the cut line is skipped
    with ManifestWriter(path) as w:  # the next record starts on its own line
        w.append({"name": "y", "status": "failed", "error": "E"})
    assert read_manifest(path)["y"]["status"] == "failed"
    out.unlink()
    assert not finished(read_manifest(path)["x"])  # done but its output is gone: redo
    assert not finished(read_manifest(path)["y"]) and finished(read_manifest(path)["y"], skip_failed=True)


def _hostile(d: Path) -> list[str]:
    from PIL import Image

    (d / "not_an_image.jpg").write_text("hello")
    good = (d / "good.jpg").read_bytes() if (d / "good.jpg").exists() else None
    (d / "truncated.jpg").write_bytes(good[: len(good) // 3] if good else b"\xff\xd8\xff")
    Image.new("RGB", (1, 1)).save(d / "tiny.png")
    # a PNG whose header claims 20000 x 20000 pixels (400 Mpx) over a few bytes of data
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    (d / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
                                 + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))
    return ["missing.jpg", "not_an_image.jpg", "truncated.jpg", "tiny.png", "huge.png"]


def _cli(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "fastavatar_engine", "batch", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.slow
def test_hostile_photos_fail_with_reasons_while_the_rest_succeed(tmp_path, photo):
    from plyfile import PlyData

    (tmp_path / "good.jpg").write_bytes(photo.read_bytes())
    bad = _hostile(tmp_path)
    (tmp_path / "list.txt").write_text("\n".join(["good.jpg", *bad, "good.jpg"]) + "\n")
    r = _cli(tmp_path / "list.txt", tmp_path / "out", "--fit", "0")
    assert r.returncode == 1, r.stderr[-2000:]  # some failed
    summary = json.loads(r.stdout)
    assert (summary["jobs"], summary["done"], summary["failed"], summary["pending"]) == (7, 2, 5, 0)
    recs = read_manifest(tmp_path / "out" / "manifest.jsonl")
    errors = {n: recs[n]["error"] for n in ("missing", "not_an_image", "truncated", "tiny", "huge")}
    assert "not found" in errors["missing"] and "truncated" in errors["truncated"]
    assert "too small" in errors["tiny"] and "too large" in errors["huge"] and "format" in errors["not_an_image"]
    for name in ("good", "good_2"):
        assert recs[name]["status"] == "done"
        ply = PlyData.read(recs[name]["outputs"]["ply"])
        assert ply["vertex"].count > 5000 and np.isfinite(ply["vertex"]["x"]).all()
        assert json.loads(Path(recs[name]["outputs"]["metadata"]).read_text())["photo"].endswith("good.jpg")
        assert Path(recs[name]["outputs"]["preview"]).stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "batch_summary.json").read_text())["failed"] == 5


@pytest.mark.slow
def test_a_rerun_after_a_killed_run_redoes_only_what_was_not_finished(tmp_path, photo):
    (tmp_path / "list.txt").write_text(f"{photo}\n" * 6)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "fastavatar_engine", "batch", str(tmp_path / "list.txt"), str(out),
                          "--fit", "0", "--no-preview"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                         cwd=ROOT)
    deadline = time.time() + 300
    while time.time() < deadline and len(read_manifest(out / "manifest.jsonl")) < 2:
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)  # no chance to clean up
    p.wait(timeout=60)
    first = read_manifest(out / "manifest.jsonl")
    assert 2 <= len(first) < 6, "the run ended before it could be killed"
    r = _cli(tmp_path / "list.txt", out, "--fit", "0", "--no-preview")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert summary["skipped_finished"] == len(first) and summary["ran"] == 6 - len(first) and summary["done"] == 6
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines() if x.strip().startswith("{")
             and x.strip().endswith("}")]
    names = [rec["name"] for rec in lines]
    assert sorted(set(names)) == ["astronaut"] + [f"astronaut_{k}" for k in range(2, 7)]
    assert len(names) == 6  # none done twice, none lost
    assert not list(out.glob(".*.tmp"))  # no partial file left behind by the kill, or renamed in its place


#: Reads a .blend with Blender itself (the bpy module) and prints what it holds, as JSON.
_READ_BLEND = r"""
import json, sys
import bpy
bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
out = {"cameras": [o.name for o in bpy.data.objects if o.type == "CAMERA"], "scene_camera": bool(bpy.context.scene.camera),
       "engine": bpy.context.scene.render.engine, "avatars": []}
for o in bpy.data.objects:
    n = len(o.data.points) if o.type == "POINTCLOUD" else len(o.data.vertices) if o.type == "MESH" else 0
    if n > 1000:  # the avatar: native splats (Blender >= 5.3) or the mesh display
        head = o.get("fastavatar_head")
        out["avatars"].append({"name": o.name, "type": o.type, "splats": n, "head": None if head is None else len(head)})
print("BLEND" + json.dumps(out))
"""


@pytest.mark.slow
def test_blend_per_photo_holds_the_avatar_and_a_rerun_with_blend_adds_it(tmp_path, photo):
    """``--blend``: each photo's .blend (written by a warm Blender beside the worker) holds the
    avatar with as many splats as its PLY, on the photo's fitted head, with a camera and Cycles;
    a run with ``--blend`` after one without makes the .blend files it lacks."""
    import importlib.util

    from plyfile import PlyData

    if importlib.util.find_spec("bpy") is None:
        pytest.skip("needs Blender as a Python module (the blender extra)")
    (tmp_path / "list.txt").write_text(f"{photo}\n{photo}\n")
    out = tmp_path / "out"
    r = _cli(tmp_path / "list.txt", out, "--fit", "0", "--no-preview")
    assert r.returncode == 0 and not list(out.glob("*.blend")), r.stderr[-2000:]
    r = _cli(tmp_path / "list.txt", out, "--fit", "0", "--no-preview", "--blend")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert summary["blend"] and summary["ran"] == 2 and summary["done"] == 2  # redone: they lacked a .blend
    recs = read_manifest(out / "manifest.jsonl")
    for name in ("astronaut", "astronaut_2"):
        blend = Path(recs[name]["outputs"]["blend"])
        assert blend == out / f"{name}.blend" and recs[name]["seconds"]["blend"] > 0
        ply = PlyData.read(recs[name]["outputs"]["ply"])
        res = subprocess.run([sys.executable, "-c", _READ_BLEND, str(blend)], capture_output=True, text=True,
                             timeout=300)
        held = json.loads(next(x for x in res.stdout.splitlines() if x.startswith("BLEND"))[5:])
        assert held["scene_camera"] and held["cameras"] and held["engine"] == "CYCLES"
        (avatar,) = held["avatars"]
        assert avatar["name"] == "Avatar_astronaut" and avatar["splats"] == ply["vertex"].count
        assert avatar["head"] == 100  # the face rig's head came along
    assert not list(out.glob(".*.tmp*"))  # the payloads and temporary .blend files are gone


#: A stand-in for a Blender executable: it insists on Blender's command line (``-b --factory-startup
#: --python SCRIPT -- ARGS``) and runs SCRIPT as Blender would, in a Python of its own with
#: PYTHONPATH dropped and another working directory.
_FAKE_BLENDER = """#!/bin/sh
echo "$@" > "{log}"
[ "$1" = "-b" ] && [ "$2" = "--factory-startup" ] && [ "$3" = "--python" ] && [ "$5" = "--" ] || exit 3
script="$4"; shift 4
cd / && exec env -u PYTHONPATH "{python}" "$script" "$@"
"""


@pytest.mark.slow
def test_blend_through_a_blender_executable_command_line(tmp_path, photo):
    """``--blender PATH`` to an executable named ``blender``: the stage starts it with Blender's own
    command line, and the writer finds the engine's modules without PYTHONPATH or the engine's
    environment (the Blender line other than this interpreter when there is one, e.g. bpy 5.3)."""
    from plyfile import PlyData

    from conftest import BLENDER_LINES

    pythons = [p for _, p in BLENDER_LINES]
    if not pythons:
        pytest.skip("needs Blender as a Python module (the blender extra)")
    python = next((p for p in pythons if Path(p) != Path(sys.executable)), pythons[0])
    (tmp_path / "bin").mkdir()
    exe = tmp_path / "bin" / "blender"
    exe.write_text(_FAKE_BLENDER.format(log=tmp_path / "argv.txt", python=python))
    exe.chmod(0o755)
    out = tmp_path / "out"
    (tmp_path / "list.txt").write_text(f"{photo}\n")
    r = _cli(tmp_path / "list.txt", out, "--fit", "0", "--no-preview", "--blend", "--blender", exe)
    assert r.returncode == 0, r.stderr[-2000:]
    argv = (tmp_path / "argv.txt").read_text().split()
    assert argv[:5] == ["-b", "--factory-startup", "--python", str(ROOT / "blender_addon" / "blend_writer.py"), "--"]
    assert argv[5] == "--reply-fd"
    blend = out / "astronaut.blend"
    res = subprocess.run([python, "-c", _READ_BLEND, str(blend)], capture_output=True, text=True, timeout=300)
    held = json.loads(next(x for x in res.stdout.splitlines() if x.startswith("BLEND"))[5:])
    (avatar,) = held["avatars"]
    assert avatar["splats"] == PlyData.read(out / "astronaut.ply")["vertex"].count and avatar["head"] == 100
    assert held["scene_camera"] and held["engine"] == "CYCLES"


def test_joining_a_cluster_sends_rays_token_when_one_was_written(tmp_path, monkeypatch):
    from fastavatar_engine.batch.ray_runner import _auth_mode

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert not _auth_mode(tmp_path) and "RAY_AUTH_MODE" not in os.environ  # no token: nothing set
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("t")
    assert _auth_mode(tmp_path) and os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert not _auth_mode(tmp_path) and os.environ["RAY_AUTH_MODE"] == "disabled"  # the user's choice stands
