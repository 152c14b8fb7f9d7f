"""Landmark index conventions shared by the face front-end (numpy only).

Dense landmarks are MediaPipe Face Mesh's 478 points (468 mesh vertices + 2 x 5 iris points
with ``refine_landmarks=True``), in MediaPipe's own vertex order (the canonical face model's
topology, see ``mediapipe/modules/face_geometry/data/canonical_face_model.obj``).

Left/right below is **image** left/right for an upright frontal face, as insightface uses it:
the "left eye" of the ArcFace 5 points is the eye with the smaller x, i.e. the subject's right
eye. MediaPipe's own names are the subject's (its "right eye" is indices 33/133, image left).
"""

from __future__ import annotations

import numpy as np

#: Number of dense landmarks produced with ``refine_landmarks=True``.
NUM_LANDMARKS = 478

#: Iris centres (refined model): 468 = image-left eye (subject's right), 473 = image-right eye.
IRIS_CENTER_IMAGE_LEFT = 468
IRIS_CENTER_IMAGE_RIGHT = 473

#: Mesh indices giving the ArcFace 5 points in insightface's order:
#: image-left eye (iris centre), image-right eye (iris centre), nose tip (pronasale),
#: image-left mouth corner, image-right mouth corner.
ARCFACE5_FROM_MESH = (468, 473, 1, 61, 291)

#: Mesh indices giving dlib's ``shape_predictor_5_face_landmarks`` layout (the layout
#: ``dlib.get_face_chip`` aligns): 0 = image-right eye outer corner, 1 = image-right eye inner
#: corner, 2 = image-left eye outer corner, 3 = image-left eye inner corner, 4 = subnasale
#: (bottom of the nose between the nostrils).
DLIB5_FROM_MESH = (263, 362, 33, 133, 2)

#: Iris landmarks (468..477): they follow the gaze, not the head, so head-pose estimation
#: leaves them out.
IRIS_LANDMARKS = tuple(range(468, 478))


def arcface5_from_mesh(landmarks: np.ndarray) -> np.ndarray:
    """ArcFace 5 points ``[5,2]`` float64 from dense landmarks ``[478,2]`` (same pixel units)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape[0] != NUM_LANDMARKS:
        raise ValueError(f"expected {NUM_LANDMARKS} dense landmarks, got array of shape {lm.shape}")
    return lm[list(ARCFACE5_FROM_MESH), :2].copy()


def dlib5_from_mesh(landmarks: np.ndarray) -> np.ndarray:
    """dlib 5-point layout ``[5,2]`` float64 from dense landmarks ``[478,2]`` (same pixel units)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape[0] != NUM_LANDMARKS:
        raise ValueError(f"expected {NUM_LANDMARKS} dense landmarks, got array of shape {lm.shape}")
    return lm[list(DLIB5_FROM_MESH), :2].copy()
