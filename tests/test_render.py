"""Tests of the rendering interface and the pure-PyTorch rasteriser.

Checked against closed-form values (one Gaussian's peak and footprint, two-layer compositing,
SH colours) and against an independent dense NumPy renderer written here from the 3DGS
equations, which shares no code with the engine.
"""

import math

import numpy as np
import pytest
import torch

from fastavatar_engine.cameras import intrinsics, look_at, viewmat_from_c2w
from fastavatar_engine.gaussians import SH_C0, GaussianSet, logit
from fastavatar_engine.render import GaussianTensors, render, resolve_backend
from fastavatar_engine.render.torch_rasterizer import rasterize

W = H = 64
F = 80.0
K = intrinsics(F, F, 32.0, 32.0)  # principal point on the corner between 4 pixel centres
K_CENTRED = intrinsics(F, F, 32.5, 32.5)  # principal point on pixel (32, 32)'s centre
C2W = look_at((0.0, 0.0, 2.0), (0.0, 0.0, 0.0))  # camera on +z looking at the origin
WHITE = (1.0, 1.0, 1.0)


def one_gaussian(pos=(0, 0, 0), sigma=0.01, opacity=0.8, rgb=(1.0, 0.0, 0.0)):
    return GaussianSet.from_points(np.array([pos], float), colors=np.array([rgb]), scale=sigma, opacity=opacity)


def cat(*sets):
    return GaussianSet(
        *(np.concatenate([getattr(s, f) for s in sets]) for f in ("means", "log_scales", "rotations", "opacity_logits", "sh"))
    )


def to_np(t):
    return t.detach().cpu().numpy()


# ----------------------------------------------------------------- analytic cases
def test_isotropic_gaussian_peak_and_footprint():
    sigma, opacity, depth = 0.01, 0.8, 2.0
    g = one_gaussian(sigma=sigma, opacity=opacity, rgb=(1.0, 0.0, 0.0))
    rgb, alpha = render(g, C2W, K_CENTRED, W, H, WHITE, backend="torch")
    rgb, alpha = to_np(rgb), to_np(alpha)
    # closed form: projected variance (f s / z)^2 plus the 0.3 px^2 low-pass
    var_px = (F * sigma / depth) ** 2 + 0.3
    j, i = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    r2 = (j - 32.5) ** 2 + (i - 32.5) ** 2
    expected = opacity * np.exp(-0.5 * r2 / var_px)
    expected[expected < 1 / 255] = 0.0
    assert np.unravel_index(np.argmax(alpha), alpha.shape) == (32, 32)
    assert alpha[32, 32] == pytest.approx(opacity, abs=1e-6)
    np.testing.assert_allclose(alpha, expected, atol=1e-5)
    # footprint: pixels above half the peak form a disc of radius sqrt(2 ln 2 var)
    half = alpha > opacity / 2
    assert abs(half.sum() - math.pi * 2 * math.log(2) * var_px) < 0.15 * half.sum() + 4
    # colour = red over white with that alpha
    np.testing.assert_allclose(rgb[..., 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(rgb[..., 1], 1.0 - expected, atol=1e-5)


def test_occlusion_order_and_input_order_invariance():
    near = one_gaussian(pos=(0, 0, 0.5), sigma=0.05, opacity=0.7, rgb=(1, 0, 0))
    far = one_gaussian(pos=(0, 0, -0.5), sigma=0.05, opacity=0.6, rgb=(0, 0, 1))
    a = to_np(render(cat(near, far), C2W, K_CENTRED, W, H, WHITE, backend="torch")[0])
    b = to_np(render(cat(far, near), C2W, K_CENTRED, W, H, WHITE, backend="torch")[0])
    np.testing.assert_allclose(a, b, atol=1e-6)
    # centre pixel: red (alpha .7) over blue (alpha .6) over white
    red, blue, white = np.array([1, 0, 0]), np.array([0, 0, 1]), np.ones(3)
    expected = 0.7 * red + 0.3 * 0.6 * blue + 0.3 * 0.4 * white
    np.testing.assert_allclose(a[32, 32], expected, atol=1e-5)
    # moving the blue one in front flips the order
    front_blue = one_gaussian(pos=(0, 0, 1.0), sigma=0.05, opacity=0.6, rgb=(0, 0, 1))
    c = to_np(render(cat(near, front_blue), C2W, K_CENTRED, W, H, WHITE, backend="torch")[0])
    np.testing.assert_allclose(c[32, 32], 0.6 * blue + 0.4 * 0.7 * red + 0.4 * 0.3 * white, atol=1e-5)


def test_sh_dc_colour_and_background():
    rgb_true = np.array([0.2, 0.6, 0.9])
    g = one_gaussian(sigma=0.2, opacity=0.9, rgb=rgb_true)
    assert g.sh[0, 0] == pytest.approx((rgb_true - 0.5) / SH_C0, rel=1e-6)
    for bg in (WHITE, (0.0, 0.0, 0.0)):
        rgb, alpha = render(g, C2W, K_CENTRED, W, H, bg, backend="torch")
        np.testing.assert_allclose(to_np(rgb)[32, 32], 0.9 * rgb_true + 0.1 * np.array(bg), atol=1e-5)
    rgb, alpha = render(g, C2W, K_CENTRED, W, H, (0.25, 0.5, 0.75), backend="torch")
    np.testing.assert_allclose(to_np(rgb)[0, 0], [0.25, 0.5, 0.75], atol=1e-6)  # nothing covers the corner


def test_sh_degree_one_view_dependence():
    """Degree-1 SH: colour = C0 dc - C1 y c1 + C1 z c2 - C1 x c3 + 0.5 for the unit view direction."""
    g = one_gaussian(pos=(0, 0, 0), sigma=0.3, opacity=0.99, rgb=(0.5, 0.5, 0.5))
    g.sh[0, 1:4, 0] = [0.0, 0.4, 0.0]  # red varies with the z of the view direction
    for eye in [(0.0, 0.0, 2.0), (0.0, 0.0, -2.0), (2.0, 0.0, 0.0)]:
        c2w = look_at(eye, (0, 0, 0))
        rgb = to_np(render(g, c2w, K_CENTRED, W, H, (0, 0, 0), backend="torch")[0])
        d = -np.array(eye) / np.linalg.norm(eye)  # camera -> Gaussian
        red = 0.5 + 0.4886025119029199 * d[2] * 0.4
        assert rgb[32, 32, 0] == pytest.approx(0.99 * red, abs=1e-5)
        assert rgb[32, 32, 1] == pytest.approx(0.99 * 0.5, abs=1e-5)


def test_behind_camera_and_transparent_gaussians_are_culled():
    behind = one_gaussian(pos=(0, 0, 3.0), sigma=0.5, opacity=0.9)  # camera at z=2 looks to -z
    faint = one_gaussian(pos=(0, 0, 0), sigma=0.5, opacity=0.003)
    rgb, alpha = render(cat(behind, faint), C2W, K_CENTRED, W, H, WHITE, backend="torch")
    assert float(alpha.max()) == 0.0
    np.testing.assert_allclose(to_np(rgb), 1.0)


def test_anisotropic_rotated_gaussian_is_elongated_along_rotated_axis():
    g = one_gaussian(sigma=0.01, opacity=0.9)
    g.log_scales[0] = np.log([0.2, 0.01, 0.01])  # long along local x
    half = math.radians(45) / 2  # rotate 90 deg about z -> long along world y (image rows)
    g.rotations[0] = [math.cos(2 * half), 0, 0, math.sin(2 * half)]
    alpha = to_np(render(g, C2W, K_CENTRED, W, H, WHITE, backend="torch")[1])
    rows = (alpha > 0.1).any(axis=1).sum()
    cols = (alpha > 0.1).any(axis=0).sum()
    assert rows > 3 * cols


# ----------------------------------------------------------------- independent reference
def reference_render(g: GaussianSet, c2w, K, width, height, bg):
    """Dense NumPy 3DGS: every pixel against every Gaussian, written from the paper's equations."""
    vm = viewmat_from_c2w(c2w)
    R, t = vm[:3, :3], vm[:3, 3]
    mu = g.means.astype(np.float64)
    pc = mu @ R.T + t
    q = g.rotations / np.linalg.norm(g.rotations, axis=1, keepdims=True)
    out_rgb = np.zeros((height, width, 3))
    T = np.ones((height, width))
    jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    campos = c2w[:3, 3]
    for n in np.argsort(pc[:, 2]):
        x, y, z = pc[n]
        if z < 0.01:
            continue
        w_, qx, qy, qz = q[n]
        Rq = np.array([
            [1 - 2 * (qy**2 + qz**2), 2 * (qx * qy - w_ * qz), 2 * (qx * qz + w_ * qy)],
            [2 * (qx * qy + w_ * qz), 1 - 2 * (qx**2 + qz**2), 2 * (qy * qz - w_ * qx)],
            [2 * (qx * qz - w_ * qy), 2 * (qy * qz + w_ * qx), 1 - 2 * (qx**2 + qy**2)],
        ])
        S = np.diag(np.exp(g.log_scales[n].astype(np.float64)))
        cov = R @ Rq @ S @ S @ Rq.T @ R.T
        fx, fy = K[0, 0], K[1, 1]
        J = np.array([[fx / z, 0, -fx * x / z**2], [0, fy / z, -fy * y / z**2]])
        c2 = J @ cov @ J.T + 0.3 * np.eye(2)
        inv = np.linalg.inv(c2)
        u, v = fx * x / z + K[0, 2], fy * y / z + K[1, 2]
        d = np.stack([jj - u, ii - v], -1)
        power = -0.5 * np.einsum("hwi,ij,hwj->hw", d, inv, d)
        op = 1 / (1 + np.exp(-g.opacity_logits[n]))
        a = np.minimum(0.999, op * np.exp(power))
        a[a < 1 / 255] = 0
        dirv = (mu[n] - campos) / np.linalg.norm(mu[n] - campos)
        dx, dy, dz = dirv
        sh = g.sh[n].astype(np.float64)
        col = 0.28209479177387814 * sh[0] - 0.4886025119029199 * (dy * sh[1] - dz * sh[2] + dx * sh[3]) + 0.5
        col = np.maximum(col, 0)
        next_T = T * (1 - a)
        a = np.where(next_T > 1e-4, a, 0.0)  # early termination (all scenes here stay far above it)
        out_rgb += (a * T)[..., None] * col
        T = T * (1 - a)
    return out_rgb + T[..., None] * np.asarray(bg), 1 - T


def random_scene(n, seed, sh_degree=1, spread=0.4):
    rng = np.random.default_rng(seed)
    g = GaussianSet.from_points(rng.uniform(-spread, spread, (n, 3)), colors=rng.uniform(0, 1, (n, 3)), scale=0.03)
    g.log_scales[:] = np.log(rng.uniform(0.01, 0.08, (n, 3)))
    g.rotations[:] = rng.normal(size=(n, 4))
    g.opacity_logits[:] = logit(rng.uniform(0.1, 0.9, n))
    k = (sh_degree + 1) ** 2
    g.sh[:, 1:k] = rng.normal(0, 0.2, (n, k - 1, 3))
    return g


def test_matches_independent_dense_reference():
    g = random_scene(60, seed=3)
    c2w = look_at((0.3, 0.2, 2.0), (0, 0, 0))
    K_ = intrinsics(70.0, 75.0, 31.0, 34.0)
    ref_rgb, ref_a = reference_render(g, c2w, K_, W, H, (0.1, 0.2, 0.3))
    rgb, a = render(g, c2w, K_, W, H, (0.1, 0.2, 0.3), backend="torch")
    np.testing.assert_allclose(to_np(rgb), ref_rgb, atol=2e-4)
    np.testing.assert_allclose(to_np(a), ref_a, atol=2e-4)


def test_bands_and_checkpointing_change_nothing():
    g = random_scene(150, seed=5, sh_degree=3)
    c2w = look_at((0.0, 0.3, 1.8), (0, 0, 0))
    gt_one = GaussianTensors.from_numpy(g, requires_grad=True)
    gt_many = GaussianTensors.from_numpy(g, requires_grad=True)
    vm = torch.as_tensor(viewmat_from_c2w(c2w), dtype=torch.float32)
    Kt = torch.as_tensor(K, dtype=torch.float32)
    bg = torch.tensor([1.0, 1.0, 1.0])
    rgb1, a1, info1 = rasterize(gt_one, vm, Kt, W, H, bg, max_pairs=10**9)
    rgb2, a2, info2 = rasterize(gt_many, vm, Kt, W, H, bg, max_pairs=2000)
    assert info1["n_bands"] == 1 and info2["n_bands"] > 4
    torch.testing.assert_close(rgb1, rgb2, atol=1e-6, rtol=0)
    torch.testing.assert_close(a1, a2, atol=1e-6, rtol=0)
    weights = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(0))
    (rgb1 * weights).sum().backward()
    (rgb2 * weights).sum().backward()
    for name in ("means", "log_scales", "rotations", "opacity_logits", "sh"):
        g1, g2 = getattr(gt_one, name).grad, getattr(gt_many, name).grad
        assert g1 is not None and float(g1.abs().sum()) > 0, name
        torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-4)


def test_gradcheck_float64_all_parameters():
    g = random_scene(4, seed=11, sh_degree=3, spread=0.15)
    g.log_scales[:] = np.log(0.12)
    gt = GaussianTensors.from_numpy(g, dtype=torch.float64, requires_grad=True)
    c2w = look_at((0.2, 0.1, 1.5), (0, 0, 0))
    vm = torch.as_tensor(viewmat_from_c2w(c2w), dtype=torch.float64)
    Kt = torch.as_tensor(intrinsics(14.0, 14.0, 6.2, 5.9), dtype=torch.float64)
    bg = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64)

    def f(means, log_scales, rotations, opacity_logits, sh):
        rgb, alpha, _ = rasterize(GaussianTensors(means, log_scales, rotations, opacity_logits, sh), vm, Kt, 12, 12, bg)
        return rgb, alpha

    inputs = (gt.means, gt.log_scales, gt.rotations, gt.opacity_logits, gt.sh)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-3)


def test_render_interface_validation():
    g = one_gaussian()
    with pytest.raises(ValueError, match="image size"):
        render(g, C2W, K, 0, 10)
    with pytest.raises(ValueError, match="K"):
        render(g, C2W, np.eye(4), 8, 8)
    with pytest.raises(ValueError, match="unknown render backend"):
        render(g, C2W, K, 8, 8, backend="optix")
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    bad = GaussianTensors.from_numpy(g)
    bad.means = bad.means.clone()
    bad.means[0, 0] = float("nan")
    with pytest.raises(ValueError, match="means"):
        render(bad, C2W, K, 8, 8)


def test_isotropic_3d_dilation_reproduces_eps2d():
    """The add-on's display dilation (blender_addon.avatar._dilation_sq): adding
    s^2 = eps2d (z / f)^2 to each 3D covariance projects to the rasteriser's ``+ eps2d I`` in the
    image, up to the field angle's square (here within 5% of eps2d over a 25 deg view)."""
    from fastavatar_engine.render.torch_rasterizer import project_gaussians

    rng = np.random.default_rng(3)
    n, eps2d = 400, 0.3
    means = rng.uniform(-0.08, 0.08, (n, 3)).astype(np.float32)
    log_scales = rng.uniform(np.log(2e-4), np.log(2e-2), (n, 3)).astype(np.float32)
    rot = rng.normal(size=(n, 4)).astype(np.float32)
    c2w = look_at(np.array([0.05, 0.02, 0.75]), np.zeros(3))
    W = 256
    f = 0.5 * W / math.tan(math.radians(12.5))
    K = intrinsics(f, f, W / 2, W / 2)
    z = (means - c2w[:3, 3]) @ -c2w[:3, 2]  # depth along the OpenGL camera's -Z
    dilated = 0.5 * np.log(np.exp(2 * log_scales) + eps2d * (z / f)[:, None] ** 2)

    def cov2d(ls, eps):
        g = GaussianTensors.from_numpy(GaussianSet(means, ls.astype(np.float32), rot, np.zeros(n, np.float32),
                                                   np.zeros((n, 16, 3), np.float32)), dtype=torch.float64)
        vm = torch.as_tensor(viewmat_from_c2w(c2w), dtype=torch.float64)
        proj = project_gaussians(g, vm, torch.as_tensor(K, dtype=torch.float64), W, W, eps2d=eps)
        a, b, c = proj["conics"].unbind(-1)  # the inverse of the projected covariance
        det = a * c - b * b
        return torch.stack([c / det, -b / det, a / det], -1).numpy()  # (Sxx, Sxy, Syy) px^2

    ref, got = cov2d(log_scales, eps2d), cov2d(dilated, 0.0)
    np.testing.assert_allclose(got, ref, atol=0.05 * eps2d, rtol=1e-6)
    assert np.abs(cov2d(log_scales, 0.0) - ref).max() >= eps2d * 0.999  # without it they differ by eps2d
