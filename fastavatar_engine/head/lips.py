"""The template's lips: each lip's Gaussians bound to that lip's triangles.

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
