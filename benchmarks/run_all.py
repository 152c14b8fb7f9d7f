"""One entry point for every performance target the README states; prints JSON.

    python benchmarks/run_all.py                    # CPU (CUDA rows too when a GPU is visible)
    python benchmarks/run_all.py --device cuda      # engine stages and Blender round trip on the GPU
    python benchmarks/run_all.py --quick            # fewer repeats / requests (a smoke run)
    python benchmarks/run_all.py --update-readme    # also rewrite the README's performance table

Runs, each in its own subprocess (so timings and peak memory are their own): the rasteriser
(``bench_render.py``), engine stages photo -> Gaussians -> refinement (``bench_generate.py``), the
Blender round trip and slider update rate (``bench_blender.py``, needs ``bpy``), export
(``bench_export.py``) and the engine soak (``soak_engine.py``). The README table between the
``<!-- perf:begin -->`` / ``<!-- perf:end -->`` markers is generated from this JSON
(:func:`markdown`) and names the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _run(script: str, *args: str, timeout: int = 3600) -> dict:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1], "script": script}
    out = proc.stdout.strip()
    start = out.find("{")  # bench_render prints indented JSON; the others one line
    data = json.loads(out[start:]) if out.startswith("{") else json.loads(out.splitlines()[-1])
    data["wall_s"] = round(time.perf_counter() - t, 1)
    return data


def machine() -> str:
    from machine import cpu_description

    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", {torch.cuda.get_device_name(0)}"
        tv = torch.__version__
    except ImportError:
        tv = "none"
    return f"{cpu_description()}{gpu}; Python {platform.python_version()}, torch {tv}"


def run(device: str = "cpu", quick: bool = False) -> dict:
    reps = "3" if quick else "10"
    results = {"machine": machine(), "device": device, "date": time.strftime("%Y-%m-%d")}
    results["render"] = _run("bench_render.py", "--counts", "10000", "--sizes", "256", "512", "--repeats",
                             "3" if quick else "5")
    results["generate"] = _run("bench_generate.py", "--device", device, "--repeats", reps, "--refine-steps",
                               "60" if quick else "300")
    if importlib.util.find_spec("bpy") is not None:
        results["blender"] = _run("bench_blender.py", "--device", device, "--repeats", "3" if quick else "5")
    else:
        results["blender"] = {"error": "bpy not installed"}
    results["export"] = _run("bench_export.py", "--repeats", "3" if quick else "5")
    results["soak"] = _run("soak_engine.py", "--requests", "200" if quick else "1000", "--device", device)
    return results


def markdown(r: dict) -> str:
    """The README's performance table for a :func:`run` result."""
    rows = []

    def row(what, target, value):
        rows.append(f"| {what} | {target} | {value} |")

    for x in r["render"].get("results", []):
        if "error" not in x:
            row(f"rasterise {x['size']}² × {x['gaussians']:,} ({x['device']}, {x['backend']})", "—",
                f"forward {x['forward_ms_median']:.0f} ms, forward + backward {x['forward_backward_ms_median']:.0f} ms")
    g = r["generate"]
    if "stages_ms" in g:
        s = g["stages_ms"]
        row("image load / detection / embedding / encode", "—",
            f"{s['image_load']:.0f} / {s['detection']:.0f} / {s['embedding']:.0f} / {s['encode']:.1f} ms")
        row("decode 10,144 Gaussians", "≤ 0.3 ms (H100)", f"{s['decode']:.1f} ms ({g['device']})")
        row("photo → Gaussians", "≤ 300 ms CPU, ≤ 5 ms H100", f"**{s['photo_to_gaussians']:.0f} ms** ({g['device']})")
        if "default_generate_with_fit" in s:
            row("Generate with the likeness fit (photo file → fitted avatar)", "≤ 15 s CPU, ≤ 1 s GPU",
                f"**{s['default_generate_with_fit'] / 1e3:.1f} s** ({g['device']})")
        steps = next(k for k in s if k.startswith("refine_") and k.endswith("_steps"))
        n = int(steps.split("_")[1])
        row(f"full refinement, {n} steps ({g.get('refine_precision', 'fp32')})",
            "300 steps ≤ 60 s CPU, ≤ 1 s H100", f"**{s[steps] / 1e3:.1f} s** ({g['device']})")
    b = r["blender"]
    if "first_generate_s" in b:
        row("first Generate in Blender (engine start and the 40-step fit included)", "≤ 15 s CPU",
            f"**{b['first_generate_s']:.1f} s** (engine start {b['engine_start_s']:.1f} s)")
        row("warm feed-forward Generate (Likeness Fit 0, operator → object)", "≤ 1 s CPU, ≤ 150 ms CUDA",
            f"**{b['warm_generate_ms_median']:.0f} ms** ({b['engine_device']})")
        row("write 10,144 splats' attributes", "≤ 20 ms", f"**{b['write_attributes_ms_median']:.1f} ms**")
        row("slider / timeline updates (2 sliders, previewed)", "≥ 30 /s", f"**{b['slider_preview_updates_per_s']:.0f} /s** "
            f"(exact decodes: {b['slider_exact_updates_per_s']:.1f} /s; re-expansion {b['relinearise_ms'] / 1e3:.1f} s)")
    e = r["export"]
    if "formats" in e:
        row("export 10,144 splats", "—", ", ".join(
            f"{k} {v['ms_median']:.0f} ms / {v['bytes'] / 2**20:.2f} MiB" for k, v in e["formats"].items()))
    s = r["soak"]
    if "rss_mib" in s:
        row(f"engine soak, {s['requests']:,} decodes", "flat memory",
            f"RSS {s['rss_mib'][0][1]:.0f} MiB at start, {s['rss_range_after_warmup_mib'][0]:.0f}–"
            f"{s['rss_range_after_warmup_mib'][1]:.0f} MiB after warm-up, trend "
            f"{s['rss_trend_mib_per_1000_requests']:+.0f} MiB per 1,000 ({s['decodes_per_s']:.1f} decodes/s)")
    failed = [k for k in ("render", "generate", "blender", "export", "soak") if "error" in r[k]]
    head = (f"Measured by `python benchmarks/run_all.py --update-readme` on {r['date']}: {r['machine']} "
            f"(engine device: {r['device']}).")
    notes = f"\n\nNot measured in this run: {', '.join(failed)}." if failed else ""
    return head + "\n\n| what | target | measured |\n|---|---|---|\n" + "\n".join(rows) + notes


def update_readme(r: dict, readme: Path = ROOT / "README.md") -> None:
    text = readme.read_text()
    new = f"<!-- perf:begin -->\n{markdown(r)}\n<!-- perf:end -->"
    if "<!-- perf:begin -->" not in text:
        raise SystemExit("README has no <!-- perf:begin --> / <!-- perf:end --> markers")
    readme.write_text(re.sub(r"<!-- perf:begin -->.*?<!-- perf:end -->", lambda _: new, text, flags=re.S))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="engine device for the engine and Blender rows (cpu, cuda)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats and requests")
    ap.add_argument("--update-readme", action="store_true", help="rewrite the README performance table")
    ap.add_argument("--from-json", help="render the table from a saved result instead of running")
    args = ap.parse_args()
    r = json.loads(Path(args.from_json).read_text()) if args.from_json else run(args.device, args.quick)
    print(json.dumps(r, indent=1))
    if args.update_readme:
        update_readme(r)


if __name__ == "__main__":
    main()
