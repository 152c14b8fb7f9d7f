"""Latent edits of a generated avatar without Blender: ``fastavatar edit``.

An avatar written by ``fastavatar generate`` is an INRIA PLY plus its ``.fastavatar.json``
sidecar (code ``w``, model id, head identity, grown Gaussians' parents). An edit changes the
code and decodes again, keeping what refinement added as a per-Gaussian residual (the same
first-order transfer as Blender's sliders, :mod:`blender_addon.editing`)::

    R  = G_avatar - decode(w, head)                 (grown Gaussians: their parent's decode)
    w' = w + sum_j strength_j * unit_j * d_j        (directions, FastAvatar's latent editing)
    G' = decode(w', head) + R

With ``--mix OTHER.ply --amount a`` the codes, heads and residuals are interpolated
(``(1-a) A + a B``, the paper's identity interpolation) before the directions are applied;
grown Gaussians of both are kept and faded towards the other avatar (opacity x (1-a) for A's,
x a for B's), as Blender's blends do. A direction's strength is in units of its
``provenance["unit_amount"]`` (e.g. the mean neutral-to-smiling distance of the training
pairs), so strength 1 is a typical smile; directions without it use code-space distance.

The library is every ``directions/*.json`` shipped with the model bundle, then the user's
folder (``$FASTAVATAR_DIRECTIONS_DIR`` or ``~/.fastavatar/directions``), then ``--library``
folders; a later file of the same name replaces an earlier one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .directions import Direction, DirectionError, load_library
from .gaussians import GaussianSet, logit, pack_gaussians, sigmoid, unpack_gaussians


class EditError(ValueError):
    """An avatar or edit that cannot be applied; the message names the file or option."""


@dataclass
class CodedAvatar:
    """An avatar read back with its sidecar: ``gaussians`` (N Gaussians), ``code`` [D] float32,
    ``model_id``, ``head`` [100] float32 or None, ``parents`` [E] int64 (grown rows) or None,
    ``meta`` (the sidecar dict)."""

    gaussians: GaussianSet
    code: np.ndarray
    model_id: str
    head: np.ndarray | None
    parents: np.ndarray | None
    meta: dict


def read_coded_avatar(ply_path) -> CodedAvatar:
    """Read ``ply_path`` and its ``.fastavatar.json`` sidecar. Raises :class:`EditError` when the
    sidecar is missing or malformed, or disagrees with the PLY's size."""
    from .ply import read_ply

    ply_path = Path(ply_path)
    side = ply_path.with_suffix(".fastavatar.json")
    if not side.is_file():
        raise EditError(f"{ply_path}: no code sidecar {side.name} beside it (made by 'fastavatar generate'?)")
    try:
        meta = json.loads(side.read_text())
        code = np.asarray(meta["code_w"], np.float32)
        model_id = str(meta["model_id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EditError(f"{side}: not a FastAvatar sidecar ({exc})") from None
    if code.ndim != 1 or not np.isfinite(code).all():
        raise EditError(f"{side}: 'code_w' must be a finite vector")
    g = read_ply(ply_path)
    head = meta.get("head_identity")
    parents = meta.get("parents")
    parents = None if parents is None else np.asarray(parents, np.int64)
    if parents is not None and (parents.ndim != 1 or (parents < 0).any()):
        raise EditError(f"{side}: 'parents' must be non-negative indices")
    return CodedAvatar(g, code, model_id, None if head is None else np.asarray(head, np.float32), parents, meta)


def library(model, extra=()) -> dict[str, Direction]:
    """name -> Direction of ``model`` (a FastAvatarModel): the bundle's shipped ``directions/``,
    the user's folder, then ``extra`` folders (later files replace earlier ones of the same name)."""
    folders = []
    if getattr(model, "folder", None) is not None:
        folders.append(Path(model.folder) / "directions")
    folders.append(Path(os.environ.get("FASTAVATAR_DIRECTIONS_DIR") or Path.home() / ".fastavatar" / "directions"))
    folders += [Path(f) for f in extra]
    out = {}
    for f in folders:
        for d in load_library(f, model.model_id)[0]:
            out[d.name] = d
    return out


def _plain(model, code, head, count: int, parents, expression=None) -> np.ndarray:
    """[count, 59] packed decode of ``code`` on ``head`` (with ``expression`` [53], default the
    rest expression), grown rows taking their parent's."""
    import torch

    with torch.no_grad():
        p = pack_gaussians(model.decode(code, head, expression).to_numpy())
    if parents is not None and len(parents):
        if parents.max() >= len(p):
            raise EditError(f"grown Gaussians name parent {int(parents.max())}, the model has {len(p)} Gaussians")
        p = np.concatenate([p, p[parents]])
    if len(p) != count:
        raise EditError(f"the avatar has {count} Gaussians, the model decodes {len(p)} (+ grown): another model?")
    return p


def _fade(packed: np.ndarray, rows: slice, factor: float) -> np.ndarray:
    col = 51  # opacity logit in the packed layout (gaussians.PACKED_COLUMNS)
    out = packed.copy()
    a = sigmoid(out[rows, col].astype(np.float64)) * factor
    out[rows, col] = logit(np.clip(a, 1e-6, 1 - 1e-6))
    return out


def edit_avatar(model, avatar: CodedAvatar, directions=(), mix: CodedAvatar | None = None,
                amount: float = 0.5) -> tuple[GaussianSet, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Apply ``directions`` ([(Direction, strength)]) and an optional ``mix`` with another avatar of
    the same model at ``amount`` in [0, 1]. Returns ``(gaussians, code [D], head [100] or None,
    parents [E] or None)``. Raises :class:`EditError` for another model's avatar, and
    :class:`~fastavatar_engine.directions.DirectionError` for another model's direction."""
    if avatar.model_id != model.model_id:
        raise EditError(f"the avatar was made by model {avatar.model_id!r}, the engine has {model.model_id!r}: "
                        "load that model with --weights")
    code = avatar.code.astype(np.float64)
    head = avatar.head
    packed = pack_gaussians(avatar.gaussians)
    R = packed - _plain(model, avatar.code, head, len(packed), avatar.parents)
    parents = avatar.parents
    if mix is not None:
        if mix.model_id != model.model_id:
            raise EditError(f"--mix avatar was made by model {mix.model_id!r}, not {model.model_id!r}")
        if not 0.0 <= amount <= 1.0:
            raise EditError(f"--amount must be in [0, 1], got {amount}")
        pb = pack_gaussians(mix.gaussians)
        Rb = pb - _plain(model, mix.code, mix.head, len(pb), mix.parents)
        k = model.decoder.num_gaussians
        code = (1 - amount) * code + amount * mix.code
        if head is not None or mix.head is not None:
            rest = np.zeros_like(head if head is not None else mix.head)
            head = ((1 - amount) * (head if head is not None else rest)
                    + amount * (mix.head if mix.head is not None else rest)).astype(np.float32)
        R = np.concatenate([(1 - amount) * R[:k] + amount * Rb[:k], R[k:], Rb[k:]])
        pa = avatar.parents if avatar.parents is not None else np.zeros(0, np.int64)
        pbp = mix.parents if mix.parents is not None else np.zeros(0, np.int64)
        parents = np.concatenate([pa, pbp]) if len(pa) + len(pbp) else None
        fade_a, fade_b = slice(k, k + len(pa)), slice(k + len(pa), k + len(pa) + len(pbp))
    for d, strength in directions:
        d.check_model(model.model_id, model.code_dim)
        code = code + float(strength) * d.unit_amount * d.vector.astype(np.float64)
    code = code.astype(np.float32)
    out = _plain(model, code, head, len(R), parents) + R
    if mix is not None:
        out = _fade(_fade(out, fade_a, 1 - amount), fade_b, amount)
    return unpack_gaussians(out), code, head, parents


def write_edited(path, gaussians: GaussianSet, code, head, parents, source: CodedAvatar, edits: dict) -> Path:
    """Write the edited avatar's PLY and sidecar (the source's sidecar with the new code, head,
    parents and an ``edits`` record); returns the PLY path."""
    from .ply import _atomic_write, write_ply

    path = Path(path)
    write_ply(path, gaussians)
    meta = dict(source.meta)
    meta.update({"code_w": [float(v) for v in code], "edits": edits,
                 "head_identity": None if head is None else [round(float(v), 5) for v in head],
                 "parents": None if parents is None else [int(v) for v in parents]})
    text = json.dumps(meta, indent=1)
    _atomic_write(path.with_suffix(".fastavatar.json"), lambda tmp: Path(tmp).write_text(text))
    return path


__all__ = ["CodedAvatar", "EditError", "read_coded_avatar", "library", "edit_avatar", "write_edited",
           "DirectionError"]
