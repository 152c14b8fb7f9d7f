"""Expressions: sequences of the 53 ARKit coefficients and head poses that drive an avatar.

* :mod:`.sequence`: the sequence and its JSON file (``fastavatar track``'s output);
* :mod:`.arkit`: the iPhone Live Link Face CSV export;
* :mod:`.video`: tracking a video or a folder of frames (MediaPipe landmarks -> head fit with
  the identity held, :mod:`fastavatar_engine.head.track`).
"""

from .sequence import ExpressionFileError, ExpressionSequence  # noqa: F401


def load_expressions(path) -> ExpressionSequence:
    """An expression sequence from ``path``: a Live Link Face ``.csv`` (:func:`.arkit.read_arkit_csv`)
    or our JSON file. Raises :class:`ExpressionFileError` for an unreadable or malformed file."""
    from pathlib import Path

    if Path(path).suffix.lower() == ".csv":
        from .arkit import read_arkit_csv

        return read_arkit_csv(path)
    return ExpressionSequence.load(path)
