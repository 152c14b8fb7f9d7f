"""Photo -> 3D Gaussian head avatar (FastAvatar inference and refinement, Liang et al. 2026).

Feed-forward: photo -> face (MediaPipe) -> identity embedding (dlib or ArcFace) -> encoder ->
code ``w`` -> decoder -> K Gaussians, in the FLAME head frame (y up, face towards +z, metres).
The photo's camera and head shape come from the head-model fit (:func:`photo_head`,
:mod:`fastavatar_engine.head`), in the same frame; the template rides on that head.

Refinement (:meth:`AvatarGenerator.refine`, implemented in :mod:`fastavatar_engine.fitting`) fits
the avatar to what the photo alone gives
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
from .fitting.appearance import contributing_gaussians, photo_colours  # noqa: F401 (public API)
from .fitting.refine import DEFAULT_GROW, refine as _refine  # noqa: F401 (DEFAULT_GROW: public API)
from .fitting.stages import APPEARANCE_HEADS, cpu_has_bf16 as _cpu_has_bf16  # noqa: F401 (public API)
from .fitting.views import RefineView, face_mask  # noqa: F401 (public API)
from .gaussians import GaussianSet
from .model.io import FastAvatarModel
from .ply import _atomic_write, write_ply
from .render import GaussianTensors, render

ProgressFn = Callable[[int, int, float], bool | None]  # (step, total, loss) -> False to cancel

#: Steps of the likeness fit that ``fastavatar generate``, ``batch.py`` and Blender's *Generate
#: Avatar* run by default (the product-path refinement of :meth:`AvatarGenerator.refine`, cameras
#: first): enough to carry the photo's hair outline, colours and proportions within the 15 s
#: budget on a 2-core CPU (README, *Likeness*). 0 gives the bare feed-forward avatar.
DEFAULT_FIT_STEPS = 40


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


def photo_camera(face, photo=None):
    """The photo's camera (CameraEstimate): :func:`photo_head`'s camera for one photo."""
    return photo_head([face], [photo])[0][0]


def photo_head(faces, photos=None, Ks=None, masks=None):
    """Cameras and head shape of one person's photos: ``([CameraEstimate], HeadFit | None)``.

    :func:`fastavatar_engine.head.fit.fit_head` fits one identity and a camera (and expression)
    per photo to the faces' landmarks and, where ``masks`` (per photo an [H,W] person mask in
    [0,1] or None) gives one, to the mask's outline beside the face. A photo file (path or bytes) with EXIF
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

        fit = fit_head(faces, Ks, masks=masks)
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
        # the head model's fit and the template's binding: built now, not in the first Generate
        try:
            from .head.fit import prepare

            prepare()
            _ = self.model.head_template
        except FileNotFoundError:  # no head model data: cameras fall back to PnP (photo_head)
            pass

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
        ``FaceIndexError``, and ``ValueError`` for an array that is not [H,W,3] uint8. The camera and
        head shape: :func:`photo_head` on the face's landmarks and the photo's person mask (EXIF
        focal length for a file that carries one).
        """
        image, name, face, timings = self._detect(photo, face_index)
        t = time.perf_counter()
        embedding = self.embedder.embed(image, face)
        timings["embed"] = 1e3 * (time.perf_counter() - t)
        t = time.perf_counter()
        w = self.model.encode(embedding)
        timings["encode"] = 1e3 * (time.perf_counter() - t)
        t = time.perf_counter()
        person = self.segmenter.segment(image, face)
        timings["segment"] = 1e3 * (time.perf_counter() - t)
        t = time.perf_counter()
        cameras, fit = photo_head([face], [photo], masks=[person])
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
        masks = [self.segmenter.segment(image, face) for image, _, face, _ in found]
        cameras, fit = photo_head([f for _, _, f, _ in found], photos, masks=masks)
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
        # the largest face (no index): the whole-image pass finds it, and the tile pass only adds
        # smaller faces, so it runs only when the whole image yields none
        faces = self.front_end.detect(image, tiles=False) if face_index is None else []
        face = select_face(faces or self.front_end.detect(image), face_index, image_name=name)
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
               **options) -> Avatar:
        """Optimise ``avatar`` against ``image`` ([H,W,3] uint8 RGB) for ``steps`` steps; updates and
        returns it. ``progress(step, steps, loss)`` returning False cancels (avatar unchanged).
        The options, the loss and the stages are :func:`fastavatar_engine.fitting.refine.refine`'s
        (``refine_size``, ``mode``, ``symmetry``, ``camera``, ``detail_steps``, ``transfer``,
        ``grow``, ...). Raises ``ValueError`` for an unknown mode, precision or a missing camera/mask,
        ``TypeError`` for an unknown option."""
        return _refine(self, avatar, image, steps, progress, **options)
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
