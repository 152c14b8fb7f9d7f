"""The template's lips: each lip's Gaussians bound to that lip's triangles, and a seam that opens.

The template Gaussians bind to their closest skin triangle (:mod:`.binding`), and at the lip
seam the closest triangle is often the other lip's: the head model's rest mouth is parted by a
few millimetres where the template's lips meet. Upper-lip Gaussians bound to the lower lip went
down with an opening jaw and covered the gap in pink: on London 003's avatar MediaPipe's lip gap
stayed at 0.005-0.03 of the mouth's width up to jawOpen 0.2 and only opened at 0.3 (issue 22),
while GRID speech moves the jaw by 0.1-0.2.

:func:`bind_lips` rebinds the Gaussians around the seam (the registered upper inner-lip
landmarks, MediaPipe 78-191-80-81-82-13-312-311-310-415-308, on the rest mesh): those above it
to the closest triangle that jawOpen 1 moves less than :data:`STILL` (the upper lip), those
below it to the closest triangle it moves at least :data:`MOVING` (the lower lip), within the
middle :data:`WIDTH` of the mouth (the corners stretch with both lips and keep their binding).

Bound to their own lips, the Gaussians still overlap across the seam: a lip Gaussian is a few
millimetres wide, and those straddling the seam hang over the gap as the lips part. On London
003's avatar MediaPipe's lip gap at jawOpen 0.05 / 0.1 / 0.2 was 0.012 / 0.054 / 0.125 of the
mouth's width (a ragged pink slit), and on the 11 GRID clips the avatar's lip gap followed the
head model's own (the tracked coefficients' inner-lip landmarks) at 0.87-0.93 correlation while
the head model followed the speakers at 0.90-0.92. :class:`LipSeam` fades the template rows
within :data:`SEAM_BAND` of the seam as the lips part: their opacity logits drop by
:data:`SEAM_FADE` per metre of the head model's lip separation (MediaPipe 13-14 at the mouth's
middle), which is linear in each opening shape (jawOpen, mouthFunnel, mouthUpperUp ...), so the
opening shows the mouth interior behind (:mod:`fastavatar_engine.fitting.mouth`) from its first
millimetre, and Blender's linear rig stays exact, as for the blink (:mod:`.eyes`). At rest
nothing changes. Measured on 003: 0.093 / 0.168 / 0.271 at jawOpen 0.05 / 0.1 / 0.2.
"""

from __future__ import annotations

import numpy as np

#: MediaPipe's upper inner-lip landmarks, corner to corner: the seam where the template's lips meet.
SEAM = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
#: Rebound Gaussians lie within this distance (metres) above or below the seam ...
REACH = 0.010
#: ... and within this fraction of the mouth's width around its middle.
WIDTH = 0.8
#: Upper-lip triangles: every vertex moves less than this (metres) under jawOpen 1.
STILL = 0.006
#: Lower-lip triangles: every vertex moves at least this (metres) under jawOpen 1.
MOVING = 0.015
#: Seam faders: template rows within this distance (metres) above or below the seam ...
SEAM_BAND = 0.002
#: ... and within this fraction of the mouth's width around its middle.
SEAM_WIDTH = 0.9
#: Opacity logits a seam fader loses per metre of lip separation (4 per millimetre: gone by ~1.5 mm).
SEAM_FADE = 4000.0
#: A shape fades the seam only when it parts the lips' middle by at least this at full strength
#: (metres): ICT's cheekSquint and mouthPucker move it by 0.2 mm, jawForward by 0.9 mm.
MIN_PARTING = 0.001


def bind_lips(binding, means, rest_vertices, model, rest_expression):
    """``binding`` (:class:`~.binding.HeadBinding` of ``means`` [K,3], metres, engine frame: y up,
    the face towards +z) with the Gaussians around the lip seam bound to their own lip (module
    docstring); ``rest_vertices`` [V,3] the mesh it was bound on, at ``rest_expression`` [53] and
    the model's rest identity. Returns a new binding; unchanged when the seam is not on the mesh."""
    from .binding import HeadBinding

    P = np.asarray(means, np.float64)
    seam = model.landmark_binding().points(rest_vertices, model.triangles)[list(SEAM)]
    if not np.isfinite(seam).all():
        return binding
    names = list(model.expression_names)
    jaw = np.array(rest_expression, np.float64)
    jaw[names.index("jawOpen")] += 1.0
    moved = np.linalg.norm(model.vertices(model.rest_identity(), jaw) - rest_vertices, axis=1)
    still_tris = (moved < STILL)[model.triangles].all(1)
    moving_tris = (moved >= MOVING)[model.triangles].all(1)
    order = np.argsort(seam[:, 0])
    x0, x1 = seam[order[0], 0], seam[order[-1], 0]
    xc, half = 0.5 * (x0 + x1), 0.5 * WIDTH * (x1 - x0)
    y = np.interp(P[:, 0], seam[order, 0], seam[order, 1])
    near = (np.abs(P[:, 0] - xc) < half) & (np.abs(P[:, 1] - y) < REACH) & (P[:, 2] > seam[:, 2].min() - REACH)
    out = binding
    for rows, allowed in ((np.flatnonzero(near & (P[:, 1] > y)), still_tris),
                          (np.flatnonzero(near & (P[:, 1] <= y)), moving_tris)):
        if len(rows) and allowed.any():
            out = out.with_rows(rows, HeadBinding.bind(P[rows], rest_vertices, model.triangles,
                                                       allowed_triangles=allowed))
    return out


class LipSeam:
    """The template rows that straddle the lip seam and fade as the lips part (module docstring).

    Args:
        means: [K,3] the template's Gaussians on the rest mesh (metres, engine frame: y up, the
            face towards +z); ``rest_vertices`` [V,3] that mesh; ``model`` its head model.
    Attributes: ``rows`` [S] int64 template rows (empty when the seam is not on the mesh);
    ``rates`` [53] float64 the lip separation each shape adds per unit at the mouth's middle
    (metres; shapes that part the lips by less than :data:`MIN_PARTING`, or close them, count 0).
    """

    def __init__(self, means, rest_vertices, model):
        P = np.asarray(means, np.float64)
        marks = model.landmark_binding()
        seam = marks.points(rest_vertices, model.triangles)[list(SEAM)]
        self.rows, self.rates = np.zeros(0, np.int64), np.zeros(len(model.expression_names))
        if not np.isfinite(seam).all():
            return
        order = np.argsort(seam[:, 0])
        x0, x1 = seam[order[0], 0], seam[order[-1], 0]
        xc, half = 0.5 * (x0 + x1), 0.5 * SEAM_WIDTH * (x1 - x0)
        y = np.interp(P[:, 0], seam[order, 0], seam[order, 1])
        self.rows = np.flatnonzero((np.abs(P[:, 0] - xc) < half) & (np.abs(P[:, 1] - y) < SEAM_BAND)
                                   & (P[:, 2] > seam[:, 2].min() - REACH))
        # separation of the middle inner-lip landmarks (13 upper, 14 lower) per unit of each shape:
        # the model is linear, so it is their barycentric vertices' expression deltas, engine frame
        tri, bary = marks.tri[[13, 14]], marks.bary[[13, 14]]
        d = model.expression_cm[:, model.triangles[tri]].astype(np.float64) * model.scale  # [53,2,3,3] metres, ICT axes
        dy = np.einsum("nk,enkd->end", bary, d) @ model.R.T  # [53,2,3] engine metres
        rates = dy[:, 0, 1] - dy[:, 1, 1]
        self.rates = np.where(rates >= MIN_PARTING, rates, 0.0)

    def opacity_offsets(self, expression, rest) -> np.ndarray:
        """[S] float64 logits added to the faders' opacities at head expression ``expression``
        [53] (absolute) with the template's rest expression ``rest`` [53]: ``-SEAM_FADE`` times
        the separation the shapes past their rest values add (never positive)."""
        e = np.clip(np.asarray(expression, np.float64) - np.asarray(rest, np.float64), 0.0, None)
        return np.full(len(self.rows), -SEAM_FADE * float(self.rates @ e))
