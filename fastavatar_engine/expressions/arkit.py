"""ARKit blendshape CSV (the iPhone *Live Link Face* export) -> :class:`.sequence.ExpressionSequence`.

Live Link Face (Epic Games) records one row per frame: ``Timecode`` (``HH:MM:SS:FF.fff``),
``BlendShapeCount``, the 52 ARKit blendshapes in [0,1] (``EyeBlinkLeft`` ... ``TongueOut``)
and the head's and eyes' ``Yaw``/``Pitch``/``Roll`` in radians. Names map to the head model's
ARKit names by case and side (``EyeBlinkLeft`` -> ``eyeBlink_L``); ARKit's single
``BrowInnerUp`` and ``CheekPuff`` drive both sides of ICT-FaceKit's split shapes; ``TongueOut``
and the eye rotations have no shape in the head model and are dropped. The head's rotation is
``Ry(yaw) Rx(pitch) Rz(roll)`` in the head frame (y up, face towards +z); a CSV carries no
translation. The frame rate is the timecode's (the highest frame number + 1, rounded to a
standard rate) unless given.

Written here because no maintained library reads this export (it is a plain CSV; the standard
``csv`` module parses it).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from .sequence import ExpressionFileError, ExpressionSequence, matrix_to_quaternion

STANDARD_RATES = (24.0, 25.0, 30.0, 48.0, 50.0, 60.0, 120.0)
#: Rows beyond this are refused (about 4.6 hours at 60 frames/s).
MAX_ROWS = 1_000_000


def arkit_to_head_names(columns, names) -> dict:
    """{CSV column: [head-model names it drives]} for the columns that map to ``names``."""
    out = {}
    have = set(names)
    for col in columns:
        base = col[:1].lower() + col[1:]
        for side, suffix in (("Left", "_L"), ("Right", "_R")):
            if base.endswith(side):
                base = base[: -len(side)] + suffix
                break
        if base in have:
            out[col] = [base]
        elif base + "_L" in have and base + "_R" in have:
            out[col] = [base + "_L", base + "_R"]
    return out


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = (math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch), math.cos(roll),
                              math.sin(roll))
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return Ry @ Rx @ Rz


def _timecode_frame(tc: str) -> float | None:
    parts = tc.strip().split(":")
    if len(parts) != 4:
        return None
    try:
        return float(parts[3])
    except ValueError:
        return None


def read_arkit_csv(path, fps: float | None = None, names=None) -> ExpressionSequence:
    """Read a Live Link Face CSV. ``names``: the coefficient names (default: the head model's 53).
    Raises :class:`ExpressionFileError` for an unreadable file, no blendshape column, a
    non-numeric or non-finite value (with its row and column), or an empty file."""
    path = Path(path)
    if names is None:
        from ..head.basis import load_head_model

        names = load_head_model().expression_names
    names = list(names)
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ExpressionFileError(f"{path}: cannot open: {exc}") from None
    with fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except (StopIteration, csv.Error, UnicodeDecodeError) as exc:
            raise ExpressionFileError(f"{path}: not a CSV with a header row ({exc or 'empty'})") from None
        cols = arkit_to_head_names(header, names)
        if not cols:
            raise ExpressionFileError(f"{path}: no ARKit blendshape columns (e.g. EyeBlinkLeft, JawOpen) in the header")
        col_idx = {c: header.index(c) for c in cols}
        pose_idx = {k: header.index(k) for k in ("HeadYaw", "HeadPitch", "HeadRoll") if k in header}
        name_idx = {n: j for j, n in enumerate(names)}
        C, Q, frames_tc = [], [], []
        try:
            for r, row in enumerate(reader, start=2):
                if not row or all(not v.strip() for v in row):
                    continue
                if len(C) >= MAX_ROWS:
                    raise ExpressionFileError(f"{path}: more than {MAX_ROWS} rows")
                c = np.zeros(len(names))
                for col, targets in cols.items():
                    c[[name_idx[t] for t in targets]] = _number(row, col_idx[col], path, r, col)
                C.append(np.clip(c, 0.0, 1.0))
                ypr = [_number(row, pose_idx[k], path, r, k) if k in pose_idx else 0.0
                       for k in ("HeadYaw", "HeadPitch", "HeadRoll")]
                Q.append(matrix_to_quaternion(_rotation(*ypr)))
                if "Timecode" in header and header.index("Timecode") < len(row):
                    frames_tc.append(_timecode_frame(row[header.index("Timecode")]))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ExpressionFileError(f"{path}: malformed CSV: {exc}") from None
    if not C:
        raise ExpressionFileError(f"{path}: no frames")
    if fps is None:
        fr = [f for f in frames_tc if f is not None]
        top = math.floor(max(fr)) + 1 if fr else 60
        fps = min(STANDARD_RATES, key=lambda s: abs(s - top)) if top >= 20 else 60.0
    F = len(C)
    return ExpressionSequence(float(fps), names, np.array(C), np.array(Q), np.zeros((F, 3)), np.zeros(F, bool),
                              source=str(path))


def _number(row, i: int, path, r: int, col: str) -> float:
    try:
        v = float(row[i])
    except (IndexError, ValueError):
        raise ExpressionFileError(f"{path}: row {r}, column {col}: not a number") from None
    if not math.isfinite(v):
        raise ExpressionFileError(f"{path}: row {r}, column {col}: not finite")
    return v
