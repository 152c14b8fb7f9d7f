"""``fastavatar render`` end to end: real PLY files in, PNGs read back with Pillow."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fastavatar_engine.cli import main
from fastavatar_engine.gaussians import GaussianSet
from fastavatar_engine.ply import write_ply

from conftest import require_samples


def _ball(n=400, seed=0):
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    colours = np.tile([[0.9, 0.1, 0.1]], (n, 1))
    return GaussianSet.from_points(0.1 * d, colors=colours, scale=0.01, opacity=0.95)


def test_render_gaussian_ply_front_view(tmp_path, capsys):
    ply = write_ply(tmp_path / "ball.ply", _ball())
    out = tmp_path / "ball.png"
    assert main(["render", str(ply), "--out", str(out), "--size", "96", "64"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["content"] == "gaussians" and info["gaussians"] == 400
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert img.shape == (64, 96, 3)
    assert (img[0, 0] == 255).all()  # white background in the corner
    centre = img[28:36, 44:52].reshape(-1, 3).mean(0)
    assert centre[0] > 150 and centre[1] < 90 and centre[2] < 90  # the red ball fills the middle


def test_render_several_views_side_by_side(tmp_path, capsys):
    ply = write_ply(tmp_path / "ball.ply", _ball())
    out = tmp_path / "strip.png"
    assert main(["render", str(ply), "-o", str(out), "--size", "32", "32", "--view", "front,left,top"]) == 0
    assert Image.open(out).size == (96, 32)
    assert len(json.loads(capsys.readouterr().out)["views"]) == 3


def test_render_errors_are_clear(tmp_path, capsys):
    assert main(["render", str(tmp_path / "missing.ply"), "-o", str(tmp_path / "x.png")]) == 2
    assert "missing.ply" in capsys.readouterr().err
    junk = tmp_path / "junk.ply"
    junk.write_bytes(b"not a ply at all")
    assert main(["render", str(junk), "-o", str(tmp_path / "x.png")]) == 2
    assert "junk.ply" in capsys.readouterr().err
    ply = write_ply(tmp_path / "ball.ply", _ball())
    assert main(["render", str(ply), "-o", str(tmp_path / "x.png"), "--view", "sideways"]) == 2
    assert "unknown view" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.sample_data
def test_render_sample_points_from_calibrated_camera_matches_mask(tmp_path):
    """The console script on a sample subject's points3d.ply, seen from camera 8, covers the head."""
    subject = require_samples() / "306"
    out = tmp_path / "head.png"
    proc = subprocess.run(
        [sys.executable, "-m", "fastavatar_engine.cli", "render", str(subject / "points3d.ply"), "-o", str(out),
         "--camera", str(subject / "transforms.json"), "--camera-index", "8"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    img = np.asarray(Image.open(out).convert("RGB")).astype(float)
    mask = np.asarray(Image.open(subject / "fg_masks" / "00000_08.png").convert("L")) > 127
    covered = (img < 240).any(axis=2)
    assert img.shape[:2] == mask.shape
    # the splats land on the head: most covered pixels are foreground, and they cover much of it
    assert covered[mask].mean() > 0.4
    assert mask[covered].mean() > 0.9
