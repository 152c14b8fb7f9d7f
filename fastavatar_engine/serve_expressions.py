"""The engine's expression requests (issue 22), mixed into :class:`fastavatar_engine.serve.Engine`.

``expression`` -- what an expression does to an avatar, for Blender's face rig::

    request  arrays: code [D] float32, head [100] float32, expression [53] float32 in [0, 1]
                     (optional, default all 0)
             header: {"basis": bool (default false)}
    result   arrays: delta [K, 59] float32 = D(e), what the expression (relative to the avatar's
                     own, :mod:`fastavatar_engine.animate`) does to the packed Gaussians (model
                     template rows, :data:`fastavatar_engine.gaussians.PACKED_COLUMNS`);
                     with ``basis``: basis [53, K, C] float32, row k = D(unit_k) restricted to the
                     C columns any expression moves, and columns [C] int32 (their indices)
             header: {"model_id", "elapsed_ms"}

  The add-on adds ``delta`` to the avatar's Gaussians for an exact frame (``fastavatar animate``'s
  ``G_avatar + D(e)``), and previews scrubbing with the linear rig ``sum_k e_k basis_k`` (a secant
  per shape, exact at 0 and 1 for one shape alone).

``track`` -- a video, a folder of frames, an ARKit (Live Link Face) CSV or an expressions JSON ->
the expression sequence (:mod:`fastavatar_engine.expressions`; a video's coefficients relative to
the performer's neutral face, as ``fastavatar track`` writes them)::

    request  header: {"path": str, "fps": number or null, "smooth": number in [0, 50] (frames, default 1)}
             arrays: head [100] (optional: the identity to hold, when the video shows the avatar's person)
    progress {"stage": "track", "step": frames done, "total": frames or null}
    result   header: {"fps", "names" [53], "frames", "missing", "source"}
             arrays: coefficients [F, 53] float32 (head model order), rotations [F, 4] float32
                     (w, x, y, z, head frame), translations [F, 3] float32 (metres), missing [F] uint8

Errors are ``bad_request`` for malformed fields and ``image`` for a source that cannot be read
or has no face (the message names the file and frame).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from .serve_errors import Cancelled, RequestError

#: Longest sequence the ``track`` request returns (frames; ~9 h at 30 fps).
MAX_TRACK_FRAMES = 1_000_000


class ExpressionRequests:
    """Mixin for :class:`~fastavatar_engine.serve.Engine` (uses its ``model``, ``_code`` and
    ``_head_expression``)."""

    def expression(self, header, arrays, emit, cancelled):
        from .animate import expression_basis, expression_delta, rest_decode

        t = time.perf_counter()
        w = self._code(arrays)
        head, e = self._head_expression(arrays)
        if head is None:
            raise RequestError("bad_request", "'expression' needs the avatar's 'head' [100] array")
        basis = header.get("basis", False)
        if not isinstance(basis, bool):
            raise RequestError("bad_request", f"'basis' must be true or false, got {basis!r}")
        key = (w.tobytes(), np.asarray(head, np.float32).tobytes(), self.model.model_id)
        cached = self.__dict__.get("_expression_rest")
        if cached is None or cached[0] != key:  # the rest decode is the same for every frame of one avatar
            cached = (key, rest_decode(self.model, w, head))
            self.__dict__["_expression_rest"] = cached
        rest = cached[1]
        out = {"delta": expression_delta(self.model, w, head, np.zeros(53) if e is None else e, rest=rest)}
        if basis:
            try:
                out["basis"], out["columns"] = expression_basis(self.model, w, head, cancelled, rest=rest)
            except InterruptedError:
                raise Cancelled() from None
        return {"model_id": self.model.model_id, "elapsed_ms": round(1e3 * (time.perf_counter() - t), 2)}, out

    def track(self, header, arrays, emit, cancelled):
        from .expressions import ExpressionFileError, ExpressionSequence

        if self.model.head_template is None:
            raise RequestError("bad_request", "this engine has no head model: expressions are unavailable")

        path = header.get("path")
        if not isinstance(path, str) or not path:
            raise RequestError("bad_request", "'track' needs 'path' (a video, frames folder, .csv or .json)")
        fps = header.get("fps")
        if fps is not None and (not isinstance(fps, (int, float)) or isinstance(fps, bool)
                                or not (math.isfinite(fps) and 0 < fps <= 1000)):
            raise RequestError("bad_request", f"'fps' must be a number in (0, 1000] or null, got {fps!r}")
        smooth = header.get("smooth", 1.0)
        if not isinstance(smooth, (int, float)) or isinstance(smooth, bool) or not 0 <= smooth <= 50:
            raise RequestError("bad_request", f"'smooth' must be in [0, 50] frames, got {smooth!r}")
        identity = arrays.get("head")
        if identity is not None and (identity.shape != (100,) or not np.isfinite(identity).all()):
            raise RequestError("bad_request", f"'head' must be 100 finite coefficients, got {list(identity.shape)}")
        src = Path(path)
        try:
            if src.suffix.lower() == ".csv":
                from .expressions.arkit import read_arkit_csv

                seq = read_arkit_csv(src, fps=fps).smoothed(float(smooth))
            elif src.suffix.lower() == ".json":
                seq = ExpressionSequence.load(src)
            else:
                from .expressions.video import NEUTRAL_PERCENTILE, TrackCancelled, track

                def progress(done, total):
                    if cancelled():
                        return False
                    emit({"type": "progress", "stage": "track", "step": done, "total": total})
                    return True

                try:
                    seq = track(src, identity=identity, fps=fps, smooth=float(smooth), progress=progress,
                                neutral=NEUTRAL_PERCENTILE)
                except TrackCancelled:
                    raise Cancelled() from None
        except ExpressionFileError as exc:
            raise RequestError("image", str(exc)) from None
        if seq.num_frames > MAX_TRACK_FRAMES:
            raise RequestError("bad_request", f"{path}: {seq.num_frames} frames (at most {MAX_TRACK_FRAMES})")
        names = list(self.model.head_template.model.expression_names)
        try:
            coefficients = seq.coefficients_for(names)
        except (ExpressionFileError, KeyError, ValueError) as exc:
            raise RequestError("bad_request", f"{path}: {exc}") from None
        return ({"fps": float(seq.fps), "names": names, "frames": int(seq.num_frames),
                 "missing": int(np.count_nonzero(seq.missing)), "source": str(seq.source)[:500]},
                {"coefficients": np.ascontiguousarray(coefficients, np.float32),
                 "rotations": np.ascontiguousarray(seq.rotations, np.float32),
                 "translations": np.ascontiguousarray(seq.translations, np.float32),
                 "missing": np.asarray(seq.missing, np.uint8)})
