"""An avatar driven by an expression sequence: ``fastavatar animate`` (and the engine's decode).

**Expression coefficients are relative to the avatar's own expression.** The template was bound
to the head model at its *rest expression* ``e_rest`` (the ICT fit of the template's own
landmarks, :mod:`fastavatar_engine.head.template`: not zero, e.g. eyeWide 1.0, browDown 0.4-0.5),
and an avatar shows that rest. Coefficients ``e`` [53] in [0, 1] (a tracked performance after its
neutral calibration, an iPhone ARKit recording, Blender's sliders) say how far each shape moves
the face *from there*: 0 everywhere is the avatar as generated, and only the shapes set move::

    D(e) = decode(w, head, e_rest + e) - decode(w, head, e_rest)      (expression_delta)
    G_k  = M_k (G_avatar + D(e_k))

``G_avatar`` keeps everything refinement and the likeness fit added; grown Gaussians move with
their template parent. ``M_k`` (head frame, metres) rigidly moves means and rotations; rendering
``G_k`` at the avatar's photo camera is rendering ``G_avatar + D(e_k)`` at ``M_k^-1 c2w`` (what
:func:`animate` does). Blender's face rig adds the same ``D`` (the engine's ``expression``
request, :mod:`fastavatar_engine.serve_expressions`).
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
        if avatar.head is None:
            raise AnimateError("the avatar carries no head shape (made without the head model): it cannot be driven")
        if avatar.model_id != model.model_id:
            raise AnimateError(f"the avatar was made by model {avatar.model_id!r}, not {model.model_id!r}")
        self.model, self.avatar = model, avatar
        self.packed = pack_gaussians(avatar.gaussians)
        self.rest = rest_decode(model, avatar.code, avatar.head)  # D(e)'s constant half, once per avatar
        parents = np.zeros(0, np.int64) if avatar.parents is None else np.asarray(avatar.parents)
        if len(parents) and parents.max() >= len(self.rest):
            raise AnimateError(f"grown Gaussians name parent {int(parents.max())}, the model has {len(self.rest)} Gaussians")
        if len(self.packed) != len(self.rest) + len(parents):
            raise AnimateError(f"the avatar has {len(self.packed)} Gaussians, the model decodes {len(self.rest)} "
                               f"(+ {len(parents)} grown): another model?")

    def gaussians(self, expression, pose=None) -> GaussianSet:
        """The avatar with ``expression`` [53] (ARKit, head model order, in [0,1], relative to the
        avatar's own expression: module docstring) and, when given, the head pose ``pose`` [4,4]
        applied (head frame, metres). Raises ``ValueError`` for a malformed expression."""
        a = self.avatar
        g = unpack_gaussians(self.packed + expression_delta(self.model, a.code, a.head, expression, a.parents,
                                                            rest=self.rest))
        return g if pose is None else posed(g, pose)


def _check_expression(expression) -> np.ndarray:
    e = np.asarray(expression, np.float64).ravel()
    if e.size != 53 or not np.isfinite(e).all():
        raise ValueError(f"expression: expected 53 finite coefficients, got {e.size}")
    return np.clip(e, 0.0, 1.0)


def rest_decode(model, code, head, expression=None) -> np.ndarray:
    """[K,59] float64 packed decode of ``code`` [D] on ``head`` [100] at ``e_rest + expression``
    (``expression`` [53] or None: the rest expression itself)."""
    import torch

    rest = model.head_template.rest_expression
    with torch.no_grad():
        g = model.decode(code, head, rest if expression is None else rest + expression)
    return pack_gaussians(g.to_numpy()).astype(np.float64)


def _expand(p: np.ndarray, parents, axis: int = 0) -> np.ndarray:
    if parents is None or len(parents) == 0:
        return p
    return np.concatenate([p, np.take(p, np.asarray(parents), axis=axis)], axis=axis)


def expression_delta(model, code, head, expression, parents=None, rest=None) -> np.ndarray:
    """``D(e)`` [K+E, 59] float32 (packed layout): what ``expression`` [53] (relative, in [0,1];
    values outside are clipped) does to the avatar with ``code`` [D] on ``head`` [100]; rows of
    grown Gaussians (``parents`` [E]) copy their parent's. ``rest``: ``rest_decode(model, code,
    head)`` when the caller has it (one decode instead of two). Raises ``ValueError`` for a
    malformed expression or a model without the head model."""
    if model.head_template is None:
        raise ValueError("expressions need the head model (fastavatar_engine/data/ict_head.safetensors)")
    e = _check_expression(expression)
    if not e.any():
        n = model.decoder.num_gaussians + (0 if parents is None else len(parents))
        return np.zeros((n, 59), np.float32)
    d = rest_decode(model, code, head, e) - (rest_decode(model, code, head) if rest is None else rest)
    return _expand(d, parents).astype(np.float32)


def expression_basis(model, code, head, cancelled=None, rest=None) -> tuple[np.ndarray, np.ndarray]:
    """(basis [53, K, C] float32, columns [C] int32): ``D(unit_k)`` for each shape k, restricted to
    the C packed columns any shape moves (means, log-scales, rotations; opacity for the blinks,
    :mod:`fastavatar_engine.head.eyes`). The linear rig
    ``sum_k e_k basis_k`` previews ``D(e)`` (exact for one shape at 0 or 1). ``cancelled()``
    returning True stops it with ``InterruptedError``."""
    rest = rest_decode(model, code, head) if rest is None else rest
    rows = []
    for k in range(53):
        if cancelled is not None and cancelled():
            raise InterruptedError("cancelled")
        unit = np.zeros(53)
        unit[k] = 1.0
        rows.append(rest_decode(model, code, head, unit) - rest)
    full = np.stack(rows)
    cols = np.flatnonzero(np.abs(full).max(axis=(0, 1)) > 0).astype(np.int32)
    return np.ascontiguousarray(full[:, :, cols], np.float32), cols


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
