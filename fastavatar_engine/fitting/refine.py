"""Refinement: fit an avatar to its photos (FastAvatar's test-time optimisation, product path).

:func:`refine` orchestrates the concerns that live in their own modules: the views and masks
(:mod:`.views`, :mod:`fastavatar_engine.photofit`), the losses (:mod:`.losses`), the camera
corrections (:mod:`.camera`), the decoder and detail stages (:mod:`.stages`), appearance transfer
(:mod:`.appearance`) and growth (:mod:`.grow`). :meth:`AvatarGenerator.refine
<fastavatar_engine.generate.AvatarGenerator.refine>` is this function.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .appearance import contributing_gaussians, select
from .camera import store_refined_cameras
from .losses import LossWeights, attach_landmarks, view_loss
from .stages import DecoderStage, DetailStage, cpu_has_bf16, detail_cameras
from .views import RefineView, face_mask, refine_target

#: The fit's image size: the head crop's longer side, pixels. 192, not 256: on leave-one-out 369 the
#: default Generate scored 13.98 dB at 192 and 13.97 at 256 on novel views, and the astronaut's
#: fp32 Generate took 14.4 s instead of 24.6 s (2-core Xeon; README).
DEFAULT_FIT_SIZE = 192
#: Cap on the Gaussians the likeness fit may grow where the photo's person reaches past the avatar.
DEFAULT_GROW = 3000
#: Cap on the Gaussians the detail stage splits where the photo has detail they are too coarse for
#: (off by default: on leave-one-out 369 a budget of 2000 cost 0.12 dB on novel views, README).
DEFAULT_SPLIT = 0


def refine(gen, avatar, image: np.ndarray, steps: int = 300, progress=None,
           refine_size: int = DEFAULT_FIT_SIZE, lr_code: float = 3e-3, lr_decoder: float = 5e-5, code_reg: float = 1e-3,
           ssim_weight: float = 0.2, c2w=None, K=None, mask=None, mode: str = "auto",
           lr_heads: float = 3e-4, mask_is_foreground: bool = False, active_refresh: int = 50,
           min_weight_px: float = 0.01, geometry_anchor: float = 0.0, precision: str = "auto",
           views: list | None = None, preview_every: int = 0, preview=None,
           symmetry: bool = True, mirror_weight: float | None = None, silhouette_weight: float = 0.3,
           landmark_weight: float = 1.0, prior_weight: float = 0.1, prior_samples: int = 1024,
           camera: bool | None = None, camera_warmup: int | None = None, lr_camera: float = 1e-3,
           detail_steps: int | None = None, lr_detail_color: float = 1e-2, lr_detail_means: float = 1e-4,
           detail_reg: float = 0.1, transfer: bool = True, grow: int = DEFAULT_GROW, crop: bool = True,
           split: int = DEFAULT_SPLIT, split_after: int | None = None, mouth: bool = True):
    """Optimise ``avatar`` (made by ``gen``, an :class:`~fastavatar_engine.generate.AvatarGenerator`) against ``image`` ([H,W,3] uint8 RGB); updates and returns ``avatar``.

    **What is fitted.** By default (no ``views``, ``c2w``, ``K`` or ``mask``) the product path of
    :mod:`fastavatar_engine.photofit`: the photo at its estimated camera, composited on white
    inside its person mask (segmentation, body cut where the template ends), with the
    landmarks as targets; a multi-photo avatar fits each of its :attr:`Avatar.views`.
    ``c2w`` (4x4 OpenGL, head frame, metres), ``K`` (3x3, pixels of ``image``) and ``mask``
    ([H,W] in [0,1]) override camera and mask (an explicit ``mask`` is a foreground mask with
    ``mask_is_foreground``, else a region outside of which the loss ignores everything);
    ``views`` ([RefineView]) replaces all of it (e.g. calibrated views for the oracle
    evaluation).

    **Loss** per view, weighted by :attr:`RefineView.weight`: (1 - ``ssim_weight``) L1 +
    ``ssim_weight`` (1 - SSIM) against the photo composited on white inside the foreground
    mask, ignored pixels (:attr:`RefineView.ignore`) left out; ``silhouette_weight`` x
    mean |rendered alpha - mask| (foreground views); ``landmark_weight`` x mean distance,
    in units of the image's longer side, between the visible landmarks and the projections
    of their corresponding Gaussians (:class:`photofit.LandmarkCorrespondence`; views with
    :attr:`RefineView.landmarks`). ``symmetry`` adds, for every photo view that has
    landmarks, its mirrored view (:meth:`RefineView.flipped`, weight ``mirror_weight``,
    default :data:`photofit.MIRROR_WEIGHT`), in the photo's group when the photo has one
    (:attr:`RefineView.group`, several photos: same step), else in alternate steps (one photo).
    ``prior_weight`` (full mode) pulls Gaussians that no view sees (no compositing weight)
    towards the feed-forward avatar: each step ``prior_samples`` of them are decoded and
    their squared drift (means in cm, log-scales, opacity logits, SH DC) penalised, so what
    the photo cannot constrain stays plausible. Plus, in full mode, ``code_reg`` x |w - w0|^2
    and ``geometry_anchor`` (below).

    **Camera.** With ``camera`` (default on: from the head-model camera, it gained 0.23 dB on
    held-out 369's novel views and 1.7 dB on training subject 306's; from the earlier PnP camera
    against a mean face it had cost the held-out subject 0.5 dB) each photo's camera is refined
    too: a rotation (axis-angle, camera frame), a translation (metres) and a log focal-length
    correction per photo (its mirrored view follows, mirrored), learning rate ``lr_camera``. The first
    ``camera_warmup`` steps (default min(30, steps // 5)) move only the cameras, aligning the
    feed-forward avatar to the photo before its shape changes, so the rigid misfit of the PnP
    camera is absorbed by the camera and not bent into the head. The refined camera replaces
    :attr:`Avatar.camera`'s ``c2w`` / ``K`` (and each view's) at the end.

    **Detail.** The last ``detail_steps`` of the ``steps`` (full mode) fit the Gaussians
    themselves, as 3DGS does. Default: a third of the steps for a decoder whose MLP is trained
    (default v1); every step after the camera warm-up for one whose MLP adds nothing
    (:meth:`ConditioningMLP.heads_zero`, default v2.1), where the decoder stage can move only the
    code's whitened coordinates and 40 steps of it barely change the avatar (on five held-out
    London people the 40-step fit's render-to-unseen-photo similarity went from 0.937 with a third
    to 0.958, README *Likeness*). Starting from the decoder's avatar, each Gaussian's SH DC colour
    (learning rate ``lr_detail_color``), mean (``lr_detail_means``, metres), log-scales and
    opacity logit move directly under the same loss, plus ``detail_reg`` x their squared drift
    (means in cm); rotations, higher SH bands, the code and the cameras stay. A Gaussian no
    view sees gets no gradient and keeps the decoder's value. The avatar's code stays the
    decoder stage's; what the detail stage adds is a per-Gaussian residual on top of
    ``decode(code)`` (what Blender keeps as ``fa_res_*``). With ``transfer`` the stage starts
    from an appearance transfer (:func:`photo_colours`): each Gaussian the photos see takes
    the photos' colour along its rays (the mirrored view's for the far side) as its DC and
    loses its higher SH bands in proportion to that evidence. With ``grow`` > 0 the stage also
    adds up to ``grow`` Gaussians where a photo's person mask reaches past the avatar (hair
    beyond the template, :func:`fastavatar_engine.fitting.grow.grow_into_mask`), and at the end
    drops those left below 5% opacity; :attr:`Avatar.parents` names each survivor's template
    Gaussian (the avatar then has more rows than the model's template). With ``split`` > 0, after
    ``split_after`` detail steps (default a third of them) up to ``split`` Gaussians are split
    in two, 3DGS's densification (:mod:`fastavatar_engine.fitting.densify`): those with the
    largest mean view-space positional gradient over those steps whose 3-sigma radius is at
    least 3 pixels of the fit's image; the second children are added rows with parents too.
    With ``mouth`` (default) and a head shape, the stage also adds the mouth interior, a dark
    curtain behind the lips that an expression's open jaw reveals
    (:func:`fastavatar_engine.fitting.mouth.mouth_interior`; rows with parents, like grown ones),
    and after the fit a closed-lid sheet over each eye that a blink reveals
    (:func:`fastavatar_engine.fitting.eyelids.add_eyelids`).

    ``mode``: ``"full"`` (= ``"auto"``) is the paper's refinement, the code and all decoder
    weights jointly (``lr_code``, ``lr_decoder``); ``"heads"`` computes the shared body once,
    keeps the geometry at the feed-forward prediction and fine-tunes only the colour and
    opacity heads' output layers (``lr_heads``), so a step costs about one render per view.
    Every image is cropped to the head (``crop``, :func:`~.views.crop_box`: the mask's box, with
    landmarks at most the head box around the face) and box-resampled so its longer side is
    ``refine_size`` pixels.

    ``geometry_anchor`` (full mode) adds lambda * (mean squared drift of the active Gaussians'
    means in mm + of their log-scales) from the feed-forward geometry (0 = off).

    In full mode each step decodes only the Gaussians whose total compositing weight in any
    view is at least ``min_weight_px`` pixels (:func:`contributing_gaussians`), refreshed
    every ``active_refresh`` steps, plus the landmark Gaussians and the prior's sample; the
    final avatar is a full decode.

    ``precision`` (full mode): ``"bf16"`` runs the decoder MLP's matrix products under bfloat16
    autocast during the steps (the residuals, the Gaussians, the render, the loss and the
    optimiser stay float32), ``"fp32"`` does not; ``"auto"`` picks bf16 on a CPU with native
    bfloat16 instructions (AVX512-BF16/AMX) and fp32 elsewhere. The final avatar is always a
    float32 decode.

    Several photo groups (a multi-photo avatar): one group per step, in turn.

    ``progress(step, steps, loss)`` is called every step; returning False cancels and leaves
    the avatar unchanged. ``preview(gaussians)`` (a GaussianSet: the full decode, or in the detail
    stage its Gaussians, grown ones included, so it may have more rows than the template) is
    called every ``preview_every`` steps (0: never) for live display, not during the camera-only
    warm-up (the avatar does not change then). Raises ``ValueError`` for an unknown mode, precision or a
    missing camera/mask.
    """
    if mode == "auto":
        mode = "full"
    if mode not in ("full", "heads"):
        raise ValueError(f"refine mode must be 'auto', 'full' or 'heads', got {mode!r}")
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"refine precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    device = gen.device
    if precision == "auto":
        precision = "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"
    if steps <= 0:
        return avatar
    views = _fit_views(gen, avatar, image, views, c2w, K, mask, mask_is_foreground)
    if symmetry:
        views += [v.flipped(mirror_weight) for v in views if v.landmarks is not None and not v.mirrored]
    groups: dict = {}
    for i, v in enumerate(views):
        groups.setdefault(i if v.group is None else ("g", v.group), []).append(i)
    groups = list(groups.values())
    targets = [refine_target(v, refine_size, device, crop=crop) for v in views]
    if camera is None:  # on since the head-model camera: +0.23 dB on held-out 369, +1.7 dB on 306 (README)
        camera = True
    if camera_warmup is None:
        camera_warmup = min(30, steps // 5) if camera else 0
    # one camera correction per group: [rotation (3, axis-angle), translation (3, m), log focal (1)]
    cam_params = torch.zeros(len(groups), 7, device=device, requires_grad=bool(camera))
    for gi, members in enumerate(groups):
        for ti in members:
            targets[ti]["cam_group"] = gi
    cam_opt = torch.optim.Adam([cam_params], lr=lr_camera) if camera else None
    w0_code = torch.as_tensor(avatar.code, device=device)
    stage = DecoderStage(gen.model.decoder_for(avatar.head), w0_code, mode, precision, lr_code, lr_decoder,
                         lr_heads, device)
    current, opt = stage.current, stage.opt
    with torch.no_grad():
        ff = current()
    K_total = ff.means.shape[0]
    anchor_means, anchor_scales = ff.means.clone(), ff.log_scales.clone()
    ff_prior = torch.cat([ff.means * 100.0, ff.log_scales, ff.opacity_logits[:, None], ff.sh[:, 0]], 1)
    lmk_ids = attach_landmarks(targets, ff.means, landmark_weight, device)
    weights = LossWeights(ssim_weight, silhouette_weight, landmark_weight)
    rng = torch.Generator(device="cpu").manual_seed(0)
    losses = []
    active = None  # full mode: the Gaussians decoded per step
    unseen = torch.zeros(0, dtype=torch.long, device=device)
    if detail_steps is None:  # module docstring: an untrained MLP leaves the decoder stage only w to move
        untrained = stage.decoder.conditioning_mlp.heads_zero()
        detail_steps = steps - camera_warmup if untrained else steps // 3
    detail_steps = max(0, min(int(detail_steps), steps - camera_warmup)) if mode == "full" else 0
    detail = None  # the per-Gaussian stage

    def group_loss(g_now, pos, step):
        """Summed loss of the step's photo group (photo + mirror) for Gaussians ``g_now``."""
        loss = torch.zeros((), device=device)
        for ti in groups[step % len(groups)]:
            t = targets[ti]
            loss = loss + view_loss(g_now, t, weights, cam_params[t["cam_group"]] if camera else None, pos)
        return loss

    t0 = time.perf_counter()
    for step in range(steps):
        if step >= steps - detail_steps:  # per-Gaussian detail: the decoder's result, fitted directly
            if detail is None:
                with torch.no_grad():
                    g0 = current()
                interior = None
                if mouth and avatar.head is not None:  # what an opening jaw reveals (fitting/mouth.py)
                    from .mouth import mouth_interior

                    interior = mouth_interior(gen.model, avatar.head, device)
                detail = DetailStage(g0, targets, detail_cameras(targets, cam_params if camera else None), transfer,
                                     grow, (lr_detail_means, 5e-3, 2.5e-2, lr_detail_color), detail_reg, split,
                                     mouth=interior)
            loss = group_loss(detail.gaussians(), None, step) + detail.drift()
            detail.opt.zero_grad(set_to_none=True)
            loss.backward()
            first = groups[step % len(groups)][0]
            detail.observe(first)
            detail.opt.step()
            if step - (steps - detail_steps) + 1 == (detail_steps // 3 if split_after is None else split_after):
                detail.densify(first)
            losses.append(float(loss.detach()))
            if progress is not None and progress(step + 1, steps, losses[-1]) is False:
                return avatar  # cancelled: unchanged
            if preview is not None and preview_every > 0 and (step + 1) % preview_every == 0 and step + 1 < steps:
                with torch.no_grad():  # grown Gaussians included: a preview may have more rows than the template
                    preview(detail.gaussians().to_numpy())
            continue
        if mode == "full" and step % active_refresh == 0:
            with torch.no_grad():
                probe = current()
            seen = torch.unique(torch.cat([
                contributing_gaussians(probe, t["c2w"], t["K"], t["w"], t["h"], min_weight_px)
                for t in targets]))
            active = torch.unique(torch.cat([seen, lmk_ids.to(seen.device)]))
            keep = torch.ones(K_total, dtype=torch.bool, device=device)
            keep[active] = False
            unseen = torch.nonzero(keep).squeeze(1)
        index = active
        n_prior = 0
        warm = step < camera_warmup
        if mode == "full" and prior_weight > 0 and len(unseen) > 0 and not warm:
            pick = unseen[torch.randperm(len(unseen), generator=rng)[:prior_samples].to(device)]
            n_prior = len(pick)
            index = torch.cat([active, pick])
        n_act = K_total if index is None else len(active)
        if warm:  # cameras only: the avatar stays at its feed-forward state
            g_all = g_now = ff if index is None else select(ff, active)
        else:
            g_all = current(index)
            g_now = select(g_all, slice(0, n_act)) if n_prior else g_all
        # position of each Gaussian id inside g_now, for the landmark lookups
        if index is None:
            pos = None
        else:
            pos = torch.full((K_total,), -1, dtype=torch.long, device=device)
            pos[active] = torch.arange(len(active), device=device)
        loss = group_loss(g_now, pos, step)
        if mode == "full" and not warm:
            loss = loss + code_reg * ((stage.code - w0_code) ** 2).sum()
            if geometry_anchor > 0:  # keep the geometry near the feed-forward one (drift in mm)
                idx = slice(None) if active is None else active
                loss = loss + geometry_anchor * (
                    (((g_now.means - anchor_means[idx]) * 1e3) ** 2).sum(-1).mean()
                    + ((g_now.log_scales - anchor_scales[idx]) ** 2).sum(-1).mean())
            if n_prior:
                gp = select(g_all, slice(n_act, n_act + n_prior))
                cur = torch.cat([gp.means * 100.0, gp.log_scales, gp.opacity_logits[:, None], gp.sh[:, 0]], 1)
                loss = loss + prior_weight * ((cur - ff_prior[pick]) ** 2).sum(-1).mean()

        opt.zero_grad(set_to_none=True)
        if cam_opt is not None:
            cam_opt.zero_grad(set_to_none=True)
        loss.backward()
        if not warm:
            opt.step()
        if cam_opt is not None:
            cam_opt.step()
        losses.append(float(loss.detach()))
        if progress is not None and progress(step + 1, steps, losses[-1]) is False:
            return avatar  # cancelled: unchanged
        if preview is not None and preview_every > 0 and (step + 1) % preview_every == 0 and step + 1 < steps and not warm:
            with torch.no_grad():
                preview(current().to_numpy())
    if detail is not None:
        g_fit, avatar.parents = detail.result()
        if mouth and avatar.head is not None:  # the closed lids a blink shows (fitting/eyelids.py)
            from .eyelids import add_eyelids

            with torch.no_grad():
                g_fit, avatar.parents = add_eyelids(gen.model, stage.code.detach().cpu().numpy(), avatar.head, g_fit,
                                                    avatar.parents)
    else:
        with torch.no_grad():
            g_fit, avatar.parents = current(), None
    avatar.gaussians = g_fit.to_numpy()
    if camera:
        store_refined_cameras(avatar, views, targets, cam_params.detach())
    avatar.code = stage.code.detach().cpu().numpy().astype(np.float32)
    avatar.refine_mode = mode
    avatar.refined_steps += steps
    avatar.refine_losses = losses
    avatar.timings_ms["refine"] = 1e3 * (time.perf_counter() - t0)
    return avatar


def _fit_views(gen, avatar, image, views, c2w, K, mask, mask_is_foreground) -> list:
    """The views to fit: ``views``; else the avatar's photos (a multi-photo avatar); else its
    photo on the product path (:meth:`AvatarGenerator.photo_view`); else ``image`` at an explicit
    camera / mask. Raises ``ValueError`` for a missing camera or mask."""
    explicit = c2w is not None or K is not None or mask is not None
    if views is None and avatar.views and not explicit:
        views = avatar.views
    if views is None:
        if avatar.camera is None and (c2w is None or K is None):
            raise ValueError("refinement needs the avatar's camera (or an explicit c2w and K)")
        if not explicit:
            if avatar.face is None:
                raise ValueError("refinement needs the avatar's face landmarks (or an explicit mask)")
            views = [gen.photo_view(np.asarray(image), avatar.face, avatar.camera, avatar.photo, head=avatar.head)]
        else:
            if mask is None and avatar.face is None:
                raise ValueError("refinement needs the avatar's face landmarks (or an explicit mask)")
            views = [RefineView(np.asarray(image), avatar.camera.c2w if c2w is None else np.asarray(c2w, np.float64),
                                avatar.camera.K if K is None else np.asarray(K, np.float64),
                                face_mask(image.shape[:2], avatar.face.landmarks) if mask is None
                                else np.asarray(mask, np.float32), mask_is_foreground)]
    return list(views)
