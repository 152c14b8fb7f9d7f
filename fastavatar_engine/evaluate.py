"""Evaluation on calibrated multi-view data (``fastavatar evaluate``).

Generate an avatar from one view V of a subject, render every other view with its calibrated
camera (in the FLAME head frame, where avatars live) and compare with the photos: PSNR, SSIM and
L1, over the whole image and inside the foreground mask, for the feed-forward avatar and, with
``refine_steps`` > 0, the refined one. Also the identity similarity (cosine of the backbone's
embeddings) between the input photo and the frontal (camera 8) render at full resolution.

**The product path** (the default, ``refined``): V's photo is all the avatar gets, exactly as
from ``fastavatar generate PHOTO --refine N`` or Blender's *Generate* / *Refine*: the camera is
estimated from the face, the mask comes from segmentation, the mirrored view and the landmarks
are added (:mod:`fastavatar_engine.photofit`). Only the scoring uses the calibration.

**The oracle** (``oracle=True``, reported beside it as ``oracle_refined``): refinement at V's
calibrated camera inside the dataset's foreground mask, which no user has.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch

from .render import render
from .train.data import load_views
from .train.losses import l1, psnr, ssim

FRONTAL_CAMERA = 8


def _metrics(g, views) -> dict:
    rows = []
    with torch.no_grad():
        for v in views:
            rgb, _ = render(g, v.c2w, v.K, v.width, v.height)
            rgb = rgb.clamp(0, 1)
            rows.append({
                "camera": v.camera_index,
                "psnr": round(psnr(rgb, v.image), 3), "psnr_masked": round(psnr(rgb, v.image, v.mask), 3),
                "ssim": round(float(ssim(rgb, v.image)), 4),
                "ssim_masked": round(float(ssim(rgb * v.mask[..., None] + (1 - v.mask[..., None]),
                                                v.image * v.mask[..., None] + (1 - v.mask[..., None]))), 4),
                "l1": round(float(l1(rgb, v.image)), 5), "l1_masked": round(float(l1(rgb, v.image, v.mask)), 5),
            })
    keys = [k for k in rows[0] if k != "camera"]
    return {"mean": {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}, "views": rows}


def _identity_similarity(generator, g, photo_embedding, frontal_view) -> float | None:
    """Cosine between ``photo_embedding`` and the backbone's embedding of ``g`` rendered at
    ``frontal_view`` (full resolution); None when no face is found in the render."""
    from .likeness import identity_similarity

    with torch.no_grad():
        rgb, _ = render(g, frontal_view.c2w, frontal_view.K, frontal_view.width, frontal_view.height)
    img = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    sim = identity_similarity(generator.front_end, generator.embedder, img, photo_embedding)
    return None if sim is None else round(sim, 4)


def evaluate_subject(data_dir, subject: str, input_view=FRONTAL_CAMERA, refine_steps: int = 0,
                     model=None, image_scale: float = 0.5, generator=None, progress=None,
                     refine_mode: str = "auto", geometry_anchor: float = 0.0, precision: str = "auto",
                     held_out=None, oracle: bool = False, refine_options: dict | None = None) -> dict:
    """Run the evaluation on cameras 0-15 of ``data_dir/subject``; returns the JSON-ready dict.

    ``input_view``: camera index of the input photo (full resolution), or a list of indices for
    a multi-photo avatar (:meth:`AvatarGenerator.generate_multi`; refinement then fits every input
    view at its calibrated camera). ``held_out``: the cameras scored (default: all the others);
    pass the same set to compare one input view with several. The scored cameras are rendered at
    ``image_scale``. ``refine_options``: extra keyword arguments of :meth:`AvatarGenerator.refine`
    for the product path (e.g. ``symmetry=False``). Keys: ``feed_forward`` and (with
    ``refine_steps`` > 0) ``refined`` (the product path) and, with ``oracle``, ``oracle_refined``, each with
    ``mean`` and per-view ``views`` metrics (PSNR in dB, SSIM, L1, each also inside the foreground
    mask) and ``identity_similarity``. Raises ``ValueError`` for a missing camera or an input view
    among the scored ones, ``CameraError`` for a malformed subject folder, face errors from generation.
    """
    from .generate import AvatarGenerator, RefineView

    inputs = [input_view] if isinstance(input_view, int) else [int(v) for v in input_view]
    if not inputs or len(set(inputs)) != len(inputs):
        raise ValueError(f"input views must be distinct camera indices, got {inputs}")
    root = Path(data_dir) / subject
    gen = generator or AvatarGenerator(model)
    all_views = load_views(root, camera_indices=list(range(16)), scale=image_scale)
    known = {v.camera_index for v in all_views}
    for v in inputs:
        if v not in known:
            raise ValueError(f"{root}: no camera {v}")
    scored = sorted(known - set(inputs)) if held_out is None else sorted(int(c) for c in held_out)
    if set(scored) & set(inputs) or not set(scored) <= known or not scored:
        raise ValueError(f"held-out cameras {scored} must be known cameras other than the inputs {inputs}")
    others = [v for v in all_views if v.camera_index in scored]
    full_inputs = load_views(root, camera_indices=inputs, scale=1.0)
    (frontal,) = load_views(root, camera_indices=[FRONTAL_CAMERA], scale=1.0)
    photos = [(v.image.numpy() * 255 + 0.5).astype(np.uint8) for v in full_inputs]

    t = time.perf_counter()
    avatar = gen.generate(photos[0]) if len(photos) == 1 else gen.generate_multi(photos)
    ff_time = time.perf_counter() - t
    feed_forward = avatar.gaussians.to_torch()
    result = {
        "subject": subject, "input_view": inputs[0] if len(inputs) == 1 else inputs, "model_id": gen.model.model_id,
        "image_scale": image_scale, "evaluated_cameras": [v.camera_index for v in others],
        "feed_forward": _metrics(feed_forward, others) | {
            "time_s": round(ff_time, 3),
            "identity_similarity": _identity_similarity(gen, feed_forward, avatar.embedding, frontal)},
    }
    if refine_steps > 0:
        code0 = avatar.code.copy()

        def run(key, **kw):
            av = copy.copy(avatar)
            av.code = code0.copy()
            av.timings_ms = {}
            t = time.perf_counter()
            gen.refine(av, photos[0], refine_steps, progress=progress, mode=refine_mode,
                       geometry_anchor=geometry_anchor, precision=precision, **kw)
            g = av.gaussians.to_torch()
            result[key] = _metrics(g, others) | {
                "time_s": round(time.perf_counter() - t, 1), "steps": refine_steps, "mode": av.refine_mode,
                "loss_first": round(av.refine_losses[0], 5), "loss_last": round(av.refine_losses[-1], 5),
                "identity_similarity": _identity_similarity(gen, g, av.embedding, frontal)}
            return av

        # the product path: what generate --refine / Blender's Refine do with the photo alone
        result["refined_options"] = dict(refine_options or {})
        run("refined", **(refine_options or {}))
        if oracle:  # calibrated cameras and the dataset's foreground masks
            views = [RefineView(p, v.c2w, v.K, v.mask.numpy(), mask_is_foreground=True, name=f"camera {v.camera_index}")
                     for p, v in zip(photos, full_inputs)]
            run("oracle_refined", views=views, symmetry=False)
    return result
