"""An expression sequence: per frame the 53 ARKit coefficients and the head pose, and its JSON file.

The file ``fastavatar track`` writes and ``fastavatar animate`` / Blender's *Drive from Video*
read (UTF-8 JSON)::

    {"format": "fastavatar-expressions", "version": 1, "fps": 25.0,
     "names": [53 ARKit names, the head model's order],
     "frames": [{"coefficients": [53 floats in [0,1]],
                 "head_pose": {"rotation": [w, x, y, z], "translation": [x, y, z]},
                 "missing": false}, ...],
     "source": "...", "identity": [100] or null,
     "camera": {"view": 4x4, "K": 3x3, "image_size": [w, h]} or null}

``head_pose`` is the head's rigid motion in the head frame (y up, face towards +z, metres):
a unit quaternion (w, x, y, z) and a translation, relative to the head facing the reference
camera at its median position (:mod:`fastavatar_engine.head.track`); ``camera`` is that reference
camera (OpenCV view matrix, intrinsics in pixels of the source frames). ``missing`` marks a
frame where no face was found: its values are interpolated from the frames around it.

Interpolation and smoothing use SciPy (``scipy.ndimage.gaussian_filter1d``,
``scipy.spatial.transform``): linear for coefficients and translations, spherical for
rotations.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "fastavatar-expressions"
VERSION = 1
#: Frames beyond this are refused when reading a file (about 9 hours at 30 frames/s).
MAX_FRAMES = 1_000_000


class ExpressionFileError(ValueError):
    """An expression file that cannot be read or is malformed (the message says what and where)."""


@dataclass
class ExpressionSequence:
    """Per-frame expression coefficients and head poses.

    Attributes:
        fps: frames per second (> 0).
        names: the N coefficient names (ARKit, the head model's order; N = 53 for our files).
        coefficients: [F,N] float64 in [0,1].
        rotations: [F,4] float64 unit quaternions (w, x, y, z), head frame.
        translations: [F,3] float64 metres, head frame.
        missing: [F] bool, frames without a face (values interpolated).
        source, identity ([100] or None), camera (dict or None): see the module docstring.
    """

    fps: float
    names: list
    coefficients: np.ndarray
    rotations: np.ndarray
    translations: np.ndarray
    missing: np.ndarray
    source: str = ""
    identity: np.ndarray | None = None
    camera: dict | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        F = len(self.coefficients)
        self.coefficients = np.asarray(self.coefficients, np.float64).reshape(F, -1)
        self.rotations = np.asarray(self.rotations, np.float64).reshape(F, 4)
        self.translations = np.asarray(self.translations, np.float64).reshape(F, 3)
        self.missing = np.asarray(self.missing, bool).reshape(F)
        if self.coefficients.shape[1] != len(self.names):
            raise ExpressionFileError(f"{self.coefficients.shape[1]} coefficients per frame for {len(self.names)} names")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ExpressionFileError(f"fps must be a positive number, got {self.fps}")

    @property
    def num_frames(self) -> int:
        return len(self.coefficients)

    def head_matrix(self, frame: int) -> np.ndarray:
        """[4,4] the head's rigid motion at ``frame`` (head frame, metres)."""
        from scipy.spatial.transform import Rotation

        w, x, y, z = self.rotations[frame]
        M = np.eye(4)
        M[:3, :3] = Rotation.from_quat([x, y, z, w]).as_matrix()
        M[:3, 3] = self.translations[frame]
        return M

    def fill_missing(self) -> "ExpressionSequence":
        """Interpolate the missing frames in place (linear; rotations by slerp; before the first
        and after the last found frame: the nearest found one). Returns self. Raises
        :class:`ExpressionFileError` when no frame has a face."""
        from scipy.spatial.transform import Rotation, Slerp

        ok = ~self.missing
        if not ok.any():
            raise ExpressionFileError("no frame has a face")
        if ok.all():
            return self
        t, tk = np.arange(self.num_frames, dtype=np.float64), np.nonzero(ok)[0].astype(np.float64)
        for arr in (self.coefficients, self.translations):
            for j in range(arr.shape[1]):
                arr[:, j] = np.interp(t, tk, arr[ok, j])
        if ok.sum() == 1:
            self.rotations[:] = self.rotations[ok][0]
        else:
            slerp = Slerp(tk, Rotation.from_quat(self.rotations[ok][:, [1, 2, 3, 0]]))
            q = slerp(np.clip(t, tk[0], tk[-1])).as_quat()
            self.rotations[:] = q[:, [3, 0, 1, 2]]
        return self

    def smoothed(self, sigma: float) -> "ExpressionSequence":
        """A copy smoothed over time by a Gaussian of ``sigma`` frames (0: unchanged copy):
        coefficients (kept in [0,1]), translations, and rotations (sign-aligned quaternions,
        renormalised). Missing frames must be filled first."""
        from scipy.ndimage import gaussian_filter1d

        c, q, t = self.coefficients.copy(), align_quaternions(self.rotations), self.translations.copy()
        if sigma > 0 and self.num_frames > 1:
            c = np.clip(gaussian_filter1d(c, sigma, axis=0, mode="nearest"), 0.0, 1.0)
            t = gaussian_filter1d(t, sigma, axis=0, mode="nearest")
            q = gaussian_filter1d(q, sigma, axis=0, mode="nearest")
            q /= np.linalg.norm(q, axis=1, keepdims=True)
        return ExpressionSequence(self.fps, list(self.names), c, q, t, self.missing.copy(), self.source,
                                  self.identity, self.camera, dict(self.extra))

    def relative_to_neutral(self, percentile: float = 5.0) -> "ExpressionSequence":
        """A copy whose coefficients are relative to the performer's neutral face: each
        coefficient minus its ``percentile``-th percentile over the frames with a face, clipped
        to [0, 1] (a tracker's coefficients are absolute in the head model; an avatar takes
        them relative to its own expression, :mod:`fastavatar_engine.animate`). The subtracted
        values go to ``extra['neutral']``. A shape held through the whole clip is removed with
        the neutral, so give long clips with some rest. Raises ``ValueError`` for a percentile
        outside [0, 50]."""
        if not 0.0 <= percentile <= 50.0:
            raise ValueError(f"neutral percentile must be in [0, 50], got {percentile}")
        ok = ~self.missing if (~self.missing).any() else np.ones(self.num_frames, bool)
        neutral = np.percentile(self.coefficients[ok], percentile, axis=0)
        extra = dict(self.extra, neutral=[round(float(v), 4) for v in neutral], neutral_percentile=percentile)
        return ExpressionSequence(self.fps, list(self.names), np.clip(self.coefficients - neutral, 0.0, 1.0),
                                  self.rotations.copy(), self.translations.copy(), self.missing.copy(),
                                  self.source, self.identity, self.camera, extra)

    # ------------------------------------------------------------------ JSON
    def to_json(self, decimals: int = 4) -> dict:
        r = lambda a: [round(float(v), decimals) for v in a]  # noqa: E731
        frames = [{"coefficients": r(c), "head_pose": {"rotation": r(q), "translation": r(t)}, "missing": bool(m)}
                  for c, q, t, m in zip(self.coefficients, self.rotations, self.translations, self.missing)]
        out = {"format": FORMAT, "version": VERSION, "fps": float(self.fps), "names": list(self.names),
               "source": self.source, "identity": None if self.identity is None else r(self.identity),
               "camera": self.camera, "frames": frames}
        out.update(self.extra)
        return out

    def save(self, path) -> Path:
        """Write the JSON file atomically (a temporary file renamed); returns the path."""
        from ..ply import _atomic_write

        path = Path(path)
        data = json.dumps(self.to_json()).encode()
        _atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
        return path

    @classmethod
    def from_json(cls, d: dict, where: str = "expressions") -> "ExpressionSequence":
        """Parse and validate a dict of the module's format. Raises :class:`ExpressionFileError`
        naming the first problem (wrong format, sizes, non-finite or out-of-range values)."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ExpressionFileError(f"{where}: not a {FORMAT} file")
        names, frames = d.get("names"), d.get("frames")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ExpressionFileError(f"{where}: 'names' must be a non-empty list of strings")
        if not isinstance(frames, list) or not frames or len(frames) > MAX_FRAMES:
            raise ExpressionFileError(f"{where}: 'frames' must be a list of 1 to {MAX_FRAMES} frames")
        n = len(names)
        C, Q, T, M = np.zeros((len(frames), n)), np.zeros((len(frames), 4)), np.zeros((len(frames), 3)), []
        for i, fr in enumerate(frames):
            try:
                C[i] = np.asarray(fr["coefficients"], np.float64).reshape(n)
                pose = fr.get("head_pose") or {"rotation": [1, 0, 0, 0], "translation": [0, 0, 0]}
                Q[i] = np.asarray(pose["rotation"], np.float64).reshape(4)
                T[i] = np.asarray(pose["translation"], np.float64).reshape(3)
                M.append(bool(fr.get("missing", False)))
            except (KeyError, TypeError, ValueError) as exc:
                raise ExpressionFileError(f"{where}: frame {i}: expected {n} coefficients and a head_pose "
                                          f"(rotation [4], translation [3]): {exc}") from None
        bad = ~np.isfinite(C).all(1) | ~np.isfinite(Q).all(1) | ~np.isfinite(T).all(1)
        if bad.any():
            raise ExpressionFileError(f"{where}: frame {int(np.argmax(bad))}: non-finite values")
        if (C < -1e-6).any() or (C > 1 + 1e-6).any():
            i = int(np.argmax(((C < -1e-6) | (C > 1 + 1e-6)).any(1)))
            raise ExpressionFileError(f"{where}: frame {i}: coefficients must lie in [0, 1]")
        norm = np.linalg.norm(Q, axis=1)
        if (np.abs(norm - 1) > 1e-2).any():
            raise ExpressionFileError(f"{where}: frame {int(np.argmax(np.abs(norm - 1) > 1e-2))}: rotation is not a "
                                      "unit quaternion (w, x, y, z)")
        fps = d.get("fps")
        if not isinstance(fps, (int, float)) or not (math.isfinite(fps) and 0 < fps <= 1000):
            raise ExpressionFileError(f"{where}: 'fps' must be a number in (0, 1000], got {fps!r}")
        ident = d.get("identity")
        if ident is not None:
            ident = np.asarray(ident, np.float64).ravel()
            if not np.isfinite(ident).all():
                raise ExpressionFileError(f"{where}: 'identity' must be finite")
        return cls(float(fps), list(names), np.clip(C, 0, 1), Q / norm[:, None], T, np.array(M, bool),
                   str(d.get("source", "")), ident, d.get("camera"))

    @classmethod
    def load(cls, path) -> "ExpressionSequence":
        """Read a JSON expression file (:func:`fastavatar_engine.expressions.load_expressions`
        reads an ARKit CSV too). Raises :class:`ExpressionFileError` for an unreadable or
        malformed file."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ExpressionFileError(f"{path}: cannot read an expression file: {exc}") from None
        return cls.from_json(d, str(path))

    def coefficients_for(self, names) -> np.ndarray:
        """[F,len(names)] the coefficients reordered to ``names`` (0 for a name the file lacks)."""
        idx = {n: i for i, n in enumerate(self.names)}
        out = np.zeros((self.num_frames, len(names)))
        for j, n in enumerate(names):
            if n in idx:
                out[:, j] = self.coefficients[:, idx[n]]
        return out


def align_quaternions(q) -> np.ndarray:
    """[F,4] copy of unit quaternions with signs flipped so that consecutive ones agree (q and -q
    are the same rotation; averaging needs one hemisphere)."""
    q = np.array(q, np.float64)
    for i in range(1, len(q)):
        if np.dot(q[i], q[i - 1]) < 0:
            q[i] = -q[i]
    return q


def matrix_to_quaternion(R) -> np.ndarray:
    """[4] unit quaternion (w, x, y, z) of a [3,3] rotation matrix."""
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(np.asarray(R, np.float64)).as_quat()
    return np.array([w, x, y, z])
