"""Display fidelity: what Blender shows against what the engine renders, per Blender line and engine.

    python benchmarks/bench_display.py                       # every Blender line found, Cycles and EEVEE
    python benchmarks/bench_display.py --engines cycles --samples 64 --resolution 256
    python benchmarks/bench_display.py --update-readme       # rewrite the display table in docs/blender.md

The avatar is the default model's feed-forward avatar of the public-domain astronaut photo
(``skimage.data.astronaut()``), written as an INRIA PLY. Each Blender line
(:func:`conftest.blender_lines`: this interpreter when it has bpy, ``$FASTAVATAR_BLENDER_PYTHONS``
or ``.venv-bpy53``) renders it with ``blender_display_render.py`` -- the add-on's own avatar
object, the camera and scene of ``batch.py --render`` -- and the engine's rasteriser
(:func:`fastavatar_engine.render.render`, white background) renders the same Gaussians from the
camera Blender used (``c2w = obj.matrix_world^-1 @ camera.matrix_world``, ``fx = (W/2)/tan(fov/2)``).
Prints JSON: per line and engine the PSNR (dB, RGB in [0, 1], whole image), the PSNR inside the
head's silhouette (engine alpha > 0.02), Blender's render time (s) and the avatar's
representation. An engine that cannot render headless on a line is reported with its error.

``psnr_linear_light_db`` scores the same render against the engine's rasteriser compositing in
*linear light* (each splat's SH colour taken sRGB -> linear, blended over linear white, the result
taken back to sRGB) -- what Blender does, natively and in the add-on's mesh display, so that a
scene's Standard view shows the PLY's colours. The 3DGS reference blends the sRGB values
themselves; the two differ where splats are semi-transparent (hair outline, shoulders), which
bounds ``psnr_db``; ``psnr_linear_light_db`` measures how faithfully Blender draws the splats.
``ceiling_linear_light_db`` is that bound: the linear-light reference scored against the 3DGS one,
what a display that composites in linear light and draws every splat exactly would get.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RENDER_SCRIPT = HERE / "blender_display_render.py"


def blender_lines() -> list[tuple[str, str]]:
    """(``bpy-<version>``, interpreter) of each Blender line (the test suite's own discovery)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import blender_lines as find

    return find()


def astronaut_avatar_ply(path: Path) -> Path:
    """Write the default model's feed-forward avatar of the astronaut photo to ``path`` (INRIA PLY)."""
    from skimage import data

    from fastavatar_engine.generate import AvatarGenerator
    from fastavatar_engine.ply import write_ply

    with AvatarGenerator() as gen:
        avatar = gen.generate(data.astronaut())
    return write_ply(path, avatar.gaussians)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB of two [H,W,3] float images in [0, 1] (over ``mask`` [H,W] bool when given)."""
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    mse = float(d[mask].mean() if mask is not None else d.mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """The sRGB EOTF (IEC 61966-2-1) of values clipped to [0, 1]."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """The inverse of :func:`srgb_to_linear` (values clipped to [0, 1])."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def engine_view(ply: Path, info: dict, linear_light: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(rgb [H,W,3], alpha [H,W]) float32 from the engine's rasteriser at Blender's camera ``info``
    (white background). ``linear_light``: composite each splat's view-dependent colour (SH degree 3,
    evaluated for this camera) in linear light, then encode sRGB (see the module docstring)."""
    import torch

    from fastavatar_engine.gaussians import GaussianSet
    from fastavatar_engine.ply import read_ply
    from fastavatar_engine.render import render
    from fastavatar_engine.render.sh import C0 as SH_C0
    from fastavatar_engine.render.sh import eval_sh_colors

    g = read_ply(ply)
    c2w = np.array(info["c2w"])
    if linear_light:
        rgb = eval_sh_colors(torch.as_tensor(g.sh), torch.as_tensor(g.means),
                             torch.as_tensor(c2w[:3, 3], dtype=torch.float32), 3).numpy()
        sh = np.zeros_like(g.sh)
        sh[:, 0] = (srgb_to_linear(rgb) - 0.5) / SH_C0
        g = GaussianSet(g.means, g.log_scales, g.rotations, g.opacity_logits, sh)
    with torch.no_grad():
        rgb, alpha = render(g, c2w, np.array(info["K"]), info["width"], info["height"], background=(1.0, 1.0, 1.0))
    rgb = rgb.cpu().numpy()
    return (linear_to_srgb(rgb) if linear_light else np.clip(rgb, 0, 1)), alpha.cpu().numpy()


def compare(ply: Path, python: str, engine: str, out: Path, samples: int, resolution: int,
            timeout: int = 1200) -> dict:
    """Render ``ply`` in the Blender line ``python`` with ``engine`` and score it against the
    engine's rasteriser. Returns a JSON-ready row; ``error`` holds the reason when Blender fails."""
    from PIL import Image

    env = dict(os.environ, FASTAVATAR_ENGINE_PYTHON=sys.executable)
    proc = subprocess.run([python, str(RENDER_SCRIPT), str(ply), str(out), "--engine", engine,
                           "--samples", str(samples), "--resolution", str(resolution)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=out)
    info_path = out / f"blender_{engine}.json"
    if proc.returncode != 0 or not info_path.is_file():
        tail = (proc.stderr.strip() or proc.stdout.strip() or "failed").splitlines()[-3:]
        return {"engine": engine, "error": " | ".join(tail)[-400:]}
    info = json.loads(info_path.read_text())
    shown = np.asarray(Image.open(info["png"]).convert("RGB"), np.float32) / 255.0
    ref, alpha = engine_view(ply, info)
    ref_linear, _ = engine_view(ply, info, linear_light=True)
    np.save(out / f"engine_{engine}.npy", ref)
    head = alpha > 0.02
    return {"engine": engine, "blender": info["blender"], "representation": info["representation"],
            "samples": samples, "resolution": resolution, "render_s": info["render_s"],
            "psnr_db": round(psnr(shown, ref), 2), "psnr_head_db": round(psnr(shown, ref, head), 2),
            "psnr_linear_light_db": round(psnr(shown, ref_linear), 2),
            "ceiling_linear_light_db": round(psnr(ref_linear, ref), 2)}


def run(engines=("cycles", "eevee"), samples: int = 64, resolution: int = 256, lines=None, keep: Path | None = None) -> dict:
    """Every line x engine; returns ``{"machine", "avatar", "rows": [...]}``."""
    lines = blender_lines() if lines is None else lines
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(keep or tmp)
        ply = astronaut_avatar_ply(work / "astronaut_avatar.ply")
        rows = []
        for label, python in lines:
            for engine in engines:
                d = work / f"{label}_{engine}"
                d.mkdir(parents=True, exist_ok=True)
                rows.append({"line": label, **compare(ply, python, engine, d, samples, resolution)})
    from run_all import machine

    return {"machine": f"{machine()}, {time.strftime('%Y-%m-%d')}",
            "avatar": "default model, feed-forward, skimage astronaut", "rows": rows}


def markdown(result: dict) -> str:
    """The README table (between ``<!-- display:begin -->`` / ``<!-- display:end -->``)."""
    out = ["| Blender | avatar object | engine | samples | PSNR (dB) | PSNR head (dB) | PSNR vs linear-light (dB) "
           "| linear-light ceiling (dB) | render (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            out.append(f"| {r['line']} | | {r['engine']} | | failed: {r['error'][:80]} | | | | |")
        else:
            out.append(f"| {r['blender']} | {r['representation']} | {r['engine']} | {r['samples']} | {r['psnr_db']} "
                       f"| {r['psnr_head_db']} | {r['psnr_linear_light_db']} | {r['ceiling_linear_light_db']} "
                       f"| {r['render_s']} |")
    return "\n".join(out) + f"\n\n{result['resolution']}x{result['resolution']} px, {result['machine']}.\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engines", default="cycles,eevee")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--keep", type=Path, help="keep the PLY and the renders in this folder")
    p.add_argument("--update-readme", action="store_true")
    args = p.parse_args(argv)
    result = run(tuple(args.engines.split(",")), args.samples, args.resolution, keep=args.keep)
    result["resolution"] = args.resolution
    print(json.dumps(result, indent=1))
    if args.update_readme:
        readme = ROOT / "docs" / "blender.md"
        text = readme.read_text()
        new, n = re.subn(r"(?s)(<!-- display:begin -->\n).*?(<!-- display:end -->)",
                         lambda m: m.group(1) + markdown(result) + m.group(2), text)
        if n != 1:
            raise SystemExit("docs/blender.md: no <!-- display:begin --> / <!-- display:end --> markers")
        readme.write_text(new)


if __name__ == "__main__":
    main()
