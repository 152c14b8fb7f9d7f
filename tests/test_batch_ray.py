"""``fastavatar batch --workers 2`` on Ray (issue 23): one worker killed with SIGKILL mid-run, and
every photo still ends done exactly once (the killed worker's photo retried on a fresh one), with
readable outputs. Skipped without Ray (the ``cluster`` extra)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from fastavatar_engine.batch.manifest import read_manifest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_killed_worker_loses_and_duplicates_nothing(tmp_path):
    from PIL import Image
    from plyfile import PlyData
    from skimage import data

    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.jpg", quality=92)
    (tmp_path / "list.txt").write_text("astronaut.jpg\n" * 8)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_DEDUP_LOGS="0")
    p = subprocess.Popen([sys.executable, "-m", "fastavatar_engine", "batch", str(tmp_path / "list.txt"), str(out),
                          "--workers", "2", "--fit", "0", "--no-preview"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        deadline = time.time() + 400
        first = {}
        while time.time() < deadline and not first and p.poll() is None:
            time.sleep(0.2)
            first = read_manifest(out / "manifest.jsonl")
        assert first, "no photo finished"
        victim = int(next(iter(first.values()))["worker"].rsplit(":", 1)[1])
        os.kill(victim, signal.SIGKILL)  # a worker dies with its next photo in hand
        stdout, stderr = p.communicate(timeout=600)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0 and stdout.strip(), (p.returncode, stdout[-2000:], stderr[-3000:])
    summary = json.loads(stdout)
    assert (summary["done"], summary["failed"], summary["pending"]) == (8, 0, 0)
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines() if x.strip()]
    names = [r["name"] for r in lines]
    assert len(names) == 8 and len(set(names)) == 8  # none lost, none twice
    assert any(r["attempt"] == 2 for r in lines)  # the killed worker's photo, retried
    assert len({r["worker"] for r in lines}) >= 2
    for r in lines:
        assert PlyData.read(r["outputs"]["ply"])["vertex"].count > 5000
