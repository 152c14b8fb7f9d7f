"""Tests for fastavatar_engine.ply, checked against plyfile used directly as the independent reader
and writer. All PLY files are generated here, in tmp_path."""

from __future__ import annotations

import os

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from fastavatar_engine.gaussians import SH_C0, GaussianSet, GaussianValidationError
from fastavatar_engine.ply import (
    PlyFormatError,
    inria_property_names,
    read_ply,
    read_point_cloud,
    write_ply,
)

INRIA_ORDER = (
    ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    + [f"f_rest_{i}" for i in range(45)]
    + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
)


def random_gaussians(n: int = 50, seed: int = 0) -> GaussianSet:
    rng = np.random.default_rng(seed)
    return GaussianSet(
        means=rng.normal(0, 0.1, (n, 3)),
        log_scales=rng.normal(-5, 1, (n, 3)),
        rotations=rng.normal(0, 1, (n, 4)),
        opacity_logits=rng.normal(0, 2, n),
        sh=rng.normal(0, 0.5, (n, 16, 3)),
    )


def _write_plyfile(path, columns: dict, text=False, byte_order="<", dtype="f4"):
    """Write a vertex element with the given columns straight through plyfile."""
    n = len(next(iter(columns.values())))
    v = np.empty(n, dtype=[(k, byte_order + dtype if not text else dtype) for k in columns])
    for k, col in columns.items():
        v[k] = col
    PlyData([PlyElement.describe(v, "vertex")], text=text, byte_order=byte_order).write(str(path))
    return path


def _inria_columns(g: GaussianSet, degree: int, normals: bool = True) -> dict:
    """INRIA columns computed independently of write_ply (explicit channel-major loop)."""
    n = g.count
    cols = {"x": g.means[:, 0], "y": g.means[:, 1], "z": g.means[:, 2]}
    if normals:
        cols.update(nx=np.zeros(n), ny=np.zeros(n), nz=np.zeros(n))
    for c in range(3):
        cols[f"f_dc_{c}"] = g.sh[:, 0, c]
    m = (degree + 1) ** 2 - 1
    for c in range(3):
        for k in range(m):
            cols[f"f_rest_{c * m + k}"] = g.sh[:, 1 + k, c]
    cols["opacity"] = g.opacity_logits
    for i in range(3):
        cols[f"scale_{i}"] = g.log_scales[:, i]
    for i in range(4):
        cols[f"rot_{i}"] = g.rotations[:, i]
    return cols


# --------------------------------------------------------------------------- writing
def test_round_trip_exact(tmp_path):
    g = random_gaussians(200)
    p = write_ply(tmp_path / "g.ply", g)
    assert p == tmp_path / "g.ply"
    h = read_ply(p)
    assert h.count == 200 and h.extra["sh_degree"] == 3
    for name in ("means", "log_scales", "rotations", "opacity_logits", "sh"):
        a, b = getattr(g, name), getattr(h, name)
        assert b.dtype == np.float32
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_written_file_layout_with_plyfile(tmp_path):
    g = random_gaussians(30, seed=1)
    p = write_ply(tmp_path / "g.ply", g)
    raw = p.read_bytes()
    assert raw.startswith(b"ply\nformat binary_little_endian 1.0\n")
    ply = PlyData.read(str(p))
    assert [e.name for e in ply.elements] == ["vertex"]
    v = ply["vertex"]
    assert v.count == 30
    names = [prop.name for prop in v.properties]
    assert names == INRIA_ORDER and len(names) == 62
    assert names == inria_property_names(3)
    assert all(prop.val_dtype in ("f4", "float32") or np.dtype(prop.val_dtype) == np.float32 for prop in v.properties)
    assert all(np.dtype(v.data.dtype[k]) == np.dtype("<f4") for k in names)
    # the body is exactly n * 62 little-endian float32s, in column order
    body = np.frombuffer(raw[raw.index(b"end_header\n") + len(b"end_header\n"):], dtype="<f4")
    assert body.size == 30 * 62
    body = body.reshape(30, 62)
    np.testing.assert_array_equal(body[:, 0:3], g.means)
    np.testing.assert_array_equal(body[:, 3:6], 0.0)  # normals
    np.testing.assert_array_equal(body[:, 6:9], g.sh[:, 0, :])
    np.testing.assert_array_equal(body[:, 54], g.opacity_logits)
    np.testing.assert_array_equal(body[:, 55:58], g.log_scales)
    np.testing.assert_array_equal(body[:, 58:62], g.rotations)
    # f_rest is channel-major: f_rest_{c*15 + k} = sh[:, 1 + k, c]
    for c in range(3):
        for k in range(15):
            np.testing.assert_array_equal(v[f"f_rest_{c * 15 + k}"], g.sh[:, 1 + k, c])
    # one specific coefficient: green channel, SH coefficient 3 (k = 2) -> f_rest_17 = column 9 + 17
    np.testing.assert_array_equal(body[:, 26], g.sh[:, 3, 1])
    assert not np.array_equal(body[:, 26], g.sh[:, 6, 0])  # what a coefficient-major writer would put there


def test_write_lower_sh_degree(tmp_path):
    g = random_gaussians(10, seed=2)
    p = write_ply(tmp_path / "d1.ply", g, sh_degree=1)
    v = PlyData.read(str(p))["vertex"]
    assert [prop.name for prop in v.properties] == inria_property_names(1)
    assert len(inria_property_names(1)) == 17 + 9
    np.testing.assert_array_equal(v["f_rest_4"], g.sh[:, 2, 1])  # G, coefficient 2: 1*3 + 1
    h = read_ply(p)
    assert h.extra["sh_degree"] == 1
    np.testing.assert_array_equal(h.sh[:, :4], g.sh[:, :4])
    np.testing.assert_array_equal(h.sh[:, 4:], 0.0)
    with pytest.raises(ValueError, match="sh_degree"):
        write_ply(tmp_path / "bad.ply", g, sh_degree=4)


def test_write_validates(tmp_path):
    g = random_gaussians(5)
    g.sh[2, 5, 1] = np.nan
    with pytest.raises(GaussianValidationError, match="sh"):
        write_ply(tmp_path / "nan.ply", g)
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "atomic.ply"
    write_ply(target, random_gaussians(4, seed=3))
    before = target.read_bytes()

    def failing_write(self, stream):
        with open(stream, "wb") as fh:
            fh.write(b"ply\nformat binary_little_endian 1.0\n")  # a partial file ...
        raise OSError("disk full (simulated)")  # ... then the failure

    monkeypatch.setattr(PlyData, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_ply(target, random_gaussians(8, seed=4))
    assert target.read_bytes() == before  # the old file is untouched
    new = tmp_path / "new.ply"
    with pytest.raises(OSError, match="disk full"):
        write_ply(new, random_gaussians(8, seed=4))
    assert not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atomic.ply"]  # no temp files left


def test_written_file_permissions_follow_umask(tmp_path):
    p = write_ply(tmp_path / "perm.ply", random_gaussians(3))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(p).st_mode & 0o777 == 0o666 & ~umask


# --------------------------------------------------------------------------- reading files plyfile wrote
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_read_sh_degrees(tmp_path, degree):
    g = random_gaussians(25, seed=10 + degree)
    p = _write_plyfile(tmp_path / f"d{degree}.ply", _inria_columns(g, degree))
    h = read_ply(p)
    assert h.extra["sh_degree"] == degree
    m = (degree + 1) ** 2
    np.testing.assert_array_equal(h.sh[:, :m], g.sh[:, :m])
    np.testing.assert_array_equal(h.sh[:, m:], 0.0)  # missing orders are zero
    np.testing.assert_array_equal(h.means, g.means)
    np.testing.assert_array_equal(h.rotations, g.rotations)
    np.testing.assert_array_equal(h.opacity_logits, g.opacity_logits)
    np.testing.assert_array_equal(h.log_scales, g.log_scales)


def test_read_without_normals_and_shuffled_order(tmp_path):
    g = random_gaussians(12, seed=20)
    cols = _inria_columns(g, 3, normals=False)
    keys = list(cols)
    np.random.default_rng(0).shuffle(keys)  # property order in the file must not matter
    p = _write_plyfile(tmp_path / "nonormals.ply", {k: cols[k] for k in keys})
    h = read_ply(p)
    np.testing.assert_array_equal(h.sh, g.sh)
    np.testing.assert_array_equal(h.means, g.means)


def test_read_ascii(tmp_path):
    g = random_gaussians(7, seed=21)
    p = _write_plyfile(tmp_path / "ascii.ply", _inria_columns(g, 1), text=True)
    assert p.read_bytes().startswith(b"ply\nformat ascii 1.0\n")
    h = read_ply(p)
    np.testing.assert_allclose(h.means, g.means, rtol=1e-6)
    np.testing.assert_allclose(h.sh[:, :4], g.sh[:, :4], rtol=1e-6)


def test_read_big_endian_and_double(tmp_path):
    g = random_gaussians(9, seed=22)
    p = _write_plyfile(tmp_path / "be.ply", _inria_columns(g, 3), byte_order=">")
    assert b"format binary_big_endian" in p.read_bytes()[:40]
    h = read_ply(p)
    np.testing.assert_array_equal(h.sh, g.sh)
    np.testing.assert_array_equal(h.rotations, g.rotations)
    p = _write_plyfile(tmp_path / "f8.ply", _inria_columns(g, 0), dtype="f8")
    np.testing.assert_array_equal(read_ply(p).means, g.means)


# --------------------------------------------------------------------------- malformed files
@pytest.mark.parametrize("missing", ["opacity", "rot_3", "scale_1", "f_dc_2", "y"])
def test_missing_property_named(tmp_path, missing):
    cols = _inria_columns(random_gaussians(4), 0)
    del cols[missing]
    p = _write_plyfile(tmp_path / "missing.ply", cols)
    with pytest.raises(PlyFormatError, match=f"'{missing}'") as ei:
        read_ply(p)
    assert "missing.ply" in str(ei.value)


def test_nan_in_file_is_validation_error(tmp_path):
    g = random_gaussians(6)
    cols = _inria_columns(g, 3)
    cols["f_rest_20"] = cols["f_rest_20"].copy()
    cols["f_rest_20"][4] = np.nan
    p = _write_plyfile(tmp_path / "nan.ply", cols)
    with pytest.raises(GaussianValidationError, match="sh") as ei:
        read_ply(p)
    assert "nan.ply" in str(ei.value) and "index 4" in str(ei.value)


def test_wrong_f_rest_count(tmp_path):
    cols = _inria_columns(random_gaussians(4), 1)
    del cols["f_rest_8"]
    with pytest.raises(PlyFormatError, match="8 f_rest"):
        read_ply(_write_plyfile(tmp_path / "rest8.ply", cols))
    cols = _inria_columns(random_gaussians(4), 1)
    cols["f_rest_9"] = cols.pop("f_rest_3")  # 9 of them, but not numbered 0..8
    with pytest.raises(PlyFormatError, match="numbered"):
        read_ply(_write_plyfile(tmp_path / "gap.ply", cols))


def test_truncated_binary(tmp_path):
    p = write_ply(tmp_path / "full.ply", random_gaussians(20))
    raw = p.read_bytes()
    header_end = raw.index(b"end_header\n") + len(b"end_header\n")
    for cut in (header_end - 5, header_end + 1, header_end + 62 * 4 * 10 + 3, len(raw) - 1):
        q = tmp_path / "cut.ply"
        q.write_bytes(raw[:cut])
        with pytest.raises(PlyFormatError, match="cut.ply.*truncated"):
            read_ply(q)


def test_truncated_ascii(tmp_path):
    g = random_gaussians(50, seed=23)
    p = _write_plyfile(tmp_path / "a.ply", _inria_columns(g, 0), text=True)
    raw = p.read_bytes()
    q = tmp_path / "cut_ascii.ply"
    q.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(PlyFormatError, match="cut_ascii.ply"):
        read_ply(q)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty"),
        (b"solid cube\nfacet normal 0 0 1\n", "not a PLY"),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a PLY"),
        (b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\n", "end_header"),
        (b"ply\nformat binary_little_endian 1.0\nelement vertex abc\nproperty float x\nend_header\n", "malformed"),
        (b"plyfoo\nformat ascii 1.0\nend_header\n", "not a PLY"),
    ],
)
def test_not_a_ply(tmp_path, content, reason):
    p = tmp_path / "bad.ply"
    p.write_bytes(content)
    for reader in (read_ply, read_point_cloud):
        with pytest.raises(PlyFormatError, match=reason) as ei:
            reader(p)
        assert "bad.ply" in str(ei.value)


def test_missing_and_directory(tmp_path):
    with pytest.raises(PlyFormatError, match="not found"):
        read_ply(tmp_path / "nope.ply")
    (tmp_path / "dir.ply").mkdir()
    with pytest.raises(PlyFormatError, match="dir.ply"):
        read_ply(tmp_path / "dir.ply")


@pytest.mark.parametrize("fmt", ["binary_little_endian", "ascii"])
@pytest.mark.parametrize("count", [10**12, 10**9, 25_000_000])
def test_absurd_vertex_count_refused_before_reading(tmp_path, monkeypatch, fmt, count):
    p = write_ply(tmp_path / "g.ply", random_gaussians(5))
    raw = p.read_bytes().replace(b"element vertex 5", f"element vertex {count}".encode())
    raw = raw.replace(b"binary_little_endian", fmt.encode())
    p.write_bytes(raw)

    def no_read(*a, **k):
        raise AssertionError("plyfile must not be asked to read (and allocate) this file")

    monkeypatch.setattr(PlyData, "read", no_read)
    with pytest.raises(PlyFormatError, match=f"{count:,} vertices, above the limit of 20,000,000"):
        read_ply(p)
    with pytest.raises(PlyFormatError, match="above the limit"):
        read_point_cloud(p)


def test_vertex_count_larger_than_file_refused_before_reading(tmp_path, monkeypatch):
    p = write_ply(tmp_path / "g.ply", random_gaussians(5))
    p.write_bytes(p.read_bytes().replace(b"element vertex 5", b"element vertex 1000000"))
    monkeypatch.setattr(PlyData, "read", lambda *a, **k: pytest.fail("read must not be reached"))
    with pytest.raises(PlyFormatError, match=r"truncated.*1,000,000 vertex.*248,000,000 bytes"):
        read_ply(p)


def test_max_vertices_parameter(tmp_path):
    p = write_ply(tmp_path / "g.ply", random_gaussians(10))
    assert read_ply(p, max_vertices=10).count == 10
    with pytest.raises(PlyFormatError, match="above the limit of 9"):
        read_ply(p, max_vertices=9)


# --------------------------------------------------------------------------- point clouds
def test_read_point_cloud_xyz_only(tmp_path):
    pts = np.random.default_rng(30).normal(0, 0.1, (40, 3)).astype(np.float32)
    p = _write_plyfile(tmp_path / "xyz.ply", {"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2]})
    with pytest.raises(PlyFormatError, match="read_point_cloud"):
        read_ply(p)
    g = read_point_cloud(p, scale=0.003, opacity=0.8)
    assert g.count == 40 and g.extra["sh_degree"] == 0
    np.testing.assert_array_equal(g.means, pts)
    np.testing.assert_allclose(g.scales, 0.003, rtol=1e-6)
    np.testing.assert_allclose(g.opacities, 0.8, rtol=1e-6)
    np.testing.assert_array_equal(g.rotations, np.tile([1, 0, 0, 0], (40, 1)))
    np.testing.assert_array_equal(g.sh[:, 1:], 0.0)
    # no colours: false colour from the normalised position, in [0.15, 0.85]
    lo, hi = pts.min(0).astype(np.float64), pts.max(0).astype(np.float64)
    np.testing.assert_allclose(g.base_colors, 0.15 + 0.7 * (pts - lo) / (hi - lo), atol=1e-5)


def test_read_point_cloud_with_uchar_colours(tmp_path):
    rng = np.random.default_rng(31)
    pts = rng.normal(0, 0.1, (16, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    v = np.empty(16, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for i, k in enumerate("xyz"):
        v[k] = pts[:, i]
    for i, k in enumerate(("red", "green", "blue")):
        v[k] = rgb[:, i]
    p = tmp_path / "rgb.ply"
    PlyData([PlyElement.describe(v, "vertex")], text=True).write(str(p))
    g = read_point_cloud(p)
    np.testing.assert_allclose(g.base_colors, rgb / 255.0, atol=1e-6)
    np.testing.assert_allclose(g.sh[:, 0], (rgb / 255.0 - 0.5) / SH_C0, rtol=1e-5, atol=1e-5)


def test_read_point_cloud_float_colours_and_3dgs_passthrough(tmp_path):
    pts = np.zeros((3, 3), np.float32)
    cols = {"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2],
            "red": np.array([0.0, 0.5, 1.0]), "green": np.array([1.0, 0.5, 0.0]), "blue": np.array([0.2, 0.2, 0.2])}
    g = read_point_cloud(_write_plyfile(tmp_path / "fc.ply", cols))
    np.testing.assert_allclose(g.base_colors, [[0, 1, 0.2], [0.5, 0.5, 0.2], [1, 0, 0.2]], atol=1e-6)
    gs = random_gaussians(5)
    h = read_point_cloud(write_ply(tmp_path / "gs.ply", gs))
    np.testing.assert_array_equal(h.sh, gs.sh)  # a 3DGS PLY is read as such
    with pytest.raises(PlyFormatError, match="x, y, z"):
        read_point_cloud(_write_plyfile(tmp_path / "noxyz.ply", {"a": np.zeros(3), "b": np.zeros(3)}))


@pytest.mark.sample_data
def test_read_point_cloud_sample_points3d(samples):
    p = samples / "128" / "points3d.ply"
    ref = PlyData.read(str(p))["vertex"]  # independent reader
    g = read_point_cloud(p)
    assert g.count == 10144
    np.testing.assert_array_equal(g.means, np.stack([ref["x"], ref["y"], ref["z"]], axis=1).astype(np.float32))
    ext = g.means.max(0) - g.means.min(0)
    assert 0.15 < ext[0] < 0.35  # a head, in metres
    assert np.isfinite(g.base_colors).all()
