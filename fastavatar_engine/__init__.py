"""FastAvatar engine: single-photo 3D Gaussian head avatars (Liang et al., TMLR 2026, arXiv 2508.18389).

Importing this package needs numpy only. Modules that need PyTorch (``render``) or the face
models (``face``) import them lazily, so the Blender add-on can use :mod:`fastavatar_engine.gaussians`,
:mod:`fastavatar_engine.ply` and :mod:`fastavatar_engine.cameras` inside Blender's own Python.
"""

__version__ = "0.1.0"

from .gaussians import GaussianSet, GaussianValidationError  # noqa: F401  (numpy-only)
