"""Growing Gaussians where the photo's person reaches past the avatar: hair beyond the template.

The template knows one head of hair. Where the person mask of a photo covers pixels that the
avatar leaves empty (an afro, a bun, long hair over the shoulders), :func:`grow_into_mask` adds
Gaussians, as 3DGS's densification clones Gaussians into under-reconstructed regions (Kerbl et
al., SIGGRAPH 2023): each new Gaussian is a clone of its nearest avatar Gaussian (its *parent*,
whose rotation it takes) moved onto the uncovered pixel's viewing ray.

* **Depth**: a single photo has none, so a new Gaussian starts at the depth of the nearest
  covered pixel (the avatar's rendered depth, from a render whose colour is each Gaussian's
  camera depth), in ``layers`` layers spread along the ray by up to half the pixel's distance
  from the covered region (a hair mass about as deep as it is wide), so the outline reads as a
  volume from the side and not as a flat card.
* **Mirror**: faces and hair are close to symmetric (BRIEF, *Symmetry as a second view*): every new
  Gaussian off the sagittal plane gets a mirrored twin (x -> -x), so a side the photo cannot see
  is plausible.
* **Where**: inside the person mask (eroded by 2 px, off its soft edge), where the avatar's alpha
  is below 0.35, not of the background's colour (the backdrop between loose curls), in parts at
  least ``MIN_THICKNESS`` of the image thick (not a rim), above the chin (hair, not the
  shoulders: on the sample subjects growing into the shirt beside the template's body cost 1 dB
  on novel views; long hair below the chin stays the template's).
* **Appearance**: the photo's colour at the pixel (SH DC), no higher bands, opacity 0.5, an
  isotropic scale of the sampling stride at that depth. The refinement's per-Gaussian stage then
  fits them with the others; :func:`prune` drops the ones left nearly transparent.

The count is capped (``budget``). Every grown Gaussian records its parent (an index into the
model's template Gaussians), so a client can rebuild the plain decode of a code for all of them
(``decode(w)[parents]``) and keep the grown ones as a residual, like refinement's detail.
"""

from __future__ import annotations

import numpy as np
import torch

from ..cameras import viewmat_from_c2w
from ..gaussians import SH_C0
from ..render import GaussianTensors, render

#: Default cap on grown Gaussians (the template has 10,144).
DEFAULT_BUDGET = 3000
#: Uncovered = person mask above this and rendered alpha below ``ALPHA_EMPTY``.
MASK_ON = 0.5
ALPHA_EMPTY = 0.35
#: Photo pixels this close to the background's median colour (largest channel difference) are not
#: grown into.
BACKGROUND_TOLERANCE = 0.08
#: Uncovered parts thinner than this fraction of the fit image's longer side (the head crop: about
#: 1.5 cm) are not grown into.
MIN_THICKNESS = 0.03


def depth_render(g: GaussianTensors, c2w, K, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(depth [H,W] metres (NaN where empty), alpha [H,W]) of ``g``: the alpha-weighted camera depth."""
    vm = torch.as_tensor(viewmat_from_c2w(np.asarray(c2w, np.float64)), dtype=g.means.dtype, device=g.means.device)
    z = g.means @ vm[2, :3] + vm[2, 3]
    sh = torch.zeros_like(g.sh)
    sh[:, 0, :] = ((z - 0.5) / SH_C0)[:, None]
    with torch.no_grad():
        rgb, alpha = render(GaussianTensors(g.means, g.log_scales, g.rotations, g.opacity_logits, sh), c2w, K,
                            width, height, background=(0.0, 0.0, 0.0))
    a = alpha.cpu().numpy()
    d = rgb[..., 0].cpu().numpy() / np.maximum(a, 1e-6)
    d[a < 0.05] = np.nan
    return d, a


def _unproject(uv: np.ndarray, depth: np.ndarray, c2w, K) -> np.ndarray:
    """World points [N,3] of pixels ``uv`` [N,2] (continuous coordinates) at camera depths [N]."""
    x = (uv[:, 0] - K[0, 2]) / K[0, 0] * depth
    y = (uv[:, 1] - K[1, 2]) / K[1, 1] * depth
    pc = np.stack([x, y, depth, np.ones_like(depth)], 1)  # OpenCV camera
    w2c = viewmat_from_c2w(np.asarray(c2w, np.float64))
    return (pc @ np.linalg.inv(w2c).T)[:, :3]


def _head_region(landmarks, shape_hw) -> np.ndarray:
    """[H,W] bool: where hair may grow: above the chin (not the shoulders and the shirt, which the
    template's body ends before; measured on the sample subjects, a band below the chin still grew
    into the collar). Everywhere when the view has no landmarks."""
    h, w = shape_hw
    if landmarks is None:
        return np.ones((h, w), bool)
    lm = landmarks.cpu().numpy() if isinstance(landmarks, torch.Tensor) else np.asarray(landmarks)
    chin = lm[:468, 1].max()
    return np.repeat((np.arange(h) + 0.5 <= chin)[:, None], w, axis=1)


def _background_coloured(image: np.ndarray, mask: np.ndarray, tolerance: float = BACKGROUND_TOLERANCE) -> np.ndarray:
    """[H,W] bool: pixels whose colour is within ``tolerance`` (largest channel difference, colours
    in [0, 1]) of the photo's background, the median colour where the person ``mask`` is below 0.05
    (all False when under 1% of the image is background). Loose curls and wisps leave background
    between them inside the person mask; grown there, Gaussians took the backdrop's grey and showed
    as grey-white blobs beside the hair. Hair of the backdrop's own colour is not grown into."""
    bg = mask < 0.05
    if bg.mean() < 0.01:
        return np.zeros(mask.shape, bool)
    colour = np.median(image[bg], axis=0)
    return np.abs(image - colour).max(-1) < tolerance


def _thick_parts(gap: np.ndarray, min_thickness: float) -> np.ndarray:
    """``gap`` [H,W] bool without its parts thinner than ``min_thickness`` x the image's longer side
    (a morphological opening with a disc of that diameter): a thin rim along the avatar's outline
    (curls a few millimetres past the template, a slightly misplaced camera) is not hair volume and
    costs held-out views; an afro or a bun, several centimetres thick, passes unchanged (training
    subject 306, camera refined: 21.5 dB with the rim, 23.3 without, 23.6 with no growth at all)."""
    from scipy import ndimage

    r = int(round(0.5 * min_thickness * max(gap.shape)))
    if r < 1:
        return gap
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return ndimage.binary_opening(gap, structure=(xx * xx + yy * yy) <= r * r)


def grow_into_mask(g: GaussianTensors, views: list[dict], budget: int = DEFAULT_BUDGET, layers: int = 3,
                   mirror: bool = True, min_thickness: float = MIN_THICKNESS) -> tuple[GaussianTensors | None, torch.Tensor]:
    """New Gaussians where ``views``' person masks reach past the rendered avatar ``g``.

    Args:
        g: the avatar's Gaussians (torch, head frame); their first rows are the template's.
        views: refinement targets (dicts with ``image`` [H,W,3] float in [0,1], ``mask`` [H,W]
            person mask, ``valid`` [H,W] or None, ``c2w`` [4,4] OpenGL, ``K`` [3,3] at that
            resolution, ``w``, ``h``, ``mirrored``, ``foreground``); mirrored views are skipped
            (``mirror`` covers them).
        budget: the most Gaussians added over all views (mirror twins included).
        layers: Gaussians per sampled pixel along its ray.
        min_thickness: uncovered parts thinner than this fraction of the image's longer side are
            left alone (:func:`_thick_parts`; 0: none).
    Returns ``(extra, parents)``: the new Gaussians (None when nothing is uncovered) and their
    parents [E] (long, indices into ``g``'s rows).
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree

    dev, dt = g.means.device, g.means.dtype
    means_np = g.means.detach().cpu().numpy()
    tree = cKDTree(means_np)
    photo_views = [v for v in views if v.get("foreground") and not v.get("mirrored")]
    per_view = budget // max(1, len(photo_views))
    pos, col, size = [], [], []
    for v in photo_views:
        K = np.asarray(v["K"].cpu() if isinstance(v["K"], torch.Tensor) else v["K"], np.float64)
        c2w = np.asarray(v["c2w"].cpu() if isinstance(v["c2w"], torch.Tensor) else v["c2w"], np.float64)
        depth, alpha = depth_render(g, c2w, K, v["w"], v["h"])
        mask = v["mask"].cpu().numpy() if isinstance(v["mask"], torch.Tensor) else np.asarray(v["mask"])
        # inside the person, away from its soft edge (where the background shows through the hair)
        inner = ndimage.binary_erosion(mask > MASK_ON, iterations=2)
        gap = inner & (alpha < ALPHA_EMPTY) & _head_region(v.get("landmarks"), mask.shape)
        if v.get("valid") is not None:
            valid = v["valid"].cpu().numpy() if isinstance(v["valid"], torch.Tensor) else np.asarray(v["valid"])
            gap &= valid > 0.5
        img = v["image"].cpu().numpy() if isinstance(v["image"], torch.Tensor) else np.asarray(v["image"])
        gap &= ~_background_coloured(img, mask)
        gap = _thick_parts(gap, min_thickness)
        covered = alpha >= 0.5
        n_gap = int(gap.sum())
        if n_gap < 20 or not covered.any():
            continue
        per_sample = layers * (2 if mirror else 1)
        stride = max(1, int(np.ceil(np.sqrt(n_gap * per_sample / max(per_view, 1)))))
        ys, xs = np.nonzero(gap[::stride, ::stride])
        ys, xs = ys * stride, xs * stride
        dist, (iy, ix) = ndimage.distance_transform_edt(~covered, return_indices=True)
        d_ref = depth[iy[ys, xs], ix[ys, xs]]
        ok = np.isfinite(d_ref)
        ys, xs, d_ref = ys[ok], xs[ok], d_ref[ok]
        f = float(K[0, 0])
        thick = np.clip(0.5 * dist[ys, xs] * d_ref / f, 0.005, 0.04)
        uv = np.stack([xs + 0.5, ys + 0.5], 1).astype(np.float64)
        rgb = img[ys, xs]
        offsets = np.linspace(-1.0, 1.0, layers) if layers > 1 else np.zeros(1)
        for o in offsets:
            pos.append(_unproject(uv, d_ref + o * thick, c2w, K))
            col.append(rgb)
            size.append(np.full(len(ys), stride * 0.8) * d_ref / f)
    if not pos:
        return None, torch.zeros(0, dtype=torch.long, device=dev)
    P, C, S = np.concatenate(pos), np.concatenate(col), np.concatenate(size)
    if mirror:
        off = np.abs(P[:, 0]) > 0.01
        P = np.concatenate([P, P[off] * np.array([-1.0, 1.0, 1.0])])
        C, S = np.concatenate([C, C[off]]), np.concatenate([S, S[off]])
        mirrored = np.r_[np.zeros(len(off), bool), np.ones(int(off.sum()), bool)]
    else:
        mirrored = np.zeros(len(P), bool)
    if len(P) > budget:
        keep = np.random.default_rng(0).choice(len(P), budget, replace=False)
        P, C, S, mirrored = P[keep], C[keep], S[keep], mirrored[keep]
    _, parents = tree.query(P)
    parents = torch.as_tensor(parents, dtype=torch.long, device=dev)
    rot = g.rotations.detach()[parents].clone()
    m = torch.as_tensor(mirrored, device=dev)
    rot[m] = rot[m] * torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=dt, device=dev)  # S R S for S = diag(-1,1,1)
    sh = torch.zeros((len(P), g.sh.shape[1], 3), dtype=dt, device=dev)
    sh[:, 0] = (torch.as_tensor(C, dtype=dt, device=dev) - 0.5) / SH_C0
    extra = GaussianTensors(
        means=torch.as_tensor(P, dtype=dt, device=dev),
        log_scales=torch.log(torch.as_tensor(S, dtype=dt, device=dev).clamp_min(1e-4))[:, None].repeat(1, 3),
        rotations=rot,
        opacity_logits=torch.zeros(len(P), dtype=dt, device=dev),  # opacity 0.5
        sh=sh,
    )
    return extra, parents


def prune(keep_first: int, opacity_logits: torch.Tensor, min_opacity: float = 0.05) -> torch.Tensor:
    """Indices [M] of the rows to keep: every one of the first ``keep_first`` (the template's) and
    the grown ones whose opacity is at least ``min_opacity`` (3DGS's opacity pruning)."""
    n = opacity_logits.shape[0]
    keep = torch.ones(n, dtype=torch.bool, device=opacity_logits.device)
    keep[keep_first:] = torch.sigmoid(opacity_logits[keep_first:]) >= min_opacity
    return torch.nonzero(keep).squeeze(1)
