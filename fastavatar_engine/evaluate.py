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

**Two scores for the photo-only avatars** (``feed_forward`` and ``refined``):

* ``mean``, *strict*: at the calibrated cameras in the subject's head frame (the sample data's
  world, un-rotated by the tracked FLAME head rotation; :func:`train.data.load_views`). That
  frame keeps where the subject sat in the rig: the face of subject 369 sits 13.5 mm higher than
  the landmark template's. A photo cannot show that offset, so the feed-forward avatar and the
  product path's camera (PnP against the template, :func:`face.estimate_camera`) put the head
  where the template is, and the strict score charges the seat position to the avatar (on 369,
  1.8 dB of the feed-forward avatar's score).
* ``frame_aligned``: the same cameras moved into the template's frame by one rigid transform
  per subject, computed without the avatar (:func:`template_alignment`: the subject's 468
  landmarks triangulated from all 16 calibrated views, aligned to the template by least
  squares, as pose-free novel-view-synthesis evaluations align estimated and true frames
  before scoring). It removes where the head is, not what it looks like.

The oracle avatar is fitted at the calibrated camera, so it lives in the head frame and only
its strict score applies.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch

from .render import GaussianTensors, render
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


def template_alignment(root, front_end=None) -> tuple[np.ndarray, dict]:
    """The rigid transform from a calibrated subject's head frame to the landmark template's.

    ``root``: a sample-subject folder (16 calibrated views, FLAME parameters). The subject's
    478 MediaPipe landmarks are triangulated from its views
    (:func:`face.triangulate.triangulate_subject`), taken into the head frame
    (:attr:`SubjectLandmarks.head_points`, the frame of :func:`train.data.load_views`), and the
    template's PnP landmarks (the 468 mesh points, iris excluded) are aligned to
    :func:`face.load_landmark_template`'s by a least-squares rotation (Kabsch,
    ``scipy.spatial.transform.Rotation.align_vectors``) and translation, no scale.

    Returns ``(D, stats)``: ``D`` [4,4] float64 maps head-frame points (metres) to template-frame
    points, so a camera ``c2w`` of the head frame becomes ``D @ c2w``; ``stats`` has
    ``rotation_deg``, ``translation_mm`` [3] and the RMS landmark residual ``residual_mm``.
    Raises ``ValueError`` when fewer than 3 views have a face or the subject has no FLAME
    head rotation.
    """
    from scipy.spatial.transform import Rotation

    from .face import load_landmark_template
    from .face.triangulate import triangulate_subject

    X = triangulate_subject(root, front_end).head_points  # the head frame of train.data.load_views
    tpl = load_landmark_template()
    idx = tpl.pnp_indices[np.isfinite(X[tpl.pnp_indices]).all(1)]
    a, b = X[idx], tpl.points[idx]
    ca, cb = a.mean(0), b.mean(0)
    rot, _ = Rotation.align_vectors(b - cb, a - ca)
    R = rot.as_matrix()
    D = np.eye(4)
    D[:3, :3], D[:3, 3] = R, cb - R @ ca
    residual = float(np.sqrt((((a @ R.T + D[:3, 3]) - b) ** 2).sum(1).mean()))
    return D, {"rotation_deg": round(float(np.degrees(rot.magnitude())), 3),
               "translation_mm": [round(float(v) * 1e3, 2) for v in D[:3, 3]],
               "residual_mm": round(residual * 1e3, 2), "landmarks": int(len(idx))}


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
                     held_out=None, oracle: bool = False, refine_options: dict | None = None,
                     frame_aligned: bool = True) -> dict:
    """Run the evaluation on cameras 0-15 of ``data_dir/subject``; returns the JSON-ready dict.

    ``input_view``: camera index of the input photo (full resolution), or a list of indices for
    a multi-photo avatar (:meth:`AvatarGenerator.generate_multi`; refinement then fits every input
    view at its calibrated camera). ``held_out``: the cameras scored (default: all the others);
    pass the same set to compare one input view with several. The scored cameras are rendered at
    ``image_scale``. ``refine_options``: extra keyword arguments of :meth:`AvatarGenerator.refine`
    for the product path (e.g. ``symmetry=False``). Keys: ``feed_forward`` and (with
    ``refine_steps`` > 0) ``refined`` (the product path) and, with ``oracle``, ``oracle_refined``, each with
    ``mean`` and per-view ``views`` metrics (PSNR in dB, SSIM, L1, each also inside the foreground
    mask) and ``identity_similarity``; with ``frame_aligned`` (default) the photo-only paths also
    carry ``frame_aligned`` (``mean`` and ``views`` at the cameras moved by
    :func:`template_alignment`, whose figures are under the top-level ``frame_alignment``; see
    the module docstring). Raises ``ValueError`` for a missing camera or an input view
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
    aligned_views, alignment = None, None
    if frame_aligned:
        D, alignment = template_alignment(root, gen.front_end)
        aligned_views = [copy.copy(v) for v in others]
        for v in aligned_views:
            v.c2w = D @ np.asarray(v.c2w, np.float64)

    def photo_only(g) -> dict:
        return {} if aligned_views is None else {"frame_aligned": _metrics(g, aligned_views)}

    t = time.perf_counter()
    avatar = gen.generate(photos[0]) if len(photos) == 1 else gen.generate_multi(photos)
    ff_time = time.perf_counter() - t
    feed_forward = GaussianTensors.from_numpy(avatar.gaussians)
    result = {
        "subject": subject, "input_view": inputs[0] if len(inputs) == 1 else inputs, "model_id": gen.model.model_id,
        "image_scale": image_scale, "evaluated_cameras": [v.camera_index for v in others],
        **({"frame_alignment": alignment} if alignment else {}),
        "feed_forward": _metrics(feed_forward, others) | photo_only(feed_forward) | {
            "time_s": round(ff_time, 3),
            "identity_similarity": _identity_similarity(gen, feed_forward, avatar.embedding, frontal)},
    }
    if refine_steps > 0:
        code0 = avatar.code.copy()

        def run(key, photo_path=True, **kw):
            av = copy.copy(avatar)
            av.code = code0.copy()
            av.timings_ms = {}
            t = time.perf_counter()
            gen.refine(av, photos[0], refine_steps, progress=progress, mode=refine_mode,
                       geometry_anchor=geometry_anchor, precision=precision, **kw)
            g = GaussianTensors.from_numpy(av.gaussians)
            result[key] = _metrics(g, others) | (photo_only(g) if photo_path else {}) | {
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
            run("oracle_refined", photo_path=False, views=views, symmetry=False)
    return result
