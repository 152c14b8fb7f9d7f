"""What the face front-end returns: :class:`Face` and the errors of face detection.

Kept apart from :mod:`.detect` (MediaPipe) so that :mod:`.pose` and the rest of the package use
these types without importing the detector, and :mod:`.detect` may use :mod:`.pose`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .landmarks import NUM_LANDMARKS

__all__ = ["Face", "FaceError", "NoFaceError", "FaceIndexError"]


# --------------------------------------------------------------------------- errors
class FaceError(ValueError):
    """Base class of user-facing face errors (no face, bad face index)."""


class NoFaceError(FaceError):
    """No face was found in an image."""


class FaceIndexError(FaceError, IndexError):
    """An explicit face index does not exist among the faces found."""


# --------------------------------------------------------------------------- result
@dataclass
class Face:
    """One detected face, everything in full-image pixels (continuous convention, see module doc).

    Attributes:
        box: [4] float64 ``(x0, y0, x1, y1)``, the detector's box clipped to the image.
        score: detection confidence in [0, 1].
        landmarks5: [5,2] float64, ArcFace order: image-left eye, image-right eye, nose tip,
            image-left mouth corner, image-right mouth corner.
        landmarks: [478,2] float64 MediaPipe Face Mesh points (468 mesh + 10 iris).
        image_size: ``(width, height)`` of the image the face was found in.
        landmarks_depth: [478] float64 MediaPipe's relative depth per point, in pixels of the
            same scale as x (smaller = closer to the camera); only relative values mean anything.
    """

    box: np.ndarray
    score: float
    landmarks5: np.ndarray
    landmarks: np.ndarray
    image_size: tuple[int, int]
    landmarks_depth: np.ndarray | None = field(default=None, repr=False)

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        x0, y0, x1, y1 = self.box
        return float(max(0.0, x1 - x0) * max(0.0, y1 - y0))

    def to_json(self, dense: bool = True, decimals: int = 2) -> dict:
        """JSON-ready dict: box, score, landmarks5, (dense) landmarks, image size, conventions."""
        r = lambda a: np.round(np.asarray(a, dtype=np.float64), decimals).tolist()  # noqa: E731
        out = {
            "box_xyxy": r(self.box),
            "score": round(float(self.score), 4),
            "landmarks5": r(self.landmarks5),
            "landmarks5_order": ["left_eye", "right_eye", "nose_tip", "left_mouth", "right_mouth"],
            "image_size_wh": [int(self.image_size[0]), int(self.image_size[1])],
            "pixel_convention": "continuous, x right / y down, pixel centres at +0.5",
        }
        if dense:
            out["landmarks"] = r(self.landmarks)
            out["landmarks_scheme"] = f"mediapipe_face_mesh_{NUM_LANDMARKS}"
        return out
