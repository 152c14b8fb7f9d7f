"""Closed eyelids for the avatar: a skin-coloured sheet over each eye that a blink reveals.

The template's upper lids are a thin strip of Gaussians fitted to open-eyed photos; the head
model's eyeBlink unfolds that strip over the eye (ICT's lid margin drops by about 9.5 mm), so it
spreads apart and the eye shows through: on London 003's default avatar a blink left a dark smear
and MediaPipe measured the eye opening at eyeBlink 1 as 0.31 of the eye's width against 0.36
open (issue 22). The skin a closed lid shows is not in an open-eyed photo.

:func:`eyelid_sheet` adds, per eye, a grid of round Gaussians ``SPACING`` apart over the eye
opening (grown by :data:`~fastavatar_engine.head.eyes.EYE_MARGIN`), ``FRONT`` in front of the
eye's own Gaussians and of the lid's Gaussians as eyeBlink 1 places them over the opening (those
carry the open-eyed photo's lashes and crease, which a closed lid does not show). Each is a grown Gaussian (:mod:`.grow`) whose parent is one of the eye's
*carriers* (:mod:`fastavatar_engine.head.eyes`): still under every expression, their opacity
logit raised by ``BLINK_GAIN`` per unit of blink. The sheet's rest logits are
``-HIDE - BLINK_GAIN * REVEAL * h``, ``h`` the height between the upper lid's margin (0) and the
lower's (1): at rest it is invisible (logit -8 and below), and a blink ``b`` shows the rows above
``h = (b - HIDE / BLINK_GAIN) / REVEAL``, so the lid comes down from the top and is shut at
``b = 1``. It is added after the likeness fit (:func:`.refine.refine`), from the fitted Gaussians: its
depth from where they ended up, its colour the lid's skin above the eye. The fit itself never
sees it (invisible at rest, it could not be fitted to an open-eyed photo anyway).
"""

from __future__ import annotations

import numpy as np
import torch

from ..render import GaussianTensors

#: Grid spacing over the eye opening and the Gaussians' standard deviation (metres).
SPACING = 0.001
#: The sheet lies this far (metres, +z) in front of the eye's Gaussians around it, and of the
#: lid's once the blink has closed it.
FRONT = 0.0005
#: Rest opacity logit of the sheet's top row (invisible: sigmoid(-8) = 0.03%).
HIDE = 8.0
#: The lower lid's row shows at blink ``REVEAL + HIDE / BLINK_GAIN`` (0.91 with the defaults).
REVEAL = 0.75
#: The sheet covers the eye opening grown by this (metres).
SHEET_MARGIN = 0.0015
#: Logits the sheet's outermost row is below the rest, so its edge blends into the skin around.
RIM = 2.0
#: The sheet's depth at a point: the front-most Gaussian centre within this radius (metres).
REACH = 0.002
#: Colour sources per eye: lid-skin template Gaussians above it.
COLOUR_NEIGHBOURS = 24


def add_eyelids(model, code, head, g: GaussianTensors, parents) -> tuple[GaussianTensors, np.ndarray | None]:
    """``(g + the sheets, parents + theirs)``: the fitted avatar ``g`` (its first K rows the
    template's, then grown rows with ``parents`` [E] int64 or None) of code ``code`` [D] on
    ``head`` [100] with a closed-lid sheet per eye (module docstring) appended; unchanged without
    a head model or eye carriers. The sheets are built from the fitted Gaussians: in front of
    where they are, coloured as their lids."""
    sheet = eyelid_sheet(model, code, head, g, parents)
    if sheet is None:
        return g, parents
    extra, par = sheet
    dev = g.means.device
    cat = lambda a, b: torch.cat([a.detach(), b.to(device=dev, dtype=a.dtype)])  # noqa: E731
    out = GaussianTensors(cat(g.means, extra.means), cat(g.log_scales, extra.log_scales),
                          cat(g.rotations, extra.rotations), cat(g.opacity_logits, extra.opacity_logits),
                          cat(g.sh, extra.sh))
    old = np.zeros(0, np.int64) if parents is None else np.asarray(parents, np.int64)
    return out, np.r_[old, par.numpy()].astype(np.int64)


def eyelid_sheet(model, code, head, g: GaussianTensors, parents) -> tuple[GaussianTensors, torch.Tensor] | None:
    """(sheet Gaussians [M], engine frame, metres, SH degree of ``g`` with only DC set; parents
    [M] int64 template rows (carriers)) for :func:`add_eyelids`, or None."""
    from scipy.spatial import cKDTree

    from ..animate import expression_delta, rest_decode
    from ..head.eyes import BLINK_GAIN, EYE_MARGIN, eye_openings

    bt = model.head_template
    if bt is None or not len(bt.eyes.carriers):
        return None
    hm, K = bt.model, len(bt.means)
    head = bt.rest_identity if head is None else np.asarray(head, np.float64)
    parents = np.zeros(0, np.int64) if parents is None else np.asarray(parents, np.int64)
    mu = g.means.detach().cpu().double().numpy()
    if len(mu) != K + len(parents):
        raise ValueError(f"add_eyelids: {len(mu)} Gaussians, the template has {K} (+ {len(parents)} grown)")
    seen = (torch.sigmoid(g.opacity_logits.detach()).cpu().numpy() > 0.05)
    dc = g.sh[:, 0].detach().cpu().double().numpy()
    origin = np.r_[np.arange(K), parents]  # each row's template row
    is_eye = np.zeros(K, bool)
    is_eye[bt.eyes.rows] = True
    eye_row = is_eye[origin]
    openings = eye_openings(np.asarray(hm.vertices(head, bt.rest_expression), np.float64), hm)
    pos, par, logit, colour = [], [], [], []
    rest = rest_decode(model, code, head)  # one rest decode for both eyes' closed positions
    for op in openings:
        blink = np.zeros(53)
        blink[hm.expression_names.index(op.blink)] = 1.0
        mu1 = mu + expression_delta(model, code, head, blink, parents, rest=rest)[:, :3]
        carriers = bt.eyes.carriers[op.inside(mu[bt.eyes.carriers], EYE_MARGIN)]
        if not len(carriers):
            continue
        poly = op.polygon(SHEET_MARGIN)
        xs = np.arange(poly[:, 0].min(), poly[:, 0].max() + SPACING / 2, SPACING)
        ys = np.arange(poly[:, 1].min(), poly[:, 1].max() + SPACING / 2, SPACING)
        gx, gy = np.meshgrid(xs, ys)
        P = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], 1)
        P = P[op.inside(P, SHEET_MARGIN)]
        # in front of the eye, and of the lid's own Gaussians once it has closed over it
        cover = np.r_[mu[seen & eye_row], mu1[seen & ~eye_row & op.inside(mu1, EYE_MARGIN)]]
        if not len(P) or not len(cover):
            continue
        near = cKDTree(cover[:, :2]).query_ball_point(P[:, :2], r=REACH)
        P[:, 2] = [cover[n, 2].max() if n else op.contour[:, 2].max() for n in near]
        P[:, 2] += FRONT
        _, j = cKDTree(mu[carriers, :2]).query(P[:, :2])
        pos.append(P)
        par.append(carriers[j])
        rim = ~op.inside(P, SHEET_MARGIN - SPACING)  # the outermost row, softer: it blends into the lid
        logit.append(-HIDE - BLINK_GAIN * REVEAL * op.height(P) - RIM * rim)
        colour.append(np.tile(_skin_colour(dc[:K], mu[:K], is_eye, op), (len(P), 1)))
    if not pos:
        return None
    P = np.concatenate(pos)
    n = len(P)
    sh = np.zeros((n,) + tuple(g.sh.shape[1:]))
    sh[:, 0] = np.concatenate(colour)
    f = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return (GaussianTensors(f(P), f(np.full((n, 3), np.log(SPACING))), f(np.tile([1.0, 0, 0, 0], (n, 1))),
                            f(np.concatenate(logit)), f(sh)),
            torch.as_tensor(np.concatenate(par), dtype=torch.long))


def _skin_colour(dc: np.ndarray, mu: np.ndarray, is_eye: np.ndarray, op) -> np.ndarray:
    """[3] DC coefficients of the lid's skin above the opening ``op``: the median over the
    brighter half of the template rows (``dc`` [K,3], ``mu`` [K,3], ``is_eye`` [K]) not an eye's,
    across the middle half of the eye, 2 to 6 mm above its upper margin (the brighter half: skin,
    not lashes or the crease's shadow)."""
    C = op.contour
    x0, x1 = C[:, 0].min(), C[:, 0].max()
    xc, half, top = 0.5 * (x0 + x1), 0.25 * (x1 - x0), C[:, 1].max()
    band = (~is_eye & (np.abs(mu[:, 0] - xc) < half) & (mu[:, 1] > top + 0.002) & (mu[:, 1] < top + 0.006)
            & (mu[:, 2] > C[:, 2].min() - 0.004))
    rows = np.flatnonzero(band)
    if len(rows) < COLOUR_NEIGHBOURS:  # a head whose lids hold few Gaussians: the nearest skin
        rows = np.flatnonzero(~is_eye)
    d = np.linalg.norm(mu[rows] - np.r_[xc, top + 0.004, C[:, 2].max()], axis=1)
    c = dc[rows[np.argsort(d)[:COLOUR_NEIGHBOURS]]]
    return np.median(c[np.argsort(-c.sum(1))[: max(1, len(c) // 2)]], axis=0)
