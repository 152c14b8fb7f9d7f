"""Export Gaussians for game engines and web viewers: INRIA PLY, ``.splat``, ``.spz``, glTF ``.glb``.

numpy only (the Blender add-on calls it in Blender's own process). Every writer validates the
set first and writes atomically (temporary file in the target folder, then rename), so a failed
export never leaves a partial file.

Formats (BRIEF §3; byte layouts checked against ``@playcanvas/splat-transform`` 3.7, which the
tests use as the independent reader):

* **PLY** — the INRIA 3DGS layout of :mod:`.ply` (float32, lossless).
* **.splat** (antimatter15) — 32 bytes per splat, little-endian: position 3 x f32, linear scale
  3 x f32 (= exp(log-scale)), RGBA u8 (colour 0.5 + C0 f_dc, alpha sigmoid(opacity)), rotation
  4 x u8 (w, x, y, z of q/|q|, as round(q * 128 + 128) clipped to 0..255); sorted by
  size x opacity, largest first; no SH beyond the DC term.
* **.spz** (Niantic, version 3) — gzip of a 16-byte header (u32 magic 0x5053474e "NGSP", u32
  version 3, u32 count, u8 SH degree, u8 fractional bits (12), u8 flags 0, u8 0) followed by
  attribute blocks: positions as signed 24-bit fixed point (x 2^12, so 0.24 mm steps, +-2 km),
  alpha u8 (sigmoid x 255), colour u8 (f_dc x 0.15 + 0.5, x 255), log-scales u8 ((s + 10) x 16),
  rotations as "smallest three" u32 (2-bit index of the largest |component| of (x, y, z, w),
  three 10-bit fields of 9-bit magnitude / sqrt(1/2) x 511 plus a sign bit), SH rest u8
  (round(c x 128 + 128), coefficient-major with the 3 channels inner).
* **glTF binary** with ``KHR_gaussian_splatting`` — one POINTS primitive: ``POSITION`` (with
  min/max), ``COLOR_0`` (u8 normalised RGBA preview), ``KHR_gaussian_splatting:ROTATION``
  (unit quaternion x, y, z, w), ``:SCALE`` (linear), ``:OPACITY`` (after sigmoid), ``:SH_DEGREE_l_COEF_c``
  (VEC3 per coefficient, DC included), and the extension object on the primitive.

**Axis conventions** (``convention``): ``"engine"`` writes the engine frame (y up, metres, face
towards +z — glTF's own convention); ``"ply"`` rotates 180 deg about z (y down, the COLMAP /
INRIA convention that PLY, .splat and .spz viewers assume, so the head appears upright there);
``"blender"`` rotates +90 deg about x (z up). ``"auto"`` (default) picks ``"ply"`` for PLY,
.splat and .spz and ``"engine"`` for glTF. Rotating a splat rotates its mean, its quaternion
and its view-dependent colour: the SH coefficients of each degree are multiplied by that band's
rotation matrix (found by least squares on sampled directions, exact to float precision).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import struct
from pathlib import Path

import numpy as np

from .gaussians import SH_COEFFS, GaussianSet, sigmoid
from .ply import _atomic_write, write_ply

SH_C0 = 0.28209479177387814
FORMATS = ("ply", "splat", "spz", "glb")
CONVENTIONS = ("auto", "engine", "ply", "blender")
SPZ_MAGIC = 0x5053474E
SPZ_VERSION = 3
SPZ_FRACTIONAL_BITS = 12
SPZ_COLOR_SCALE = 0.15

_ROTATIONS = {
    "engine": np.eye(3),
    "ply": np.diag([-1.0, -1.0, 1.0]),  # 180 deg about z
    "blender": np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]]),  # +90 deg about x: (x, y, z) -> (x, -z, y)
}


class ExportError(ValueError):
    """An export that cannot be done (unknown format or convention, nothing left after pruning)."""


# ---------------------------------------------------------------------- spherical harmonics
def sh_basis(dirs: np.ndarray, degree: int = 3) -> np.ndarray:
    """[N, (degree+1)^2] real SH basis at unit directions ``dirs`` [N, 3], in the 3DGS order and
    sign convention (Kerbl et al. 2023, ``sh_utils.eval_sh``)."""
    x, y, z = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    cols = [np.full_like(x, SH_C0)]
    if degree >= 1:
        c1 = 0.4886025119029199
        cols += [-c1 * y, c1 * z, -c1 * x]
    if degree >= 2:
        c2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
        xx, yy, zz = x * x, y * y, z * z
        cols += [c2[0] * x * y, c2[1] * y * z, c2[2] * (2 * zz - xx - yy), c2[3] * x * z, c2[4] * (xx - yy)]
    if degree >= 3:
        c3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
              -0.4570457994644658, 1.445305721320277, -0.5900435899266435)
        xx, yy, zz = x * x, y * y, z * z
        cols += [c3[0] * y * (3 * xx - yy), c3[1] * x * y * z, c3[2] * y * (4 * zz - xx - yy),
                 c3[3] * z * (2 * zz - 3 * xx - 3 * yy), c3[4] * x * (4 * zz - xx - yy),
                 c3[5] * z * (xx - yy), c3[6] * x * (xx - 3 * yy)]
    return np.stack(cols, 1)


def sh_rotation(rot: np.ndarray, degree: int = 3) -> np.ndarray:
    """[(degree+1)^2, (degree+1)^2] block-diagonal matrix M such that the colour field with
    coefficients ``c`` [K] rotated by ``rot`` (3x3) has coefficients ``M @ c``: the rotated
    field at d equals the original at rot^T d. Solved per band by least squares on 256 directions."""
    rng = np.random.default_rng(0)
    d = rng.standard_normal((256, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    b_new = sh_basis(d, degree)  # basis at d
    b_old = sh_basis(d @ np.asarray(rot, np.float64), degree)  # basis at rot^T d (row vectors)
    k = (degree + 1) ** 2
    m = np.zeros((k, k))
    for band in range(degree + 1):
        sl = slice(band * band, (band + 1) ** 2)
        # b_new[:, sl] @ M_band = b_old[:, sl]  ->  coefficients transform with M_band
        sol, *_ = np.linalg.lstsq(b_new[:, sl], b_old[:, sl], rcond=None)
        m[sl, sl] = sol
    return m


def _quat_from_matrix(r: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a proper rotation matrix."""
    w = math.sqrt(max(0.0, 1 + r[0, 0] + r[1, 1] + r[2, 2])) / 2
    x = math.copysign(math.sqrt(max(0.0, 1 + r[0, 0] - r[1, 1] - r[2, 2])) / 2, r[2, 1] - r[1, 2])
    y = math.copysign(math.sqrt(max(0.0, 1 - r[0, 0] + r[1, 1] - r[2, 2])) / 2, r[0, 2] - r[2, 0])
    z = math.copysign(math.sqrt(max(0.0, 1 - r[0, 0] - r[1, 1] + r[2, 2])) / 2, r[1, 0] - r[0, 1])
    return np.array([w, x, y, z])


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a ⊗ b of (w, x, y, z) quaternions (``a`` [4], ``b`` [N, 4])."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    return np.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], 1)


def rotate_gaussians(g: GaussianSet, rot: np.ndarray) -> GaussianSet:
    """The Gaussians seen in a frame rotated by ``rot`` (3x3 proper rotation): means ``rot @ mu``,
    rotations ``q_rot ⊗ q``, SH coefficients rotated band by band. Scales and opacities are unchanged."""
    r = np.asarray(rot, np.float64)
    if r.shape != (3, 3) or not np.allclose(r @ r.T, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
        raise ExportError("axis conversion must be a proper 3x3 rotation")
    if np.allclose(r, np.eye(3)):
        return g
    sh = np.asarray(g.sh, np.float64)
    degree = int(round(math.sqrt(sh.shape[1]))) - 1
    m = sh_rotation(r, degree)
    return GaussianSet((np.asarray(g.means, np.float64) @ r.T).astype(np.float32), g.log_scales,
                       _quat_mul(_quat_from_matrix(r), np.asarray(g.rotations, np.float64)).astype(np.float32),
                       g.opacity_logits, np.einsum("kj,njc->nkc", m, sh).astype(np.float32))


def resolve_convention(convention: str, fmt: str) -> str:
    """The concrete axis convention for ``convention`` (one of :data:`CONVENTIONS`) and format
    ``fmt`` ('auto': 'engine' for glb, 'ply' otherwise). Raises :class:`ExportError` for an unknown one."""
    if convention not in CONVENTIONS:
        raise ExportError(f"unknown axis convention {convention!r} (known: {', '.join(CONVENTIONS)})")
    if convention == "auto":
        return "engine" if fmt == "glb" else "ply"
    return convention


def prune(g: GaussianSet, min_opacity: float) -> tuple[GaussianSet, int]:
    """(the splats with sigmoid(opacity) >= ``min_opacity``, how many were removed)."""
    if not 0.0 <= min_opacity < 1.0:
        raise ExportError(f"opacity threshold must be in [0, 1), got {min_opacity}")
    keep = sigmoid(np.asarray(g.opacity_logits, np.float64)) >= min_opacity
    removed = int((~keep).sum())
    if removed == 0:
        return g, 0
    if not keep.any():
        raise ExportError(f"no splat has an opacity of {min_opacity} or more: nothing to export")
    return GaussianSet(g.means[keep], g.log_scales[keep], g.rotations[keep], g.opacity_logits[keep], g.sh[keep]), removed


# ---------------------------------------------------------------------- writers
def _unit_quats(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, np.float64)
    n = np.linalg.norm(q, axis=1, keepdims=True)
    out = np.where(n > 1e-12, q / np.maximum(n, 1e-12), np.array([[1.0, 0, 0, 0]]))
    return out


def splat_bytes(g: GaussianSet) -> bytes:
    """The ``.splat`` file content for ``g`` (see the module docstring)."""
    n = len(g.means)
    scales = np.exp(np.asarray(g.log_scales, np.float64))
    alpha = sigmoid(np.asarray(g.opacity_logits, np.float64))
    order = np.argsort(-(scales.prod(1) * alpha), kind="stable")
    rec = np.zeros(n, dtype=[("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    rec["pos"] = np.asarray(g.means, np.float32)[order]
    rec["scale"] = scales[order].astype(np.float32)
    rgb = 0.5 + SH_C0 * np.asarray(g.sh, np.float64)[order, 0, :]
    rec["rgba"] = np.clip(np.round(np.concatenate([rgb, alpha[order, None]], 1) * 255), 0, 255).astype(np.uint8)
    rec["rot"] = np.clip(np.round(_unit_quats(g.rotations)[order] * 128 + 128), 0, 255).astype(np.uint8)
    return rec.tobytes()


def _spz_rotations(q_wxyz: np.ndarray) -> np.ndarray:
    """[N] u32 smallest-three packing of unit quaternions, components ordered (x, y, z, w)."""
    q = _unit_quats(q_wxyz)[:, [1, 2, 3, 0]]
    largest = np.argmax(np.abs(q), axis=1)
    q = np.where(q[np.arange(len(q)), largest][:, None] < 0, -q, q)  # the largest is stored implicitly, positive
    packed = np.zeros(len(q), np.uint64)
    for j in range(4):
        comp = q[:, j]
        mag = np.clip(np.round(np.abs(comp) / math.sqrt(0.5) * 511), 0, 511).astype(np.uint64)
        field = mag | ((comp < 0).astype(np.uint64) << np.uint64(9))
        use = largest != j
        packed = np.where(use, (packed << np.uint64(10)) | field, packed)
    packed |= largest.astype(np.uint64) << np.uint64(30)
    return packed.astype(np.uint32)


def spz_bytes(g: GaussianSet) -> bytes:
    """The ``.spz`` (version 3) file content for ``g``: gzip of header + attribute blocks."""
    n = len(g.means)
    sh = np.asarray(g.sh, np.float64)
    degree = int(round(math.sqrt(sh.shape[1]))) - 1
    fixed = np.round(np.asarray(g.means, np.float64) * (1 << SPZ_FRACTIONAL_BITS)).astype(np.int64)
    if np.abs(fixed).max(initial=0) >= 1 << 23:
        raise ExportError(f"positions beyond +-{(1 << 23) / (1 << SPZ_FRACTIONAL_BITS):.0f} m do not fit .spz")
    pos = (fixed & 0xFFFFFF).astype(np.uint32)
    pos_bytes = np.stack([pos & 0xFF, (pos >> 8) & 0xFF, (pos >> 16) & 0xFF], -1).astype(np.uint8)  # [N,3,3]
    alpha = np.clip(np.round(sigmoid(np.asarray(g.opacity_logits, np.float64)) * 255), 0, 255).astype(np.uint8)
    colour = np.clip(np.round((sh[:, 0, :] * SPZ_COLOR_SCALE + 0.5) * 255), 0, 255).astype(np.uint8)
    scales = np.clip(np.round((np.asarray(g.log_scales, np.float64) + 10) * 16), 0, 255).astype(np.uint8)
    rest = np.clip(np.round(sh[:, 1:, :] * 128 + 128), 0, 255).astype(np.uint8)  # [N, K-1, 3]: channel inner
    header = struct.pack("<IIIBBBB", SPZ_MAGIC, SPZ_VERSION, n, degree, SPZ_FRACTIONAL_BITS, 0, 0)
    body = b"".join([header, pos_bytes.tobytes(), alpha.tobytes(), colour.tobytes(), scales.tobytes(),
                     _spz_rotations(g.rotations).astype("<u4").tobytes(), rest.tobytes()])
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
        f.write(body)
    return buf.getvalue()


def glb_bytes(g: GaussianSet, generator: str = "FastAvatar") -> bytes:
    """The glTF binary content (``KHR_gaussian_splatting``) for ``g``."""
    n = len(g.means)
    sh = np.asarray(g.sh, np.float32)
    degree = int(round(math.sqrt(sh.shape[1]))) - 1
    means = np.asarray(g.means, np.float32)
    alpha = sigmoid(np.asarray(g.opacity_logits, np.float64))
    colour = np.clip(np.round(np.concatenate([0.5 + SH_C0 * sh[:, 0, :].astype(np.float64), alpha[:, None]], 1) * 255),
                     0, 255).astype(np.uint8)
    q = _unit_quats(g.rotations).astype(np.float32)
    segments = [("POSITION", means, "VEC3", 5126, {"min": means.min(0).tolist(), "max": means.max(0).tolist()}),
                ("COLOR_0", colour, "VEC4", 5121, {"normalized": True}),
                ("KHR_gaussian_splatting:ROTATION", np.ascontiguousarray(q[:, [1, 2, 3, 0]]), "VEC4", 5126, {}),
                ("KHR_gaussian_splatting:SCALE", np.exp(np.asarray(g.log_scales, np.float64)).astype(np.float32),
                 "VEC3", 5126, {}),
                ("KHR_gaussian_splatting:OPACITY", alpha.astype(np.float32), "SCALAR", 5126, {})]
    k = 0
    for band in range(degree + 1):
        for c in range(2 * band + 1):
            segments.append((f"KHR_gaussian_splatting:SH_DEGREE_{band}_COEF_{c}", np.ascontiguousarray(sh[:, k, :]),
                             "VEC3", 5126, {}))
            k += 1
    blob, views, accessors, attributes = bytearray(), [], [], {}
    for i, (name, data, typ, comp, extra) in enumerate(segments):
        raw = np.ascontiguousarray(data).tobytes()
        views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": len(raw), "target": 34962})
        blob += raw + b"\0" * (-len(raw) % 4)
        accessors.append({"bufferView": i, "byteOffset": 0, "componentType": comp, "count": n, "type": typ, **extra})
        attributes[name] = i
    doc = {
        "asset": {"version": "2.0", "generator": generator},
        "extensionsUsed": ["KHR_gaussian_splatting"],
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "buffers": [{"byteLength": len(blob)}], "bufferViews": views, "accessors": accessors,
        "meshes": [{"primitives": [{"attributes": attributes, "mode": 0, "extensions": {"KHR_gaussian_splatting": {
            "kernel": "ellipse", "colorSpace": "srgb_rec709_display", "sortingMethod": "cameraDistance",
            "projection": "perspective"}}}]}],
    }
    js = json.dumps(doc, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    total = 12 + 8 + len(js) + 8 + len(blob)
    return b"".join([struct.pack("<III", 0x46546C67, 2, total), struct.pack("<II", len(js), 0x4E4F534A), js,
                     struct.pack("<II", len(blob), 0x004E4942), bytes(blob)])


def export_gaussians(g: GaussianSet, path, fmt: str | None = None, convention: str = "auto",
                     min_opacity: float = 0.0) -> dict:
    """Write ``g`` (engine frame) to ``path`` in ``fmt`` (default: from the suffix: .ply, .splat,
    .spz, .glb), after pruning splats below ``min_opacity`` and converting axes to ``convention``.

    Returns {"path", "format", "convention", "splats", "pruned", "bytes"}. Raises
    :class:`ExportError` for an unknown format/convention or when pruning leaves nothing, and
    ``GaussianValidationError`` for an invalid set. The file appears only when complete."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
    g.validate()
    if g.sh.shape[1] != SH_COEFFS:
        raise ExportError(f"expected SH degree 3 ({SH_COEFFS} coefficients), got {g.sh.shape[1]}")
    conv = resolve_convention(convention, fmt)
    g, removed = prune(g, min_opacity) if min_opacity > 0 else (g, 0)
    g = rotate_gaussians(g, _ROTATIONS[conv])
    if fmt == "ply":
        write_ply(path, g)
    else:
        data = {"splat": splat_bytes, "spz": spz_bytes, "glb": glb_bytes}[fmt](g)
        _atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return {"path": str(path), "format": fmt, "convention": conv, "splats": len(g.means), "pruned": removed,
            "bytes": path.stat().st_size}


__all__ = ["export_gaussians", "rotate_gaussians", "prune", "splat_bytes", "spz_bytes", "glb_bytes",
           "sh_basis", "sh_rotation", "ExportError", "FORMATS", "CONVENTIONS"]
