"""Attribute directions in the latent space of a FastAvatar model, and their library files.

A *direction* is a unit vector ``d`` [D] (float32) in the code space of one model: an avatar
with code ``w`` edited by amount ``a`` has code ``w + a d`` (the paper's latent editing; ``a`` is
the L2 distance moved in code space). A direction learnt from labelled
avatars is the normal of a linear SVM separating the codes of avatars that have an attribute
(label 1) from those that lack it (label 0), normalised, pointing towards "has" (scikit-learn's
``LinearSVC``; Shen et al., InterFaceGAN, CVPR 2020, do the same in GAN latent spaces).

File format (``*.json``, UTF-8; what the add-on's library folder holds)::

    {"format": "fastavatar-direction", "version": 1, "name": "smile", "model_id": "...",
     "code_dim": 512, "vector": [D floats, unit norm],
     "provenance": {"created": ISO time, "method": "linear-svm", "samples": {"positive": n, "negative": m},
                    "source": free text, ...},
     "accuracy": {"train": 0.97, "cross_validated": 0.91, "folds": 5}}

Loading validates everything (format, name, model id, dimension, finite unit vector) and raises
:class:`DirectionError` naming what is wrong; writing is atomic (temporary file, then rename).
This module imports numpy only; :func:`train_direction` imports scikit-learn when called (the
engine's side).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "fastavatar-direction"
VERSION = 1
#: Largest direction file accepted (a 512-D vector is ~12 kB of JSON).
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_CODE_DIM = 65536
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,62}$")


class DirectionError(ValueError):
    """A direction file or training set that cannot be used; the message names the problem."""


@dataclass
class Direction:
    """One attribute direction: ``vector`` float32 [code_dim], unit L2 norm, in the code space of
    the model ``model_id``. ``accuracy``: {"train", "cross_validated", "folds"} when learnt."""

    name: str
    model_id: str
    vector: np.ndarray
    provenance: dict = field(default_factory=dict)
    accuracy: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise DirectionError(f"direction name {self.name!r}: use 1-63 letters, digits, space, '_', '-' or '.'")
        if not isinstance(self.model_id, str) or not self.model_id:
            raise DirectionError(f"direction {self.name!r}: missing model id")
        v = np.asarray(self.vector)
        if v.ndim != 1 or not 1 <= v.shape[0] <= MAX_CODE_DIM:
            raise DirectionError(f"direction {self.name!r}: vector must be 1-D, got shape {list(v.shape)}")
        if not np.issubdtype(v.dtype, np.number) or not np.isfinite(v.astype(np.float64)).all():
            raise DirectionError(f"direction {self.name!r}: vector has non-finite or non-numeric values")
        norm = float(np.linalg.norm(v.astype(np.float64)))
        if norm < 1e-8:
            raise DirectionError(f"direction {self.name!r}: vector is zero")
        self.vector = (v.astype(np.float64) / norm).astype(np.float32)

    @property
    def code_dim(self) -> int:
        return int(self.vector.shape[0])

    @property
    def unit_amount(self) -> float:
        """The code-space distance that strength 1 means (``provenance["unit_amount"]``: for a
        learnt direction the typical distance between the classes, e.g. the mean neutral-to-smiling
        move of the training pairs), or 1.0 when the direction does not say."""
        u = self.provenance.get("unit_amount")
        ok = isinstance(u, (int, float)) and not isinstance(u, bool) and math.isfinite(u) and u > 0
        return float(u) if ok else 1.0

    def check_model(self, model_id: str, code_dim: int | None = None) -> None:
        """Raise :class:`DirectionError` unless this direction belongs to ``model_id`` (and ``code_dim``)."""
        if model_id != self.model_id:
            raise DirectionError(f"direction {self.name!r} belongs to model {self.model_id!r}, "
                                 f"not {model_id!r}: directions only transfer within one model")
        if code_dim is not None and code_dim != self.code_dim:
            raise DirectionError(f"direction {self.name!r} has {self.code_dim} values, the model's codes {code_dim}")

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "name": self.name, "model_id": self.model_id,
                "code_dim": self.code_dim, "vector": [float(x) for x in self.vector],
                "provenance": self.provenance, "accuracy": self.accuracy}


def direction_from_json(data, source: str = "<json>") -> Direction:
    """Parse and validate a direction dict (as in the file format). Raises :class:`DirectionError`."""
    if not isinstance(data, dict):
        raise DirectionError(f"{source}: not a JSON object")
    if data.get("format") != FORMAT:
        raise DirectionError(f"{source}: not a FastAvatar direction (format {data.get('format')!r})")
    if data.get("version") != VERSION:
        raise DirectionError(f"{source}: direction format version {data.get('version')!r}, this reader knows {VERSION}")
    vec = data.get("vector")
    if not isinstance(vec, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vec):
        raise DirectionError(f"{source}: 'vector' must be a list of numbers")
    dim = data.get("code_dim")
    if dim != len(vec):
        raise DirectionError(f"{source}: 'code_dim' is {dim!r} but the vector has {len(vec)} values")
    prov, acc = data.get("provenance", {}), data.get("accuracy", {})
    if not isinstance(prov, dict) or not isinstance(acc, dict):
        raise DirectionError(f"{source}: 'provenance' and 'accuracy' must be objects")
    try:
        return Direction(data.get("name"), data.get("model_id"), np.asarray(vec, np.float64), prov, acc)
    except DirectionError as e:
        raise DirectionError(f"{source}: {e}") from None


def load_direction(path) -> Direction:
    """Read one direction file. Raises :class:`DirectionError` (also for unreadable/oversized files)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise DirectionError(f"{path}: {size} bytes is too large for a direction file")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DirectionError(f"{path}: cannot read direction file ({e})") from None
    return direction_from_json(data, str(path))


def save_direction(direction: Direction, path) -> Path:
    """Write ``direction`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(direction.to_json(), f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def direction_filename(name: str) -> str:
    """File name for a direction called ``name`` (spaces -> underscores)."""
    return re.sub(r"\s+", "_", name.strip()) + ".json"


def load_library(folder, model_id: str | None = None) -> tuple[list[Direction], list[str]]:
    """(directions, problems) from every ``*.json`` in ``folder``, sorted by name. With
    ``model_id`` only that model's directions are returned; files of other models are listed in
    ``problems`` only when they are unreadable (a foreign model is not a problem). A missing
    folder is an empty library."""
    folder = Path(folder)
    out, problems = [], []
    if not folder.is_dir():
        return out, problems
    for p in sorted(folder.glob("*.json")):
        try:
            d = load_direction(p)
        except DirectionError as e:
            problems.append(str(e))
            continue
        if model_id is None or d.model_id == model_id:
            out.append(d)
    out.sort(key=lambda d: d.name)
    return out, problems


#: Where the packaged models live; each bundle may ship a ``directions/`` library.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def shipped_directions(model_id: str, weights_dir=WEIGHTS_DIR) -> list[Direction]:
    """The directions shipped inside the package's model bundles (``weights/*/directions/*.json``)
    for ``model_id``, sorted by name (numpy only: the Blender add-on lists them too)."""
    out: dict[str, Direction] = {}
    for folder in sorted(Path(weights_dir).glob("*/directions")):
        for d in load_library(folder, model_id)[0]:
            out[d.name] = d
    return [out[k] for k in sorted(out)]


#: Regularisation strengths tried when ``c`` is "auto" (smaller = stronger regularisation).
C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def train_direction(codes, labels, name: str, model_id: str, *, c: float | str = "auto", folds: int = 5,
                    source: str = "", seed: int = 0) -> Direction:
    """Learn a direction from codes ``codes`` [N,D] and binary ``labels`` [N] (1 = has the attribute).

    A linear SVM (``sklearn.svm.LinearSVC``, squared hinge loss) on the raw codes (no
    per-dimension rescaling: the normal must live in code space); the unit normal points towards
    label 1. Accuracy is reported on the training set and by stratified k-fold cross-validation
    with ``k = min(folds, smaller class size)`` folds (None when k < 2). ``c``: the SVM's C, or
    ``"auto"``: the value of :data:`C_GRID` with the best cross-validated accuracy (ties go to
    the stronger regularisation). With fewer codes than dimensions many hyperplanes separate
    the labels, and a strongly regularised one follows the attribute instead of the noise
    (planted 512-D direction, 1,000 codes: cosine 0.77 at C = 1, 0.95 at C = 1e-3).
    Raises :class:`DirectionError` for fewer than 2 examples of a class, mismatched shapes or
    non-finite codes.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.svm import LinearSVC

    x = np.asarray(codes, np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DirectionError(f"codes [N,D] and labels [N] expected, got {list(x.shape)} and {list(y.shape)}")
    if not np.isfinite(x).all():
        raise DirectionError("codes contain non-finite values")
    if not np.isin(y, (0, 1)).all():
        raise DirectionError("labels must be 0 (lacks the attribute) or 1 (has it)")
    y = y.astype(int)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if min(n_pos, n_neg) < 2:
        raise DirectionError(f"need at least 2 avatars with and 2 without the attribute, got {n_pos} and {n_neg}")
    k = min(folds, n_pos, n_neg)

    def svm(cv):
        return LinearSVC(C=cv, fit_intercept=True, max_iter=20000, random_state=seed)

    def cv_accuracy(cv):
        split = StratifiedKFold(k, shuffle=True, random_state=seed)
        return float(cross_val_score(svm(cv), x, y, cv=split).mean())

    scores = {}
    if c == "auto":
        if k >= 2:
            scores = {cv: cv_accuracy(cv) for cv in C_GRID}
            c = max(C_GRID, key=lambda cv: (round(scores[cv], 6), -cv))
        else:
            c = 1e-2
    elif not isinstance(c, (int, float)) or not c > 0:
        raise DirectionError(f"C must be a positive number or 'auto', got {c!r}")
    model = svm(float(c)).fit(x, y)
    normal = model.coef_[0]
    if not np.isfinite(normal).all() or np.linalg.norm(normal) < 1e-12:
        raise DirectionError("the SVM found no separating direction (all codes alike?)")
    cv = scores.get(c, cv_accuracy(c) if k >= 2 else None)
    return Direction(name, model_id, normal, provenance={
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "method": "linear-svm (scikit-learn LinearSVC)",
        "C": float(c), "C_selection": "cross-validation" if scores else "given",
        "samples": {"positive": n_pos, "negative": n_neg}, "source": source},
        accuracy={"train": round(float(model.score(x, y)), 4),
                  "cross_validated": None if cv is None else round(cv, 4), "folds": k})


def paired_direction(without, with_, name: str, model_id: str, *, folds: int = 5, source: str = "",
                     seed: int = 0) -> Direction:
    """A direction from pairs of the same avatars without and with an attribute (e.g. one person's
    neutral and smiling photos): the normalised mean of the pairs' code differences ``with_ -
    without`` ([N,D] each, row i one pair), so identity cancels out. ``accuracy``: ``train`` and
    ``cross_validated`` are the fractions of pairs whose difference points along the direction
    (projection > 0), the latter with directions from the other folds (k-fold over pairs).
    ``provenance["unit_amount"]`` is the pairs' mean projection: strength 1 is the typical change.
    Raises :class:`DirectionError` for fewer than 2 pairs, mismatched shapes or non-finite codes."""
    a, b = np.asarray(without, np.float64), np.asarray(with_, np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise DirectionError(f"paired codes [N,D] of equal shape expected, got {list(a.shape)} and {list(b.shape)}")
    if len(a) < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise DirectionError("need at least 2 pairs of finite codes")
    diff = b - a
    mean = diff.mean(0)
    if np.linalg.norm(mean) < 1e-12:
        raise DirectionError("the pairs' differences cancel out: no direction")
    d = mean / np.linalg.norm(mean)
    k = min(folds, len(diff))
    order = np.random.default_rng(seed).permutation(len(diff))
    hits = []
    for f in np.array_split(order, k):
        rest = np.setdiff1d(order, f)
        m = diff[rest].mean(0)
        hits += list(diff[f] @ m > 0)
    return Direction(name, model_id, d, provenance={
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "method": "mean paired difference",
        "samples": {"pairs": len(diff)}, "source": source, "unit_amount": round(float((diff @ d).mean()), 5)},
        accuracy={"train": round(float(np.mean(diff @ d > 0)), 4), "cross_validated": round(float(np.mean(hits)), 4),
                  "folds": k})


#: MediaPipe face-mesh landmark indices used by :func:`expression_measures`.
_UPPER_INNER_LIP, _LOWER_INNER_LIP, _MOUTH_LEFT, _MOUTH_RIGHT = 13, 14, 61, 291
_EYE_OUTER_RIGHT, _EYE_OUTER_LEFT, _FOREHEAD, _CHIN = 33, 263, 10, 152


def expression_measures(landmarks) -> dict:
    """Scale-free expression measures from MediaPipe's face-mesh landmarks ([>=468, 2 or 3], pixels).

    ``mouth_open``: inner-lip gap (landmarks 13-14) / face height (10-152), ~0 closed, ~0.1+
    open; ``smile``: mouth width (61-291) / outer-eye-corner distance (33-263), ~0.8-0.9 neutral,
    higher when smiling. Thresholds on these (or a median split over a photo set) give labels
    for :func:`train_direction` without labelling by hand. Raises ValueError for too few landmarks.
    """
    p = np.asarray(landmarks, np.float64)
    if p.ndim != 2 or p.shape[0] < 468 or p.shape[1] < 2:
        raise ValueError(f"expected MediaPipe face-mesh landmarks [>=468, 2], got {list(p.shape)}")
    p = p[:, :2]

    def dist(i, j):
        return float(np.linalg.norm(p[i] - p[j]))

    height, eyes = dist(_FOREHEAD, _CHIN), dist(_EYE_OUTER_RIGHT, _EYE_OUTER_LEFT)
    if height < 1e-6 or eyes < 1e-6:
        raise ValueError("degenerate landmarks (zero face size)")
    return {"mouth_open": round(dist(_UPPER_INNER_LIP, _LOWER_INNER_LIP) / height, 5),
            "smile": round(dist(_MOUTH_LEFT, _MOUTH_RIGHT) / eyes, 5)}


def median_split_labels(values) -> np.ndarray:
    """[N] uint8 labels: 1 where ``values`` is above the median, 0 at or below it (ties stay 0)."""
    v = np.asarray(values, np.float64)
    return (v > np.median(v)).astype(np.uint8)


def cosine(a, b) -> float:
    """Cosine similarity of two vectors (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / max(math.sqrt(float(a @ a) * float(b @ b)), 1e-300))


__all__ = ["Direction", "DirectionError", "direction_from_json", "load_direction", "save_direction",
           "load_library", "shipped_directions", "train_direction", "paired_direction", "direction_filename", "cosine", "expression_measures",
           "median_split_labels", "FORMAT", "VERSION"]
