"""The mouth interior (fitting/mouth.py): hidden behind closed lips, revealed by an open jaw, and
carried by template Gaussians the jaw does not move. Checked with the engine's own decode and
renderer on the template bound to a random head, independently of the likeness fit."""

import numpy as np
import pytest
import torch

from fastavatar_engine.animate import expression_delta
from fastavatar_engine.cameras import intrinsics, orbit_c2w
from fastavatar_engine.expressions.names import EXPRESSION_NAMES
from fastavatar_engine.fitting.mouth import BEHIND, STILL, mouth_interior
from fastavatar_engine.gaussians import pack_gaussians, unpack_gaussians
from fastavatar_engine.render import render_to_uint8


@pytest.fixture(scope="module")
def setup():
    from fastavatar_engine.model.io import FastAvatarModel

    model = FastAvatarModel.load()
    rng = np.random.default_rng(5)
    head = rng.normal(0, 0.5, 100).astype(np.float32)
    w = np.zeros(model.code_dim, np.float32)
    with torch.no_grad():
        base = pack_gaussians(model.decode(w, head).to_numpy())
    curtain, parents = mouth_interior(model, head)
    return model, head, w, base, curtain.to_numpy(), parents.numpy()


def test_the_curtain_sits_behind_the_inner_lips_on_still_parents(setup):
    model, head, w, base, curtain, parents = setup
    bt = model.head_template
    hm = bt.model
    V = hm.vertices(head, bt.rest_expression)
    lips = V[hm.landmarks68[60:68]]
    assert 150 < len(curtain.means) < 1000
    assert curtain.means[:, 2].max() < lips[:, 2].max() - 0.5 * BEHIND  # behind the lips
    lo, hi = sorted((lips[0, 0], lips[4, 0]))
    assert lo < curtain.means[:, 0].min() and curtain.means[:, 0].max() < hi  # within the mouth's width
    assert curtain.means[:, 1].max() <= lips[1:4, 1].mean() + 0.002  # not above the upper lip
    jaw = np.zeros(53)
    jaw[EXPRESSION_NAMES.index("jawOpen")] = 1.0
    moved = np.linalg.norm(expression_delta(model, w, head, jaw)[:, :3], axis=1)
    assert moved[parents].max() < STILL + 1e-4 and moved.max() > 0.015  # the jaw moves, the parents do not


def test_hidden_at_rest_and_revealed_by_an_open_jaw(setup):
    model, head, w, base, curtain, parents = setup
    with_mouth = np.concatenate([base, pack_gaussians(curtain)])
    hm = model.head_template.model
    V = hm.vertices(head, model.head_template.rest_expression)
    mouth = V[hm.landmarks68[60:68]].mean(0)
    c2w, K = orbit_c2w(0, 0, 0.45, mouth), intrinsics(600, 600, 64, 64)

    def render(packed):
        return render_to_uint8(unpack_gaussians(packed), c2w, K, 128, 128).astype(np.float32)

    box = (slice(52, 90), slice(44, 84))  # the mouth and the chin below it, from the front
    rest_diff = np.abs(render(with_mouth) - render(base))[box].mean()
    assert rest_diff < 1.0  # closed lips hide it (8-bit levels)
    jaw = np.zeros(53)
    jaw[EXPRESSION_NAMES.index("jawOpen")] = 0.8
    d = expression_delta(model, w, head, jaw)
    open_plain = render(base + d)
    open_mouth = render(with_mouth + np.concatenate([d, d[parents]]))  # the curtain moves with its parents
    assert open_plain[box].mean() - open_mouth[box].mean() > 15.0  # a dark cavity where there was none


def _lip_parting(hm, head, e) -> float:
    """Metres between the middle inner-lip landmarks (MediaPipe 13 over 14) on the full mesh."""
    P = hm.landmark_binding().points(hm.vertices(head, e), hm.triangles)
    return float(P[13, 1] - P[14, 1])


def test_the_seam_fades_as_the_lips_part_and_stays_linear(setup):
    """The Gaussians straddling the lip seam lose opacity in proportion to how far the head
    model's lips part (head/lips.py: LipSeam), checked against the parting measured on the full
    mesh; nothing fades at rest or for shapes that do not part the lips, the fade of two shapes
    is the sum of each (Blender's linear rig is exact), and the curtain never hangs on a fader."""
    from fastavatar_engine.head.lips import MIN_PARTING, SEAM_FADE

    model, head, w, base, curtain, parents = setup
    bt = model.head_template
    hm, rest, rows = bt.model, bt.rest_expression, bt.lips.rows
    assert 20 < len(rows) < 400 and not set(parents.tolist()) & set(rows.tolist())
    names = list(EXPRESSION_NAMES)
    opa = 51  # packed column of the opacity logit

    def fade(**coeffs):
        e = np.zeros(53)
        for n, v in coeffs.items():
            e[names.index(n)] = v
        return expression_delta(model, w, head, e)[:, opa]

    for shape, amount in (("jawOpen", 0.1), ("mouthFunnel", 0.3)):
        e = rest.copy()
        e[names.index(shape)] += amount
        parting = _lip_parting(hm, bt.rest_identity, e) - _lip_parting(hm, bt.rest_identity, rest)
        assert parting > MIN_PARTING * amount
        np.testing.assert_allclose(fade(**{shape: amount})[rows], -SEAM_FADE * parting, rtol=1e-3)
    both = fade(jawOpen=0.1, mouthFunnel=0.3)
    np.testing.assert_allclose(both[rows], fade(jawOpen=0.1)[rows] + fade(mouthFunnel=0.3)[rows], rtol=1e-4)
    assert not fade(mouthSmile_L=1.0, browInnerUp_R=1.0, mouthPucker=1.0).any()  # no parting: nothing fades
    others = np.setdiff1d(np.arange(len(both)), rows)
    assert not both[others].any()


def test_a_slightly_open_jaw_shows_a_dark_gap(setup):
    """At jawOpen 0.1 (about 3 mm of parting) the faded seam shows the curtain: the mouth's middle
    is darker than with the straddling Gaussians kept opaque."""
    model, head, w, base, curtain, parents = setup
    hm = model.head_template.model
    V = hm.vertices(head, model.head_template.rest_expression)
    mouth = V[hm.landmarks68[60:68]].mean(0)
    c2w, K = orbit_c2w(0, 0, 0.3, mouth), intrinsics(900, 900, 64, 64)
    jaw = np.zeros(53)
    jaw[EXPRESSION_NAMES.index("jawOpen")] = 0.1
    d = expression_delta(model, w, head, jaw)
    kept = d.copy()
    kept[model.head_template.lips.rows, 51] = 0.0

    def render(delta):
        packed = np.concatenate([base, pack_gaussians(curtain)]) + np.concatenate([delta, delta[parents]])
        return render_to_uint8(unpack_gaussians(packed), c2w, K, 128, 128).astype(np.float32)

    box = (slice(56, 72), slice(40, 88))  # the lips' middle, from the front
    assert render(kept)[box].mean() - render(d)[box].mean() > 15.0  # 35 levels measured
