"""Differentiable 3D Gaussian Splatting rasteriser in pure PyTorch (CPU, Apple MPS, any device).

Why our own code: gsplat (the library we use on CUDA) has no CPU path — even its pure-PyTorch
reference functions call CUDA for tile intersection — and no differentiable CPU 3DGS library
installs on our target machines (taichi-splatting needs CUDA too). This module reproduces the
image formation of gsplat's ``rasterization(..., rasterize_mode="classic")`` so that the two
backends are interchangeable (validated against gsplat on a GPU; see README):

1. **EWA projection** (Zwicker et al. 2001; Kerbl et al. 2023): Sigma = R S S^T R^T from the
   quaternion and exp(log-scale); Sigma_2D = J W Sigma W^T J^T + 0.3 I (the usual low-pass
   ``eps2d``), with the perspective Jacobian J evaluated at the mean, its x/z and y/z clamped to
   1.3x the half field of view as gsplat does. Gaussians with depth < ``near`` (0.01 m), opacity
   below 1/255, or a bounding box outside the image are culled.
2. **Opacity-aware bounding boxes** (gsplat, arXiv 2402.00525 B.2): extent k = min(3.33,
   sqrt(2 ln(255 o))) standard deviations per image axis.
3. **Sparse pixel-Gaussian pairs** instead of padded tiles: every pixel centre (j + 0.5, i + 0.5)
   inside a Gaussian's box becomes a pair; pairs with alpha < 1/255 are dropped;
   alpha = min(0.999, o exp(-0.5 d^T Sigma_2D^-1 d)).
4. **Front-to-back compositing in depth order**: pairs are stably sorted by pixel with the
   Gaussians already in depth order, transmittance T_i = prod_{j<i}(1 - alpha_j) is a segmented
   cumulative sum of log(1 - alpha) in float64, and a pixel stops before the Gaussian that would
   take T to 1e-4 or below (gsplat's early termination). C = sum_i c_i alpha_i T_i + T_final bg.
5. **Bounded memory**: the image is cut into bands of rows holding at most ``max_pairs`` pairs
   each; with gradients enabled every band runs under ``torch.utils.checkpoint`` so only one
   band's intermediates are alive at a time (recomputed in the backward pass).

Gradients flow to means, log-scales, rotations, opacity logits and SH coefficients through
ordinary autograd (index choices are made under ``no_grad``; they are piecewise constant).
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from .sh import eval_sh_colors
from .types import GaussianTensors

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
DEFAULT_MAX_PAIRS = 3_000_000


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [N,3,3] from quaternions [N,4] (w, x, y, z), normalised first."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)


def project_gaussians(
    g: GaussianTensors, viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int,
    eps2d: float = 0.3, near: float = 0.01, far: float = 1e10,
):
    """EWA-project Gaussians into the image.

    ``viewmat``: 4x4 OpenCV world-to-camera; ``K``: 3x3 intrinsics (pixels).
    Returns a dict of [N]-indexed tensors: ``means2d`` [N,2] (pixels, continuous),
    ``conics`` [N,3] (a, b, c of Sigma_2D^-1 = [[a, b], [b, c]]), ``depths`` [N] (metres),
    ``opacities`` [N], ``radii`` [N,2] (int pixels, x and y; 0 for culled) and ``visible`` [N] bool.
    """
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    pc = g.means @ R.T + t
    x, y, z = pc.unbind(-1)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]

    rot = quat_to_rotmat(g.rotations)
    m = rot * torch.exp(g.log_scales)[:, None, :]  # R diag(s)
    cov_w = m @ m.transpose(1, 2)
    cov_c = R @ cov_w @ R.T

    zs = torch.where(z > near, z, torch.ones_like(z))  # safe divisor for culled points
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = zs * torch.minimum(torch.maximum(x / zs, -lim_x_neg), lim_x_pos)
    ty = zs * torch.minimum(torch.maximum(y / zs, -lim_y_neg), lim_y_pos)
    zero = torch.zeros_like(zs)
    J = torch.stack(
        [fx / zs, zero, -fx * tx / (zs * zs), zero, fy / zs, -fy * ty / (zs * zs)], dim=-1
    ).reshape(-1, 2, 3)
    cov2d = J @ cov_c @ J.transpose(1, 2)
    a = cov2d[:, 0, 0] + eps2d
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + eps2d
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], dim=-1)
    opacities = torch.sigmoid(g.opacity_logits)

    with torch.no_grad():
        op = opacities.detach()
        extent = torch.sqrt(2.0 * torch.log(op.clamp_min(ALPHA_MIN) / ALPHA_MIN)).clamp_max(3.33)
        rx = torch.ceil(extent * torch.sqrt(a.detach().clamp_min(0)))
        ry = torch.ceil(extent * torch.sqrt(c.detach().clamp_min(0)))
        mx, my = means2d.detach().unbind(-1)
        visible = (
            (z.detach() > near) & (z.detach() < far) & (det.detach() > 0) & (op >= ALPHA_MIN)
            & (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
            & ((rx > 0) | (ry > 0))
        )
        radii = torch.stack([rx, ry], dim=-1).to(torch.int64) * visible[:, None]
    return {
        "means2d": means2d, "conics": conics, "depths": z, "opacities": opacities,
        "radii": radii, "visible": visible,
    }


def _segment_exclusive_logT(log1m: torch.Tensor, seg_start: torch.Tensor) -> torch.Tensor:
    """Exclusive per-segment cumulative sum of ``log1m`` (float64; segments are contiguous runs)."""
    c = torch.cumsum(log1m.double(), 0)
    excl = c - log1m.double()
    return excl - excl[seg_start]


def _segment_starts(pix: torch.Tensor) -> torch.Tensor:
    """For a sorted pixel-id vector [P], the index of the first pair of each pair's pixel."""
    n = pix.shape[0]
    ar = torch.arange(n, device=pix.device)
    is_start = torch.ones(n, dtype=torch.bool, device=pix.device)
    if n > 1:
        is_start[1:] = pix[1:] != pix[:-1]
    return torch.cummax(torch.where(is_start, ar, torch.zeros_like(ar)), 0).values


def _rasterize_band(
    means2d, conics, opacities, colors, x0, x1, y0, y1, row0: int, row1: int, width: int, background
):
    """Composite the Gaussians (already in front-to-back order) over rows [row0, row1).

    ``x0, x1, y0, y1`` [M] int64 pixel box per Gaussian (half-open), already clipped to the image.
    Returns rgb [row1-row0, W, 3] and alpha [row1-row0, W].
    """
    device, dtype = means2d.device, means2d.dtype
    h = row1 - row0
    npix = h * width
    with torch.no_grad():
        yy0 = torch.clamp(y0, min=row0)
        yy1 = torch.clamp(y1, max=row1)
        wx = (x1 - x0).clamp_min(0)
        cnt = wx * (yy1 - yy0).clamp_min(0)
        keep_g = torch.nonzero(cnt > 0).squeeze(1)
        if keep_g.numel() == 0:
            rgb = background.to(dtype).expand(h, width, 3).clone()
            return rgb, torch.zeros(h, width, dtype=dtype, device=device)
        # stage 1: one entry per (Gaussian, row) with the exact column span where the
        # Gaussian's alpha can reach 1/255: a u^2 + 2 b v u + c v^2 <= 2 ln(255 o), u, v the
        # offsets of the pixel centre from the mean (clipped to the Gaussian's box, as gsplat)
        hy_k = (yy1 - yy0)[keep_g]
        n_rows = int(hy_k.sum())
        gr = torch.repeat_interleave(keep_g, hy_k, output_size=n_rows)
        row_off = torch.cumsum(hy_k, 0) - hy_k
        rows = yy0[keep_g].repeat_interleave(hy_k, output_size=n_rows) + (
            torch.arange(n_rows, device=device) - row_off.repeat_interleave(hy_k, output_size=n_rows)
        )
        m2d, cnd, opd = means2d.detach(), conics.detach(), opacities.detach()
        a_, b_, c_ = cnd[gr, 0], cnd[gr, 1], cnd[gr, 2]
        v = rows.to(dtype) + 0.5 - m2d[gr, 1]
        # (+1e-3: a margin so rounding never drops a pixel; the exact alpha test below decides)
        level = 2.0 * torch.log(opd[gr].clamp_min(ALPHA_MIN) / ALPHA_MIN) + 1e-3
        disc = (b_ * v) ** 2 - a_ * (c_ * v * v - level)
        root = torch.sqrt(disc.clamp_min(0))
        ulo = (-b_ * v - root) / a_
        uhi = (-b_ * v + root) / a_
        mxr = m2d[gr, 0]
        c0 = torch.maximum(torch.ceil(mxr + ulo - 0.5).to(torch.int64), x0[gr])
        c1 = torch.minimum(torch.floor(mxr + uhi - 0.5).to(torch.int64) + 1, x1[gr])
        span = torch.where(disc >= 0, (c1 - c0).clamp_min(0), torch.zeros_like(c0))
        total = int(span.sum())
        if total == 0:
            rgb = background.to(dtype).expand(h, width, 3).clone()
            return rgb, torch.zeros(h, width, dtype=dtype, device=device)
        # stage 2: expand spans into pixel-Gaussian pairs with one packed gather
        offsets = torch.cumsum(span, 0) - span
        ibox = torch.stack([c0, rows, offsets, gr], dim=1)
        fpar = torch.cat([m2d, cnd, opd[:, None]], 1)
        gl = torch.repeat_interleave(torch.arange(n_rows, device=device), span, output_size=total)
        ib = ibox.index_select(0, gl)
        del gl, gr, rows, a_, b_, c_, v, level, disc, root, ulo, uhi, mxr, c0, c1, span, offsets
        px = ib[:, 0] + (torch.arange(total, device=device) - ib[:, 2])
        py = ib[:, 1]
        fp = fpar.index_select(0, ib[:, 3])
        dx = fp[:, 0] - (px.to(dtype) + 0.5)
        dy = fp[:, 1] - (py.to(dtype) + 0.5)
        sigma = 0.5 * (fp[:, 2] * dx * dx + fp[:, 4] * dy * dy) + fp[:, 3] * dx * dy
        alpha = torch.clamp_max(fp[:, 5] * torch.exp(-sigma), ALPHA_MAX)
        ok = torch.nonzero((sigma >= 0) & (alpha >= ALPHA_MIN)).squeeze(1)
        del dx, dy, sigma, fp
        pix = ((py.index_select(0, ok) - row0) * width + px.index_select(0, ok))
        gid = ib[:, 3].index_select(0, ok)
        alpha = alpha.index_select(0, ok)
        del px, py, ib, ok
        # pixel-major order; stable, so each pixel's pairs stay in depth order
        pix, order = torch.sort(pix, stable=True)
        gid, alpha = gid.index_select(0, order), alpha.index_select(0, order)
        seg = _segment_starts(pix)
        log1m = torch.log1p(-alpha)
        next_logT = _segment_exclusive_logT(log1m, seg) + log1m.double()
        used = torch.nonzero(next_logT > math.log(T_MIN)).squeeze(1)
        if used.numel() < pix.numel():
            gid, pix = gid.index_select(0, used), pix.index_select(0, used)
            seg = _segment_starts(pix)
        pxy = torch.stack([(pix % width).to(dtype) + 0.5, (pix // width + row0).to(dtype) + 0.5], 1)

    # differentiable pass over the pairs that contribute: one gather of every parameter
    # (unbind, not column slices: a slice's backward fills a zero tensor of the whole gather each)
    mx, my, ca, cb, cc, op, cr, cg, cbl = torch.cat(
        [means2d, conics, opacities[:, None], colors], 1).index_select(0, gid).unbind(1)
    px_c, py_c = pxy.unbind(1)
    dx, dy = mx - px_c, my - py_c
    sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
    alpha = torch.clamp_max(op * torch.exp(-sigma), ALPHA_MAX)
    log1m = torch.log1p(-alpha)
    T = torch.exp(_segment_exclusive_logT(log1m, seg)).to(dtype)
    wgt = alpha * T
    acc = torch.zeros(npix, 4, dtype=dtype, device=device).index_add(
        0, pix, torch.stack([wgt * cr, wgt * cg, wgt * cbl, wgt], 1)
    )
    acc_a = acc[:, 3]
    rgb = acc[:, :3] + (1.0 - acc_a)[:, None] * background.to(dtype)
    return rgb.reshape(h, width, 3), acc_a.reshape(h, width)


def _plan_bands(y0, y1, wx, height: int, max_pairs: int) -> list[tuple[int, int]]:
    """Split rows into bands whose candidate pair count stays below ``max_pairs`` where possible."""
    diff = torch.zeros(height + 1, dtype=torch.int64, device=y0.device)
    diff.index_add_(0, y0, wx)
    diff.index_add_(0, y1, -wx)
    per_row = torch.cumsum(diff, 0)[:height].cpu().tolist()
    bands, start, acc = [], 0, 0
    for r, n in enumerate(per_row):
        if acc + n > max_pairs and r > start:
            bands.append((start, r))
            start, acc = r, 0
        acc += n
    bands.append((start, height))
    return bands


def rasterize(
    g: GaussianTensors,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    background: torch.Tensor,
    sh_degree: int | None = None,
    eps2d: float = 0.3,
    near: float = 0.01,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    checkpoint_bands: bool | None = None,
):
    """Render one view. Returns ``(rgb [H,W,3], alpha [H,W], info)`` in ``g``'s dtype and device.

    ``viewmat`` 4x4 OpenCV world-to-camera, ``K`` 3x3, ``background`` [3] (linear RGB, 0-1).
    ``sh_degree`` defaults to the degree implied by ``g.sh``. ``max_pairs`` bounds the pixel-
    Gaussian pairs held per band (memory ~ 100 bytes per pair with gradients). ``info`` has
    ``n_visible``, ``n_bands`` and ``n_candidate_pairs``.
    """
    device, dtype = g.means.device, g.means.dtype
    viewmat = torch.as_tensor(viewmat, dtype=dtype, device=device)
    K = torch.as_tensor(K, dtype=dtype, device=device)
    background = torch.as_tensor(background, dtype=dtype, device=device).reshape(3)
    degree = g.sh_degree if sh_degree is None else min(sh_degree, g.sh_degree)

    proj = project_gaussians(g, viewmat, K, width, height, eps2d=eps2d, near=near)
    with torch.no_grad():
        vis = torch.nonzero(proj["visible"]).squeeze(1)
        order = vis[torch.argsort(proj["depths"].detach()[vis], stable=True)]
        rad = proj["radii"][order]
        m2 = proj["means2d"].detach()[order]
        x0 = torch.floor(m2[:, 0] - rad[:, 0]).to(torch.int64).clamp(0, width)
        x1 = torch.ceil(m2[:, 0] + rad[:, 0]).to(torch.int64).clamp(0, width)
        y0 = torch.floor(m2[:, 1] - rad[:, 1]).to(torch.int64).clamp(0, height)
        y1 = torch.ceil(m2[:, 1] + rad[:, 1]).to(torch.int64).clamp(0, height)
        wx = (x1 - x0).clamp_min(0)
        bands = _plan_bands(y0, y1, wx, height, max_pairs)
        n_candidates = int((wx * (y1 - y0).clamp_min(0)).sum())

    cam_center = torch.linalg.inv(viewmat)[:3, 3]
    colors = eval_sh_colors(g.sh[order], g.means[order], cam_center, degree)
    means2d = proj["means2d"][order]
    conics = proj["conics"][order]
    opacities = proj["opacities"][order]

    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means2d, conics, opacities, colors)
    )
    use_ckpt = needs_grad and len(bands) > 1 if checkpoint_bands is None else (checkpoint_bands and needs_grad)
    rgbs, alphas = [], []
    for r0, r1 in bands:
        args = (means2d, conics, opacities, colors, x0, x1, y0, y1, r0, r1, width, background)
        if use_ckpt:
            rgb_b, a_b = checkpoint(_rasterize_band, *args, use_reentrant=False)
        else:
            rgb_b, a_b = _rasterize_band(*args)
        rgbs.append(rgb_b)
        alphas.append(a_b)
    rgb = torch.cat(rgbs, 0) if len(rgbs) > 1 else rgbs[0]
    alpha = torch.cat(alphas, 0) if len(alphas) > 1 else alphas[0]
    info = {"n_visible": int(order.numel()), "n_bands": len(bands), "n_candidate_pairs": n_candidates}
    return rgb, alpha, info
