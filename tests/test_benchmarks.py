"""benchmarks/run_all.py: the README performance table is generated from the benchmark JSON."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import run_all  # noqa: E402


def sample_result():
    return {
        "machine": "Test CPU, 2 CPU threads", "device": "cpu", "date": "2026-01-01",
        "render": {"results": [{"size": 256, "gaussians": 10000, "device": "cpu", "backend": "torch",
                                "forward_ms_median": 161.2, "forward_backward_ms_median": 320.4}]},
        "generate": {"device": "cpu", "refine_precision": "bf16", "stages_ms": {
            "image_load": 6.1, "detection": 9.7, "embedding": 60.0, "encode": 0.21, "decode": 86.0,
            "photo_to_gaussians": 170.0, "refine_one_step": 1321.3, "refine_300_steps": 33589.6}},
        "blender": {"first_generate_s": 1.7, "engine_start_s": 0.9, "warm_generate_ms_median": 181.4,
                    "engine_device": "cpu", "write_attributes_ms_median": 1.94, "slider_preview_updates_per_s": 309.2,
                    "slider_exact_updates_per_s": 12.4, "relinearise_ms": 2005.1},
        "export": {"formats": {"spz": {"ms_median": 70.6, "bytes": 350142}}},
        "soak": {"error": "skipped"},
    }


def test_markdown_table_carries_every_measured_target_and_the_machine():
    md = run_all.markdown(sample_result())
    assert "Test CPU, 2 CPU threads" in md and "2026-01-01" in md
    for text in ("forward 161 ms, forward + backward 320 ms", "**170 ms** (cpu)", "**33.6 s** (cpu)",
                 "full refinement, 300 steps (bf16)", "**1.7 s**", "**181 ms** (cpu)", "**1.9 ms**", "**309 /s**",
                 "spz 71 ms / 0.33 MiB"):
        assert text in md, text
    assert "Not measured in this run: soak." in md


def test_update_readme_replaces_only_the_marked_table(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- perf:begin -->\nold table\n<!-- perf:end -->\noutro\n")
    run_all.update_readme(sample_result(), readme)
    text = readme.read_text()
    assert text.startswith("intro\n<!-- perf:begin -->\nMeasured by") and text.endswith("<!-- perf:end -->\noutro\n")
    assert "old table" not in text
