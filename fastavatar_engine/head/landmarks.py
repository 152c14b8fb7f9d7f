"""MediaPipe Face Mesh's 478 landmarks as points on the head model's surface.

Built once by ``tools/build_head_registration.py`` from the calibrated sample subjects' triangulated
landmarks and stored in ``ict_head_registration.json`` (``landmarks``): per MediaPipe landmark a
triangle of the head mesh and barycentric weights, or triangle -1 where the mesh has no such
point (the 10 iris landmarks: the eyeballs are not part of the kept skin surface).

**Contour landmarks** (:data:`CONTOUR`): MediaPipe's face-oval points along the cheeks and jaw.
In a photo they sit on the face's silhouette, and which skin point forms that silhouette changes
with the pose, so the fit (:mod:`.fit`) matches them to the silhouette of the posed mesh among
:meth:`LandmarkBinding.contour_candidates`, not to a fixed vertex.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: MediaPipe face-oval landmarks on the cheeks and jaw (the oval's forehead part is left out:
#: the hairline there is not a silhouette of the skin in a frontal photo).
CONTOUR = (356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150, 136, 172, 58,
           132, 93, 234, 127)

#: MediaPipe's lower inner-lip landmarks (corner to corner, without the corners 78 and 308).
LOWER_INNER_LIP = (95, 88, 178, 87, 14, 317, 402, 318, 324)
#: A lower-lip triangle: all its vertices move at least this far (metres) under jawOpen 1.
LOWER_LIP_MOTION = 0.015

#: Anchor pairs (MediaPipe index, Multi-PIE 68 index) used to start the registration: eye corners,
#: nose tip, subnasale, mouth corners, lip midpoints, chin, nasion.
ANCHORS_MP_TO_68 = ((33, 36), (133, 39), (362, 42), (263, 45), (1, 30), (2, 33), (61, 48), (291, 54),
                    (0, 51), (17, 57), (152, 8), (168, 27))


@dataclass
class LandmarkBinding:
    """Landmarks as barycentric points on mesh triangles.

    Attributes:
        tri: [478] int64 triangle index into the head model's triangles (-1: no surface point).
        bary: [478,3] float64 barycentric weights.
    """

    tri: np.ndarray
    bary: np.ndarray

    def __post_init__(self):
        self.tri = np.asarray(self.tri, dtype=np.int64)
        self.bary = np.asarray(self.bary, dtype=np.float64)
        if self.tri.shape != (478,) or self.bary.shape != (478, 3) or not np.isfinite(self.bary).all():
            raise ValueError("LandmarkBinding: expected tri [478] and finite bary [478,3]")

    @property
    def valid(self) -> np.ndarray:
        """[478] bool: landmarks with a surface point."""
        return self.tri >= 0

    def points(self, vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
        """[478,3] positions on a mesh ``vertices`` [V,3] (NaN where not valid)."""
        out = np.full((478, 3), np.nan)
        ok = self.valid
        out[ok] = np.einsum("nk,nkd->nd", self.bary[ok], np.asarray(vertices)[triangles[self.tri[ok]]])
        return out

    def matrix(self, triangles: np.ndarray, num_vertices: int, indices=None) -> np.ndarray:
        """Sparse-as-dense [L, V] float64 weights ``W`` so that landmark points = ``W @ vertices``."""
        idx = np.nonzero(self.valid)[0] if indices is None else np.asarray(indices)
        W = np.zeros((len(idx), num_vertices))
        for r, i in enumerate(idx):
            np.add.at(W[r], triangles[self.tri[i]], self.bary[i])
        return W

    def to_json(self) -> dict:
        return {"tri": self.tri.tolist(), "bary": np.round(self.bary, 5).tolist()}

    @classmethod
    def from_json(cls, d: dict) -> "LandmarkBinding":
        return cls(tri=np.array(d["tri"]), bary=np.array(d["bary"]))


def separate_inner_lips(binding: LandmarkBinding, model) -> LandmarkBinding:
    """``binding`` with the lower inner-lip landmarks (:data:`LOWER_INNER_LIP`) moved onto the
    lower lip: on the closest point of a triangle that jawOpen 1 moves by at least
    :data:`LOWER_LIP_MOTION` (the head model ``model`` at its rest identity and expression).

    The registration triangulated the landmarks on closed mouths, where the inner lips touch,
    and bound the lower ones to the same upper-lip points as the upper ones: the lip gap
    (landmarks 13-14) of the registered head stayed at 0.004 of the mouth's width for every
    jawOpen, so a fit could not see a parted mouth and tracked speech (GRID: lip gaps of 0.15-0.2)
    as jawOpen 0.1-0.2 (issue 22)."""
    from .binding import HeadBinding

    names = list(model.expression_names)
    rest = np.asarray(model.registration.get("rest_expression", np.zeros(len(names))), np.float64)
    ident = model.rest_identity()
    jaw = rest.copy()
    jaw[names.index("jawOpen")] += 1.0
    V0, V1 = model.vertices(ident, rest), model.vertices(ident, jaw)
    moving = (np.linalg.norm(V1 - V0, axis=1) >= LOWER_LIP_MOTION)[model.triangles].all(1)
    idx = np.array([i for i in LOWER_INNER_LIP if binding.tri[i] >= 0])
    if not len(idx) or not moving.any():
        return binding
    found = HeadBinding.bind(binding.points(V0, model.triangles)[idx], V0, model.triangles, allowed_triangles=moving)
    tri, bary = binding.tri.copy(), binding.bary.copy()
    tri[idx], bary[idx] = found.tri, found.bary
    return LandmarkBinding(tri=tri, bary=bary)


def contour_candidates(vertices_cm: np.ndarray, binding: LandmarkBinding, triangles: np.ndarray,
                       radius_cm: float = 4.0) -> np.ndarray:
    """Vertex indices that may form the cheek/jaw silhouette: within ``radius_cm`` of a contour
    landmark's point on the neutral mesh (ICT frame, cm), on the face side of the head (z > ear line)."""
    from scipy.spatial import cKDTree

    pts = binding.points(vertices_cm, triangles)[list(CONTOUR)]
    tree = cKDTree(vertices_cm)
    near = sorted(set(i for lst in tree.query_ball_point(pts, r=radius_cm) for i in lst))
    return np.asarray(near, dtype=np.int64)
