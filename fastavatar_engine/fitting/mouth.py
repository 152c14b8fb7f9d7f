"""A mouth interior for the avatar: dark Gaussians behind the lips that an opening jaw reveals.

The template is a shell of skin, hair and clothes learnt from closed-mouth heads, and the head
model's mouth socket, teeth and tongue are not part of the reduced basis (``data/ICT_HEAD.md``):
when an expression opens the jaw, the lower lip drops and what lies behind it is the inside of
the back of the head, or nothing. Measured on London 003's default avatar (issue 22): at jawOpen
0.3-0.5 the lips only stretch into a pale pink smear, and MediaPipe's lip gap on its renders
stays at 0.002-0.005 of the mouth width while GRID speakers reach 0.1-0.3.

:func:`mouth_interior` builds a curtain that stands in for the oral cavity, the way the
Gaussian-head methods that animate a mouth add an interior (GaussianAvatars binds Gaussians to
FLAME's added teeth): a grid of flat, opaque, dark-red Gaussians on a surface following the lips'
arch ``BEHIND`` metres behind the inner lip contour (ICT's 68-point landmarks 60-67), from the upper
inner lip down to ``DEPTH`` below the lower one in the middle and less towards the corners (the
lens shape of an open mouth). Each is a grown Gaussian (:mod:`.grow`) whose
*parent* is the nearest template Gaussian that an open jaw does not move (upper lip, nose,
cheeks), so the curtain stays with the upper face while the jaw and lower lip move away from it.
At rest the lower lip and chin hide it. The likeness fit's per-Gaussian stage fits it with the
others: where a photo shows an open mouth, the curtain takes the photo's teeth and tongue colours.
"""

from __future__ import annotations

import numpy as np
import torch

from ..gaussians import SH_C0
from ..render import GaussianTensors

#: Curtain depth behind the inner lip contour, metres (at the corners ``BEHIND / 2``).
BEHIND = 0.007
#: How far below the lower inner lip the curtain reaches, metres (ICT's jawOpen 1 drops the lower
#: lip by about 2 cm).
DEPTH = 0.024
#: Grid spacing and the Gaussians' in-plane standard deviation, metres.
SPACING = 0.0015
#: Colour of the cavity (sRGB in [0,1]): a dark red-brown.
COLOUR = (0.20, 0.07, 0.07)
#: Template Gaussians that jawOpen 1 moves less than this (metres) can be a curtain's parent.
STILL = 0.0015
INNER_LIPS = tuple(range(60, 68))  # ICT/Multi-PIE 68: 60 and 64 the corners, 61-63 upper, 65-67 lower


def mouth_interior(model, head, device="cpu") -> tuple[GaussianTensors, torch.Tensor] | None:
    """(curtain Gaussians [M] on ``head`` at the rest expression, engine frame, metres, SH degree
    3 with only DC set; parents [M] int64 template rows), or None when the model has no head
    model. ``head``: [100] identity coefficients (None: the template's own head). Rotations are
    the identity (the curtain faces +z, the face's direction)."""
    bt = model.head_template
    if bt is None:
        return None
    hm = bt.model
    rest = bt.rest_expression
    head = bt.rest_identity if head is None else np.asarray(head, np.float64)
    V = np.asarray(hm.vertices(head, rest), np.float64)
    lips = V[np.asarray(hm.landmarks68)[list(INNER_LIPS)]]
    left, right = lips[0], lips[4]
    upper, lower = lips[1:4].mean(0), lips[5:8].mean(0)
    x0, x1 = sorted((left[0], right[0]))
    xc = 0.5 * (x0 + x1)
    half = max(0.5 * (x1 - x0), 1e-3)
    z_mid, z_corner = 0.5 * (upper[2] + lower[2]) - BEHIND, 0.5 * (left[2] + right[2]) - 0.5 * BEHIND
    xs = np.arange(x0 + 2 * SPACING, x1 - 1.5 * SPACING, SPACING)
    ys = np.arange(lower[1] - DEPTH, upper[1] + SPACING / 2, SPACING)
    gx, gy = np.meshgrid(xs, ys)
    u = (gx - xc) / half  # -1 .. 1 across the mouth: the lips' arch, deeper in the middle
    gz = z_mid + (z_corner - z_mid) * np.clip(u * u, 0, 1)
    # lens-shaped like an open mouth: full depth in the middle, none at the corners, so no dark
    # edge can show beside the lips or through the chin when the jaw moves
    inside = gy >= lower[1] - DEPTH * np.sqrt(np.clip(1 - u * u, 0, 1))
    P = np.stack([gx[inside], gy[inside], gz[inside]], 1)
    parents = _still_parents(bt, head, rest, P)
    n = len(P)
    dc = (np.asarray(COLOUR) - 0.5) / SH_C0
    sh = np.zeros((n, 16, 3))
    sh[:, 0] = dc
    scales = np.log(np.array([SPACING, SPACING, SPACING / 5]))
    f = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
    g = GaussianTensors(f(P), f(np.tile(scales, (n, 1))), f(np.tile([1.0, 0, 0, 0], (n, 1))), f(np.full(n, 3.0)), f(sh))
    return g, torch.as_tensor(parents, dtype=torch.long)


def _still_parents(bt, head, rest, P: np.ndarray) -> np.ndarray:
    """[len(P)] the nearest template Gaussian (on ``head`` at rest) that jawOpen 1 moves less than
    :data:`STILL` and that does not fade with the lips' parting (:class:`~fastavatar_engine.head.lips.LipSeam`),
    for each point of ``P`` [M,3]."""
    from scipy.spatial import cKDTree

    from ..expressions.names import EXPRESSION_NAMES

    jaw = np.array(rest, np.float64)
    jaw[EXPRESSION_NAMES.index("jawOpen")] += 1.0
    with torch.no_grad():
        mu0 = bt.deform(identity=head, expression=rest)[0].double().numpy()
        mu1 = bt.deform(identity=head, expression=jaw)[0].double().numpy()
    still = np.linalg.norm(mu1 - mu0, axis=1) < STILL
    still[bt.lips.rows] = False  # the seam's faders vanish as the mouth opens; the curtain must not
    still = np.flatnonzero(still)
    _, i = cKDTree(mu0[still]).query(P)
    return still[i].astype(np.int64)
