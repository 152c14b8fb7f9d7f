"""Expressions: sequences of the 53 ARKit coefficients and head poses that drive an avatar.

* :mod:`.sequence`: the sequence and its JSON file (``fastavatar track``'s output);
* :mod:`.arkit`: the iPhone Live Link Face CSV export;
* :mod:`.video`: tracking a video or a folder of frames (MediaPipe landmarks -> head fit with
  the identity held, :mod:`fastavatar_engine.head.track`).
"""

from .sequence import ExpressionFileError, ExpressionSequence  # noqa: F401
