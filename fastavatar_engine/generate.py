"""Photo -> 3D Gaussian head avatar (FastAvatar inference and refinement, Liang et al. 2026).

Feed-forward: photo -> face (MediaPipe) -> identity embedding (dlib or ArcFace) -> encoder ->
code ``w`` -> decoder -> K Gaussians, in the FLAME head frame (y up, face towards +z, metres).
The photo's camera comes from solvePnP against the landmark template, in the same frame.

Refinement (:meth:`AvatarGenerator.refine`) fits the avatar to what the photo alone gives
(:mod:`fastavatar_engine.photofit`): the photo composited on white inside its person mask
(segmentation, body cut where the template ends) plus a silhouette term, its mirrored view at the
mirrored camera, its landmarks against the corresponding Gaussians, a prior on the Gaussians no
view sees, and optionally (``camera=True``, off by default) the photo's camera refined with it.
The photo is
resampled so its longer side is ``refine_size`` pixels. Two modes: ``full`` (the default) is the
paper's — ``w`` and all decoder weights jointly, with a small pull of ``w`` towards the
feed-forward code, ending with a per-Gaussian detail stage that starts from the photo's colours
(appearance transfer, :func:`photo_colours`); ``heads`` computes the shared body once, keeps the
geometry and fine-tunes only the colour and opacity heads' output layers, so a step costs about
one render. :data:`DEFAULT_FIT_STEPS` of it is the *likeness fit* that ``fastavatar generate``
and Blender's *Generate Avatar* run by default.

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
from .render import GaussianTensors, _viewmat, render

ProgressFn = Callable[[int, int, float], bool | None]  # (step, total, loss) -> False to cancel

#: Steps of the likeness fit that ``fastavatar generate``, ``batch.py`` and Blender's *Generate
#: Avatar* run by default (the product-path refinement of :meth:`AvatarGenerator.refine`, cameras
#: first): enough to carry the photo's hair outline, colours and proportions within the 15 s
#: budget on a 2-core CPU (README, *Likeness*). 0 gives the bare feed-forward avatar.
DEFAULT_FIT_STEPS = 40
#: Cap on the Gaussians the likeness fit may grow where the photo's person reaches past the avatar.
DEFAULT_GROW = 3000

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
    #: [100] float32 identity coefficients of the head model the template sits on (the photo's
    #: fitted head, :func:`photo_head`), or None: the model's own template
    head: np.ndarray | None = None
    #: the head fit's per-photo expression coefficients [P,53] (fitted, not applied)
    head_expressions: np.ndarray | None = None
    #: [E] int64: for each Gaussian after the model's template (grown by the likeness fit), the
    #: template Gaussian it was cloned from; None when the avatar has the template's count
    parents: np.ndarray | None = None

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
            "head_identity": None if self.head is None else [round(float(v), 5) for v in self.head],
            "head_expression": None if self.head_expressions is None
            else [round(float(v), 4) for v in self.head_expressions[0]],
            "head_model": None if self.head is None else "ICT-FaceKit (MIT), 100 identity modes",
            "parents": None if self.parents is None else [int(v) for v in self.parents],
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
    #: [H,W] float32 in {0,1}: pixels the loss ignores (the body beyond the template), or None
    ignore: np.ndarray | None = None
    #: [478,2] float64 landmark targets in pixels of ``image`` (None: no landmark loss)
    landmarks: np.ndarray | None = None
    #: the left-right flipped photo at the mirrored camera (:func:`photofit.mirror_camera`)
    mirrored: bool = False
    #: loss weight of this view (the mirrored view: :data:`photofit.MIRROR_WEIGHT`)
    weight: float = 1.0
    #: views with the same group are fitted in the same step (a photo and its mirror); None:
    #: a group of its own
    group: int | None = None

    def flipped(self, weight: float | None = None) -> "RefineView":
        """The mirrored view of this one: the photo, masks and landmarks flipped left-right, the
        camera mirrored across the head frame's x = 0 plane (:func:`photofit.mirror_camera`)."""
        from .photofit import MIRROR_WEIGHT, mirror_camera, mirror_landmarks

        w = self.image.shape[1]
        c2w, K = mirror_camera(self.c2w, self.K, w)
        return RefineView(np.ascontiguousarray(self.image[:, ::-1]), c2w, K, np.ascontiguousarray(self.mask[:, ::-1]),
                          self.mask_is_foreground, f"{self.name} (mirrored)", None,
                          None if self.ignore is None else np.ascontiguousarray(self.ignore[:, ::-1]),
                          None if self.landmarks is None else mirror_landmarks(self.landmarks, w),
                          not self.mirrored, MIRROR_WEIGHT if weight is None else float(weight), self.group)


def photo_camera(face, photo=None):
    """The photo's camera (CameraEstimate): :func:`photo_head`'s camera for one photo."""
    return photo_head([face], [photo])[0][0]


def photo_head(faces, photos=None, Ks=None):
    """Cameras and head shape of one person's photos: ``([CameraEstimate], HeadFit | None)``.

    :func:`fastavatar_engine.head.fit.fit_head` fits one identity and a camera (and expression)
    per photo to the faces' landmarks. A photo file (path or bytes) with EXIF
    ``FocalLengthIn35mmFilm`` keeps that focal length (``focal_source`` 'exif'); ``Ks`` (per
    photo a [3,3] K or None) fixes the intrinsics outright ('given'). When the fit
    does not converge (or the head model is unavailable) the cameras are PnP against the mean
    landmark template (:func:`fastavatar_engine.face.estimate_camera`), a ``RuntimeWarning``
    says why, and the head is None (the model's own template).
    """
    import dataclasses
    import warnings

    from .cameras import intrinsics as _intrinsics
    from .face import estimate_camera
    from .images import exif_focal_px

    faces = list(faces)
    photos = list(photos) if photos is not None else [None] * len(faces)
    given = list(Ks) if Ks is not None else [None] * len(faces)
    Ks, exif = [], []
    for face, photo, K in zip(faces, photos, given):
        if K is not None:
            Ks.append(np.asarray(K, np.float64))
            exif.append(False)
            continue
        f = exif_focal_px(photo) if isinstance(photo, (str, os.PathLike, bytes, bytearray)) else None
        w, h = face.image_size
        Ks.append(None if f is None else _intrinsics(f, f, 0.5 * w, 0.5 * h))
        exif.append(f is not None)
    fit, reason = None, ""
    try:
        from .head.fit import fit_head

        fit = fit_head(faces, Ks)
        reason = fit.reason
    except FileNotFoundError as exc:  # no head model data
        reason = str(exc)
    if fit is None or not fit.converged:
        warnings.warn(f"head fit did not converge ({reason}); using the PnP camera against the mean face",
                      RuntimeWarning, stacklevel=2)
        cams = [estimate_camera(face, K=K) for face, K in zip(faces, Ks)]
        fit = None
    else:
        cams = list(fit.cameras)
    return [dataclasses.replace(c, focal_source="exif") if e else c for c, e in zip(cams, exif)], fit


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
        if getattr(self, "_segmenter", None) is not None:
            self._segmenter.close()
            self._segmenter = None

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
        ``FaceIndexError``, and ``ValueError`` for an array that is not [H,W,3] uint8. The camera:
        :func:`photo_camera` (EXIF focal length for a file that carries one).
        """
        image, name, face, timings = self._detect(photo, face_index)
        t = time.perf_counter()
        embedding = self.embedder.embed(image, face)
        timings["embed"] = 1e3 * (time.perf_counter() - t)
        t = time.perf_counter()
        w = self.model.encode(embedding)
        timings["encode"] = 1e3 * (time.perf_counter() - t)
        t = time.perf_counter()
        cameras, fit = photo_head([face], [photo])
        timings["camera"] = 1e3 * (time.perf_counter() - t)
        head = None if fit is None else fit.identity.astype(np.float32)
        t = time.perf_counter()
        with torch.no_grad():
            g = self.model.decode(w, head)
        timings["decode"] = 1e3 * (time.perf_counter() - t)
        avatar = Avatar(g.to_numpy(), w.cpu().numpy().astype(np.float32), cameras[0], face, self.model.model_id,
                        None if name == "<bytes>" else name, embedding, timings_ms=timings, head=head,
                        head_expressions=None if fit is None else fit.expressions)
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
        detected, head, fit = self._photo_views(photos, face_index)
        embedding = None
        codes = []
        for image, face, _ in detected:
            e = self.embedder.embed(image, face)
            embedding = e if embedding is None else embedding
            codes.append(self.model.encode(e))
        w = torch.stack(codes).mean(0)
        with torch.no_grad():
            g = self.model.decode(w, head)
        image, face, views = detected[0][0], detected[0][1], [v for _, _, v in detected]
        avatar = Avatar(g.to_numpy(), w.cpu().numpy().astype(np.float32), views[0].camera, face,
                        self.model.model_id, views[0].name, embedding,
                        timings_ms={"generate_multi": 1e3 * (time.perf_counter() - t0)}, views=views, head=head,
                        head_expressions=None if fit is None else fit.expressions)
        if refine_steps > 0:
            self.refine(avatar, image, refine_steps, progress=progress, **refine_kwargs)
        return avatar

    def _photo_views(self, photos, face_index) -> tuple[list, np.ndarray | None, object]:
        """``([(image [H,W,3] uint8, face, RefineView)], head [100] | None, HeadFit | None)`` for
        ``photos`` (at least one): the product-path view of each photo (:meth:`photo_view`) at
        its camera from one head fit over all of them (:func:`photo_head`). Raises like
        :meth:`generate`, naming the photo."""
        photos = list(photos)
        if not photos:
            raise ValueError("several photos expected, got none")
        found = [self._detect(photo, face_index) for photo in photos]
        cameras, fit = photo_head([f for _, _, f, _ in found], photos)
        head = None if fit is None else fit.identity.astype(np.float32)
        out = []
        for i, ((image, name, face, _), camera) in enumerate(zip(found, cameras)):
            view = self.photo_view(image, face, camera, name=None if name == "<bytes>" else name, head=head)
            view.group = i
            out.append((image, face, view))
        return out, head, fit

    @property
    def segmenter(self):
        """The person segmenter (:class:`~fastavatar_engine.face.segment.PersonSegmenter`), created on first use."""
        if getattr(self, "_segmenter", None) is None:
            from .face.segment import PersonSegmenter

            self._segmenter = PersonSegmenter()
        return self._segmenter

    def photo_view(self, image: np.ndarray, face, camera, name: str | None = None, head=None) -> RefineView:
        """What refinement fits of one photo when nothing but the photo is known
        (:mod:`fastavatar_engine.photofit`): the person mask from segmentation with the body cut
        where the template ends (the template's silhouette at ``camera``, below the chin), the
        face's 478 landmarks as targets, at the estimated ``camera`` (a CameraEstimate)."""
        from .photofit import product_masks

        t = time.perf_counter()
        person = self.segmenter.segment(image, face)
        h, w = image.shape[:2]
        s = min(1.0, 256 / max(h, w))
        w1, h1 = max(8, round(w * s)), max(8, round(h * s))
        d = self.model.decoder_for(head)
        template = GaussianTensors(d.base_means, d.base_scales, d.base_rotations, d.base_opacity,
                                   torch.cat([d.base_sh0, d.base_shN], 1))
        with torch.no_grad():
            _, alpha = render(template, camera.c2w, scale_intrinsics(camera.K, w1 / w, h1 / h), w1, h1)
        import cv2

        alpha = cv2.resize(alpha.cpu().numpy().astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        fg, ignore = product_masks(person, face.landmarks, alpha)
        view = RefineView(image, camera.c2w, camera.K, fg, mask_is_foreground=True, name=name or "", camera=camera,
                          ignore=ignore, landmarks=np.asarray(face.landmarks, np.float64))
        self.last_view_ms = 1e3 * (time.perf_counter() - t)
        return view

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
        detected, head, fit = self._photo_views(photo if isinstance(photo, (list, tuple)) else [photo], face_index)
        with torch.no_grad():
            g = self.model.decode(w, head)
        image, face, view = detected[0]
        avatar = Avatar(g.to_numpy(), w.cpu().numpy().astype(np.float32), view.camera, face,
                        self.model.model_id, view.name,
                        views=[v for _, _, v in detected] if isinstance(photo, (list, tuple)) else [], head=head,
                        head_expressions=None if fit is None else fit.expressions)
        return avatar, image

    # ------------------------------------------------------------------ refinement
    def refine(self, avatar: Avatar, image: np.ndarray, steps: int = 300, progress: ProgressFn | None = None,
               refine_size: int = 256, lr_code: float = 3e-3, lr_decoder: float = 5e-5, code_reg: float = 1e-3,
               ssim_weight: float = 0.2, c2w=None, K=None, mask=None, mode: str = "auto",
               lr_heads: float = 3e-4, mask_is_foreground: bool = False, active_refresh: int = 50,
               min_weight_px: float = 0.01, geometry_anchor: float = 0.0, precision: str = "auto",
               views: list | None = None, preview_every: int = 0, preview=None,
               symmetry: bool = True, mirror_weight: float | None = None, silhouette_weight: float = 0.3,
               landmark_weight: float = 1.0, prior_weight: float = 0.1, prior_samples: int = 1024,
               camera: bool | None = None, camera_warmup: int | None = None, lr_camera: float = 1e-3,
               detail_steps: int | None = None, lr_detail_color: float = 1e-2, lr_detail_means: float = 1e-4,
               detail_reg: float = 0.1, transfer: bool = True, grow: int = DEFAULT_GROW) -> Avatar:
        """Optimise the avatar against ``image`` ([H,W,3] uint8 RGB); updates and returns ``avatar``.

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
        default :data:`photofit.MIRROR_WEIGHT`), fitted in the same step as the photo.
        ``prior_weight`` (full mode) pulls Gaussians that no view sees (no compositing weight)
        towards the feed-forward avatar: each step ``prior_samples`` of them are decoded and
        their squared drift (means in cm, log-scales, opacity logits, SH DC) penalised, so what
        the photo cannot constrain stays plausible. Plus, in full mode, ``code_reg`` x |w - w0|^2
        and ``geometry_anchor`` (below).

        **Camera.** With ``camera`` (default off: on the leave-one-subject-out model it cost 0.5 dB
        on novel views, the feed-forward head of another person pulls the camera off; on a
        training subject it gained 4 dB) each photo's camera is refined too: a rotation
        (axis-angle, camera frame), a translation (metres) and a log focal-length correction per
        photo (its mirrored view follows, mirrored), learning rate ``lr_camera``. The first
        ``camera_warmup`` steps (default min(30, steps // 5)) move only the cameras, aligning the
        feed-forward avatar to the photo before its shape changes, so the rigid misfit of the PnP
        camera is absorbed by the camera and not bent into the head. The refined camera replaces
        :attr:`Avatar.camera`'s ``c2w`` / ``K`` (and each view's) at the end.

        **Detail.** The last ``detail_steps`` (default: a third) of the ``steps`` (full mode) fit the Gaussians
        themselves, as 3DGS does: starting from the decoder's avatar, each Gaussian's SH DC colour
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
        Gaussian (the avatar then has more rows than the model's template).

        ``mode``: ``"full"`` (= ``"auto"``) is the paper's refinement, the code and all decoder
        weights jointly (``lr_code``, ``lr_decoder``); ``"heads"`` computes the shared body once,
        keeps the geometry at the feed-forward prediction and fine-tunes only the colour and
        opacity heads' output layers (``lr_heads``), so a step costs about one render per view.
        Every image is box-resampled so its longer side is ``refine_size`` pixels.

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
        the avatar unchanged. ``preview(gaussians)`` (a GaussianSet, full decode) is called every
        ``preview_every`` steps (0: never) for live display. Raises ``ValueError`` for an unknown
        mode, precision or a missing camera/mask.
        """
        from .photofit import LandmarkCorrespondence
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
        explicit = c2w is not None or K is not None or mask is not None
        if views is None and avatar.views and not explicit:
            views = avatar.views
        if views is None:
            if avatar.camera is None and (c2w is None or K is None):
                raise ValueError("refinement needs the avatar's camera (or an explicit c2w and K)")
            if not explicit:
                if avatar.face is None:
                    raise ValueError("refinement needs the avatar's face landmarks (or an explicit mask)")
                views = [self.photo_view(np.asarray(image), avatar.face, avatar.camera, avatar.photo, head=avatar.head)]
            else:
                if mask is None and avatar.face is None:
                    raise ValueError("refinement needs the avatar's face landmarks (or an explicit mask)")
                views = [RefineView(np.asarray(image), avatar.camera.c2w if c2w is None else np.asarray(c2w, np.float64),
                                    avatar.camera.K if K is None else np.asarray(K, np.float64),
                                    face_mask(image.shape[:2], avatar.face.landmarks) if mask is None
                                    else np.asarray(mask, np.float32), mask_is_foreground)]
        views = list(views)
        if symmetry:
            views += [v.flipped(mirror_weight) for v in views if v.landmarks is not None and not v.mirrored]
        groups: dict = {}
        for i, v in enumerate(views):
            groups.setdefault(i if v.group is None else ("g", v.group), []).append(i)
        groups = list(groups.values())
        targets = [self._refine_target(v, refine_size) for v in views]
        if camera is None:  # measured: helps a face the model knows, hurts an unseen one (README)
            camera = False
        if camera_warmup is None:
            camera_warmup = min(30, steps // 5) if camera else 0
        # one camera correction per group: [rotation (3, axis-angle), translation (3, m), log focal (1)]
        cam_params = torch.zeros(len(groups), 7, device=self.device, requires_grad=bool(camera))
        for gi, members in enumerate(groups):
            for ti in members:
                targets[ti]["cam_group"] = gi
        cam_opt = torch.optim.Adam([cam_params], lr=lr_camera) if camera else None
        decoder = copy.deepcopy(self.model.decoder_for(avatar.head)).to(self.device).train()
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
                g = decoder.apply_residuals(decoder.residuals_from_raw(raw))
                return g if index is None else _select(g, index)
        bg = torch.ones(3, device=self.device)
        with torch.no_grad():
            ff = current()
        K_total = ff.means.shape[0]
        anchor_means, anchor_scales = ff.means.clone(), ff.log_scales.clone()
        ff_prior = torch.cat([ff.means * 100.0, ff.log_scales, ff.opacity_logits[:, None], ff.sh[:, 0]], 1)
        # landmark correspondences (built once from the feed-forward means), per target
        lmk = {}
        for t in targets:
            if t["landmarks"] is not None and landmark_weight > 0:
                key = t["mirrored"]
                if key not in lmk:
                    lmk[key] = LandmarkCorrespondence.build(ff.means.detach().cpu().numpy(), mirrored=key)
                corr = lmk[key]
                vis = np.nonzero(corr.visible(t["c2w"]))[0]
                t["lmk_index"] = torch.as_tensor(corr.index[vis], device=self.device)
                t["lmk_offset"] = torch.as_tensor(corr.offset[vis], device=self.device)
                t["lmk_uv"] = t["landmarks"][torch.as_tensor(vis, device=self.device)]
        lmk_ids = torch.unique(torch.cat([t["lmk_index"] for t in targets if "lmk_index" in t])) if any(
            "lmk_index" in t for t in targets) else torch.zeros(0, dtype=torch.long, device=self.device)
        gen = torch.Generator(device="cpu").manual_seed(0)
        losses = []
        active = None  # full mode: the Gaussians decoded per step
        unseen = torch.zeros(0, dtype=torch.long, device=self.device)
        if detail_steps is None:
            detail_steps = steps // 3
        detail_steps = max(0, min(int(detail_steps), steps - camera_warmup)) if mode == "full" else 0
        detail = None  # the per-Gaussian stage's leaf tensors
        parents = torch.zeros(0, dtype=torch.long)  # grown Gaussians' parents (template rows)

        def group_loss(g_now, pos, step):
            """Summed loss of the step's photo group (photo + mirror) for Gaussians ``g_now``;
            ``pos`` maps Gaussian ids to rows of ``g_now`` (None: all, in order)."""
            loss = torch.zeros((), device=self.device)
            for ti in groups[step % len(groups)]:
                view = targets[ti]
                target, m, m3 = view["image"], view["mask"], view["mask"][..., None]
                c2w_t, K_t = _corrected_camera(view, cam_params[view["cam_group"]]) if camera else (view["c2w"], view["K"])
                rgb, alpha = render(g_now, c2w_t, K_t, view["w"], view["h"], bg)
                valid = view["valid"]
                if view["foreground"]:  # outside the foreground is background: white, like the renders
                    tgt = target * m3 + bg * (1 - m3)
                    if valid is not None:
                        tgt = tgt * valid[..., None] + rgb.detach() * (1 - valid[..., None])
                    li = (1 - ssim_weight) * l1(rgb, tgt, valid) + ssim_weight * (1 - ssim(rgb, tgt))
                    if silhouette_weight > 0:
                        d = (alpha - m).abs()
                        li = li + silhouette_weight * (d.mean() if valid is None else (d * valid).sum() / valid.sum().clamp_min(1))
                else:  # outside the region the target is the render itself: no loss there
                    tgt = target * m3 + rgb.detach() * (1 - m3)
                    li = (1 - ssim_weight) * l1(rgb, target, m) + ssim_weight * (1 - ssim(rgb, tgt))
                if "lmk_index" in view and len(view["lmk_index"]):
                    ids = view["lmk_index"] if pos is None else pos[view["lmk_index"]]
                    if camera:
                        uv = _project(g_now.means[ids] + view["lmk_offset"], _viewmat(c2w_t, torch.float32, self.device), K_t)
                    else:
                        uv = _project(g_now.means[ids] + view["lmk_offset"], view["viewmat"], view["K_t"])
                    err = (uv - view["lmk_uv"]).norm(dim=-1) / max(view["w"], view["h"])
                    li = li + landmark_weight * err.mean()
                loss = loss + view["weight"] * li
            return loss

        t0 = time.perf_counter()
        for step in range(steps):
            if step >= steps - detail_steps:  # per-Gaussian detail: the decoder's result, fitted directly
                if detail is None:
                    with torch.no_grad():
                        g0 = current()
                    detail = {k: getattr(g0, k).detach().clone().requires_grad_(True)
                              for k in ("means", "log_scales", "opacity_logits")}
                    detail["dc"] = g0.sh[:, :1].detach().clone().requires_grad_(True)
                    rest, rots = g0.sh[:, 1:].detach(), g0.rotations.detach()
                    if transfer:  # the photos' colours onto the Gaussians they see (and their mirrors)
                        with torch.no_grad():
                            cams = [(t, *_corrected_camera(t, cam_params[t["cam_group"]].detach(), as_numpy=True))
                                    for t in targets] if camera else [(t, t["c2w"], t["K"]) for t in targets]
                            fg_targets = [(t["image"] * t["mask"][..., None] + (1 - t["mask"][..., None]), c2w_, K_, t["weight"],
                                           t["valid"]) for t, c2w_, K_ in cams if t["foreground"]]
                        if fg_targets:
                            col, evidence = photo_colours(g0, fg_targets)
                            from .gaussians import SH_C0

                            with torch.no_grad():
                                seen_mask = evidence > 0.05
                                detail["dc"][seen_mask, 0] = (col[seen_mask] - 0.5) / SH_C0
                                rest = rest.clone()
                                rest[seen_mask] *= (0.5 / (0.5 + evidence[seen_mask]))[:, None, None]
                    if grow > 0:  # Gaussians where the person mask reaches past the avatar (hair)
                        from .fitting.grow import grow_into_mask

                        extra, parents = grow_into_mask(g0, targets, budget=grow)
                        if extra is not None:
                            with torch.no_grad():
                                for k in ("means", "log_scales", "opacity_logits"):
                                    detail[k] = torch.cat([detail[k], getattr(extra, k)]).requires_grad_(True)
                                detail["dc"] = torch.cat([detail["dc"], extra.sh[:, :1]]).requires_grad_(True)
                                rest = torch.cat([rest, extra.sh[:, 1:]])
                                rots = torch.cat([rots, extra.rotations])
                    opt = torch.optim.Adam([
                        {"params": [detail["means"]], "lr": lr_detail_means},
                        {"params": [detail["log_scales"]], "lr": 5e-3},
                        {"params": [detail["opacity_logits"]], "lr": 2.5e-2},
                        {"params": [detail["dc"]], "lr": lr_detail_color}])
                    anchor_detail = {k: v.detach().clone() for k, v in detail.items()}
                g_now = GaussianTensors(detail["means"], detail["log_scales"], rots, detail["opacity_logits"],
                                        torch.cat([detail["dc"], rest], 1))
                loss = group_loss(g_now, None, step)
                # stay near the decoder's avatar: drift of means in cm, log-scales, opacity logits
                loss = loss + detail_reg * ((((detail["means"] - anchor_detail["means"]) * 100) ** 2).sum(-1).mean()
                                            + ((detail["log_scales"] - anchor_detail["log_scales"]) ** 2).sum(-1).mean()
                                            + ((detail["opacity_logits"] - anchor_detail["opacity_logits"]) ** 2).mean())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                if progress is not None and progress(step + 1, steps, losses[-1]) is False:
                    return avatar  # cancelled: unchanged
                continue
            if mode == "full" and step % active_refresh == 0:
                with torch.no_grad():
                    probe = current()
                seen = torch.unique(torch.cat([
                    contributing_gaussians(probe, t["c2w"], t["K"], t["w"], t["h"], min_weight_px)
                    for t in targets]))
                active = torch.unique(torch.cat([seen, lmk_ids.to(seen.device)]))
                keep = torch.ones(K_total, dtype=torch.bool, device=self.device)
                keep[active] = False
                unseen = torch.nonzero(keep).squeeze(1)
            index = active
            n_prior = 0
            warm = step < camera_warmup
            if mode == "full" and prior_weight > 0 and len(unseen) > 0 and not warm:
                pick = unseen[torch.randperm(len(unseen), generator=gen)[:prior_samples].to(self.device)]
                n_prior = len(pick)
                index = torch.cat([active, pick])
            n_act = K_total if index is None else len(active)
            if warm:  # cameras only: the avatar stays at its feed-forward state
                g_all = g_now = ff if index is None else _select(ff, active)
            else:
                g_all = current(index)
                g_now = _select(g_all, slice(0, n_act)) if n_prior else g_all
            # position of each Gaussian id inside g_now, for the landmark lookups
            if index is None:
                pos = None
            else:
                pos = torch.full((K_total,), -1, dtype=torch.long, device=self.device)
                pos[active] = torch.arange(len(active), device=self.device)
            loss = group_loss(g_now, pos, step)
            if mode == "full" and not warm:
                loss = loss + code_reg * ((code - w0_code) ** 2).sum()
                if geometry_anchor > 0:  # keep the geometry near the feed-forward one (drift in mm)
                    idx = slice(None) if active is None else active
                    loss = loss + geometry_anchor * (
                        (((g_now.means - anchor_means[idx]) * 1e3) ** 2).sum(-1).mean()
                        + ((g_now.log_scales - anchor_scales[idx]) ** 2).sum(-1).mean())
                if n_prior:
                    gp = _select(g_all, slice(n_act, n_act + n_prior))
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
            if preview is not None and preview_every > 0 and (step + 1) % preview_every == 0 and step + 1 < steps:
                with torch.no_grad():
                    preview(current().to_numpy())
        avatar.parents = None
        with torch.no_grad():
            if detail is not None:
                g_fit = GaussianTensors(detail["means"], detail["log_scales"], rots, detail["opacity_logits"],
                                        torch.cat([detail["dc"], rest], 1))
                if len(parents):  # grown Gaussians that stayed visible (3DGS opacity pruning)
                    from .fitting.grow import prune

                    keep = prune(K_total, g_fit.opacity_logits)
                    g_fit = _select(g_fit, keep)
                    avatar.parents = parents[keep[keep >= K_total] - K_total].cpu().numpy().astype(np.int64)
                avatar.gaussians = g_fit.to_numpy()
            else:
                avatar.gaussians = current().to_numpy()
        if camera:
            _store_refined_cameras(avatar, views, targets, cam_params.detach())
        avatar.code = code.detach().cpu().numpy().astype(np.float32)
        avatar.refine_mode = mode
        avatar.refined_steps += steps
        avatar.refine_losses = losses
        avatar.timings_ms["refine"] = 1e3 * (time.perf_counter() - t0)
        return avatar

    def _refine_target(self, view: RefineView, refine_size: int) -> dict:
        """The view resampled for refinement: longer side ``refine_size`` px, tensors on the device."""
        from .cameras import viewmat_from_c2w

        image = np.asarray(view.image)
        h0, w0 = image.shape[:2]
        s = refine_size / max(h0, w0)
        w1, h1 = max(8, round(w0 * s)), max(8, round(h0 * s))

        def area(m, what):
            m = np.asarray(m, np.float32)
            if m.shape != (h0, w0):
                raise ValueError(f"refinement {what} {list(m.shape)} does not match the photo {[h0, w0]}")
            return torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(m)).to(self.device)[None, None],
                                                   size=(h1, w1), mode="area")[0, 0]

        K1 = scale_intrinsics(view.K, w1 / w0, h1 / h0)
        lm = None
        if view.landmarks is not None:
            lm = np.asarray(view.landmarks, np.float64)
            if lm.ndim != 2 or lm.shape[1] != 2 or not np.isfinite(lm).all():
                raise ValueError(f"refinement landmarks must be finite [N,2] pixels, got {lm.shape}")
            lm = torch.as_tensor(lm * np.array([w1 / w0, h1 / h0]), dtype=torch.float32, device=self.device)
        return {
            "image": torch.from_numpy(resample(image, (w1, h1)).astype(np.float32) / 255.0).to(self.device),
            "mask": area(view.mask, "mask"),
            "valid": None if view.ignore is None else 1.0 - (area(view.ignore, "ignore mask") > 0.5).float(),
            "K": K1, "c2w": np.asarray(view.c2w, np.float64),
            "K_t": torch.as_tensor(K1, dtype=torch.float32, device=self.device),
            "viewmat": torch.as_tensor(viewmat_from_c2w(view.c2w), dtype=torch.float32, device=self.device),
            "landmarks": lm, "mirrored": bool(view.mirrored), "weight": float(view.weight),
            "w": w1, "h": h1, "foreground": bool(view.mask_is_foreground)}


_S4 = np.diag([-1.0, 1.0, 1.0, 1.0])


def _camera_delta(p: torch.Tensor) -> torch.Tensor:
    """4x4 rigid correction (camera frame) from [rotation axis-angle (3), translation m (3), ...]."""
    w = p[:3]
    theta = w.norm().clamp_min(1e-12)
    k = w / theta
    Kx = torch.zeros(3, 3, dtype=p.dtype, device=p.device)
    Kx[0, 1], Kx[0, 2], Kx[1, 0], Kx[1, 2], Kx[2, 0], Kx[2, 1] = -k[2], k[1], k[2], -k[0], -k[1], k[0]
    R = torch.eye(3, dtype=p.dtype, device=p.device) + torch.sin(theta) * Kx + (1 - torch.cos(theta)) * (Kx @ Kx)
    top = torch.cat([R, p[3:6, None]], 1)
    return torch.cat([top, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=p.dtype, device=p.device)], 0)


def _corrected_camera(view: dict, p: torch.Tensor, as_numpy: bool = False):
    """(c2w [4,4], K [3,3]) of a refinement target with the correction ``p`` [7] of its photo
    (a mirrored view gets the mirrored correction ``S delta S``); torch tensors on p's device."""
    delta = _camera_delta(p)
    if view["mirrored"]:
        S = torch.as_tensor(_S4, dtype=p.dtype, device=p.device)
        delta = S @ delta @ S
    c2w = torch.as_tensor(view["c2w"], dtype=p.dtype, device=p.device) @ delta
    K = torch.as_tensor(view["K"], dtype=p.dtype, device=p.device).clone()
    f = torch.exp(p[6])
    K = torch.stack([K[0] * torch.stack([f, f, torch.ones_like(f)]), K[1] * torch.stack([f, f, torch.ones_like(f)]), K[2]])
    if as_numpy:
        return c2w.detach().cpu().double().numpy(), K.detach().cpu().double().numpy()
    return c2w, K


def _store_refined_cameras(avatar: Avatar, views: list, targets: list, cam_params: torch.Tensor) -> None:
    """Write the refined cameras back: each non-mirrored view's ``c2w`` / ``K`` (pixels of its
    own photo) and the avatar's camera (the first photo's), keeping the CameraEstimate type."""
    import dataclasses

    from .face.pose import camera_angles

    for i, (v, t) in enumerate(zip(views, targets)):
        if v.mirrored:
            continue
        c2w, _ = _corrected_camera(t, cam_params[t["cam_group"]], as_numpy=True)
        K = np.array(v.K, np.float64, copy=True)
        K[:2, :2] *= float(torch.exp(cam_params[t["cam_group"], 6]))
        v.c2w, v.K = c2w, K
        if v.camera is not None:
            yaw, pitch, roll = camera_angles(c2w)
            v.camera = dataclasses.replace(v.camera, c2w=c2w, K=K, yaw_deg=yaw, pitch_deg=pitch, roll_deg=roll,
                                           focal_source=f"{v.camera.focal_source}+refined")
        if i == 0 and avatar.camera is not None:
            avatar.camera = v.camera if v.camera is not None else dataclasses.replace(avatar.camera, c2w=c2w, K=K)


def _select(g: GaussianTensors, index) -> GaussianTensors:
    """The Gaussians ``index`` (int64 tensor or slice) of ``g``."""
    return GaussianTensors(g.means[index], g.log_scales[index], g.rotations[index], g.opacity_logits[index], g.sh[index])


def _project(points: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """[N,2] pixels (continuous) of [N,3] head-frame points; ``viewmat``: OpenCV world-to-camera 4x4."""
    pc = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = pc[:, 2:3].clamp_min(1e-6)
    return torch.cat([K[0, 0] * pc[:, :1] / z + K[0, 2], K[1, 1] * pc[:, 1:2] / z + K[1, 2]], 1)


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


def photo_colours(g, views: list, prior_px: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Appearance transfer: each Gaussian's colour as the photos see it.

    ``g``: GaussianTensors; ``views``: [(image [H,W,3] float in [0,1], c2w, K, weight, valid [H,W]
    or None)]. For Gaussian i and view v, compositing weights w_ip = alpha_i T_i at pixel p give
    ``C_i = sum_v weight_v sum_p w_ip photo_p / (sum_v weight_v sum_p w_ip + prior_px)``, the
    weighted mean photo colour over the pixels it covers, pulled towards its current colour by
    ``prior_px`` pixels of evidence. Both sums are read off autograd in one render per view
    (d(sum_p <photo_p, rgb_p>)/d(colour_i) and d(sum_p rgb_p)/d(colour_i), every colour pushed
    above the clamp at 0 as in :func:`contributing_gaussians`). Returns (colour [N,3] in [0,1],
    evidence [N] in pixels): the colour a Gaussian should show along the photos' rays."""
    from .gaussians import SH_C0

    base = g.sh.detach().clone()
    num = torch.zeros(base.shape[0], 3, device=base.device)
    den = torch.zeros(base.shape[0], device=base.device)
    for image, c2w, K, weight, valid in views:
        sh = base.clone()
        sh[:, 0, :] += 10.0
        sh.requires_grad_(True)
        h, w = image.shape[:2]
        rgb, _ = render(GaussianTensors(g.means.detach(), g.log_scales.detach(), g.rotations.detach(),
                                        g.opacity_logits.detach(), sh), c2w, K, w, h)
        v = torch.ones(h, w, device=rgb.device) if valid is None else valid
        ((rgb * image).sum(-1) * v).sum().backward(retain_graph=True)
        num += weight * sh.grad[:, 0, :] / SH_C0
        sh.grad = None
        (rgb[..., 0] * v).sum().backward()
        den += weight * sh.grad[:, 0, 0] / SH_C0
    current = (SH_C0 * base[:, 0, :] + 0.5).clamp(0, 1)
    colour = (num + prior_px * current) / (den[:, None] + prior_px)
    return colour.clamp(0, 1), den


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
