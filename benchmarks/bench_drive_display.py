"""Display fidelity of a *driven* avatar (issue 22): Blender's render of frame N of a performance
against the engine's render of the same frame, beside the same avatar undriven. Prints JSON.

    python benchmarks/bench_drive_display.py [--engines cycles,eevee] [--samples 64] [--resolution 256] [--out F]

The avatar is Generate Avatar's default (the 40-step likeness fit, mouth interior included) of the
public-domain astronaut photo, saved as PLY + sidecar. The performance (24 fps) opens the jaw to
0.6, closes the left eye, smiles and turns the head 12 degrees; frame ``FRAME`` is rendered. Each
Blender line renders it with ``blender_display_render.py --drive`` (the add-on keys the
performance and decodes the frame exactly, as ``blender -b`` renders do); the engine renders
``fastavatar animate``'s frame (:class:`fastavatar_engine.animate.Animator`, unposed, from the
camera relative to the moved object). Scored as ``bench_display.py`` scores the undriven avatar,
which is rendered too: the acceptance is that the driven frame stays within the undriven
avatar's display fidelity on every line and engine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

FRAME = 7


def performance(path: Path) -> Path:
    """A 10-frame, 24 fps performance (jaw, blink, smile, a head turn) saved as expressions JSON."""
    from fastavatar_engine.expressions import ExpressionSequence
    from fastavatar_engine.expressions.names import EXPRESSION_NAMES as N

    F = 10
    C = np.zeros((F, 53))
    C[:, N.index("jawOpen")] = np.linspace(0, 0.6, F)
    C[:, N.index("eyeBlink_L")] = np.linspace(0, 1, F)
    C[:, N.index("mouthSmile_L")] = C[:, N.index("mouthSmile_R")] = 0.4
    yaw = np.radians(np.linspace(0, 12, F))
    R = np.stack([np.cos(yaw / 2), np.zeros(F), np.sin(yaw / 2), np.zeros(F)], 1)
    ExpressionSequence(24.0, list(N), C, R, np.zeros((F, 3)), np.zeros(F, bool), source="bench").save(path)
    return path


def main():
    from bench_display import RENDER_SCRIPT, blender_lines, engine_view, psnr
    from PIL import Image

    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", default="cycles,eevee")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--out")
    ap.add_argument("--keep", default=None, help="also write each Blender render beside the engine's here (PNG, to look at)")
    args = ap.parse_args()
    from skimage import data

    from fastavatar_engine.animate import Animator
    from fastavatar_engine.edit import read_coded_avatar
    from fastavatar_engine.expressions import ExpressionSequence
    from fastavatar_engine.generate import AvatarGenerator, save_avatar
    from fastavatar_engine.ply import write_ply
    from machine import emit
    from run_all import machine

    rows = []
    with tempfile.TemporaryDirectory() as tmp, AvatarGenerator() as gen:
        work = Path(tmp)
        ply, _ = save_avatar(gen.generate(data.astronaut(), refine_steps=40), work / "avatar.ply")
        perf = performance(work / "performance.json")
        seq = ExpressionSequence.load(perf)
        driven = write_ply(work / "frame.ply", Animator(gen.model, read_coded_avatar(ply)).gaussians(
            seq.coefficients_for(gen.model.head_template.model.expression_names)[FRAME - 1]))
        env = dict(os.environ, FASTAVATAR_ENGINE_PYTHON=sys.executable)
        for label, python in blender_lines():
            for engine in args.engines.split(","):
                row = {"line": label, "engine": engine}
                for tag, extra, reference in (("rest", [], ply), ("driven", ["--drive", str(perf), "--frame", str(FRAME)],
                                                                  driven)):
                    d = work / f"{label}_{engine}_{tag}"
                    d.mkdir()
                    proc = subprocess.run([python, str(RENDER_SCRIPT), str(ply), str(d), "--engine", engine, "--samples",
                                           str(args.samples), "--resolution", str(args.resolution), *extra],
                                          capture_output=True, text=True, timeout=1200, env=env, cwd=d)
                    info_path = d / f"blender_{engine}.json"
                    if proc.returncode != 0 or not info_path.is_file():
                        row[tag] = {"error": (proc.stderr.strip() or "failed").splitlines()[-1][-300:]}
                        continue
                    info = json.loads(info_path.read_text())
                    shown = np.asarray(Image.open(info["png"]).convert("RGB"), np.float32) / 255.0
                    ref, alpha = engine_view(reference, info)
                    ref_ll, _ = engine_view(reference, info, linear_light=True)
                    if args.keep:
                        Path(args.keep).mkdir(parents=True, exist_ok=True)
                        pair = np.concatenate([shown, ref], 1)
                        Image.fromarray((np.clip(pair, 0, 1) * 255).round().astype(np.uint8)).save(
                            Path(args.keep) / f"{label}_{engine}_{tag}.png")
                    row[tag] = {"psnr_db": round(psnr(shown, ref), 2), "psnr_head_db": round(psnr(shown, ref, alpha > 0.02), 2),
                                "psnr_linear_light_db": round(psnr(shown, ref_ll), 2), "render_s": info["render_s"],
                                "blender": info["blender"], "representation": info["representation"]}
                if "psnr_db" in row.get("rest", {}) and "psnr_db" in row.get("driven", {}):
                    row["driven_minus_rest_db"] = round(row["driven"]["psnr_db"] - row["rest"]["psnr_db"], 2)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    result = {"benchmark": "drive_display", "machine": f"{machine()}, {time.strftime('%Y-%m-%d')}",
              "command": "python benchmarks/bench_drive_display.py " + " ".join(sys.argv[1:]),
              "avatar": "default Generate (fit 40) of skimage astronaut", "frame": FRAME,
              "resolution": args.resolution, "samples": args.samples, "rows": rows}
    emit(result, args.out)


if __name__ == "__main__":
    main()
