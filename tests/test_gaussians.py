"""Tests for fastavatar_engine.gaussians (the GaussianSet type and its helpers)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastavatar_engine.gaussians import (
    SH_C0,
    SH_COEFFS,
    GaussianSet,
    GaussianValidationError,
    logit,
    rgb_to_sh_dc,
    sigmoid,
)


def make(n: int = 6, seed: int = 0) -> GaussianSet:
    rng = np.random.default_rng(seed)
    return GaussianSet(
        means=rng.normal(size=(n, 3)),
        log_scales=rng.normal(-4, 1, (n, 3)),
        rotations=rng.normal(size=(n, 4)),
        opacity_logits=rng.normal(size=n),
        sh=rng.normal(size=(n, 16, 3)),
        extra={"tag": ["a"]},
    )


def test_constants():
    assert SH_COEFFS == 16
    assert SH_C0 == pytest.approx(1.0 / (2.0 * math.sqrt(math.pi)), rel=1e-15)


def test_construction_converts_to_contiguous_float32():
    g = GaussianSet(
        means=np.arange(9, dtype=np.int64).reshape(3, 3),
        log_scales=np.zeros((3, 3), np.float64),
        rotations=np.asfortranarray(np.tile([1.0, 0, 0, 0], (3, 1))),
        opacity_logits=[0.0, 1.0, 2.0],
        sh=np.zeros((3, 16, 3), np.float16),
    )
    for name in ("means", "log_scales", "rotations", "opacity_logits", "sh"):
        arr = getattr(g, name)
        assert arr.dtype == np.float32 and arr.flags.c_contiguous, name
    assert g.count == len(g) == 3
    np.testing.assert_array_equal(g.means, np.arange(9).reshape(3, 3))
    assert g.validate() is g
    with pytest.raises(GaussianValidationError, match="sh: expected a numeric array"):
        GaussianSet(g.means, g.log_scales, g.rotations, g.opacity_logits, np.full((3, 16, 3), "x"))
    with pytest.raises(GaussianValidationError, match="means: expected a numeric array"):
        GaussianSet(np.zeros((3, 3), bool), g.log_scales, g.rotations, g.opacity_logits, g.sh)


# --------------------------------------------------------------------------- validate()
WRONG_SHAPES = [
    ("log_scales", (6, 4)),
    ("log_scales", (5, 3)),
    ("rotations", (6, 3)),
    ("rotations", (6,)),
    ("opacity_logits", (6, 1)),
    ("opacity_logits", (7,)),
    ("sh", (6, 9, 3)),
    ("sh", (6, 16)),
    ("sh", (6, 3, 16)),
]


@pytest.mark.parametrize("name, shape", WRONG_SHAPES)
def test_validate_wrong_shape_names_field(name, shape):
    g = make()
    setattr(g, name, np.zeros(shape, np.float32))
    with pytest.raises(GaussianValidationError, match=f"^{name}: expected shape") as ei:
        g.validate()
    assert str(list(shape)) in str(ei.value)


@pytest.mark.parametrize("shape", [(6, 2), (6,), (6, 3, 1), ()])
def test_validate_wrong_means_shape(shape):
    g = make()
    g.means = np.zeros(shape, np.float32)
    with pytest.raises(GaussianValidationError, match=r"^means: expected shape \[N, 3\]"):
        g.validate()


@pytest.mark.parametrize("name", ["means", "log_scales", "rotations", "opacity_logits", "sh"])
def test_validate_wrong_dtype_names_field(name):
    g = make()
    setattr(g, name, getattr(g, name).astype(np.float64))  # assigned after construction
    with pytest.raises(GaussianValidationError, match=f"^{name}: expected float32, got float64"):
        g.validate()


@pytest.mark.parametrize("name", ["means", "log_scales", "rotations", "opacity_logits", "sh"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_validate_non_finite_names_field_and_index(name, bad):
    g = make()
    arr = getattr(g, name)
    idx = (4,) + (0,) * (arr.ndim - 1)
    arr[idx] = bad
    with pytest.raises(GaussianValidationError, match=f"^{name}: 1 non-finite value") as ei:
        g.validate()
    assert "first bad Gaussian index 4" in str(ei.value)


def test_validate_zero_quaternion():
    g = make()
    g.rotations[3] = 0.0
    g.rotations[5] = 0.0
    with pytest.raises(GaussianValidationError, match=r"^rotations: 2 zero-length quaternion\(s\); first at index 3"):
        g.validate()
    g.rotations[3] = [1e-3, 0, 0, 0]  # small but non-zero is fine (need not be unit length)
    g.rotations[5] = [0, 0, 0, 7.0]
    g.validate()
    np.testing.assert_allclose(np.linalg.norm(g.unit_rotations, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(g.unit_rotations[5], [0, 0, 0, 1])


def test_validate_empty_set():
    g = GaussianSet(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 4)), np.zeros(0), np.zeros((0, 16, 3)))
    assert g.validate().count == 0


# --------------------------------------------------------------------------- sigmoid / logit
def test_sigmoid_matches_definition_and_is_stable():
    x = np.linspace(-30, 30, 121)
    np.testing.assert_allclose(sigmoid(x), 1.0 / (1.0 + np.exp(-x)), rtol=1e-12)
    with np.errstate(over="raise"):  # no overflow warnings at the extremes
        s = sigmoid(np.array([-1000.0, -745.0, 0.0, 745.0, 1000.0]))
    np.testing.assert_array_equal(s[[0, 2, 4]], [0.0, 0.5, 1.0])
    assert np.isfinite(s).all()


def test_sigmoid_dtype_and_shape():
    assert sigmoid(np.zeros((2, 3), np.float32)).dtype == np.float32
    assert sigmoid(np.zeros((2, 3), np.float16)).dtype == np.float32
    assert sigmoid(np.zeros(4, np.int64)).dtype == np.float64
    out = sigmoid(np.float64(0.3))
    assert out.dtype == np.float64 and out.shape == ()
    assert float(out) == pytest.approx(1.0 / (1.0 + math.exp(-0.3)), rel=1e-15)
    assert float(sigmoid(0.3)) == pytest.approx(1.0 / (1.0 + math.exp(-0.3)), rel=1e-15)


def test_logit_inverts_sigmoid():
    x = np.linspace(-10, 10, 41)
    np.testing.assert_allclose(logit(sigmoid(x)), x, atol=1e-9)
    p = np.linspace(0.001, 0.999, 50)
    np.testing.assert_allclose(sigmoid(logit(p)), p, rtol=1e-12)
    assert logit(0.5) == 0.0
    assert logit(0.9) == pytest.approx(math.log(9.0))
    # clipped so the result stays finite
    ends = logit(np.array([0.0, 1.0]))
    assert np.isfinite(ends).all()
    np.testing.assert_allclose(ends, [math.log(1e-6 / (1 - 1e-6)), -math.log(1e-6 / (1 - 1e-6))])


def test_rgb_to_sh_dc():
    np.testing.assert_allclose(rgb_to_sh_dc([0.5, 0.5, 0.5]), 0.0)
    np.testing.assert_allclose(rgb_to_sh_dc([1.0, 0.0, 0.75]) * SH_C0 + 0.5, [1.0, 0.0, 0.75])


# --------------------------------------------------------------------------- from_points
def test_from_points_colours_round_trip():
    rng = np.random.default_rng(7)
    pts = rng.normal(size=(30, 3))
    cols = rng.random((30, 3))
    g = GaussianSet.from_points(pts, colors=cols, scale=0.01, opacity=0.7)
    g.validate()
    np.testing.assert_allclose(g.base_colors, cols, atol=1e-6)
    np.testing.assert_array_equal(g.sh[:, 1:], 0.0)
    np.testing.assert_allclose(g.means, pts, rtol=1e-6)
    np.testing.assert_allclose(g.scales, 0.01, rtol=1e-6)
    np.testing.assert_allclose(g.opacities, 0.7, rtol=1e-6)
    np.testing.assert_array_equal(g.rotations, np.tile([1.0, 0, 0, 0], (30, 1)))


def test_from_points_defaults_and_per_point_scale():
    g = GaussianSet.from_points(np.zeros((3, 3)), scale=np.array([0.1, 0.2, 0.3]))
    np.testing.assert_allclose(g.base_colors, 0.5)  # grey
    np.testing.assert_array_equal(g.sh, 0.0)
    np.testing.assert_allclose(g.scales, [[0.1] * 3, [0.2] * 3, [0.3] * 3], rtol=1e-6)
    np.testing.assert_allclose(g.opacities, 0.9, rtol=1e-6)
    with pytest.raises(GaussianValidationError, match=r"points: expected shape \[N, 3\]"):
        GaussianSet.from_points(np.zeros((3, 2)))


def test_base_colors_clipped():
    g = GaussianSet.from_points(np.zeros((2, 3)))
    g.sh[0, 0] = [10.0, -10.0, 0.0]
    np.testing.assert_allclose(g.base_colors, [[1.0, 0.0, 0.5], [0.5, 0.5, 0.5]])


# --------------------------------------------------------------------------- subset / copy
def test_subset_mask_and_indices():
    g = make(8)
    mask = np.array([True, False, True, False, False, True, False, True])
    s = g.subset(mask)
    assert s.count == 4
    for name in ("means", "log_scales", "rotations", "opacity_logits", "sh"):
        np.testing.assert_array_equal(getattr(s, name), getattr(g, name)[mask])
    idx = np.array([7, 0, 0])
    s = g.subset(idx)
    np.testing.assert_array_equal(s.sh, g.sh[idx])
    np.testing.assert_array_equal(s.opacity_logits, g.opacity_logits[idx])
    s.validate()
    s.means[0] = 99.0
    assert g.means[7, 0] != 99.0  # a new array, not a view
    assert s.extra == g.extra and s.extra is not g.extra


def test_copy_is_deep():
    g = make(5)
    c = g.copy()
    for name in ("means", "log_scales", "rotations", "opacity_logits", "sh"):
        np.testing.assert_array_equal(getattr(c, name), getattr(g, name))
        assert not np.shares_memory(getattr(c, name), getattr(g, name))
    c.sh[...] = 0.0
    c.extra["tag"].append("b")
    assert np.abs(g.sh).sum() > 0
    assert g.extra == {"tag": ["a"]}
