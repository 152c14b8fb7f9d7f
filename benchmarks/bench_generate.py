"""Generation benchmark: prints JSON with per-stage timings (milliseconds, medians).

    python benchmarks/bench_generate.py                       # CPU, the built-in model, astronaut photo
    python benchmarks/bench_generate.py --device cuda         # on a GPU (decode/refine on CUDA, gsplat)
    python benchmarks/bench_generate.py --photo me.jpg --refine-steps 300

Stages: image load, face detection + landmarks, identity embedding, encode, decode (10,144
Gaussians), the head fit (camera + identity + expression from the landmarks), the bound deformation
of the template onto that head, photo -> Gaussians (feed-forward end to end), one
refinement step, the default Generate (photo file to avatar with the likeness fit of
``generate.DEFAULT_FIT_STEPS`` steps, target <= 15 s on a 2-core CPU, <= 1 s on a GPU) and a full
refinement of ``--refine-steps`` steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_description  # noqa: E402
os.environ.setdefault("GLOG_minloglevel", "2")


def _median_ms(fn, repeats: int, sync=lambda: None) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(1e3 * (time.perf_counter() - t0))
    return round(statistics.median(times), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photo", help="photo to use (default: skimage.data.astronaut())")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--refine-steps", type=int, default=300)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="refinement precision (auto: bf16 on CPUs with native bf16; budgets are stated for fp32)")
    args = ap.parse_args()

    import torch

    from fastavatar_engine.generate import AvatarGenerator
    from fastavatar_engine.images import load_image

    if args.photo:
        photo = args.photo
    else:
        from PIL import Image
        from skimage import data

        photo = str(Path(tempfile.mkdtemp()) / "astronaut.png")
        Image.fromarray(data.astronaut()).save(photo)
    sync = (lambda: torch.cuda.synchronize()) if args.device.startswith("cuda") else (lambda: None)
    gen = AvatarGenerator(args.weights, device=args.device)
    image = load_image(photo)
    face = gen.front_end.detect_one(image)
    emb = gen.embedder.embed(image, face)
    w = gen.model.encode(emb)
    stages = {
        "image_load": _median_ms(lambda: load_image(photo), args.repeats),
        "detection": _median_ms(lambda: gen.front_end.detect(image), args.repeats),
        "embedding": _median_ms(lambda: gen.embedder.embed(image, face), args.repeats),
        "encode": _median_ms(lambda: gen.model.encode(emb), args.repeats, sync),
    }
    with torch.no_grad():
        stages["decode"] = _median_ms(lambda: gen.model.decode(w), args.repeats, sync)
    # the head model: camera + shape fit from the landmarks, the template bound to that head
    from fastavatar_engine.generate import photo_head

    _, fit = photo_head([face])
    stages["head_fit"] = _median_ms(lambda: photo_head([face]), max(3, args.repeats // 2))
    if fit is not None and gen.model.head_template is not None:
        bt = gen.model.head_template
        with torch.no_grad():
            stages["bound_deformation"] = _median_ms(lambda: bt.deform(identity=fit.identity), args.repeats)
    stages["photo_to_gaussians"] = _median_ms(lambda: gen.generate(image), max(3, args.repeats // 2), sync)
    avatar = gen.generate(image)
    t0 = time.perf_counter()
    gen.refine(avatar, image, 1, precision=args.precision)
    sync()
    stages["refine_one_step"] = round(1e3 * (time.perf_counter() - t0), 1)
    # what fastavatar generate / Blender's Generate Avatar do by default: detection to fitted avatar
    from fastavatar_engine.generate import DEFAULT_FIT_STEPS

    t0 = time.perf_counter()
    gen.generate(load_image(photo), refine_steps=DEFAULT_FIT_STEPS, precision=args.precision)
    sync()
    stages["default_generate_with_fit"] = round(1e3 * (time.perf_counter() - t0), 1)
    avatar = gen.generate(image)
    t0 = time.perf_counter()
    gen.refine(avatar, image, args.refine_steps, precision=args.precision)
    sync()
    stages[f"refine_{args.refine_steps}_steps"] = round(1e3 * (time.perf_counter() - t0), 1)
    gen.close()
    print(json.dumps({
        "benchmark": "generate", "device": args.device,
        "device_name": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else cpu_description(),
        "torch_threads": torch.get_num_threads(), "model_id": gen.model.model_id,
        "gaussians": gen.model.decoder.num_gaussians, "stages_ms": stages,
        "refine_precision": avatar_precision(args.device) if args.precision == "auto" else args.precision,
        "refine_first_loss": round(avatar.refine_losses[0], 5), "refine_last_loss": round(avatar.refine_losses[-1], 5),
    }, indent=2))


def avatar_precision(device: str) -> str:
    """The precision refinement's 'auto' picks on ``device`` (bf16 on CPUs with native bf16)."""
    from fastavatar_engine.generate import _cpu_has_bf16

    return "bf16" if device == "cpu" and _cpu_has_bf16() else "fp32"


if __name__ == "__main__":
    main()
