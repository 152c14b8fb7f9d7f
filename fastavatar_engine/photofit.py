"""What refinement fits when all a user gives is a photo file: masks, a mirrored view, landmarks.

The product path (``fastavatar generate PHOTO --refine N``, Blender's *Generate* / *Refine*) has
no calibration and no dataset mask. From the photo alone it builds, per photo
(:func:`photo_views`):

* **a foreground mask**: MediaPipe selfie segmentation (:mod:`fastavatar_engine.face.segment`)
  of head, hair, neck and body. The template ends at the shoulders, so the body is **cut where
  the template ends**: below the chin line (through MediaPipe landmark 152, perpendicular to the
  face's chin-to-forehead axis), person pixels outside the template's silhouette at the photo's
  camera, grown by :data:`BODY_MARGIN`, are *ignored* (neither fitted nor pushed to background). Everything else
  outside the mask is background: the loss fits it to white and the rendered alpha to 0.
* **a mirrored view** (symmetry, as in single-image face methods such as Unsup3D, Wu et al.
  2020): the head frame's sagittal plane is x = 0, so the photo flipped left-right is what the
  camera ``S @ c2w @ S`` (``S = diag(-1, 1, 1, 1)`` on the world and on the camera axes, which
  keeps it a proper rotation) sees of the mirrored head; the principal point mirrors,
  ``cx' = W - cx`` (continuous pixels). The mirrored view carries a lower weight
  (:data:`MIRROR_WEIGHT`): the estimated camera's yaw and roll errors and one-sided light make
  it disagree with the photo where both see the face.
* **landmark targets**: the 478 MediaPipe points (mirrored for the mirrored view, with the
  mirrored 3D correspondence) against the avatar's Gaussians nearest to the landmark template's
  3D points (:class:`LandmarkCorrespondence`), so the face's proportions follow the photo's.

Pure numpy + OpenCV; torch only in the loss helpers used by refinement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Weight of the mirrored view's photometric and silhouette loss relative to the photo's.
MIRROR_WEIGHT = 0.5
#: How far (fraction of the photo's longer side) the template's silhouette is grown before person
#: pixels below the chin outside it count as body beyond the template. Measured on the
#: leave-one-out model, subject 369, 300 steps, frame-aligned novel-view PSNR of the defaults:
#: 0.02 -> 15.88 dB, 0.08 -> 16.05 dB, 0.15 -> 15.88 dB (no cut at all lets the silhouette and
#: detail terms stretch the shoulders over the torso: 13.3-13.6 dB).
BODY_MARGIN = 0.08
#: MediaPipe Face Mesh indices: chin (menton) and the top of the forehead on the mid-line.
CHIN_LANDMARK, FOREHEAD_LANDMARK = 152, 10

_S = np.diag([-1.0, 1.0, 1.0, 1.0])


def mirror_camera(c2w, K, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The camera that sees the left-right flipped photo of the mirrored head.

    ``c2w``: [4,4] OpenGL camera-to-world in the head frame (sagittal plane x = 0, metres);
    ``K``: [3,3] intrinsics in pixels of a photo ``width`` pixels wide (continuous coordinates).
    Returns ``(S @ c2w @ S, K')`` with ``S = diag(-1, 1, 1, 1)`` and ``cx' = width - cx``: a
    proper rigid transform (det +1). A world point X seen at pixel (u, v) by the input camera is
    seen at (width - u, v) when mirrored to ``S X`` by the returned camera.
    """
    c2w = np.asarray(c2w, np.float64)
    K2 = np.array(K, np.float64, copy=True)
    K2[0, 2] = float(width) - K2[0, 2]
    K2[0, 1] = -K2[0, 1]
    return _S @ c2w @ _S, K2


def chin_line_below(shape_hw: tuple[int, int], landmarks: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """[H,W] bool: pixels below the chin line (through landmark 152, perpendicular to the
    chin-to-forehead axis; ``margin`` in face heights moves it down). ``landmarks``: [478,2] px."""
    h, w = shape_hw
    chin, top = np.asarray(landmarks[CHIN_LANDMARK], np.float64), np.asarray(landmarks[FOREHEAD_LANDMARK], np.float64)
    down = chin - top
    height = float(np.linalg.norm(down))
    down /= max(height, 1e-9)
    ys, xs = np.mgrid[0:h, 0:w]
    d = (xs + 0.5 - chin[0]) * down[0] + (ys + 0.5 - chin[1]) * down[1]
    return d > margin * height


def product_masks(person: np.ndarray, landmarks: np.ndarray, avatar_alpha: np.ndarray,
                  margin: float = BODY_MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """(foreground [H,W] float32 in [0,1], ignore [H,W] float32 in {0,1}) for refinement.

    ``person``: the soft segmentation [H,W]; ``landmarks``: [478,2] px; ``avatar_alpha``: the
    rendered alpha [H,W] of the head's Gaussians at the photo's camera
    (:meth:`AvatarGenerator.photo_view` passes the model's template). Below the chin line,
    person pixels it does not cover (alpha < 0.5, after a dilation by ``margin`` of the
    image's longer side) are the body beyond the template: ignored. See the module docstring."""
    import cv2

    person = np.clip(np.asarray(person, np.float32), 0, 1)
    h, w = person.shape
    below = chin_line_below((h, w), landmarks)
    k = max(3, int(margin * max(h, w)) | 1)
    cover = cv2.dilate((np.asarray(avatar_alpha) > 0.5).astype(np.uint8), np.ones((k, k), np.uint8)) > 0
    ignore = below & (person > 0.5) & ~cover
    fg = person.copy()
    fg[ignore] = 0.0
    return fg, ignore.astype(np.float32)


@dataclass
class LandmarkCorrespondence:
    """Which Gaussian stands for each of the 478 MediaPipe landmarks.

    ``index``: int64 [478], the Gaussian nearest to each landmark template point; ``offset``:
    float32 [478,3] metres, template point minus that Gaussian's mean in the feed-forward avatar
    (so the feed-forward avatar reproduces the landmark template exactly); ``normals``: the
    template's [478,3] outward unit normals and ``points`` its [478,3] points (head frame,
    metres), for the visibility test. ``build(..., mirrored=True)`` builds the same for the
    mirrored head (points and normals with x negated).
    """

    index: np.ndarray
    offset: np.ndarray
    normals: np.ndarray
    points: np.ndarray

    @classmethod
    def build(cls, means: np.ndarray, mirrored: bool = False, template=None) -> "LandmarkCorrespondence":
        """From the feed-forward avatar's means [K,3] (head frame, metres) and the landmark
        template (packaged default). Raises ``ValueError`` for means that are not [K,3]."""
        from scipy.spatial import cKDTree

        from .face.pose import load_landmark_template

        means = np.asarray(means, np.float64)
        if means.ndim != 2 or means.shape[1] != 3 or len(means) == 0:
            raise ValueError(f"means must be [K,3], got {means.shape}")
        tpl = template if template is not None else load_landmark_template()
        pts, nrm = tpl.points.copy(), tpl.normals.copy()
        if mirrored:
            pts[:, 0] *= -1
            nrm[:, 0] *= -1
        _, idx = cKDTree(means).query(pts)
        return cls(np.asarray(idx, np.int64), (pts - means[idx]).astype(np.float32), nrm, pts)

    def visible(self, c2w, cos_min: float = 0.3) -> np.ndarray:
        """[478] bool: landmarks whose template normal faces the camera (cosine > ``cos_min``);
        iris points (468-477) excluded (they follow the gaze)."""
        cam = np.asarray(c2w, np.float64)[:3, 3]
        v = cam[None] - self.points
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        vis = np.einsum("ij,ij->i", self.normals, v) > cos_min
        vis[468:] = False
        return vis


def mirror_landmarks(landmarks: np.ndarray, width: int) -> np.ndarray:
    """[N,2] px landmarks of the left-right flipped photo: ``u' = width - u`` (index i still
    names the same anatomical point of the *mirrored* head)."""
    out = np.array(landmarks, np.float64, copy=True)
    out[:, 0] = float(width) - out[:, 0]
    return out
