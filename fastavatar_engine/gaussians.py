"""The Gaussian-set type shared by the engine, the exporters and the Blender add-on (numpy only).

A :class:`GaussianSet` holds N 3D Gaussians in the parameterisation of 3D Gaussian Splatting
(Kerbl et al., SIGGRAPH 2023) and of its INRIA PLY files:

==================  ===========  ==========================================================
field               shape        meaning
==================  ===========  ==========================================================
``means``           [N, 3] f32   centres, metres, in the engine's y-up world
``log_scales``      [N, 3] f32   natural log of the per-axis standard deviations (metres)
``rotations``       [N, 4] f32   quaternions (w, x, y, z); need not be unit length
``opacity_logits``  [N]    f32   inverse-sigmoid of the opacity in (0, 1)
``sh``              [N,16,3] f32 real spherical-harmonic colour coefficients, degree 3,
                                 DC first (index 0), then degree 1 (1-3), 2 (4-8), 3 (9-15);
                                 the last axis is RGB.  Colour = SH(dir) + 0.5.
==================  ===========  ==========================================================

No torch is imported here: the add-on uses this module inside Blender's Python.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

SH_DEGREE = 3
SH_COEFFS = (SH_DEGREE + 1) ** 2  # 16
SH_C0 = 0.28209479177387814  # Y_0^0 = 1 / (2 sqrt(pi))


class GaussianValidationError(ValueError):
    """A Gaussian set has a wrong shape, dtype or a non-finite value."""


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function, elementwise, same shape and float dtype as ``x``."""
    x = np.asarray(x)
    # result_type of the *dtype* (not the array): value-based casting would turn a float64
    # scalar or 0-d array into float32. float16/int8 -> float32, float64/int64 -> float64.
    out = np.empty_like(x, dtype=np.result_type(x.dtype, np.float32))
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Inverse sigmoid of ``p`` clipped to [eps, 1 - eps] so the result is finite."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p / (1.0 - p))


def rgb_to_sh_dc(rgb: np.ndarray) -> np.ndarray:
    """Linear colour in [0, 1] ([..., 3]) to the DC SH coefficient that renders it: (rgb - 0.5) / C0."""
    return (np.asarray(rgb, dtype=np.float64) - 0.5) / SH_C0


@dataclass
class GaussianSet:
    """N 3D Gaussians (see the module docstring for every field's shape, units and convention).

    Construct with arrays of the documented shapes; they are converted to C-contiguous float32.
    Call :meth:`validate` (done by the PLY writer and the renderer) to check shapes and finiteness.
    """

    means: np.ndarray
    log_scales: np.ndarray
    rotations: np.ndarray
    opacity_logits: np.ndarray
    sh: np.ndarray
    extra: dict = field(default_factory=dict)  # free-form metadata (e.g. the source PLY path)

    def __post_init__(self) -> None:
        for name in ("means", "log_scales", "rotations", "opacity_logits", "sh"):
            value = getattr(self, name)
            arr = np.asarray(value)
            if arr.dtype.kind not in "fiu":
                raise GaussianValidationError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
            setattr(self, name, np.ascontiguousarray(arr, dtype=np.float32))

    # ------------------------------------------------------------------ construction helpers
    @property
    def count(self) -> int:
        """Number of Gaussians N."""
        return int(self.means.shape[0]) if self.means.ndim >= 1 else 0

    def __len__(self) -> int:
        return self.count

    @classmethod
    def from_points(
        cls,
        points: np.ndarray,
        colors: np.ndarray | None = None,
        scale: float | np.ndarray = 0.002,
        opacity: float = 0.9,
    ) -> "GaussianSet":
        """Isotropic Gaussians at ``points`` [N,3] (metres).

        ``colors`` [N,3] in [0,1] (grey 0.5 when None) become the SH DC term; ``scale`` is the
        standard deviation in metres (scalar or [N]); identity rotations; higher SH orders zero.
        """
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise GaussianValidationError(f"points: expected shape [N, 3], got {pts.shape}")
        n = pts.shape[0]
        sh = np.zeros((n, SH_COEFFS, 3), dtype=np.float32)
        if colors is not None:
            sh[:, 0, :] = rgb_to_sh_dc(np.asarray(colors, dtype=np.float64).reshape(n, 3))
        scales = np.broadcast_to(np.asarray(scale, dtype=np.float64).reshape(-1, 1), (n, 3))
        rot = np.zeros((n, 4), dtype=np.float32)
        rot[:, 0] = 1.0
        return cls(
            means=pts,
            log_scales=np.log(scales),
            rotations=rot,
            opacity_logits=np.full(n, logit(opacity), dtype=np.float32),
            sh=sh,
        )

    # ------------------------------------------------------------------ checks
    def validate(self) -> "GaussianSet":
        """Check shapes ([N,3], [N,3], [N,4], [N], [N,16,3]), float32 dtype and finite values.

        Returns ``self``. Raises :class:`GaussianValidationError` naming the first bad field, the
        expected shape, and (for non-finite values) how many entries and the first index.
        """
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        expected = {
            "means": (n, 3),
            "log_scales": (n, 3),
            "rotations": (n, 4),
            "opacity_logits": (n,),
            "sh": (n, SH_COEFFS, 3),
        }
        if self.means.ndim != 2 or self.means.shape[1] != 3:
            raise GaussianValidationError(f"means: expected shape [N, 3], got {list(self.means.shape)}")
        for name, shape in expected.items():
            arr = getattr(self, name)
            if arr.shape != shape:
                raise GaussianValidationError(
                    f"{name}: expected shape {list(shape)} for N={n} Gaussians, got {list(arr.shape)}"
                )
            if arr.dtype != np.float32:
                raise GaussianValidationError(f"{name}: expected float32, got {arr.dtype}")
            finite = np.isfinite(arr)
            if not finite.all():
                bad = np.argwhere(~finite.reshape(n, -1).all(axis=1)) if n > 0 else []
                raise GaussianValidationError(
                    f"{name}: {int((~finite).sum())} non-finite value(s); first bad Gaussian index {int(bad[0][0])}"
                )
        norms = np.linalg.norm(self.rotations, axis=1)
        if n > 0 and (norms < 1e-12).any():
            raise GaussianValidationError(
                f"rotations: {int((norms < 1e-12).sum())} zero-length quaternion(s); "
                f"first at index {int(np.argmax(norms < 1e-12))}"
            )
        return self

    # ------------------------------------------------------------------ derived quantities
    @property
    def scales(self) -> np.ndarray:
        """Per-axis standard deviations in metres, [N,3] float32 (exp of ``log_scales``)."""
        return np.exp(self.log_scales)

    @property
    def opacities(self) -> np.ndarray:
        """Opacities in (0, 1), [N] float32 (sigmoid of ``opacity_logits``)."""
        return sigmoid(self.opacity_logits).astype(np.float32)

    @property
    def unit_rotations(self) -> np.ndarray:
        """Rotations normalised to unit length, [N,4] (w, x, y, z) float32."""
        return (self.rotations / np.linalg.norm(self.rotations, axis=1, keepdims=True)).astype(np.float32)

    @property
    def base_colors(self) -> np.ndarray:
        """View-independent colour SH_C0 * DC + 0.5 clipped to [0, 1], [N,3] float32."""
        return np.clip(SH_C0 * self.sh[:, 0, :] + 0.5, 0.0, 1.0).astype(np.float32)

    def subset(self, index: np.ndarray) -> "GaussianSet":
        """A new set with the Gaussians selected by ``index`` (boolean mask [N] or integer indices)."""
        return GaussianSet(
            self.means[index], self.log_scales[index], self.rotations[index],
            self.opacity_logits[index], self.sh[index], dict(self.extra),
        )

    def copy(self) -> "GaussianSet":
        """A deep copy (arrays and ``extra``)."""
        out = self.subset(np.arange(self.count))
        out.extra = copy.deepcopy(self.extra)
        return out



#: Columns of the packed layout: positions, then the INRIA PLY's per-splat properties in file order
#: (without the unused normals): 3 + 3 + 45 + 1 + 3 + 4 = 59 for SH degree 3.
PACKED_COLUMNS = (["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
                  + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def pack_gaussians(g: GaussianSet) -> np.ndarray:
    """[N, 59] float32 in :data:`PACKED_COLUMNS` order (``f_rest`` channel-major, as in the INRIA
    PLY; rotations as stored, w first). The Blender add-on's attributes and the engine's decode
    tangents use this layout; the map is linear, so packed residuals and tangents add up."""
    n = len(g.means)
    sh = np.asarray(g.sh, np.float32)
    rest = np.zeros((n, 3, 15), np.float32)
    k = min(sh.shape[1] - 1, 15)
    rest[:, :, :k] = sh[:, 1:1 + k, :].transpose(0, 2, 1)
    return np.concatenate([np.asarray(g.means, np.float32), sh[:, 0, :], rest.reshape(n, 45),
                           np.asarray(g.opacity_logits, np.float32)[:, None], np.asarray(g.log_scales, np.float32),
                           np.asarray(g.rotations, np.float32)], axis=1)


def unpack_gaussians(packed: np.ndarray) -> GaussianSet:
    """Inverse of :func:`pack_gaussians`; raises :class:`GaussianValidationError` for a shape other than [N, 59]."""
    p = np.asarray(packed, np.float32)
    if p.ndim != 2 or p.shape[1] != len(PACKED_COLUMNS):
        raise GaussianValidationError(f"packed Gaussians must be [N, {len(PACKED_COLUMNS)}], got {list(p.shape)}")
    n = p.shape[0]
    sh = np.empty((n, SH_COEFFS, 3), np.float32)
    sh[:, 0] = p[:, 3:6]
    sh[:, 1:] = p[:, 6:51].reshape(n, 3, 15).transpose(0, 2, 1)
    return GaussianSet(p[:, 0:3], p[:, 52:55], p[:, 55:59], p[:, 51], sh)
