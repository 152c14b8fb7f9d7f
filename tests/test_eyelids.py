"""The eyes under a blink (head/eyes.py, fitting/eyelids.py): the eyeball's Gaussians stay still,
the closed-lid sheet is invisible at rest, comes down from the top as the blink grows and covers
the eye with the lid's skin at eyeBlink 1. Checked with the engine's own decode and renderer on
the template bound to a random head, independently of the likeness fit."""

import numpy as np
import pytest
import torch

from fastavatar_engine.animate import expression_delta
from fastavatar_engine.cameras import intrinsics, orbit_c2w
from fastavatar_engine.expressions.names import EXPRESSION_NAMES
from fastavatar_engine.fitting.eyelids import HIDE, add_eyelids
from fastavatar_engine.gaussians import pack_gaussians, unpack_gaussians
from fastavatar_engine.head.eyes import eye_openings
from fastavatar_engine.render import render_to_uint8


def _blink(value, sides=("eyeBlink_L", "eyeBlink_R")):
    e = np.zeros(53)
    for s in sides:
        e[EXPRESSION_NAMES.index(s)] = value
    return e


@pytest.fixture(scope="module")
def setup():
    from fastavatar_engine.model.io import FastAvatarModel

    model = FastAvatarModel.load()
    rng = np.random.default_rng(7)
    head = rng.normal(0, 0.5, 100).astype(np.float32)
    w = np.zeros(model.code_dim, np.float32)
    with torch.no_grad():
        g = model.decode(w, head)
        g_lids, parents = add_eyelids(model, w, head, g, None)
    return model, head, w, pack_gaussians(g.to_numpy()), pack_gaussians(g_lids.to_numpy()), parents


def test_no_expression_moves_the_eyeball(setup):
    model, head, w, base, _, _ = setup
    eyes = model.head_template.eyes
    assert 200 < len(eyes.rows) < 3000 and 0 < len(eyes.carriers) < len(eyes.rows)
    e = np.random.default_rng(0).uniform(0, 1, 53)
    d = expression_delta(model, w, head, e)
    assert np.abs(d[eyes.rows, :3]).max() == 0.0  # still under every shape at once
    lid = np.linalg.norm(expression_delta(model, w, head, _blink(1.0))[:, :3], axis=1)
    assert lid.max() > 0.005  # while the blink moves the lids by millimetres


def test_the_sheet_is_hidden_at_rest_and_closes_the_eye_at_a_full_blink(setup):
    model, head, w, base, lids, parents = setup
    n = len(base)
    sheet = lids[n:]
    assert 150 < len(sheet) < 2000 and np.isin(parents, model.head_template.eyes.carriers).all()
    assert sheet[:, 51].max() <= -HIDE + 1e-4  # opacity logits at rest: invisible
    np.testing.assert_array_equal(lids[:n], base)  # the avatar's own Gaussians are untouched

    hm = model.head_template.model
    ops = eye_openings(hm.vertices(head, model.head_template.rest_expression), hm)
    centre = np.r_[np.mean([o.contour.mean(0) for o in ops], 0)]
    c2w, K = orbit_c2w(0, 0, 0.30, centre), intrinsics(500, 500, 80, 48)

    def render(packed):
        return render_to_uint8(unpack_gaussians(packed), c2w, K, 160, 96).astype(np.float32)

    # the eyes' pixels: the openings' centres projected (the camera looks along -z at ``centre``)
    px = [(int(round(80 + 500 * (o.centre[0] - centre[0]) / 0.30)), int(round(48 - 500 * (o.centre[1] - centre[1]) / 0.30)))
          for o in ops]
    boxes = [(slice(y - 3, y + 4), slice(x - 6, x + 7)) for x, y in px]

    def eyes(img):
        return np.stack([img[b].reshape(-1, 3).mean(0) for b in boxes])

    assert np.abs(render(lids) - render(base)).max() < 1.0  # at rest: the same image
    d_lids = expression_delta(model, w, head, _blink(1.0), parents)
    d_base = expression_delta(model, w, head, _blink(1.0))
    shut_plain, shut = eyes(render(base + d_base)), eyes(render(lids + d_lids))
    skin = 255 * np.clip(0.5 + 0.28209479 * lids[n:, 3:6].mean(0), 0, 1)  # the sheet's DC colour
    # without the sheet the blink leaves the eye showing; with it the eye is the lid's skin
    assert np.abs(shut - skin).mean() < 0.5 * np.abs(shut_plain - skin).mean()
    assert np.abs(shut - skin).mean() < 20.0


def test_a_partial_blink_shows_the_upper_rows_first(setup):
    model, head, w, base, lids, parents = setup
    n = len(base)
    hm = model.head_template.model
    ops = eye_openings(hm.vertices(head, model.head_template.rest_expression), hm)
    half = lids + expression_delta(model, w, head, _blink(0.5), parents)
    sheet = half[n:]
    heights = np.concatenate([o.height(sheet[o.inside(sheet)]) for o in ops])
    logits = np.concatenate([sheet[o.inside(sheet), 51] for o in ops])
    assert (logits[heights < 0.2] > 3).all()  # the top of the lid is down at blink 0.5
    assert (logits[heights > 0.9] < -3).all()  # its lower part is not yet
    full = lids + expression_delta(model, w, head, _blink(1.0), parents)
    assert np.median(full[n:, 51]) > 3 and np.percentile(full[n:, 51], 5) > 0  # shut at blink 1
