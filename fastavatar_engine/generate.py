"""Photo -> 3D Gaussian head avatar (FastAvatar inference and refinement, Liang et al. 2026).

Feed-forward: photo -> face (MediaPipe) -> identity embedding (dlib or ArcFace) -> encoder ->
code ``w`` -> decoder -> K Gaussians, in the FLAME head frame (y up, face towards +z, metres).
The photo's camera comes from solvePnP against the landmark template, in the same frame.

Refinement against the photo at the estimated camera, L1 + 0.2 (1 - SSIM) inside a face mask
(the convex hull of the 468 mesh landmarks); the photo is resampled so its longer side is
``refine_size`` pixels. Two modes: ``full`` (the default) is the paper's — ``w`` and all
decoder weights jointly, with a small pull of ``w`` towards the feed-forward code; ``heads``
computes the shared body once, keeps the geometry and fine-tunes only the colour and opacity
heads' output layers, so a step costs about one render. On the sample data only ``full``
improves novel views of an unseen subject (geometry has to move); ``heads`` is a fast
appearance touch-up.

Every avatar carries its code ``w``: :func:`save_avatar` writes the INRIA PLY and, beside it,
``<name>.fastavatar.json`` (code, model id, camera, source photo) so it can be edited later.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .cameras import intrinsics, orbit_c2w, scale_intrinsics
from .gaussians import GaussianSet
from .images import resample
from .model.io import FastAvatarModel
from .ply import _atomic_write, write_ply
from .render import GaussianTensors, render

ProgressFn = Callable[[int, int, float], bool | None]  # (step, total, loss) -> False to cancel

#: Heads that the CPU ("heads") refinement mode fine-tunes; geometry heads stay fixed.
APPEARANCE_HEADS = ("color", "opacity")


@dataclass
class Avatar:
    """A generated avatar: ``gaussians`` (numpy, head frame), ``code`` [512] float32, the
    photo's ``camera`` (CameraEstimate), the ``face`` it came from, the identity ``embedding``
    the code was encoded from, and bookkeeping."""

    gaussians: GaussianSet
    code: np.ndarray
    camera: object
    face: object
    model_id: str
    photo: str | None = None
    embedding: np.ndarray | None = None  # the backbone's identity embedding of the photo (unit norm)
    refined_steps: int = 0
    timings_ms: dict = field(default_factory=dict)
    refine_losses: list = field(default_factory=list)
    refine_mode: str | None = None
    #: all the photos a multi-photo avatar came from (:meth:`AvatarGenerator.generate_multi`):
    #: [RefineView], refined against together; empty for a single-photo avatar
    views: list = field(default_factory=list)

    def metadata(self) -> dict:
        """The JSON sidecar's content."""
        return {
            "format": "fastavatar-avatar/1",
            "model_id": self.model_id,
            "code_w": [float(v) for v in self.code],
            "refined_steps": self.refined_steps,
            "refine_mode": self.refine_mode,
            "photo": self.photo,
            "photos": [v.name for v in self.views] if self.views else None,
            "camera": self.camera.to_json() if self.camera is not None else None,
            "frame": "FLAME head frame: y up, metres, face towards +z (Blender: rotate +90 deg about x)",
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }


@dataclass
class RefineView:
    """One photo refinement fits: ``image`` [H,W,3] uint8 RGB, its camera ``c2w`` (4x4 OpenGL,
    head frame, metres) and ``K`` (3x3, pixels of ``image``), ``mask`` [H,W] float32 in [0,1] (the
    face hull, or a foreground mask with ``mask_is_foreground``), a ``name`` for messages and, when
    estimated from the photo's face, the ``camera`` (CameraEstimate) ``c2w``/``K`` came from."""

    image: np.ndarray
    c2w: np.ndarray
    K: np.ndarray
    mask: np.ndarray
    mask_is_foreground: bool = False
    name: str = ""
    camera: object = None  # the CameraEstimate ``c2w``/``K`` came from, when estimated from the photo


def face_mask(shape_hw: tuple[int, int], landmarks: np.ndarray) -> np.ndarray:
    """[H,W] float32 mask: the convex hull of the 468 mesh landmarks (pixels, centres at +0.5)."""
    import cv2

    h, w = shape_hw
    hull = cv2.convexHull((landmarks[:468] - 0.5).astype(np.float32)).astype(np.int32)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    return mask.astype(np.float32)


class AvatarGenerator:
    """Loads the face front-end, the identity backbone and a model once; generates avatars.

    Args: ``model``: a :class:`FastAvatarModel` or a bundle folder (None: the default model);
    ``device``: torch device for decoding and refinement; ``embedder``: identity backbone override
    (default: the one the model's card names — 'dlib', or an ArcFace path for official weights).
    Raises ``ModelLoadError`` / ``FaceDependencyError`` at construction.
    """

    def __init__(self, model=None, device: str = "cpu", embedder=None):
        os.environ.setdefault("GLOG_minloglevel", "2")
        from .face import FaceFrontEnd, create_embedder

        self.device = torch.device(device)
        self.model = model if isinstance(model, FastAvatarModel) else FastAvatarModel.load(model, device=self.device)
        self.model.to(self.device)
        if embedder is None:
            if self.model.embedder != "dlib":
                raise ValueError(f"model {self.model.model_id} expects a '{self.model.embedder}' backbone: pass "
                                 "embedder=<path to an ArcFace .onnx or buffalo_l folder>")
            embedder = "dlib"
        self.embedder = create_embedder(embedder) if isinstance(embedder, (str, os.PathLike)) else embedder
        if self.embedder.dim != self.model.encoder.in_dim:
            raise ValueError(f"identity backbone {self.embedder.name} gives {self.embedder.dim}-D embeddings; the "
                             f"model's encoder expects {self.model.encoder.in_dim}-D")
        self.front_end = FaceFrontEnd()

    def close(self) -> None:
        """Release the MediaPipe graphs (the generator cannot be used afterwards)."""
        self.front_end.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ feed-forward
    def generate(self, photo, face_index: int | None = None, refine_steps: int = 0,
                 progress: ProgressFn | None = None, **refine_kwargs) -> Avatar:
        """Avatar from ``photo`` (path, bytes or [H,W,3] uint8 RGB).

        ``face_index``: which face when there are several (default the largest).
        ``refine_steps`` > 0 runs :meth:`refine`. Raises ``ImageLoadError``, ``NoFaceError``,
        ``FaceIndexError``, and ``ValueError`` for an array that is not [H,W,3] uint8.
        """
        from .face import estimate_camera

        image, name, face, timings = self._detect(photo, face_index)
        t = time.perf_counter()
        embedding = self.embedder.embed(image, face)
        timings["embed"] = 1e3 * (time.perf_counter() - t)
        t = time.perf_counter()
        w = self.model.encode(embedding)
        timings["encode"] = 1e3 * (time.perf_counter() - t)
        t = time.perf_counter()
        with torch.no_grad():
            g = self.model.decode(w)
        timings["decode"] = 1e3 * (time.perf_counter() - t)
        t = time.perf_counter()
        camera = estimate_camera(face)
        timings["camera"] = 1e3 * (time.perf_counter() - t)
        avatar = Avatar(g.to_numpy(), w.cpu().numpy().astype(np.float32), camera, face, self.model.model_id,
                        None if name == "<bytes>" else name, embedding, timings_ms=timings)
        if refine_steps > 0:
            self.refine(avatar, image, refine_steps, progress=progress, **refine_kwargs)
        return avatar

    def generate_multi(self, photos, face_index: int | None = None, refine_steps: int = 0,
                       progress: ProgressFn | None = None, **refine_kwargs) -> Avatar:
        """Avatar from several photos of one person (paths, bytes or [H,W,3] uint8 each).

        Every photo is detected, embedded and encoded; the fused code is the mean of the
        per-photo codes (the encoder maps each view of a subject towards the same ``w``, so the
        mean averages out view-dependent encoding error). The avatar's camera and face are the
        first photo's; :attr:`Avatar.views` holds every photo with its estimated camera and face
        hull, and refinement (``refine_steps`` > 0, or :meth:`refine` later) fits all of them.
        ``face_index`` applies to every photo. Raises like :meth:`generate`, naming the photo.
        """
        t0 = time.perf_counter()
        detected = self._photo_views(photos, face_index)
        embedding = None
        codes = []
        for image, face, _ in detected:
            e = self.embedder.embed(image, face)
            embedding = e if embedding is None else embedding
            codes.append(self.model.encode(e))
        w = torch.stack(codes).mean(0)
        with torch.no_grad():
            g = self.model.decode(w)
        image, face, views = detected[0][0], detected[0][1], [v for _, _, v in detected]
        avatar = Avatar(g.to_numpy(), w.cpu().numpy().astype(np.float32), views[0].camera, face,
                        self.model.model_id, views[0].name, embedding,
                        timings_ms={"generate_multi": 1e3 * (time.perf_counter() - t0)}, views=views)
        if refine_steps > 0:
            self.refine(avatar, image, refine_steps, progress=progress, **refine_kwargs)
        return avatar

    def _photo_views(self, photos, face_index) -> list:
        """[(image [H,W,3] uint8, face, RefineView with the estimated camera and face hull)] for
        each of ``photos`` (at least one). Raises like :meth:`generate`, naming the photo."""
        from .face import estimate_camera

        photos = list(photos)
        if not photos:
            raise ValueError("several photos expected, got none")
        out = []
        for photo in photos:
            image, name, face, _ = self._detect(photo, face_index)
            camera = estimate_camera(face)
            out.append((image, face, RefineView(image, camera.c2w, camera.K,
                                                face_mask(image.shape[:2], face.landmarks),
                                                name=None if name == "<bytes>" else name, camera=camera)))
        return out

    def _detect(self, photo, face_index):
        """(image [H,W,3] uint8, name, face, timings ms) for ``photo``; raises like :meth:`generate`."""
        from .face import select_face
        from .face.detect import as_rgb_image

        timings = {}
        t = time.perf_counter()
        image, name = as_rgb_image(photo)
        timings["image_load"] = 1e3 * (time.perf_counter() - t)
        t = time.perf_counter()
        face = select_face(self.front_end.detect(image), face_index, image_name=name)
        timings["detect"] = 1e3 * (time.perf_counter() - t)
        return image, name, face, timings

    def avatar_from_code(self, photo, code, face_index: int | None = None) -> tuple[Avatar, np.ndarray]:
        """(avatar decoded from ``code`` with ``photo``'s face and camera, the photo [H,W,3] uint8):
        the starting point to refine an existing avatar (code from an earlier :meth:`generate`)
        against its photo. ``photo`` may be a list of photos of one person: the avatar then holds
        them all in :attr:`Avatar.views` (the first one is returned). Raises ``ValueError`` for a
        code of the wrong length, and like :meth:`generate` for the photos."""
        w = self.model.check_code(code)
        detected = self._photo_views(photo if isinstance(photo, (list, tuple)) else [photo], face_index)
        with torch.no_grad():
            g = self.model.decode(w)
        image, face, view = detected[0]
        avatar = Avatar(g.to_numpy(), w.cpu().numpy().astype(np.float32), view.camera, face,
                        self.model.model_id, view.name,
                        views=[v for _, _, v in detected] if isinstance(photo, (list, tuple)) else [])
        return avatar, image

    # ------------------------------------------------------------------ refinement
    def refine(self, avatar: Avatar, image: np.ndarray, steps: int = 300, progress: ProgressFn | None = None,
               refine_size: int = 256, lr_code: float = 3e-3, lr_decoder: float = 5e-5, code_reg: float = 1e-3,
               ssim_weight: float = 0.2, c2w=None, K=None, mask=None, mode: str = "auto",
               lr_heads: float = 3e-4, mask_is_foreground: bool = False, active_refresh: int = 50,
               min_weight_px: float = 0.01, geometry_anchor: float = 0.0, precision: str = "auto",
               views: list | None = None, preview_every: int = 0, preview=None) -> Avatar:
        """Optimise the avatar against ``image`` ([H,W,3] uint8 RGB); updates and returns ``avatar``.

        ``mode``: ``"full"`` (= ``"auto"``) is the paper's refinement, the code and all decoder
        weights jointly (``lr_code``, ``lr_decoder``, ``code_reg`` pulling w towards the
        feed-forward code); ``"heads"`` computes the shared body once, keeps the geometry at the
        feed-forward prediction and fine-tunes only the colour and opacity heads' output layers
        (``lr_heads``), so a step costs about one render.

        The photo is box-resampled so its longer side is ``refine_size`` pixels; the loss is
        (1 - ``ssim_weight``) L1 + ``ssim_weight`` (1 - SSIM). ``c2w`` (4x4 OpenGL, head frame,
        metres) and ``K`` (3x3, pixels of ``image``) override the estimated camera; ``mask``
        ([H,W] in [0,1]) overrides the face hull. With ``mask_is_foreground`` the mask is a full
        foreground mask and everything outside it is fitted to the white background; otherwise
        the loss ignores what lies outside the mask.

        ``geometry_anchor`` (full mode) adds lambda * (mean squared drift of the active Gaussians'
        means in mm + of their log-scales) from the feed-forward geometry. 0 (the paper's) is best
        for a new face (leave-one-out, 100 steps: +1.7 dB on novel views; 0.01: +0.8 dB); on a face
        the model already reproduces, single-view refinement with 0 bends the side views (-0.3 dB),
        0.01 keeps them (+0.1 dB).

        In full mode each step decodes only the Gaussians whose total compositing weight in the
        photo is at least ``min_weight_px`` pixels (:func:`contributing_gaussians`), refreshed
        every ``active_refresh`` steps; the final avatar is a full decode.

        ``precision`` (full mode): ``"bf16"`` runs the decoder MLP's matrix products under bfloat16
        autocast during the steps (the residuals, the Gaussians, the render, the loss and the
        optimiser stay float32), ``"fp32"`` does not; ``"auto"`` picks bf16 on a CPU with native
        bfloat16 instructions (AVX512-BF16/AMX: ~3x faster products; on the 2-core EPYC 300 steps
        take 61 s in fp32) and fp32 elsewhere. The final avatar is always a float32 decode.

        Several photos: ``views`` ([RefineView]; default :attr:`Avatar.views` of a multi-photo
        avatar when no explicit camera/mask is given) replaces ``image``/``c2w``/``K``/``mask``; each
        step fits one view in turn and the decoded subset is the union of the Gaussians that
        contribute to any view.

        ``progress(step, steps, loss)`` is called every step; returning False cancels and leaves
        the avatar unchanged. ``preview(gaussians)`` (a GaussianSet, full decode) is called every
        ``preview_every`` steps (0: never) for live display. Raises ``ValueError`` for an unknown mode, precision or a missing
        camera/mask.
        """
        from .train.losses import l1, ssim

        if mode == "auto":
            mode = "full"
        if mode not in ("full", "heads"):
            raise ValueError(f"refine mode must be 'auto', 'full' or 'heads', got {mode!r}")
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"refine precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
        if precision == "auto":
            precision = "bf16" if self.device.type == "cpu" and _cpu_has_bf16() else "fp32"
        if steps <= 0:
            return avatar
        if views is None:
            views = avatar.views if (avatar.views and c2w is None and K is None and mask is None) else None
        if views is None:
            if (avatar.face is None and mask is None) or (avatar.camera is None and (c2w is None or K is None)):
                raise ValueError("refinement needs the avatar's face landmarks and camera (or explicit ones)")
            views = [RefineView(np.asarray(image), avatar.camera.c2w if c2w is None else np.asarray(c2w, np.float64),
                                avatar.camera.K if K is None else np.asarray(K, np.float64),
                                face_mask(image.shape[:2], avatar.face.landmarks) if mask is None
                                else np.asarray(mask, np.float32), mask_is_foreground)]
        targets = [self._refine_target(v, refine_size) for v in views]
        decoder = copy.deepcopy(self.model.decoder).to(self.device).train()
        w0_code = torch.as_tensor(avatar.code, device=self.device)
        code = torch.nn.Parameter(w0_code.clone())
        mlp = decoder.conditioning_mlp
        if mode == "full":
            opt = torch.optim.Adam([
                {"params": [code], "lr": lr_code},
                {"params": list(mlp.parameters()) + list(decoder.gaussian_embeddings.parameters()), "lr": lr_decoder},
            ])

            def current(index=None):
                if precision == "fp32" or not torch.is_grad_enabled():
                    return decoder(code, index)
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    r = decoder.residuals(code, index)
                return decoder.apply_residuals({k: v.float() for k, v in r.items()}, index)
        else:
            # geometry (means, scales, rotations) stays at the feed-forward prediction: fitting it to
            # one view breaks the others; only the colour and opacity heads' output layers move
            with torch.no_grad():
                feats = mlp.head_features(mlp.body(w0_code, decoder.gaussian_embeddings.weight))
                fixed = {name: getattr(mlp, f"{name}_head")[2](f) for name, f in feats.items()}
            lasts = {name: getattr(mlp, f"{name}_head")[2] for name in APPEARANCE_HEADS}
            opt = torch.optim.Adam([p for layer in lasts.values() for p in layer.parameters()], lr=lr_heads)

            def current(index=None):
                raw = dict(fixed) | {name: lasts[name](feats[name]) for name in APPEARANCE_HEADS}
                return decoder.apply_residuals(decoder.residuals_from_raw(raw))
        bg = torch.ones(3, device=self.device)
        if mode == "full" and geometry_anchor > 0:
            with torch.no_grad():
                ff = current()
                anchor_means, anchor_scales = ff.means.clone(), ff.log_scales.clone()
        losses = []
        active = None  # full mode: the Gaussians decoded per step
        t0 = time.perf_counter()
        for step in range(steps):
            if mode == "full" and step % active_refresh == 0:
                with torch.no_grad():
                    probe = current()
                active = torch.unique(torch.cat([
                    contributing_gaussians(probe, t["c2w"], t["K"], t["w"], t["h"], min_weight_px)
                    for t in targets]))
            view = targets[step % len(targets)]  # several photos: one per step, in turn
            target, mask, m3 = view["image"], view["mask"], view["mask"][..., None]
            g_now = current(active)
            rgb, _ = render(g_now, view["c2w"], view["K"], view["w"], view["h"], bg)
            if view["foreground"]:  # outside the foreground is background: white, like the renders
                tgt = target * m3 + bg * (1 - m3)
                loss = (1 - ssim_weight) * l1(rgb, tgt) + ssim_weight * (1 - ssim(rgb, tgt))
            else:  # outside the face the target is the render itself: no loss there
                tgt = target * m3 + rgb.detach() * (1 - m3)
                loss = (1 - ssim_weight) * l1(rgb, target, mask) + ssim_weight * (1 - ssim(rgb, tgt))
            if mode == "full":
                loss = loss + code_reg * ((code - w0_code) ** 2).sum()
                if geometry_anchor > 0:  # keep the geometry near the feed-forward one (drift in mm)
                    idx = slice(None) if active is None else active
                    loss = loss + geometry_anchor * (
                        (((g_now.means - anchor_means[idx]) * 1e3) ** 2).sum(-1).mean()
                        + ((g_now.log_scales - anchor_scales[idx]) ** 2).sum(-1).mean())

            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if progress is not None and progress(step + 1, steps, losses[-1]) is False:
                return avatar  # cancelled: unchanged
            if preview is not None and preview_every > 0 and (step + 1) % preview_every == 0 and step + 1 < steps:
                with torch.no_grad():
                    preview(current().to_numpy())
        with torch.no_grad():
            avatar.gaussians = current().to_numpy()
        avatar.code = code.detach().cpu().numpy().astype(np.float32)
        avatar.refine_mode = mode
        avatar.refined_steps += steps
        avatar.refine_losses = losses
        avatar.timings_ms["refine"] = 1e3 * (time.perf_counter() - t0)
        return avatar

    def _refine_target(self, view: RefineView, refine_size: int) -> dict:
        """The view resampled for refinement: longer side ``refine_size`` px, tensors on the device."""
        image = np.asarray(view.image)
        h0, w0 = image.shape[:2]
        s = refine_size / max(h0, w0)
        w1, h1 = max(8, round(w0 * s)), max(8, round(h0 * s))
        mask = np.asarray(view.mask, np.float32)
        if mask.shape != (h0, w0):
            raise ValueError(f"refinement mask {list(mask.shape)} does not match the photo {[h0, w0]}")
        return {
            "image": torch.from_numpy(resample(image, (w1, h1)).astype(np.float32) / 255.0).to(self.device),
            "mask": torch.nn.functional.interpolate(torch.from_numpy(mask).to(self.device)[None, None],
                                                    size=(h1, w1), mode="area")[0, 0],
            "K": scale_intrinsics(view.K, w1 / w0, h1 / h0), "c2w": np.asarray(view.c2w, np.float64),
            "w": w1, "h": h1, "foreground": bool(view.mask_is_foreground)}


def _cpu_has_bf16() -> bool:
    """True when this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private helpers moved: stay on the safe side
        return False


def contributing_gaussians(g, c2w, K, width: int, height: int, min_weight_px: float = 0.01) -> torch.Tensor:
    """Indices (int64 [M]) of the Gaussians whose total compositing weight sum_p alpha_i T_i over
    the image is at least ``min_weight_px`` pixels. The weight is read off autograd: with every
    colour pushed far above the clamp at 0, d(sum of red)/d(DC_i) = C0 * weight_i. A Gaussian
    below the threshold can change any pixel's colour by less than that fraction of a pixel, so
    its gradient in a photometric loss is negligible (zero when it reaches no pixel at all)."""
    from .gaussians import SH_C0

    sh = g.sh.detach().clone()
    sh[:, 0, :] += 10.0
    sh.requires_grad_(True)
    rgb, _ = render(GaussianTensors(g.means.detach(), g.log_scales.detach(), g.rotations.detach(),
                                    g.opacity_logits.detach(), sh), c2w, K, width, height)
    rgb[..., 0].sum().backward()
    weight = sh.grad[:, 0, 0] / SH_C0
    return torch.nonzero(weight >= min_weight_px).squeeze(1)


# ---------------------------------------------------------------------- outputs
def save_avatar(avatar: Avatar, ply_path) -> tuple[Path, Path]:
    """Write ``avatar`` as an INRIA PLY and its ``.fastavatar.json`` sidecar; returns both paths."""
    ply_path = Path(ply_path)
    write_ply(ply_path, avatar.gaussians)
    meta_path = ply_path.with_suffix(".fastavatar.json")
    text = json.dumps(avatar.metadata(), indent=1)
    _atomic_write(meta_path, lambda tmp: Path(tmp).write_text(text))
    return ply_path, meta_path


def preview_strip(avatar: Avatar, photo: np.ndarray | None, yaws=(-60, -30, 0, 30, 60), size: int = 320,
                  pitch: float = 5.0) -> np.ndarray:
    """[size, (len(yaws)+1)*size, 3] uint8: the input photo's face crop, then renders at ``yaws``."""
    from PIL import Image as _PIL

    from .render import render_to_uint8

    g = avatar.gaussians
    centre = np.percentile(g.means, 50, axis=0)
    fov = math.radians(25.0)
    f = 0.5 * size / math.tan(fov / 2)
    K = intrinsics(f, f, size / 2, size / 2)
    tiles = []
    if photo is not None:
        if avatar.face is not None:
            x0, y0, x1, y1 = avatar.face.box
            c, half = ((x0 + x1) / 2, (y0 + y1) / 2), 1.1 * max(x1 - x0, y1 - y0)
            box = (int(c[0] - half), int(c[1] - half), int(c[0] + half), int(c[1] + half))
            crop = _PIL.fromarray(photo).crop(box)
        else:
            crop = _PIL.fromarray(photo)
        tiles.append(np.asarray(crop.convert("RGB").resize((size, size), _PIL.BILINEAR)))
    for yaw in yaws:
        c2w = orbit_c2w(yaw, pitch, 0.75, target=centre)
        tiles.append(render_to_uint8(g, c2w, K, size, size))
    return np.concatenate(tiles, axis=1)
