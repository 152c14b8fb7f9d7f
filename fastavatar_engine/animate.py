"""An avatar driven by an expression sequence: ``fastavatar animate`` (and the engine's decode).

Frame k of a sequence (:class:`~fastavatar_engine.expressions.ExpressionSequence`) is the avatar's
code decoded on its head with the frame's 53 expression coefficients (the template bound to the
head model follows the expression, :mod:`fastavatar_engine.head.template`), plus what refinement
added to the avatar as a per-Gaussian residual (as :mod:`fastavatar_engine.edit` keeps it under
latent edits; grown Gaussians take their parent's decode), moved by the frame's head pose::

    R   = G_avatar - decode(w, head)
    G_k = M_k (decode(w, head, e_k) + R)

``M_k`` (head frame, metres) rigidly moves means and rotations. Rendering G_k at the avatar's
photo camera is rendering ``decode(...) + R`` at ``M_k^-1 c2w`` (what :func:`animate` does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .gaussians import GaussianSet, pack_gaussians, unpack_gaussians


class AnimateError(ValueError):
    """An avatar or sequence that cannot be animated (the message says which and why)."""


class Animator:
    """Frames of one avatar (a :class:`~fastavatar_engine.edit.CodedAvatar` of ``model``).

    Raises :class:`AnimateError` when the avatar has no head shape (made without the head
    model) or was made by another model."""

    def __init__(self, model, avatar):
        from .edit import EditError, _plain

        if avatar.head is None:
            raise AnimateError("the avatar carries no head shape (made without the head model): it cannot be driven")
        if avatar.model_id != model.model_id:
            raise AnimateError(f"the avatar was made by model {avatar.model_id!r}, not {model.model_id!r}")
        self.model, self.avatar = model, avatar
        packed = pack_gaussians(avatar.gaussians)
        try:
            self.residual = packed - _plain(model, avatar.code, avatar.head, len(packed), avatar.parents)
        except EditError as exc:
            raise AnimateError(str(exc)) from None

    def gaussians(self, expression, pose=None) -> GaussianSet:
        """The avatar with ``expression`` [53] (ARKit, head model order, in [0,1]) and, when given,
        the head pose ``pose`` [4,4] applied (head frame, metres). Raises ``ValueError`` for a
        malformed expression."""
        from .edit import _plain

        e = np.asarray(expression, np.float64).ravel()
        if e.size != 53 or not np.isfinite(e).all():
            raise ValueError(f"expression: expected 53 finite coefficients, got {e.size}")
        a = self.avatar
        g = unpack_gaussians(_plain(self.model, a.code, a.head, len(self.residual), a.parents, np.clip(e, 0, 1))
                             + self.residual)
        return g if pose is None else posed(g, pose)


def posed(g: GaussianSet, M) -> GaussianSet:
    """``g`` moved rigidly by ``M`` [4,4] (rotation + translation, metres): means and rotations."""
    from scipy.spatial.transform import Rotation

    from .head.binding import quat_multiply

    import torch

    M = np.asarray(M, np.float64)
    x, y, z, w = Rotation.from_matrix(M[:3, :3]).as_quat()
    r = torch.as_tensor(np.asarray(g.rotations, np.float64))
    q = torch.tensor([w, x, y, z], dtype=torch.float64).expand_as(r)
    out = g.copy()
    out.means = (np.asarray(g.means, np.float64) @ M[:3, :3].T + M[:3, 3]).astype(np.float32)
    out.rotations = quat_multiply(q, r).numpy().astype(np.float32)
    return out


def animate(model, avatar, seq, out_dir, size: int = 512, ply: bool = False,
            progress: Callable[[int, int], bool | None] | None = None) -> list[Path]:
    """Render every frame of ``seq`` at the avatar's photo camera (longer side ``size`` pixels)
    as ``OUT_DIR/frame_00000.png`` ...; with ``ply`` also ``frame_00000.ply`` (the posed
    Gaussians, INRIA PLY). ``progress(done, total)`` returning False stops early. Returns the
    PNG paths. Raises :class:`AnimateError` for an avatar without a camera or head, or a
    sequence whose names are not the head model's."""
    from .cameras import scale_intrinsics
    from .images import save_png
    from .ply import write_ply
    from .render import render_to_uint8

    cam = avatar.meta.get("camera") or {}
    try:
        c2w = np.asarray(cam["c2w_opengl"], np.float64).reshape(4, 4)
        K = np.asarray(cam["K"], np.float64).reshape(3, 3)
        W, H = (int(v) for v in cam["image_size_wh"])
    except (KeyError, TypeError, ValueError):
        raise AnimateError("the avatar's sidecar has no photo camera (c2w_opengl, K, image_size_wh)") from None
    if not 8 <= size <= 4096:
        raise AnimateError(f"size must be in 8..4096 pixels, got {size}")
    anim = Animator(model, avatar)
    names = anim.model.head_template.model.expression_names
    E = seq.coefficients_for(names)
    s = size / max(W, H)
    w, h = max(8, round(W * s)), max(8, round(H * s))
    Ks = scale_intrinsics(K, w / W, h / H)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(seq.num_frames):
        M = seq.head_matrix(k)
        g = anim.gaussians(E[k])
        img = render_to_uint8(g, np.linalg.inv(M) @ c2w, Ks, w, h)
        paths.append(save_png(out / f"frame_{k:05d}.png", img))
        if ply:
            write_ply(out / f"frame_{k:05d}.ply", posed(g, M))
        if progress is not None and progress(k + 1, seq.num_frames) is False:
            break
    return paths
