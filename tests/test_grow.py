"""Growing Gaussians where the person mask reaches past the avatar (fitting/grow.py)."""

from __future__ import annotations

import numpy as np
import torch

from fastavatar_engine.cameras import intrinsics, orbit_c2w, project_points
from fastavatar_engine.fitting.grow import depth_render, grow_into_mask, prune
from fastavatar_engine.model.io import FastAvatarModel
from fastavatar_engine.render import render


def _avatar():
    with torch.no_grad():
        return FastAvatarModel.load().decode(np.zeros(512, np.float32))


def _front():
    """(avatar, c2w, K, alpha [128,128]) of the zero-code avatar from 1 m in front."""
    g = _avatar()
    c2w = orbit_c2w(0.0, 0.0, 1.0)
    K = intrinsics(300.0, 300.0, 64, 64)
    with torch.no_grad():
        _, alpha = render(g, c2w, K, 128, 128)
    return g, c2w, K, alpha.numpy()


def test_depth_render_is_the_camera_depth_of_the_surface():
    g = _avatar()
    c2w = orbit_c2w(0.0, 0.0, 1.0)
    K = intrinsics(300.0, 300.0, 64, 64)
    depth, alpha = depth_render(g, c2w, K, 128, 128)
    # the nose is the closest thing to a frontal camera 1 m away: depth about 1 m - 11 cm
    centre = depth[60:68, 60:68]
    assert np.nanmin(depth) > 0.8 and 0.85 < np.nanmedian(centre) < 1.0
    assert np.isnan(depth[alpha < 0.05]).all()


def test_grown_gaussians_fill_the_uncovered_part_of_the_mask():
    g, c2w, K, alpha = _front()
    mask = (alpha > 0.5).astype(np.float32)
    mask[:12, 40:88] = 1.0  # a bun above the head: person, but no avatar there
    assert (alpha[:12, 40:88] < 0.35).mean() > 0.9
    image = torch.ones(128, 128, 3)  # a white backdrop, the person (and the bun) dark
    image[torch.as_tensor(mask) > 0.5] = 0.25
    view = {"image": image, "mask": torch.as_tensor(mask), "valid": None,
            "c2w": c2w, "K": K, "w": 128, "h": 128, "mirrored": False, "foreground": True}
    extra, parents = grow_into_mask(g, [view], budget=600, layers=3)
    assert extra is not None and 0 < len(extra.means) <= 600 and len(parents) == len(extra.means)
    assert int(parents.max()) < len(g.means)
    uv, depth = project_points(extra.means.numpy(), c2w, K)
    inside = (uv[:, 1] < 14) & (uv[:, 0] > 38) & (uv[:, 0] < 90)
    assert inside.mean() > 0.95  # on the bun's pixels (mirror twins of a centred bun land there too)
    assert np.allclose(extra.sh[:, 0].numpy() * 0.28209479 + 0.5, 0.25, atol=1e-4)  # the photo's colour
    assert torch.allclose(extra.rotations.norm(dim=-1), torch.ones(len(extra.means)), atol=1e-3)
    # rendered with them, the bun region is covered
    from fastavatar_engine.render import GaussianTensors

    both = GaussianTensors(*(torch.cat([getattr(g, k), getattr(extra, k)]) for k in
                             ("means", "log_scales", "rotations", "opacity_logits", "sh")))
    with torch.no_grad():
        _, a2 = render(both, c2w, K, 128, 128)
    assert a2.numpy()[2:10, 44:84].mean() > alpha[2:10, 44:84].mean() + 0.3


def test_nothing_grows_when_the_avatar_covers_the_mask():
    g, c2w, K, alpha = _front()
    view = {"image": torch.zeros(128, 128, 3), "mask": torch.as_tensor((alpha > 0.6).astype(np.float32)), "valid": None, "c2w": c2w, "K": K,
            "w": 128, "h": 128, "mirrored": False, "foreground": True}
    extra, parents = grow_into_mask(g, [view])
    assert extra is None and len(parents) == 0


def test_prune_keeps_the_template_and_drops_transparent_grown_ones():
    logits = torch.tensor([-9.0, 2.0, -9.0, 0.0, -6.0])
    keep = prune(2, logits)
    assert keep.tolist() == [0, 1, 3]


def test_a_thin_rim_is_not_grown_into_but_a_thick_mass_is():
    from fastavatar_engine.fitting.grow import _thick_parts

    gap = np.zeros((192, 192), bool)
    gap[20:23, 40:150] = True  # a 3-px rim along the top of the head: curls, a camera a little off
    gap[100:160, 10:50] = True  # a 40x60 px mass beside it: an afro, a bun
    kept = _thick_parts(gap, 0.03)  # 0.03 x 192 = a 6-px disc
    assert not kept[20:23].any()
    assert kept[100:160, 10:50].mean() > 0.97 and not kept[:100].any() and not kept[160:].any()
    assert np.array_equal(_thick_parts(gap, 0.0), gap)


def test_pixels_of_the_backdrops_colour_inside_the_mask_are_not_grown_into():
    from fastavatar_engine.fitting.grow import _background_coloured

    img = np.full((64, 64, 3), 0.6, np.float32)  # a grey backdrop
    mask = np.zeros((64, 64), np.float32)
    mask[10:50, 10:50] = 1.0
    img[10:50, 10:50] = (0.25, 0.15, 0.1)  # brown hair
    img[20:30, 20:30] = 0.62  # backdrop showing between curls, inside the mask
    bgc = _background_coloured(img, mask)
    assert bgc[20:30, 20:30].all() and not bgc[10:20, 10:50].any() and not bgc[30:50, 10:50].any()
    # a photo that is all person has no backdrop to compare with
    assert not _background_coloured(img, np.ones((64, 64), np.float32)).any()
