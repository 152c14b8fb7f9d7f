"""Latent editing of avatar objects: refinement, blends, attribute directions, timeline.

**What an avatar holds** (all saved in the .blend, all travelling with the object on append):

* ``obj["fastavatar_code"]``: the base code ``w`` [D] (after refinement, the refined code);
* refinement, when done, as a per-Gaussian **residual** ``R`` [N, 59] in the packed layout
  (:data:`fastavatar_engine.gaussians.PACKED_COLUMNS`), stored as float point attributes
  ``fa_res_<column>`` on the mesh: ``R = refined Gaussians - decode(refined w)``. The
  refinement's fine-tuned decoder is not kept (megabytes per avatar); its effect on this
  avatar is, exactly, and edits ride on top of it: Gaussians = ``decode(w + sum_k a_k d_k) + R``.
  At zero edits this reproduces the refined avatar (to float32 rounding); edits move the
  avatar in the base model's latent space and keep the refinement's per-Gaussian detail, a
  first-order transfer that is exact for the code and approximate for the detail.
  An avatar on its photo's own head (the engine's head fit) keeps that head shape the same way:
  the engine sends the plain decode of its code on the model's template (``base_packed``) and
  the residual carries the difference. Gaussians grown by the likeness fit (rows after the
  template's) are based on their template parent's decode (``obj["fastavatar_parents"]``,
  :func:`expand_to_parents`).
* ``obj.fastavatar.edits``: one entry per attribute direction (name + keyframable ``amount``);
  the vectors themselves (unit vectors times the direction's ``unit_amount``, so amount 1 is its
  typical strength) are copied onto the object (``obj["fastavatar_directions"]``) so
  that a .blend never depends on the library folder;
* a **blend** avatar (:func:`create_blend`) points at two input avatars (``blend_a``,
  ``blend_b``) and has a keyframable ``mix`` t in [0, 1]: its code is ``(1-t) w_A' + t w_B'``
  and its residual ``(1-t) R_A + t R_B``, where ``w'`` is an input's code with its own edits
  applied; at t = 0 or 1 (and no edits of its own) it copies that input's current arrays, so
  the endpoints reproduce the inputs exactly, refined or not.

**Updates.** An exact update decodes the effective code in the engine (one request) and
writes every attribute. Exact updates happen for every frame of a render and always in
background mode (``blender -b``), so rendered animations are exact. While an artist drags a
slider or scrubs the timeline, the add-on instead evaluates a local quadratic model per
parameter, ``G(p) ~ G(p0) + sum_k [dp_k T_k + dp_k^2 C_k / 2]`` (dp = p - p0), in numpy, with
the tangents ``T_k`` (forward-mode AD) and secant curvatures ``C_k`` the engine computes at the
last exact state ``p0``. An exact decode with a fresh local model replaces the preview ~0.3 s
after the last change, or as soon as a parameter is more than :data:`RELINEARISE_DISTANCE` away
from ``p0`` (on a worker thread). ``benchmarks/bench_blender.py`` measures the update rate and
the preview's error.

numpy + bpy only; torch stays in the engine process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np

from fastavatar_engine.gaussians import PACKED_COLUMNS, pack_gaussians, unpack_gaussians  # noqa: F401 (re-exported)

from . import avatar as avatar_mod
from . import engine
from . import expressions as expr_mod
from .fcurves import fcurves as _fcurves  # noqa: F401 (tests and the driver read curves through editing)
from .fcurves import remove_fcurve as _remove_fcurve
from .avatar import read_packed, write_packed  # noqa: F401 (the editing API works on packed arrays)

DIRECTIONS_KEY = "fastavatar_directions"
PHOTOS_KEY = "fastavatar_photos"
#: the template row each Gaussian grown by the likeness fit was cloned from ([E] ints, rows K..K+E-1)
PARENTS_KEY = "fastavatar_parents"
RESIDUAL_PREFIX = "fa_res_"
MAX_BLEND_DEPTH = 8
#: seconds without parameter changes before the exact decode replaces the linear preview
SETTLE_S = 0.3
#: distance (code units) from the point of expansion beyond which the preview is refreshed at once
RELINEARISE_DISTANCE = 0.25

_rendering = False
# per-object (keyed by the object's session uid) cache of the last exact state:
# {"params": tuple, "key": structure key, "packed": [N,59], "tangents": [K,N,59], "shown": tuple, "changed": t}
_cache: dict = {}
_refresh_job = None


# ---------------------------------------------------------------------- residual on a mesh
RESIDUAL_COLUMNS = [RESIDUAL_PREFIX + name for name in PACKED_COLUMNS]


def get_residual(mesh) -> np.ndarray | None:
    """The refinement residual [N, 59] float32 stored on ``mesh``, or None when not refined.
    Raises KeyError for an incomplete residual."""
    if mesh.attributes.get(RESIDUAL_COLUMNS[0]) is None:
        return None
    return avatar_mod.read_float_attributes(mesh, RESIDUAL_COLUMNS)


def set_residual(mesh, residual: np.ndarray | None) -> None:
    """Store (or with None remove) the refinement residual [N, 59] as ``fa_res_*`` point
    attributes. Raises ValueError for a shape other than [N, 59]."""
    if residual is None:
        for name in RESIDUAL_COLUMNS:
            attr = mesh.attributes.get(name)
            if attr is not None:
                mesh.attributes.remove(attr)
        return
    avatar_mod.write_float_attributes(mesh, RESIDUAL_COLUMNS, residual)


def get_parents(obj) -> np.ndarray:
    """[E] int64: for each Gaussian after the model's template (grown by the likeness fit), its
    template row; empty when the avatar has the template's count."""
    return np.asarray(obj.get(PARENTS_KEY, []), dtype=np.int64)


def set_parents(obj, parents) -> None:
    """Store the grown Gaussians' parents (None or empty: none grown)."""
    if parents is None or len(parents) == 0:
        if PARENTS_KEY in obj:
            del obj[PARENTS_KEY]
        return
    obj[PARENTS_KEY] = [int(v) for v in np.asarray(parents).ravel()]


def expand_to_parents(packed: np.ndarray, parents: np.ndarray, axis: int = 0) -> np.ndarray:
    """The plain decode [..K..] extended with each grown Gaussian's parent row: [..K+E..]."""
    if parents is None or len(parents) == 0:
        return packed
    return np.concatenate([packed, np.take(packed, parents, axis=axis)], axis=axis)


# ---------------------------------------------------------------------- directions on objects
def object_directions(obj) -> dict[str, np.ndarray]:
    """name -> vector [D] float32 of the directions copied onto ``obj`` (unit vector x unit_amount)."""
    group = obj.get(DIRECTIONS_KEY)
    if group is None:
        return {}
    return {k: np.asarray(group[k], np.float64).astype(np.float32) for k in group.keys()}


def add_direction(obj, direction) -> None:
    """Give ``obj`` a slider for ``direction`` (a :class:`fastavatar_engine.directions.Direction`).

    Raises ``DirectionError`` when the direction belongs to another model than the avatar's."""
    code = avatar_mod.get_code(obj)
    direction.check_model(obj.fastavatar.model_id, code.shape[0])
    group = obj.get(DIRECTIONS_KEY)
    if group is None:
        obj[DIRECTIONS_KEY] = {}
        group = obj[DIRECTIONS_KEY]
    # scaled so that amount 1 is the direction's strength 1 (its unit_amount; 1.0 when it has none),
    # as in ``fastavatar edit --strength``
    group[direction.name] = [float(v) * direction.unit_amount for v in direction.vector]
    if direction.name not in obj.fastavatar.edits:
        item = obj.fastavatar.edits.add()
        item.name = direction.name


def remove_direction(obj, name: str) -> None:
    """Remove the slider ``name`` (its keyframes and vector) from ``obj``."""
    edits = obj.fastavatar.edits
    i = edits.find(name)
    if i >= 0:
        ad = obj.animation_data
        if ad is not None and ad.action is not None:
            path = f'fastavatar.edits["{name}"].amount'
            for fc in _fcurves(ad.action):
                if fc.data_path in (path, f"fastavatar.edits[{i}].amount"):
                    _remove_fcurve(ad.action, fc)
        edits.remove(i)
    group = obj.get(DIRECTIONS_KEY)
    if group is not None and name in group:
        del group[name]


# ---------------------------------------------------------------------- effective state
def is_blend(obj) -> bool:
    """Whether ``obj`` is a blend avatar (both inputs set)."""
    p = obj.fastavatar
    return p.blend_a is not None and p.blend_b is not None


def _edit_terms(obj):
    """(names, directions [M,D], amounts [M]) of ``obj``'s sliders."""
    vectors = object_directions(obj)
    names = [e.name for e in obj.fastavatar.edits if e.name in vectors]
    amounts = np.array([obj.fastavatar.edits[n].amount for n in names], np.float32)
    dirs = np.stack([vectors[n] for n in names]) if names else np.zeros((0, len(avatar_mod.get_code(obj))), np.float32)
    return names, dirs, amounts


@dataclass
class EditState:
    """What an avatar's displayed Gaussians are made of: decode(``base`` + ``amounts`` @ ``dirs``)
    + ``residual``. ``base`` [D] float32 code, ``dirs`` [M,D] direction vectors (x unit_amount), ``amounts`` [M],
    ``residual`` [N,59] packed or None. For a blend also ``mix_row`` [D] = w_B' - w_A' (d code /
    d mix) and ``mix_residual`` [N,59] = R_B - R_A (None when neither input is refined).
    ``parents`` [E]: rows K..N-1 are grown Gaussians whose plain decode is their parent's
    (:func:`expand_to_parents`); a blend carries both inputs' grown Gaussians, each faded out
    towards the other input (opacity times 1 - t for A's, t for B's)."""

    base: np.ndarray
    dirs: np.ndarray
    amounts: np.ndarray
    residual: np.ndarray | None
    mix_row: np.ndarray | None = None
    mix_residual: np.ndarray | None = None
    parents: np.ndarray | None = None

    @property
    def edited_code(self) -> np.ndarray:
        """[D] the code with the sliders applied."""
        return self.base + self.amounts @ self.dirs if len(self.amounts) else self.base


def effective_state(obj, depth: int = 0) -> EditState:
    """The :class:`EditState` of ``obj``. For a blend the base is the mix of its inputs' edited
    codes and the residual the mix of theirs (see the module doc). Raises ValueError for a blend
    cycle, inputs of different models or splat counts, KeyError for an incomplete residual."""
    names, dirs, amounts = _edit_terms(obj)
    if not is_blend(obj):
        return EditState(avatar_mod.get_code(obj), dirs, amounts, get_residual(obj.data), parents=get_parents(obj))
    if depth > MAX_BLEND_DEPTH:
        raise ValueError(f"{obj.name}: blend inputs nest too deep (a cycle?)")
    p = obj.fastavatar
    a, b = p.blend_a, p.blend_b
    if a.fastavatar.model_id != b.fastavatar.model_id:
        raise ValueError(f"{a.name} and {b.name} come from different models; they cannot be blended")
    sa, sb = effective_state(a, depth + 1), effective_state(b, depth + 1)
    wa, wb = sa.edited_code, sb.edited_code
    t = np.float32(p.mix)
    base = (np.float32(1) - t) * wa + t * wb
    pa, pb = _parents(sa), _parents(sb)
    ka, kb = avatar_mod.splat_count(a.data) - len(pa), avatar_mod.splat_count(b.data) - len(pb)
    if ka != kb:
        raise ValueError(f"{a.name} and {b.name} have different splat counts")
    res = mix_res = None
    parents = np.concatenate([pa, pb])
    if sa.residual is not None or sb.residual is not None or len(parents):
        cols = len(PACKED_COLUMNS)
        ra = np.zeros((ka + len(pa), cols), np.float32) if sa.residual is None else sa.residual
        rb = np.zeros((kb + len(pb), cols), np.float32) if sb.residual is None else sb.residual
        res = (np.float32(1) - t) * ra[:ka] + t * rb[:ka]
        mix_res = rb[:ka] - ra[:ka]
        if len(parents):  # each input's grown Gaussians fade out towards the other input
            op = PACKED_COLUMNS.index("opacity")
            ga, gb = ra[ka:].copy(), rb[kb:].copy()
            ga[:, op] += np.log(max(1.0 - float(t), 1e-4))
            gb[:, op] += np.log(max(float(t), 1e-4))
            da, db = np.zeros_like(ga), np.zeros_like(gb)
            da[:, op], db[:, op] = -1.0 / max(1.0 - float(t), 0.05), 1.0 / max(float(t), 0.05)
            res = np.concatenate([res, ga, gb])
            mix_res = np.concatenate([mix_res, da, db])
    return EditState(base, dirs, amounts, res, mix_row=wb - wa, mix_residual=mix_res, parents=parents)


def _parents(state: EditState) -> np.ndarray:
    return np.zeros(0, np.int64) if state.parents is None else np.asarray(state.parents, np.int64)


def parameters(obj) -> tuple:
    """The animatable parameters of ``obj`` (edit amounts, then the mix of a blend, then the 53
    expression coefficients of an avatar with a face rig, :mod:`.expressions`)."""
    vals = tuple(float(e.amount) for e in obj.fastavatar.edits)
    vals += (float(obj.fastavatar.mix),) if is_blend(obj) else ()
    return vals + (tuple(expr_mod.values(obj).tolist()) if _has_rig(obj) else ())


def _has_rig(obj) -> bool:
    return expr_mod.effective_head(obj) is not None


def _edit_count(obj) -> int:
    return len(obj.fastavatar.edits) + (1 if is_blend(obj) else 0)


def _structure_key(obj) -> tuple:
    """What the tangents depend on besides the parameters: directions, inputs and their state."""
    head = expr_mod.get_head(obj)
    key = (tuple(e.name for e in obj.fastavatar.edits), tuple(avatar_mod.get_code(obj)[:4].tolist()),
           None if head is None else tuple(head[:4].tolist()))
    if is_blend(obj):
        a, b = obj.fastavatar.blend_a, obj.fastavatar.blend_b
        key += (a.name, b.name, parameters(a), parameters(b),
                tuple(avatar_mod.get_code(a)[:4].tolist()), tuple(avatar_mod.get_code(b)[:4].tolist()))
    return key


def exact_packed(obj, tangents: bool = False):
    """(packed Gaussians [N,59], (tangents, curvatures) each [K,N,59], or None) for ``obj``'s
    current parameters.

    Decodes in the engine. At a blend endpoint without edits of its own, the input's current
    arrays are copied (exact endpoints)."""
    p = obj.fastavatar
    if (not tangents and is_blend(obj) and p.mix in (0.0, 1.0)
            and not any(e.amount for e in p.edits) and not (_has_rig(obj) and expr_mod.values(obj).any())):
        return read_packed((p.blend_a if p.mix == 0.0 else p.blend_b).data), None
    return _exact_from_snapshot(_snapshot(obj), tangents)


def update_exact(obj, tangents: bool = False) -> None:
    """Decode ``obj``'s current parameters exactly and write the attributes (and cache tangents)."""
    packed, tans = exact_packed(obj, tangents=tangents)
    write_packed(obj.data, packed)
    params = parameters(obj)
    _cache[obj.session_uid] = {"params": params, "key": _structure_key(obj), "packed": packed,
                               "tangents": tans, "shown": params, "changed": time.monotonic(), "exact": True,
                               "shown_rig_only": True}


def update_preview(obj) -> bool:
    '''Write the preview for ``obj``'s parameters from the cached local model; False when none
    is usable (the caller then decodes exactly).'''
    c = _cache.get(obj.session_uid)
    if c is None or c["tangents"] is None or c["key"] != _structure_key(obj):
        return False
    params = parameters(obj)
    if params == c["shown"]:
        return True
    delta = np.asarray(params, np.float32) - np.asarray(c["params"], np.float32)
    tangents, curvatures, rig = c["tangents"]
    k = len(tangents)
    dp, de = delta[:k], delta[k:]
    if np.any(de) and rig is None:
        return False
    packed = c["packed"]
    if np.any(dp):  # quadratic model along each parameter (cross terms left to the exact refresh)
        packed = packed + np.tensordot(dp, tangents, axes=1) + np.tensordot(0.5 * dp * dp, curvatures, axes=1)
    if np.any(de):  # the linear face rig (one secant per expression shape)
        cols, change = expr_mod.preview_delta(rig, de)
        packed = packed.copy() if packed is c["packed"] else packed
        packed[:, cols] += change
        if not np.any(dp) and c.get("shown_rig_only"):
            avatar_mod.write_packed_columns(obj.data, packed, cols)  # only what the rig moves
        else:
            write_packed(obj.data, packed)
    else:
        write_packed(obj.data, packed)
    c.update(shown=params, changed=time.monotonic(), exact=not np.any(delta), shown_rig_only=not np.any(dp))
    return True


def needs_update(obj) -> bool:
    """Whether ``obj``'s shown arrays are not those of its current parameters and structure."""
    c = _cache.get(obj.session_uid)
    return c is None or c["shown"] != parameters(obj) or c["key"] != _structure_key(obj)


def editable(obj) -> bool:
    """Whether ``obj`` is an avatar with sliders, a blend, or a face rig with an expression set or
    shown (something parameters drive)."""
    if not avatar_mod.is_avatar(obj):
        return False
    if len(obj.fastavatar.edits) > 0 or is_blend(obj):
        return True
    if not _has_rig(obj):
        return False
    c = _cache.get(obj.session_uid)  # an expression still shown must be taken back to rest
    return bool(expr_mod.values(obj).any() or (c is not None and any(c.get("shown") or ())))


def refresh(obj, interactive: bool) -> None:
    """Bring ``obj`` up to date: exactly (background, rendering, non-interactive), else via the
    cached linearisation, falling back to an exact decode with tangents."""
    if not needs_update(obj):
        return
    if not interactive or bpy.app.background or _rendering:
        update_exact(obj)
    elif not update_preview(obj):
        if engine.client_busy():  # e.g. refining: never make the UI wait; the settle timer catches up
            _cache[obj.session_uid] = {"params": None, "key": None, "packed": None, "tangents": None,
                                       "shown": None, "changed": time.monotonic(), "exact": False}
            _report_status(f"FastAvatar: the engine is busy; {obj.name} updates when it is free")
        else:
            # no local model yet: an exact decode now (~0.1 s), the expansion follows off the main thread
            update_exact(obj)
            _cache[obj.session_uid]["exact"] = False
    _ensure_settle_timer()


def on_parameter_changed(obj) -> None:
    """RNA update callback of the sliders and the mix (the user changed a value)."""
    if obj is None or not avatar_mod.is_avatar(obj):
        return
    try:
        refresh(obj, interactive=True)
    except Exception as e:  # noqa: BLE001 - a failed update must not break the UI
        _report_status(f"FastAvatar update failed: {engine.describe_error(e)}")
    for dep in _dependents(obj):
        on_parameter_changed(dep)


def _dependents(obj) -> list:
    return [o for o in bpy.data.objects if avatar_mod.is_avatar(o) and is_blend(o)
            and obj in (o.fastavatar.blend_a, o.fastavatar.blend_b)]


def _report_status(text: str) -> None:
    scene = bpy.context.scene
    if scene is not None and hasattr(scene, "fastavatar"):
        scene.fastavatar.status = text[:200]


# ---------------------------------------------------------------------- handlers
@bpy.app.handlers.persistent
def frame_change_post(scene, depsgraph=None):
    """Animation changed the parameters: update every driven avatar (inputs before blends).

    A failure is reported in the status and kept in :data:`frame_errors` (frame -> message), so
    a headless render loop can refuse to write a frame whose avatar is stale (batch.py does)."""
    objs = [o for o in scene.objects if editable(o)]
    objs.sort(key=is_blend)
    frame_errors.pop(scene.frame_current, None)
    for obj in objs:
        try:
            refresh(obj, interactive=not (bpy.app.background or _rendering))
        except Exception as e:  # noqa: BLE001 - Blender ignores handler exceptions: record them
            msg = f"FastAvatar: {obj.name} not updated at frame {scene.frame_current}: {engine.describe_error(e)}"
            _report_status(msg)
            frame_errors[scene.frame_current] = msg


#: frame -> message for frames whose avatars could not be updated (cleared when the frame updates)
frame_errors: dict = {}


@bpy.app.handlers.persistent
def render_init(*_):
    global _rendering
    _rendering = True
    scene = bpy.context.scene
    avatar_mod.update_pixel_angles(scene)  # the splat display's dilation follows the render camera
    for obj in [o for o in scene.objects if editable(o)]:
        c = _cache.get(obj.session_uid)
        if c is None or not c.get("exact"):
            update_exact(obj)


@bpy.app.handlers.persistent
def render_done(*_):
    global _rendering
    _rendering = False


@bpy.app.handlers.persistent
def load_post(*_):
    """A file was loaded or an undo/redo step restored data: cached expansions may be stale."""
    _cache.clear()


def _ensure_settle_timer():
    if bpy.app.background or bpy.app.timers.is_registered(_settle):
        return
    bpy.app.timers.register(_settle, first_interval=SETTLE_S)


def _settle():
    """Timer: once the parameters have rested for SETTLE_S, replace previews by exact decodes
    (on a worker thread; the result is written from this timer)."""
    global _refresh_job
    if _refresh_job is not None:
        job, obj_name, params, key = _refresh_job
        if not job.done:
            return 0.05
        _refresh_job = None
        obj = bpy.data.objects.get(obj_name)
        if job.error is None and obj is not None and _structure_key(obj) == key:
            packed, tans = job.result  # the new expansion point, even if the user moved on since
            same = parameters(obj) == params
            _cache[obj.session_uid] = {"params": params, "key": key, "packed": packed, "tangents": tans,
                                       "shown": None, "changed": time.monotonic(), "exact": same}
            update_preview(obj)
            _cache[obj.session_uid]["exact"] = same
        elif job.error is not None and obj is not None:
            _report_status(f"FastAvatar: {obj.name} not refreshed: {engine.describe_error(job.error)}")
            if obj.session_uid in _cache:
                _cache[obj.session_uid]["failed"] = True  # no retry loop; the next change tries again
    now = time.monotonic()
    for obj in [o for o in bpy.data.objects if editable(o)]:
        c = _cache.get(obj.session_uid)
        if c is None or c.get("failed") or (c.get("exact") and c["tangents"] is not None):
            continue
        k = _edit_count(obj)  # the face rig is linear everywhere: only the edits' expansion goes stale
        far = c["params"] is None or np.abs(np.asarray(parameters(obj)[:k]) - np.asarray(c["params"][:k])).max(
            initial=0.0) > RELINEARISE_DISTANCE
        if now - c["changed"] < SETTLE_S and not far:
            return 0.1
        params, key = parameters(obj), _structure_key(obj)
        try:
            state = _snapshot(obj)
        except Exception:  # noqa: BLE001 - object changed under us; try again later
            return SETTLE_S
        _refresh_job = (engine.Job(lambda progress, cancelled: _exact_from_snapshot(state)).start(),
                        obj.name, params, key)
        return 0.05
    return None


def _snapshot(obj) -> dict:
    """Everything an exact decode of ``obj`` needs, read from Blender on the main thread: the
    base code, the direction rows and amounts (for a blend one more row, w_B' - w_A', at amount
    0, whose tangent is the mix's), the residual, and the residual's share of the mix tangent."""
    st = effective_state(obj)
    rows, amts = list(st.dirs), [float(a) for a in st.amounts]
    if st.mix_row is not None:
        rows.append(st.mix_row)
        amts.append(0.0)
    head = expr_mod.effective_head(obj)
    return {"base": st.base, "rows": rows, "amounts": amts, "residual": st.residual, "mix_extra": st.mix_residual,
            "parents": st.parents, "head": head, "code": st.edited_code,
            "expression": expr_mod.values(obj) if head is not None else None}


def _exact_from_snapshot(s: dict, tangents: bool = True):
    """(packed [N,59], (tangents, curvatures) or None) for a :func:`_snapshot`; engine + numpy only,
    so it may run on a worker thread."""
    client = engine.get_client()
    tans = None
    if s["rows"]:
        g, _, header = client.decode(s["base"], np.stack(s["rows"]), s["amounts"], tangents=tangents)
        if tangents:
            tans = (header["arrays"]["tangents"], header["arrays"]["curvatures"])
    else:
        g, _, _ = client.decode(s["base"])
    parents = s.get("parents")
    packed = expand_to_parents(pack_gaussians(g), parents)
    if tans is not None:
        tans = (expand_to_parents(tans[0], parents, axis=1), expand_to_parents(tans[1], parents, axis=1))
    if s["residual"] is not None:
        packed = packed + s["residual"]
    if tans is not None and s["mix_extra"] is not None:
        tans[0][-1] = tans[0][-1] + s["mix_extra"]  # the residual mixes linearly
    head = s.get("head")
    if head is not None:  # the face rig: the expression's exact change, and the linear rig for previews
        delta, rig = expr_mod.exact_delta(client, s["code"], head, s["expression"], basis=tangents)
        # (the rig depends on the code and head only: expr_mod caches it per pair)
        if delta is not None:
            packed = packed + expand_to_parents(delta, parents)
        if tangents:
            if tans is None:
                empty = np.zeros((0,) + packed.shape, np.float32)
                tans = (empty, empty)
            rig = (expand_to_parents(rig[0], parents, axis=1), rig[1])
            tans = (*tans, rig)
    elif tans is not None:
        tans = (*tans, None)
    return packed, tans


HANDLERS = (("frame_change_post", frame_change_post), ("render_init", render_init),
            ("render_complete", render_done), ("render_cancel", render_done), ("load_post", load_post),
            ("undo_post", load_post), ("redo_post", load_post))


def register_handlers():
    """Add the frame, render, load and undo handlers (idempotent)."""
    for name, fn in HANDLERS:
        lst = getattr(bpy.app.handlers, name)
        if fn not in lst:
            lst.append(fn)


def unregister_handlers():
    """Remove the handlers and the settle timer, and forget cached expansions."""
    for name, fn in HANDLERS:
        lst = getattr(bpy.app.handlers, name)
        while fn in lst:
            lst.remove(fn)
    if bpy.app.timers.is_registered(_settle):
        bpy.app.timers.unregister(_settle)
    _cache.clear()
    expr_mod._rigs.clear()


# ---------------------------------------------------------------------- blends
def create_blend(context, a, b, mix: float = 0.5, name: str | None = None):
    """A new blend avatar of avatars ``a`` and ``b`` (same model and splat count), placed
    between them, with mix ``mix``; returns it. Raises ValueError for incompatible inputs."""
    for o in (a, b):
        if not avatar_mod.is_avatar(o):
            raise ValueError(f"{o.name} is not a FastAvatar avatar")
    if a == b:
        raise ValueError("select two different avatars to blend")
    if a.fastavatar.model_id != b.fastavatar.model_id:
        raise ValueError(f"{a.name} ({a.fastavatar.model_id}) and {b.name} ({b.fastavatar.model_id}) come from "
                         "different models; they cannot be blended")
    if avatar_mod.splat_count(a.data) - len(get_parents(a)) != avatar_mod.splat_count(b.data) - len(get_parents(b)):
        raise ValueError(f"{a.name} and {b.name} have different splat counts")
    g = avatar_mod.read_gaussians(a.data)
    loc = (a.location + b.location) / 2
    obj = avatar_mod.create_avatar_object(
        context, g, avatar_mod.get_code(a), name=name or f"Blend_{a.name}_{b.name}"[:60],
        model_id=a.fastavatar.model_id, photo="", location=loc)
    obj.fastavatar.blend_a, obj.fastavatar.blend_b = a, b
    obj.fastavatar.mix = mix  # update callback: exact decode
    update_exact(obj)
    return obj


# ---------------------------------------------------------------------- refinement
def photo_sources(obj) -> tuple[list[str] | None, str | None, np.ndarray | None]:
    """(several photo paths, one photo path, pixels) to refine ``obj`` against; raises
    ValueError when the source photo is gone."""
    photos = [str(p) for p in obj.get(PHOTOS_KEY, [])]
    if len(photos) > 1:
        missing = [p for p in photos if not Path(p).is_file()]
        if missing:
            raise ValueError(f"{obj.name}: source photos missing: {', '.join(missing[:3])}")
        return photos, None, None
    label = obj.fastavatar.photo
    path = bpy.path.abspath(label) if label else ""
    if path and Path(path).is_file():
        return None, path, None
    image = bpy.data.images.get(label) if label else None
    if image is not None:
        from .photo_source import image_pixels

        return None, None, image_pixels(image)
    raise ValueError(f"{obj.name}: its source photo {label!r} is not available; refinement needs it")


def refine_job(obj, steps: int, preview_every: int = 0):
    """A function ``fn(progress, cancelled)`` for :class:`engine.Job` that refines ``obj``'s
    unedited avatar (base code) against its photo(s); returns (GaussianSet, code, header) or
    raises. Reads everything from ``obj`` now, on the main thread. Live previews (packed [N,59])
    are queued in ``fn.previews`` for the main thread to show."""
    if is_blend(obj):
        raise ValueError(f"{obj.name} is a blend; refine its inputs instead")
    photos, path, pixels = photo_sources(obj)
    code = avatar_mod.get_code(obj)
    fi = obj.fastavatar.face_index
    previews: list = []

    def fn(progress, cancelled):
        client = engine.get_client()
        progress("Starting the engine..." if not client.alive else "Refining...", 0.0)

        def on_progress(h):
            if h.get("stage") == "refine":
                progress(f"Refining {h['step']}/{h['total']}  loss {h['loss']:.4f}", h["step"] / h["total"])

        return client.refine(code, image_path=path, pixels=pixels, image_paths=photos, steps=steps,
                             face_index=None if fi < 0 else fi, progress=on_progress, cancel=cancelled,
                             preview_every=preview_every,
                             preview=lambda h, arrays: previews.append(arrays["packed"]))

    fn.previews = previews
    return fn


def apply_refined(obj, result) -> None:
    """Store a refinement result on ``obj``: refined code as the base, the residual, and the
    display (edits re-applied on top)."""
    g, code, header = result
    packed = pack_gaussians(g)
    base = header["arrays"]["base_packed"]
    obj[avatar_mod.CODE_KEY] = [float(v) for v in np.asarray(code, np.float32)]
    set_parents(obj, header["arrays"].get("parents"))
    if header["arrays"].get("head") is not None:
        expr_mod.set_head(obj, header["arrays"]["head"])
    write_packed(obj.data, packed)  # first: a new splat count (grown Gaussians) resizes the data
    set_residual(obj.data, packed - base)
    obj.fastavatar.refined_steps += int(header.get("refined_steps", 0))
    _cache.pop(obj.session_uid, None)
    if len(obj.fastavatar.edits) and any(e.amount for e in obj.fastavatar.edits):
        update_exact(obj)


class RefineSession:
    """One refinement of an avatar object, driven by the Refine operator (or a test) from the
    main thread: :meth:`start` launches the engine request on a worker thread, :meth:`tick`
    shows the latest live preview, :meth:`cancel` stops it and restores the object's arrays
    exactly, :meth:`finish` stores the result (:func:`apply_refined`)."""

    def __init__(self, obj, steps: int, preview_every: int = 0):
        self.obj_name = obj.name
        self.original = read_packed(obj.data)
        self.original_residual = get_residual(obj.data)  # a preview of another splat count drops it
        self.fn = refine_job(obj, steps, preview_every)
        self.job = engine.Job(self.fn)
        self.previewed = False

    @property
    def obj(self):
        return bpy.data.objects.get(self.obj_name)

    def start(self, background: bool = False) -> "RefineSession":
        if background:
            self.job.run_sync()
        else:
            self.job.start()
        return self

    def tick(self) -> bool:
        """Show the newest preview (if any); True once the job has ended."""
        if self.fn.previews and self.obj is not None:
            packed = self.fn.previews[-1]
            self.fn.previews.clear()
            write_packed(self.obj.data, packed)
            self.previewed = True
        return self.job.done

    def cancel(self) -> None:
        """Stop the refinement; the object gets back exactly the arrays it had."""
        self.job.cancel()
        self.fn.previews.clear()
        if self.previewed and self.obj is not None:
            write_packed(self.obj.data, self.original)
            if self.original_residual is not None:
                set_residual(self.obj.data, self.original_residual)
        self.previewed = False

    def finish(self) -> None:
        """Store the result; raises the job's error (the object is restored first)."""
        if self.job.error is not None:
            self.cancel()
            raise self.job.error
        apply_refined(self.obj, self.job.result)
