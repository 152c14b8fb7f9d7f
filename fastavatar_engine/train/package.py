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


LONDON_CITATION = ("DeBruine, L., & Jones, B. (2017). Face Research Lab London Set (Version 5). figshare. "
                   "https://doi.org/10.6084/m9.figshare.5047666.v5 (CC BY 4.0)")
FACES_TERMS = ("The `faces` test set of the deepface library (github.com/serengil/deepface, tests/unit/dataset, MIT "
               "repository): photos of public figures taken by others; read in place, never redistributed.")


def package_prior(run_dir, model_dir, model_id: str, commands: list[str], evaluations=()) -> Path:
    """Write the many-people model bundle (:mod:`.prior`'s run) to ``model_dir``: decoder, encoder,
    codes (float16 safetensors), ``model_card.json``, ``README.md`` (with the London Set's CC BY
    attribution) and ``directions/*.json`` (the direction library shipped with the model)."""
    import shutil

    from .people import load_split

    run_dir, model_dir = Path(run_dir), Path(model_dir)
    decoder = _decoder_from_state(_read_safetensors(run_dir / "decoder.safetensors"), run_dir / "decoder.safetensors")
    encoder = _encoder_from_state(_read_safetensors(run_dir / "encoder.safetensors"), run_dir / "encoder.safetensors")
    codes = _read_safetensors(run_dir / "codes.safetensors")
    load = lambda name: json.loads((run_dir / name).read_text()) if (run_dir / name).is_file() else None  # noqa: E731
    people = [json.loads(p.read_text()) for p in sorted((run_dir / "people").glob("*.json"))]
    stages = {"people": {"entries": len(people), "persons": len({p["person"] for p in people}),
                         "time_s": round(sum(p["time_s"] for p in people), 1),
                         "fit_model": sorted({p["model_id"] for p in people})},
              "template": load("template.json"), "decoder": load("decoder.json"), "encoder": load("encoder.json"),
              "directions": load("directions.json")}
    subjects = sorted(n for n in codes if "-" not in n)  # people entries are named london-NNN-..., faces-NN
    total = sum((stages[k] or {}).get("time_s", 0) or 0 for k in ("people", "decoder", "encoder"))
    card = {
        "model_id": model_id,
        "architecture": "FastAvatar (Liang et al., TMLR 2026, arXiv 2508.18389): template of K Gaussians bound to the "
                        "ICT-FaceKit head model + conditioning MLP decoder (official layout) + projector encoder on a "
                        "dlib 128-D identity backbone; the head shape is a separate input (the fitted identity "
                        "coefficients deform the template), w carries appearance and what the head model cannot"
                        + (f"; the decoder carries a linear basis of {decoder.basis_components} principal components "
                           "of the people's fitted avatars (means, log-scales, opacity, SH DC), w[:N] are their "
                           "whitened coordinates and the MLP adds the rest (zero where it was not trained)"
                           if decoder.basis_components else ""),
        "embedder": "dlib",
        "frame": "FLAME head frame: y up, metres, face towards +z",
        "data": {"multi_view_subjects": subjects, "nersemble_terms": DATA_TERMS,
                 "london": LONDON_CITATION, "faces": FACES_TERMS,
                 "entries": [p["entry"] for p in people],
                 "held_out": load_split()["held_out"],
                 "held_out_rule": "the held-out people (fastavatar_engine/train/split_v2.json) enter no stage; camera 8 "
                                  "of every NeRSemble subject is excluded too"},
        "commands": list(commands),
        "stages": stages,
        "evaluation": [json.loads(Path(p).read_text()) for p in evaluations],
        "code_revision": _git_revision(Path(__file__).resolve().parents[2]),
        "device": f"CPU: {_cpu_name()} ({platform.machine()}), torch threads 2",
        "training_time_s": round(total, 1),
        "created": _dt.date.today().isoformat(),
        "storage": "float16 safetensors (loaded as float32)",
        "limitations": "Each single-photo person is seen from the front only: the sides and back of every target come "
                       "from the prior of the model that fitted it (leave-369-out v1, two NeRSemble heads), so the "
                       "latent space varies most at the face and least behind the ears. The decoder learns the "
                       "likeness fits in parameter space (no rendering loss of its own). The targets are 40-step "
                       "likeness fits without growth: hair that leaves the template (long or piled-up hair) is "
                       "missing from them and so from every decode. The encoder is a ridge map from a dlib "
                       "embedding, which shrinks new people's codes towards the mean: renders of different "
                       "people are only a little less alike than a render and its own photo (see the "
                       "evaluation). The smile direction comes from 80 London pairs whose smiling targets carry "
                       "the head fit's expression difference.",
    }
    model = FastAvatarModel(decoder, encoder, card, {k: v.float() for k, v in codes.items()}, "dlib")
    model.save(model_dir)
    if (model_dir / "directions").is_dir():
        shutil.rmtree(model_dir / "directions")
    if (run_dir / "directions").is_dir():
        shutil.copytree(run_dir / "directions", model_dir / "directions")
    (model_dir / "README.md").write_text(
        f"# {model_id}\n\nFastAvatar default model v2: a latent space of {stages['people']['persons']} people from "
        f"single photos plus {len(subjects)} multi-view NeRSemble subjects. The full card is `model_card.json`; "
        "the directions shipped with it are in `directions/`.\n\n## Data and attribution\n\n"
        f"- Face Research Lab London Set: {LONDON_CITATION}. The photos are not included; these weights were "
        "trained on likeness fits of them.\n"
        f"- {FACES_TERMS}\n- {DATA_TERMS}\n")
    return model_dir
