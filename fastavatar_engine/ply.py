"""INRIA 3D Gaussian Splatting PLY files, read and written with ``plyfile`` (numpy only).

Layout written (binary little-endian, one ``vertex`` element, float32 properties in this order,
as the reference implementation of Kerbl et al. 2023 writes them)::

    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 ... f_rest_44 opacity scale_0 scale_1 scale_2
    rot_0 rot_1 rot_2 rot_3

``opacity`` is the opacity logit, ``scale_*`` are log standard deviations, ``rot_0`` is the
quaternion's w, and ``f_rest`` is channel-major: for SH degree d with m = (d+1)^2 - 1 higher-order
coefficients per channel, ``f_rest_{c*m + k}`` is coefficient k+1 of channel c (R=0, G=1, B=2).
Normals are written as zeros (3DGS does not use them).

The reader also accepts SH degree 0-2 (missing orders become zero), files without normals, and
ASCII or big-endian PLYs. A PLY that is a plain point cloud (no Gaussian properties) is rejected
by :func:`read_ply` and can be turned into isotropic Gaussians by :func:`read_point_cloud`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from .gaussians import SH_COEFFS, GaussianSet, GaussianValidationError

#: Largest vertex count accepted from a file (protects against absurd header counts).
MAX_VERTICES = 20_000_000

_SH_REST_COUNTS = {0: 0, 9: 1, 24: 2, 45: 3}  # number of f_rest properties -> SH degree


class PlyFormatError(ValueError):
    """A PLY file is unreadable, truncated, or lacks the properties of a 3DGS PLY."""


def inria_property_names(sh_degree: int = 3) -> list[str]:
    """The INRIA property names in file order for ``sh_degree`` in 0..3 (62 names for degree 3)."""
    m = (sh_degree + 1) ** 2 - 1
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(3 * m)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``, so a failure never leaves a partial file.

    The temporary file is created next to ``path`` with mode 0o666 filtered by the umask (as
    ``open(path, "w")`` would), not the owner-only 0o600 of :func:`tempfile.mkstemp`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise FileExistsError(f"{path}: cannot create a temporary file next to it")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_ply(path: str | os.PathLike, gaussians: GaussianSet, sh_degree: int = 3) -> Path:
    """Write ``gaussians`` as a binary little-endian INRIA 3DGS PLY at ``path`` (atomically).

    ``sh_degree`` (0-3) truncates the SH coefficients written. Validates the set first
    (:class:`GaussianValidationError`). Returns the path written.
    """
    if sh_degree not in (0, 1, 2, 3):
        raise ValueError(f"sh_degree must be 0..3, got {sh_degree}")
    g = gaussians.validate()
    n = g.count
    m = (sh_degree + 1) ** 2 - 1
    names = inria_property_names(sh_degree)
    columns = [g.means, np.zeros((n, 3), np.float32), g.sh[:, 0, :]]
    # channel-major f_rest: [N, 3 channels, m coefficients] flattened
    columns.append(np.transpose(g.sh[:, 1 : 1 + m, :], (0, 2, 1)).reshape(n, 3 * m))
    columns += [g.opacity_logits[:, None], g.log_scales, g.rotations]
    data = np.concatenate(columns, axis=1).astype("<f4")
    assert data.shape[1] == len(names)
    vertex = np.empty(n, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = data[:, i]
    ply = PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<")
    out = Path(path)
    _atomic_write(out, lambda tmp: ply.write(tmp))
    return out


_PLY_TYPE_SIZES = {
    "char": 1, "int8": 1, "uchar": 1, "uint8": 1, "short": 2, "int16": 2, "ushort": 2, "uint16": 2,
    "int": 4, "int32": 4, "uint": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8,
}
_MAX_HEADER_BYTES = 1 << 20


def _check_header(path: Path, fh, max_vertices: int) -> None:
    """Scan the header of an open PLY and refuse absurd or truncated element counts *before*
    plyfile allocates arrays for them (it sizes its arrays from the header's counts)."""
    header = b""
    while not header.endswith((b"end_header\n", b"end_header\r\n")):
        line = fh.readline()
        if not line:
            raise PlyFormatError(f"{path}: header is truncated (no end_header line)")
        header += line
        if len(header) > _MAX_HEADER_BYTES:
            raise PlyFormatError(f"{path}: no end_header within the first {_MAX_HEADER_BYTES} bytes")
    fmt = None
    elements: list[list] = []  # [name, count, min_row_bytes, n_properties]
    for raw in header.decode("ascii", errors="replace").splitlines():
        words = raw.split()
        if not words:
            continue
        if words[0] == "format" and len(words) >= 2:
            fmt = words[1]
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise PlyFormatError(f"{path}: malformed header line {raw.strip()!r}")
            elements.append([words[1], int(words[2]), 0, 0])
        elif words[0] == "property" and elements:
            elements[-1][3] += 1
            # scalar: its size; list: at least its length field (an empty list)
            size_type = words[2] if len(words) >= 3 and words[1] == "list" else (words[1] if len(words) > 1 else "")
            elements[-1][2] += _PLY_TYPE_SIZES.get(size_type, 1)
    for name, count, _, _ in elements:
        if name == "vertex" and count > max_vertices:
            raise PlyFormatError(
                f"{path}: header declares {count:,} vertices, above the limit of {max_vertices:,}"
            )
    remaining = path.stat().st_size - fh.tell()  # bytes after end_header
    if fmt in ("binary_little_endian", "binary_big_endian"):
        needed = sum(count * row for _, count, row, _ in elements)
        what = "bytes"
    elif fmt == "ascii":
        # every value is at least one character followed by a space or a newline
        needed = sum(count * 2 * nprop for _, count, _, nprop in elements) - 1
        what = "bytes of text"
    else:
        raise PlyFormatError(f"{path}: unknown PLY format {fmt!r}")
    if needed > remaining:
        counts = ", ".join(f"{count:,} {name}" for name, count, _, _ in elements)
        raise PlyFormatError(
            f"{path}: file is truncated: header declares {counts} (at least {needed:,} {what}) "
            f"but only {max(remaining, 0):,} bytes follow the header"
        )


def _read_vertices(path: Path, max_vertices: int):
    if not path.exists():
        raise PlyFormatError(f"{path}: file not found")
    if path.is_dir():
        raise PlyFormatError(f"{path}: is a directory, not a PLY file")
    if path.stat().st_size == 0:
        raise PlyFormatError(f"{path}: file is empty (0 bytes)")
    try:
        with open(path, "rb") as fh:
            if fh.readline().rstrip(b"\r\n") != b"ply":
                raise PlyFormatError(f"{path}: not a PLY file (missing 'ply' magic)")
            _check_header(path, fh, max_vertices)
        ply = PlyData.read(str(path), mmap=False)
    except PlyFormatError:
        raise
    except Exception as exc:  # plyfile raises PlyParseError, ValueError, IndexError, ...
        raise PlyFormatError(f"{path}: cannot parse PLY ({type(exc).__name__}: {exc})") from exc
    if "vertex" not in [e.name for e in ply.elements]:
        raise PlyFormatError(f"{path}: no 'vertex' element")
    vertex = ply["vertex"]
    if vertex.count > max_vertices:
        raise PlyFormatError(f"{path}: {vertex.count} vertices exceeds the limit of {max_vertices}")
    return vertex


def read_ply(path: str | os.PathLike, max_vertices: int = MAX_VERTICES) -> GaussianSet:
    """Read an INRIA 3DGS PLY (SH degree 0-3, with or without normals, ASCII or binary).

    Returns a validated :class:`GaussianSet` with SH padded to degree 3 with zeros; the file's SH
    degree is stored in ``extra["sh_degree"]``. Raises :class:`PlyFormatError` naming the file and
    the missing property, or :class:`GaussianValidationError` for NaN/inf values.
    """
    path = Path(path)
    return _gaussians_from_vertex(_read_vertices(path, max_vertices), path)


def _is_gaussian_ply(names: set) -> bool:
    return {"opacity", "scale_0", "rot_0", "f_dc_0"} <= names


def _gaussians_from_vertex(vertex, path: Path) -> GaussianSet:
    """The 3DGS Gaussians of an already parsed ``vertex`` element (see :func:`read_ply`)."""
    names = set(vertex.data.dtype.names or ())
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [p for p in required if p not in names]
    if missing:
        raise PlyFormatError(
            f"{path}: not a 3D Gaussian Splatting PLY; missing properties {missing} "
            f"(use read_point_cloud for plain point clouds)"
        )
    n_rest = sum(1 for p in names if p.startswith("f_rest_"))
    if n_rest not in _SH_REST_COUNTS:
        raise PlyFormatError(f"{path}: {n_rest} f_rest properties; expected 0, 9, 24 or 45 (SH degree 0-3)")
    degree = _SH_REST_COUNTS[n_rest]
    rest_names = [f"f_rest_{i}" for i in range(n_rest)]
    if any(p not in names for p in rest_names):
        raise PlyFormatError(f"{path}: f_rest properties are not numbered 0..{n_rest - 1}")

    def cols(keys):
        try:
            return np.stack([np.asarray(vertex[k], dtype=np.float32) for k in keys], axis=1)
        except (TypeError, ValueError) as exc:  # e.g. a list property where a scalar belongs
            raise PlyFormatError(f"{path}: properties {list(keys)} are not numeric scalars ({exc})") from exc

    n = vertex.count
    m = (degree + 1) ** 2 - 1
    sh = np.zeros((n, SH_COEFFS, 3), np.float32)
    sh[:, 0, :] = cols(["f_dc_0", "f_dc_1", "f_dc_2"])
    if m:
        sh[:, 1 : 1 + m, :] = np.transpose(cols(rest_names).reshape(n, 3, m), (0, 2, 1))
    g = GaussianSet(
        means=cols(["x", "y", "z"]),
        log_scales=cols(["scale_0", "scale_1", "scale_2"]),
        rotations=cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
        opacity_logits=cols(["opacity"])[:, 0],
        sh=sh,
        extra={"sh_degree": degree, "source": str(path)},
    )
    try:
        return g.validate()
    except GaussianValidationError as exc:
        raise GaussianValidationError(f"{path}: {exc}") from exc


def read_point_cloud(
    path: str | os.PathLike, scale: float = 0.0015, opacity: float = 0.95, max_vertices: int = MAX_VERTICES
) -> GaussianSet:
    """Read any PLY with x, y, z as isotropic Gaussians (e.g. the sample data's ``points3d.ply``).

    A 3DGS PLY is returned as such (as :func:`read_ply` would). Otherwise each vertex becomes a
    Gaussian with standard deviation ``scale`` metres and ``opacity``, marked
    ``extra["point_cloud"] = True``; colours come from ``red/green/blue`` (uchar 0-255 or float
    0-1) when present and not all zero, else from the vertex position normalised to the bounding
    box (a false-colour view so the shape is readable). Raises :class:`PlyFormatError`.
    """
    path = Path(path)
    vertex = _read_vertices(path, max_vertices)
    names = set(vertex.data.dtype.names or ())
    if _is_gaussian_ply(names):
        return _gaussians_from_vertex(vertex, path)
    if not {"x", "y", "z"} <= names:
        raise PlyFormatError(f"{path}: vertex element lacks x, y, z")
    pts = np.stack([np.asarray(vertex[k], dtype=np.float64) for k in "xyz"], axis=1)
    if not np.isfinite(pts).all():
        raise GaussianValidationError(f"{path}: {int((~np.isfinite(pts)).sum())} non-finite coordinate(s)")
    colors = None
    if {"red", "green", "blue"} <= names:
        c = np.stack([np.asarray(vertex[k], dtype=np.float64) for k in ("red", "green", "blue")], axis=1)
        if vertex["red"].dtype.kind in "iu":
            c = c / 255.0
        if c.max(initial=0.0) > 0:
            colors = np.clip(c, 0, 1)
    if colors is None and len(pts):
        lo, hi = pts.min(0), pts.max(0)
        colors = 0.15 + 0.7 * (pts - lo) / np.maximum(hi - lo, 1e-9)
    g = GaussianSet.from_points(pts, colors=colors, scale=scale, opacity=opacity)
    g.extra.update({"source": str(path), "sh_degree": 0, "point_cloud": True})
    return g.validate()
