"""Likeness of an avatar to its photo: identity similarity of renders, and rank-1 over people.

The measure a user applies by eye, made a number with the identity backbone (dlib's 128-D
ResNet by default, the same one the default model encodes with):

* :func:`avatar_renders`: the avatar rendered at the photo's (estimated, refined) camera and with
  that camera orbited by ``yaws`` degrees about the head's vertical axis (through the avatar's
  median point), at the photo's aspect, longer side ``max_side`` pixels, on white.
* :func:`identity_similarity`: cosine between the backbone's embedding of the photo's face and of
  the face found in a render (None when no face is found there: counted as a miss).
* :func:`rank1`: whether each avatar's render is closer to its own photo than to every photo of
  every other person (the face-recognition rank-1 criterion over a gallery of people).

Used by ``benchmarks/bench_likeness.py`` (``../shared/data/faces``: 13 people, 61 photos) and
``tests/test_likeness.py``.
"""

from __future__ import annotations

import math

import numpy as np

from .cameras import scale_intrinsics


def orbit_camera(c2w, yaw_deg: float, centre) -> np.ndarray:
    """[4,4] OpenGL c2w: ``c2w`` rotated by ``yaw_deg`` about the head frame's y axis (up) through
    ``centre`` [3] (metres). Positive yaw moves the camera towards +x (the subject's left)."""
    a = math.radians(yaw_deg)
    R = np.array([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(centre, np.float64) - R @ np.asarray(centre, np.float64)
    return T @ np.asarray(c2w, np.float64)


def avatar_renders(gaussians, camera, yaws=(0.0, -30.0, 30.0), max_side: int = 512) -> dict:
    """{yaw: [h,w,3] uint8 render} of ``gaussians`` (GaussianSet, head frame) at ``camera`` (a
    CameraEstimate: ``c2w``, ``K``, ``image_size``) orbited by each yaw (degrees)."""
    from .render import render_to_uint8

    W, H = camera.image_size
    s = min(1.0, max_side / max(W, H))
    w, h = max(8, round(W * s)), max(8, round(H * s))
    K = scale_intrinsics(camera.K, w / W, h / H)
    centre = np.median(gaussians.means, axis=0)
    return {float(y): render_to_uint8(gaussians, orbit_camera(camera.c2w, y, centre), K, w, h) for y in yaws}


def identity_similarity(front_end, embedder, render: np.ndarray, photo_embedding: np.ndarray) -> float | None:
    """Cosine between ``photo_embedding`` (unit [D]) and ``embedder``'s embedding of the largest
    face ``front_end`` finds in ``render`` ([H,W,3] uint8); None when it finds none."""
    e = render_embedding(front_end, embedder, render)
    return None if e is None else float(np.dot(e, photo_embedding))


def rank1(render_embeddings: list, photo_embeddings: list, persons: list) -> list:
    """For each avatar i, True when its render embedding (unit [D], or None for no face) is more
    similar to its own photo ``photo_embeddings[i]`` than to every photo of another person
    (``persons[j] != persons[i]``). Raises ``ValueError`` for lists of different lengths."""
    if not len(render_embeddings) == len(photo_embeddings) == len(persons):
        raise ValueError("render_embeddings, photo_embeddings and persons must have the same length")
    P = np.stack([np.asarray(e, np.float64) for e in photo_embeddings])
    out = []
    for i, r in enumerate(render_embeddings):
        if r is None:
            out.append(False)
            continue
        sims = P @ np.asarray(r, np.float64)
        others = [j for j in range(len(persons)) if persons[j] != persons[i]]
        out.append(bool(not others or sims[i] > sims[others].max()))
    return out


def render_embedding(front_end, embedder, render: np.ndarray):
    """Unit embedding [D] of the largest face in ``render``, or None when there is none."""
    faces = front_end.detect(render)
    if not faces:
        return None
    return embedder.embed(render, max(faces, key=lambda f: f.area))
