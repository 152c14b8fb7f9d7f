"""The morphable head under the Gaussians: ICT-FaceKit's basis, the Gaussian-to-triangle binding and
the camera + shape fit from a photo's landmarks.

* :mod:`.basis` — :class:`HeadModel` (neutral, 100 identity modes, 53 ARKit expressions).
* :mod:`.binding` — :class:`HeadBinding` (GaussianAvatars' triangle binding).
* :mod:`.landmarks` — MediaPipe's 478 landmarks as points on the head mesh.
* :mod:`.fit` — :func:`fit_head`: rotation, translation, focal length, identity and expression.
"""

from .basis import HeadModel, load_head_model
from .binding import HeadBinding

__all__ = ["HeadModel", "HeadBinding", "load_head_model"]
