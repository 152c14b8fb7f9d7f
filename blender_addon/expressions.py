"""An avatar's face rig: the 53 expression coefficients, the head shape they ride on, and keying a
tracked performance on the timeline.

**What an expressive avatar holds** (saved in the .blend, travelling with the object on append):

* ``obj["fastavatar_head"]``: the head model's identity coefficients [100] the engine fitted to
  the photo (Generate and Refine store them); an avatar without them (made before the head
  model, or imported) has no face rig;
* ``obj.fastavatar.expression``: one keyframable float in [0, 1] per ARKit expression name
  (:data:`fastavatar_engine.expressions.names.EXPRESSION_NAMES`, data path
  ``fastavatar.expression.jawOpen``), which re-decode the avatar like the direction sliders do;
* after *Drive from Video* with the head pose: ``obj["fastavatar_rest_matrix"]`` [16] (row-major
  4x4), the object's own transform the keyed head motion is relative to.

**How an expression reaches the Gaussians** (:mod:`.editing` calls :func:`exact_delta` and
:func:`preview_delta`): the exact frame adds the engine's ``decode(w', head, e) - decode(w',
head, 0)`` (``w'`` the code with the sliders applied) to what the avatar shows without
expression, which at zero edits is ``fastavatar animate``'s frame exactly (``decode(w, head,
e) + R``); scrubbing previews it with the linear rig ``sum_k e_k B_k`` (the engine's secant per
shape, ``serve_expressions``) until the exact decode replaces it.

A blend avatar's head is the mix of its inputs' heads (identity coefficients mix linearly).

The head pose is a rigid motion in the engine's head frame (y up, metres); the avatar object maps
that frame into Blender's z-up world (:mod:`.avatar`), so the keyed object transform is
``rest @ M_k``. numpy + bpy only.
"""

from __future__ import annotations

import numpy as np

from fastavatar_engine.expressions.names import EXPRESSION_NAMES, grouped  # noqa: F401 (the panel uses grouped)

from .fcurves import fcurves, remove_fcurve

HEAD_KEY = "fastavatar_head"
REST_KEY = "fastavatar_rest_matrix"
POSE_PATHS = (("location", 3), ("rotation_quaternion", 4))

#: True while :func:`set_values` writes the coefficients (one refresh after, not 53)
_suspended = False


# ---------------------------------------------------------------------- head and coefficients
def get_head(obj) -> np.ndarray | None:
    """The avatar's identity coefficients [100] float32, or None when it has no face rig."""
    h = obj.get(HEAD_KEY)
    return None if h is None else np.asarray(h, np.float64).astype(np.float32)


def set_head(obj, head) -> None:
    """Store the identity coefficients ``head`` [100] (None: remove). Raises ValueError for
    another shape or non-finite values."""
    if head is None:
        if HEAD_KEY in obj:
            del obj[HEAD_KEY]
        return
    h = np.asarray(head, np.float64).ravel()
    if h.shape != (100,) or not np.isfinite(h).all():
        raise ValueError(f"head: expected 100 finite identity coefficients, got {h.shape}")
    obj[HEAD_KEY] = [float(v) for v in h]


def effective_head(obj, depth: int = 0) -> np.ndarray | None:
    """[100] float32 the avatar's expressions ride on: its own head, or for a blend the mix of its
    inputs' (None when any input has none)."""
    p = obj.fastavatar
    if p.blend_a is None or p.blend_b is None:
        return get_head(obj)
    if depth > 8:
        return None
    a, b = effective_head(p.blend_a, depth + 1), effective_head(p.blend_b, depth + 1)
    if a is None or b is None:
        return None
    t = np.float32(p.mix)
    return (np.float32(1) - t) * a + t * b


def values(obj) -> np.ndarray:
    """[53] float32 the avatar's expression coefficients (head model order)."""
    e = obj.fastavatar.expression
    return np.array([getattr(e, n) for n in EXPRESSION_NAMES], np.float32)


def set_values(obj, coefficients) -> None:
    """Set the 53 coefficients (clipped to [0, 1]) without the 53 per-slider refreshes; the caller
    refreshes the avatar once (``editing.on_parameter_changed``). Raises ValueError for another count."""
    c = np.asarray(coefficients, np.float64).ravel()
    if c.size != len(EXPRESSION_NAMES) or not np.isfinite(c).all():
        raise ValueError(f"expected {len(EXPRESSION_NAMES)} finite coefficients, got {c.size}")
    global _suspended
    _suspended = True
    try:
        e = obj.fastavatar.expression
        for name, v in zip(EXPRESSION_NAMES, np.clip(c, 0.0, 1.0)):
            setattr(e, name, float(v))
    finally:
        _suspended = False


def suspended() -> bool:
    """Whether coefficient updates are being batched (the update callback then does nothing)."""
    return _suspended


# ---------------------------------------------------------------------- what an expression adds
#: the last few face rigs, keyed by (code, head) bytes: the rig does not depend on the expression,
#: so scrubbing and settling never rebuild it (53 decodes, ~3 s on a 2-core CPU)
_rigs: dict = {}
MAX_RIGS = 4


def exact_delta(client, code, head, expression, basis: bool):
    """(delta [K,59] float32 or None, (basis [53,K,C], columns [C]) or None) from the engine for
    the edited code ``code`` [D] on ``head`` [100]; no request when ``expression`` is all zero
    and no basis is wanted (a cached basis for the same code and head is reused). Engine
    errors propagate."""
    if head is None or (not basis and not np.any(expression)):
        return None, None
    key = (np.asarray(code, np.float32).tobytes(), np.asarray(head, np.float32).tobytes())
    rig = _rigs.get(key) if basis else None
    need_basis = basis and rig is None
    if not np.any(expression) and not need_basis:
        return None, rig
    out = client.expression(code, head, expression if np.any(expression) else None, basis=need_basis)
    if need_basis:
        rig = (out["basis"], out["columns"])
        while len(_rigs) >= MAX_RIGS:
            _rigs.pop(next(iter(_rigs)))
        _rigs[key] = rig
    return (out["delta"] if np.any(expression) else None), rig


def preview_delta(rig, de: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(columns [C], change [N, C]) of the linear rig ``rig`` = (basis [53,N,C], columns) for the
    coefficient change ``de`` [53]."""
    basis, cols = rig
    return cols, np.tensordot(de.astype(np.float32), basis, axes=1)


# ---------------------------------------------------------------------- keying a performance
def pose_matrix(rotation, translation) -> np.ndarray:
    """[4,4] float64 rigid motion from a unit quaternion (w, x, y, z) and a translation (metres)."""
    w, x, y, z = (float(v) for v in rotation)
    n = (w * w + x * x + y * y + z * z) ** 0.5 or 1.0
    w, x, y, z = w / n, x / n, y / n, z / n
    M = np.eye(4)
    M[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                 [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                 [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]]
    M[:3, 3] = np.asarray(translation, np.float64)
    return M


def rest_matrix(obj) -> np.ndarray:
    """[4,4] the object transform keyed head poses are relative to: the stored one, else the
    object's current ``matrix_basis``."""
    r = obj.get(REST_KEY)
    if r is not None and len(r) == 16:
        return np.asarray(r, np.float64).reshape(4, 4)
    return np.array(obj.matrix_basis, np.float64)


def frame_times(n: int, seq_fps: float, scene, start: float) -> np.ndarray:
    """[n] scene frame (possibly fractional) of each sequence frame: ``start + k * scene_fps / seq_fps``."""
    scene_fps = scene.render.fps / scene.render.fps_base
    return start + np.arange(n, dtype=np.float64) * (scene_fps / float(seq_fps))


def clear_keys(obj, pose: bool = True) -> None:
    """Remove the F-curves of the expression coefficients (and with ``pose`` the keyed head pose)."""
    ad = obj.animation_data
    if ad is None or ad.action is None:
        return
    paths = {f"fastavatar.expression.{n}" for n in EXPRESSION_NAMES}
    if pose and REST_KEY in obj:
        paths |= {p for p, _ in POSE_PATHS}
    for fc in [fc for fc in fcurves(ad.action) if fc.data_path in paths]:
        remove_fcurve(ad.action, fc)


def _set_curve(obj, data_path: str, index: int, frames: np.ndarray, vals: np.ndarray) -> None:
    """Key ``vals`` [F] at ``frames`` [F] on one F-curve, replacing its keys, linear in between."""
    obj.keyframe_insert(data_path, index=index, frame=float(frames[0]))  # creates the curve on every API
    fc = next(f for f in fcurves(obj.animation_data.action)
              if f.data_path == data_path and f.array_index == max(index, 0))
    kp = fc.keyframe_points
    while len(kp) > 1:
        kp.remove(kp[len(kp) - 1], fast=True)
    kp.add(len(frames) - 1)
    co = np.stack([frames, vals], 1).astype(np.float32).ravel()
    kp.foreach_set("co", co)
    kp.foreach_set("handle_left", co)
    kp.foreach_set("handle_right", co)
    for k in kp:
        k.interpolation = "LINEAR"
    fc.update()


def key_performance(obj, scene, fps: float, coefficients, rotations=None, translations=None,
                    start: float = 1.0, extend_range: bool = True) -> tuple[float, float]:
    """Key a tracked performance on ``obj``: ``coefficients`` [F,53] (head model order, [0,1]) at
    ``fps``, from scene frame ``start`` (the sequence's timing kept, so frames may be fractional);
    with ``rotations`` [F,4] (w,x,y,z) and ``translations`` [F,3] (metres, head frame) also the
    object's transform ``rest @ M_k`` (location + quaternion rotation). Earlier keys of those
    channels are replaced. With ``extend_range`` the scene's frame range grows to cover the
    performance. Returns (first, last) scene frame. Raises ValueError for malformed arrays."""
    C = np.asarray(coefficients, np.float64)
    F = len(C)
    if C.ndim != 2 or C.shape[1] != len(EXPRESSION_NAMES) or F < 1 or not np.isfinite(C).all():
        raise ValueError(f"coefficients must be [F>=1, {len(EXPRESSION_NAMES)}] finite, got {list(C.shape)}")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps}")
    frames = frame_times(F, fps, scene, start)
    pose = rotations is not None and translations is not None
    if pose:
        R, T = np.asarray(rotations, np.float64), np.asarray(translations, np.float64)
        if R.shape != (F, 4) or T.shape != (F, 3) or not (np.isfinite(R).all() and np.isfinite(T).all()):
            raise ValueError(f"head poses must be [{F},4] and [{F},3] finite")
    clear_keys(obj, pose=pose)
    if F == 1:
        frames = np.array([start, start])
        C = np.repeat(C, 2, 0)
    for j, name in enumerate(EXPRESSION_NAMES):
        _set_curve(obj, f"fastavatar.expression.{name}", -1, frames, np.clip(C[:, j], 0, 1))
    if pose:
        rest = rest_matrix(obj)
        obj[REST_KEY] = [float(v) for v in rest.ravel()]
        loc, quat = _object_poses(rest, R, T)
        if F == 1:
            loc, quat = np.repeat(loc, 2, 0), np.repeat(quat, 2, 0)
        obj.rotation_mode = "QUATERNION"
        for (path, width), arr in zip(POSE_PATHS, (loc, quat)):
            for i in range(width):
                _set_curve(obj, path, i, frames, arr[:, i])
    if extend_range:
        scene.frame_start = min(scene.frame_start, int(np.floor(frames[0])))
        scene.frame_end = max(scene.frame_end, int(np.ceil(frames[-1])))
    return float(frames[0]), float(frames[-1])


def _object_poses(rest: np.ndarray, R: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(locations [F,3], quaternions [F,4] w,x,y,z, sign-continuous) of ``rest @ M_k``; the rest
    transform's scale is kept out of the rotation."""
    from mathutils import Matrix

    loc, quat, prev = [], [], None
    for k in range(len(R)):
        m = Matrix((rest @ pose_matrix(R[k], T[k])).tolist())
        t, q, _ = m.decompose()
        q = np.array([q.w, q.x, q.y, q.z])
        if prev is not None and float(q @ prev) < 0:
            q = -q
        prev = q
        loc.append(list(t))
        quat.append(q)
    return np.asarray(loc), np.asarray(quat)
