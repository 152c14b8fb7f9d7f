"""Record evaluation summaries in a model card (``model_card.json``), without retraining.

    python tools/card_evaluations.py fastavatar_engine/weights/default_v1/model_card.json \\
        --key product_path_evaluation runs/product_v1/train_128.json runs/product_v1/train_306.json ...

Each ``fastavatar evaluate --json`` file contributes its subject, input view, model, scored
cameras and, for ``feed_forward``, ``refined`` (the product path: the photo alone) and
``oracle_refined`` (calibrated camera + dataset mask), the mean metrics (and, for the photo-only
paths, the frame-aligned means), identity similarity, steps and time. The card is rewritten atomically; other keys are kept as they are.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

MODES = ("feed_forward", "refined", "oracle_refined")


def summarise(result: dict, source: str) -> dict:
    """The card entry for one evaluation result (see the module docstring)."""
    out = {k: result[k] for k in ("subject", "input_view", "model_id", "evaluated_cameras", "image_scale") if k in result}
    out["source"] = source
    if "refined_options" in result:
        out["refined_options"] = result["refined_options"]
    for mode in MODES:
        if mode in result:
            r = result[mode]
            mean = r["mean"] if "mean" in r else {k: v for k, v in r.items() if k != "identity_similarity"}  # CLI summary
            out[mode] = {"mean": mean, **{k: r[k] for k in ("identity_similarity", "steps", "time_s") if k in r}}
            if "frame_aligned" in r:  # the evaluation's file has {"mean", "views"}, the CLI summary the mean
                fa = r["frame_aligned"]
                out[mode]["frame_aligned_mean"] = fa["mean"] if "mean" in fa else fa
    if "frame_alignment" in result:
        out["frame_alignment"] = result["frame_alignment"]
    out["labels"] = {"feed_forward": "photo -> avatar, no refinement",
                     "refined": "product path: the photo alone (estimated camera, segmentation mask, mirrored view, "
                                "landmarks), as fastavatar generate --refine N / Blender's Refine",
                     "oracle_refined": "oracle: the calibrated camera and the dataset's foreground mask",
                     "frame_aligned_mean": "scored at the cameras moved into the landmark template's frame "
                                           "(fastavatar_engine.evaluate.template_alignment); mean: the subject's head frame"}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("card")
    ap.add_argument("results", nargs="+")
    ap.add_argument("--key", default="product_path_evaluation")
    args = ap.parse_args()
    card_path = Path(args.card)
    card = json.loads(card_path.read_text())
    card[args.key] = [summarise(json.loads(Path(p).read_text()), str(p)) for p in args.results]
    tmp = card_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, card_path)
    print(f"{card_path}: {args.key} = {len(card[args.key])} evaluations")


if __name__ == "__main__":
    main()
