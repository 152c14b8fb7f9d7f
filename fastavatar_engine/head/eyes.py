"""The template's eyes: which Gaussians are the eyeball, and what a blink does to them.

The head model has no eyeballs, so the Gaussians that draw them (iris, sclera, lashes' shadow:
everything inside an eye opening) bind to the eyelids' triangles (:mod:`.binding`). Carried by
those, a blink squashed the eye into a dark smear between the lids instead of closing it: on
London 003's default avatar MediaPipe measured the eye opening at eyeBlink 1 as 0.31 of the eye's
width against 0.36 open, and the template's thin strip of lid Gaussians, spread over the eye by
ICT's 9.5 mm lid drop, cannot cover it (issue 22).

What this module gives the bound template (:class:`~.template.BoundTemplate`):

* :func:`eye_interior`: the Gaussians inside each eye opening (the lid-margin landmarks' convex
  hull seen along the head's z, grown by :data:`EYE_MARGIN`, within :data:`EYE_DEPTH`). The
  eyeball sits in the skull and no expression moves it (gaze is not modelled), so the template
  carries these at the rest expression: the lids close over a still eye.
* **Carriers** (:class:`EyeRig`): the eye rows in the opening's core (:data:`CARRIER_CORE`). A
  blink adds ``BLINK_GAIN * blink`` to their opacity logits. They are opaque already, so nothing
  visible changes on them; what it is for is the *closed-lid sheet* the likeness fit adds
  (:mod:`fastavatar_engine.fitting.eyelids`): grown Gaussians parented to the carriers, in front
  of the eye, whose rest logits are so low that they show only as the blink reaches their height.
  Grown rows copy their parent's expression delta (:func:`fastavatar_engine.animate.expression_delta`),
  so every consumer of the delta (``animate``, the engine protocol, Blender's rig, which is exact
  here since the logits are linear in the blink) shows the lid closing, and an avatar without a
  sheet (feed-forward, or made before) is unchanged by the gain.
"""

from __future__ import annotations

import numpy as np

#: MediaPipe Face Mesh's eye-opening contours, corner to corner along the lower lid, then back
#: along the upper one: the subject's right eye (eyeBlink_R; x < 0 in the head frame) first.
EYE_CONTOURS = ((33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246),
                (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466))
#: The expression that closes each contour's eye.
BLINKS = ("eyeBlink_R", "eyeBlink_L")
#: Depth range (metres, along the head frame's +z, the face's direction) around an opening's
#: lid-margin points in which a Gaussian inside it counts as the eyeball's.
EYE_DEPTH = (-0.015, 0.004)
#: The opening's contour grown outward by this (metres): the lashes and the lids' dark rims stay
#: with the eye instead of being spread over the closed lid.
EYE_MARGIN = 0.0015
#: Carriers: eye rows within this fraction of the opening's size around its centre.
CARRIER_CORE = 0.6
#: Opacity logits a carrier (and its grown children) gains per unit of blink.
BLINK_GAIN = 50.0


class EyeOpening:
    """One eye opening on a mesh: ``contour`` [16,3] its lid-margin points (metres, engine head
    frame, :data:`EYE_CONTOURS` order) and ``blink`` (its eyeBlink's name)."""

    def __init__(self, contour: np.ndarray, blink: str):
        self.contour = np.asarray(contour, np.float64)
        self.blink = blink
        self.centre = self.contour[:, :2].mean(0)

    def polygon(self, margin: float = 0.0, scale: float = 1.0) -> np.ndarray:
        """[16,2] the contour seen along z, scaled about its centre and grown by ``margin`` metres."""
        d = (self.contour[:, :2] - self.centre) * scale
        return self.centre + d * (1 + margin / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9))

    def inside(self, P, margin: float = 0.0, scale: float = 1.0) -> np.ndarray:
        """[N] bool: points ``P`` [N,>=2] inside :meth:`polygon` (its convex hull) seen along z."""
        from scipy.spatial import Delaunay

        return Delaunay(self.polygon(margin, scale)).find_simplex(np.asarray(P)[:, :2]) >= 0

    def height(self, P) -> np.ndarray:
        """[N] where points ``P`` [N,>=2] lie between the upper lid's margin (0) and the lower's
        (1), at their x (clipped to [0, 1])."""
        P = np.asarray(P, np.float64)
        lower, upper = self.contour[:9], self.contour[[8, 9, 10, 11, 12, 13, 14, 15, 0]]
        y_lo = np.interp(P[:, 0], *_ascending(lower))
        y_up = np.interp(P[:, 0], *_ascending(upper))
        return np.clip((y_up - P[:, 1]) / np.maximum(y_up - y_lo, 1e-4), 0.0, 1.0)


def _ascending(chain: np.ndarray):
    order = np.argsort(chain[:, 0])
    return chain[order, 0], chain[order, 1]


def eye_openings(vertices, model) -> list[EyeOpening]:
    """The two eye openings on the head mesh ``vertices`` [V,3] (engine frame) of ``model``
    (:class:`~.basis.HeadModel`), from the registered MediaPipe landmarks; an opening whose
    landmarks are not on the mesh is left out."""

    pts = model.landmark_binding().points(vertices, model.triangles)
    out = []
    for contour, blink in zip(EYE_CONTOURS, BLINKS):
        C = pts[list(contour)]
        if np.isfinite(C).all():
            out.append(EyeOpening(C, blink))
    return out


def eye_interior(means, openings: list[EyeOpening]) -> np.ndarray:
    """[K] int: for each Gaussian of ``means`` [K,3] (metres, engine frame: y up, the face towards
    +z) the index into ``openings`` of the eye it lies inside (module docstring), or -1."""
    P = np.asarray(means, np.float64)
    out = np.full(len(P), -1, np.int64)
    for k, op in enumerate(openings):
        z = P[:, 2]
        hit = op.inside(P, EYE_MARGIN) & (z >= op.contour[:, 2].min() + EYE_DEPTH[0]) \
            & (z <= op.contour[:, 2].max() + EYE_DEPTH[1])
        out[hit & (out < 0)] = k
    return out


class EyeRig:
    """The template's eye rows and carriers (module docstring).

    Args:
        means: [K,3] the template's Gaussians on the rest mesh (metres, engine frame).
        rest_vertices: [V,3] the rest mesh; ``model`` its head model.
    Attributes: ``openings`` (on the rest mesh), ``rows`` [E] int64 eye rows, ``carriers`` [C]
    int64 template rows, ``carrier_blink`` [C] int64 the expression index whose blink raises each.
    """

    def __init__(self, means, rest_vertices, model):
        names = list(model.expression_names)
        self.openings = eye_openings(rest_vertices, model)
        side = eye_interior(means, self.openings)
        self.rows = np.flatnonzero(side >= 0)
        P = np.asarray(means, np.float64)
        core = np.zeros(len(P), bool)
        for k, op in enumerate(self.openings):
            core |= (side == k) & op.inside(P, 0.0, CARRIER_CORE)
        self.carriers = np.flatnonzero(core)
        self.carrier_blink = np.array([names.index(self.openings[side[i]].blink) for i in self.carriers], np.int64)

    def opacity_offsets(self, expression, rest) -> np.ndarray:
        """[C] float64 logits added to the carriers' opacities at head expression ``expression``
        [53] (absolute) with the template's rest expression ``rest`` [53]: ``BLINK_GAIN`` times how
        far each eye's blink is past the rest (never negative)."""
        e = np.asarray(expression, np.float64) - np.asarray(rest, np.float64)
        return BLINK_GAIN * np.clip(e[self.carrier_blink], 0.0, None)
