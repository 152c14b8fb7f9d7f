"""Avatar objects: the engine's Gaussians as Blender data, exactly, in the engine's frame.

Two representations, chosen by a capability check (:func:`native_splats`, not a version compare):

* **Blender >= 5.3: a Gaussian-splat point cloud** (``PointCloud.type == 'GAUSSIAN_SPLAT'``),
  which EEVEE and Cycles render as Gaussians. Blender's own attributes, in the mapping its INRIA
  PLY importer uses (``io/ply/importer/ply_import_gsplat.cc``; checked against ``wm.ply_import``
  of our PLY in the tests): ``position`` = means; ``radiance:base`` (FLOAT4) = (f_dc_0, f_dc_1,
  f_dc_2, sigmoid(opacity)) -- the SH DC *coefficients*, not colours; ``scale`` = exp(log-scale)
  (std-dev, metres); ``rotation`` (QUATERNION, w x y z) = the normalised quaternion;
  ``radiance:sh_k`` (k = 0..14, FLOAT_VECTOR) = SH coefficient k+1 for R, G, B
  (= f_rest_k, f_rest_{15+k}, f_rest_{30+k}). Beside them the add-on keeps what those lose:
  ``opacity`` (logit), ``scale_0..2`` (log) and ``rot_0..3`` (the quaternion as predicted), so
  :func:`read_packed` returns the engine's arrays bit for bit. A geometry-nodes modifier
  (:func:`splat_filter_group`) gives the evaluated splats the reference rasteriser's
  screen-space dilation (3DGS's ``eps2d``), which Blender's own splats lack.
* **Blender 4.2-5.2: a vertices-only mesh** with INRIA-named float POINT attributes: vertex
  positions = ``means``; ``f_dc_0..2``, ``f_rest_0..44`` (channel-major, as in the INRIA PLY),
  ``opacity`` (logit), ``scale_0..2`` (log std-dev, metres) and ``rot_0..3`` (w, x, y, z, not
  normalised). A geometry-nodes modifier displays it (:func:`splat_node_group`): a 3-sigma
  ico-sphere proxy per splat, the colour from the SH to degree 1 towards the scene camera taken
  sRGB -> linear as Blender's own splats do; its material (:func:`splat_material`) evaluates
  the reference rasteriser's alpha ``min(0.99, sigmoid(opacity) exp(-r^2/2))`` at the viewing
  ray's closest approach r (sigma units), cut at 1/255, back faces transparent; the std-devs
  carry the same screen-space dilation.

The dilation: the engine's rasteriser (like 3DGS and gsplat) adds 0.3 px^2 to every projected
covariance without changing opacity, so the many sub-pixel Gaussians of an avatar (eyes, ears,
hair) keep covering ~0.55 px. Both displays add the 3D equivalent, ``s^2 = 0.3 (z / f)^2`` to
each covariance (z the splat's depth from the scene camera, f its focal length in pixels at the
render resolution, :func:`pixel_angle`); the modifiers' ``Pixel Angle`` input (1 / f) is set at
creation, by :func:`update_pixel_angles` before every render and by ``batch.py``. Measured
(``benchmarks/bench_display.py``, 256 px): +0.5 to +0.9 dB against the engine on every line and
render engine.

Everything else (edits, residuals, export) goes through :func:`write_packed` /
:func:`read_packed` and the float-attribute helpers, one code path for both. The *object*
transform turns y-up into Blender's z-up: rotation +90 deg about X, which maps
(x, y, z) -> (x, -z, y) (= ``fastavatar_engine.cameras.YUP_TO_BLENDER``), placed at the 3D cursor.

The avatar's code w (float64 ID-property array, exact for float32 codes), model id, source photo
and bookkeeping live on the object (``obj["fastavatar_code"]``, ``obj.fastavatar``), so a saved
.blend reopens with everything intact. numpy + bpy only.
"""

from __future__ import annotations

import math

import bpy
import numpy as np

from fastavatar_engine.gaussians import PACKED_COLUMNS, pack_gaussians, unpack_gaussians

SH_C0 = 0.28209479177387814
CODE_KEY = "fastavatar_code"
NODE_GROUP = "FastAvatar Splats"
MATERIAL = "FastAvatar Splat"


#: What the point cloud keeps beside Blender's own splat attributes (those lose the logit, the
#: log and the quaternion's length).
OWN_COLUMNS = ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
#: Blender's splat attributes: name -> (data type, foreach key).
NATIVE_ATTRIBUTES = {"position": ("FLOAT_VECTOR", "vector"), "radiance:base": ("FLOAT4", "vector"),
                     "scale": ("FLOAT_VECTOR", "vector"), "rotation": ("QUATERNION", "value"),
                     **{f"radiance:sh_{k}": ("FLOAT_VECTOR", "vector") for k in range(15)}}
_COL = {name: i for i, name in enumerate(PACKED_COLUMNS)}


def native_splats() -> bool:
    """Whether this Blender has Gaussian-splat point clouds (``PointCloud.type`` offers
    'GAUSSIAN_SPLAT', Blender >= 5.3): avatars are then created as such."""
    pc = getattr(bpy.types, "PointCloud", None)
    prop = pc.bl_rna.properties.get("type") if pc is not None else None
    return prop is not None and "GAUSSIAN_SPLAT" in prop.enum_items.keys()


def is_splat_cloud(data) -> bool:
    """Whether ``data`` (an object's data) is a point cloud (the native representation)."""
    pc = getattr(bpy.types, "PointCloud", None)
    return pc is not None and isinstance(data, pc)


def splat_count(data) -> int:
    """Number of splats in an avatar's data (point cloud points or mesh vertices)."""
    return len(data.points) if is_splat_cloud(data) else len(data.vertices)


def splat_positions(data) -> np.ndarray:
    """[N, 3] float32 splat centres in the object's (engine) frame, metres."""
    n = splat_count(data)
    co = np.empty(n * 3, np.float32)
    if is_splat_cloud(data):
        data.attributes["position"].data.foreach_get("vector", co)
    else:
        data.vertices.foreach_get("co", co)
    return co.reshape(n, 3)


def _native_columns(p: np.ndarray, names=None) -> dict[str, np.ndarray]:
    """Blender's splat attributes (name -> [N, k] float32) from packed Gaussians [N, 59]: every
    one of :data:`NATIVE_ATTRIBUTES`, or only ``names``."""
    names = set(NATIVE_ATTRIBUTES if names is None else names)
    out = {}
    if "position" in names:
        out["position"] = p[:, :3]
    if "radiance:base" in names:
        alpha = 1.0 / (1.0 + np.exp(-p[:, _COL["opacity"]].astype(np.float64)))
        out["radiance:base"] = np.concatenate([p[:, _COL["f_dc_0"]:_COL["f_dc_0"] + 3], alpha[:, None]], 1)
    if "scale" in names:
        out["scale"] = np.exp(p[:, _COL["scale_0"]:_COL["scale_0"] + 3].astype(np.float64))
    if "rotation" in names:
        q = p[:, _COL["rot_0"]:_COL["rot_0"] + 4].astype(np.float64)
        out["rotation"] = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    rest = _COL["f_rest_0"]
    for k in range(15):
        if f"radiance:sh_{k}" in names:
            out[f"radiance:sh_{k}"] = p[:, [rest + k, rest + 15 + k, rest + 30 + k]]
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def _attribute(data, name: str, data_type: str):
    attr = data.attributes.get(name)
    if attr is None or attr.data_type != data_type or attr.domain != "POINT":
        if attr is not None and name != "position":
            data.attributes.remove(attr)
        attr = data.attributes.new(name, data_type, "POINT")
    return attr


def inria_attribute_names() -> list[str]:
    """The per-splat float attribute names, in INRIA PLY order (positions are the vertices):
    :data:`fastavatar_engine.gaussians.PACKED_COLUMNS` after x, y, z."""
    return list(PACKED_COLUMNS[3:])


def write_float_attributes(mesh, names, values: np.ndarray) -> None:
    """Write ``values`` [N, len(names)] float32 as float POINT attributes ``names`` of ``mesh``
    (N = its vertex count), creating or retyping them as needed. Raises ValueError for a shape
    mismatch."""
    v = np.asarray(values, np.float32)
    n = splat_count(mesh)
    if v.shape != (n, len(names)):
        raise ValueError(f"expected [{n}, {len(names)}] values, got {list(v.shape)}")
    for i, name in enumerate(names):
        _attribute(mesh, name, "FLOAT").data.foreach_set("value", np.ascontiguousarray(v[:, i]))


def read_float_attributes(mesh, names) -> np.ndarray:
    """[N, len(names)] float32: the float POINT attributes ``names`` of ``mesh``. Raises
    KeyError naming a missing attribute."""
    out = np.empty((len(names), splat_count(mesh)), np.float32)
    for i, name in enumerate(names):
        attr = mesh.attributes.get(name)
        if attr is None:
            raise KeyError(f"mesh {mesh.name!r} has no attribute {name!r}: not a FastAvatar avatar")
        attr.data.foreach_get("value", out[i])
    return np.ascontiguousarray(out.T)


def write_packed(mesh, packed: np.ndarray) -> None:
    """Resize the avatar's data ``mesh`` (a mesh or a splat point cloud) to N splats and write
    packed Gaussians [N, 59] float32 (:data:`~fastavatar_engine.gaussians.PACKED_COLUMNS`, engine
    frame). A mesh gets vertex positions and the INRIA-named attributes (vertices only); a point
    cloud Blender's splat attributes plus :data:`OWN_COLUMNS` (module docstring). Raises
    ValueError for another shape."""
    p = np.asarray(packed, np.float32)
    if p.ndim != 2 or p.shape[1] != len(PACKED_COLUMNS):
        raise ValueError(f"packed Gaussians must be [N, {len(PACKED_COLUMNS)}], got {list(p.shape)}")
    n = len(p)
    if is_splat_cloud(mesh):
        if len(mesh.points) != n:
            mesh.resize(n)
        for name, values in _native_columns(p).items():
            data_type, key = NATIVE_ATTRIBUTES[name]
            _attribute(mesh, name, data_type).data.foreach_set(key, values.ravel())
        write_float_attributes(mesh, OWN_COLUMNS, p[:, [_COL[c] for c in OWN_COLUMNS]])
        mesh.update_tag()
        return
    if len(mesh.vertices) != n or len(mesh.edges) or len(mesh.polygons):
        mesh.clear_geometry()
        mesh.vertices.add(n)
    mesh.vertices.foreach_set("co", np.ascontiguousarray(p[:, :3]).ravel())
    write_float_attributes(mesh, PACKED_COLUMNS[3:], p[:, 3:])
    mesh.update()


def write_packed_columns(mesh, packed: np.ndarray, columns) -> None:
    """Write only the packed ``columns`` (indices into :data:`PACKED_COLUMNS`) of ``packed`` [N, 59]
    to an avatar that already has N splats and every attribute (the face rig's previews move
    means, log-scales, rotations and, for the blinks, opacity); the Blender attributes those columns feed are
    rewritten as :func:`write_packed` writes them. Raises ValueError for another splat count."""
    p = np.asarray(packed, np.float32)
    cols = sorted({int(c) for c in columns})
    if p.ndim != 2 or p.shape[1] != len(PACKED_COLUMNS) or splat_count(mesh) != len(p):
        raise ValueError(f"packed Gaussians must be [{splat_count(mesh)}, {len(PACKED_COLUMNS)}], got {list(p.shape)}")
    names = [PACKED_COLUMNS[c] for c in cols if c >= 3]
    if is_splat_cloud(mesh):
        wanted = {"position"} if any(c < 3 for c in cols) else set()
        wanted |= {"scale"} if any(n.startswith("scale_") for n in names) else set()
        wanted |= {"rotation"} if any(n.startswith("rot_") for n in names) else set()
        if any(n == "opacity" or n.startswith("f_dc_") for n in names):
            wanted.add("radiance:base")
        if any(n.startswith("f_rest_") for n in names):
            wanted |= {f"radiance:sh_{k}" for k in range(15)}
        native = _native_columns(p, wanted)  # only what these columns feed (scrubbing's hot path)
        for name in wanted:
            data_type, key = NATIVE_ATTRIBUTES[name]
            _attribute(mesh, name, data_type).data.foreach_set(key, native[name].ravel())
        own = [n for n in names if n in OWN_COLUMNS]
        if own:
            write_float_attributes(mesh, own, p[:, [_COL[n] for n in own]])
        mesh.update_tag()
        return
    if any(c < 3 for c in cols):
        mesh.vertices.foreach_set("co", np.ascontiguousarray(p[:, :3]).ravel())
    if names:
        write_float_attributes(mesh, names, p[:, [_COL[n] for n in names]])
    mesh.update()


def read_packed(mesh) -> np.ndarray:
    """[N, 59] float32: the mesh's Gaussians in the packed layout (inverse of :func:`write_packed`).
    Raises KeyError naming a missing attribute."""
    if not is_splat_cloud(mesh):
        return np.concatenate([splat_positions(mesh), read_float_attributes(mesh, PACKED_COLUMNS[3:])], 1)
    n = len(mesh.points)
    native = {}
    for name in ("radiance:base", *(f"radiance:sh_{k}" for k in range(15))):
        attr = mesh.attributes.get(name)
        if attr is None:
            raise KeyError(f"point cloud {mesh.name!r} has no attribute {name!r}: not a FastAvatar avatar")
        width = 4 if name == "radiance:base" else 3
        buf = np.empty(n * width, np.float32)
        attr.data.foreach_get(NATIVE_ATTRIBUTES[name][1], buf)
        native[name] = buf.reshape(n, width)
    p = np.empty((n, len(PACKED_COLUMNS)), np.float32)
    p[:, :3] = splat_positions(mesh)
    p[:, _COL["f_dc_0"]:_COL["f_dc_0"] + 3] = native["radiance:base"][:, :3]
    rest = _COL["f_rest_0"]
    for k in range(15):
        p[:, [rest + k, rest + 15 + k, rest + 30 + k]] = native[f"radiance:sh_{k}"]
    p[:, [_COL[c] for c in OWN_COLUMNS]] = read_float_attributes(mesh, OWN_COLUMNS)
    return p


def write_gaussians(mesh, g) -> None:
    """Write the GaussianSet ``g`` (engine frame) into ``mesh`` (:func:`write_packed`). Raises
    ``GaussianValidationError`` (a ValueError) for an invalid set."""
    g.validate()
    write_packed(mesh, pack_gaussians(g))


def read_gaussians(mesh):
    """The GaussianSet stored in ``mesh`` (inverse of :func:`write_gaussians`). Raises KeyError
    naming a missing attribute."""
    return unpack_gaussians(read_packed(mesh))


# ---------------------------------------------------------------------- display
def _link(ng, a, out, b, inp):
    ng.links.new(a.outputs[out], b.inputs[inp])


def _named(ng, name, x, y):
    node = ng.nodes.new("GeometryNodeInputNamedAttribute")
    node.data_type = "FLOAT"
    node.inputs["Name"].default_value = name
    node.location = (x, y)
    return node


def _math(ng, op, x, y, a=None, b=None):
    node = ng.nodes.new("ShaderNodeMath")
    node.operation = op
    node.location = (x, y)
    if a is not None:
        node.inputs[0].default_value = a
    if b is not None:
        node.inputs[1].default_value = b
    return node


#: How far (in standard deviations) each displayed splat reaches: the proxy ellipsoid's radius.
#: The shader's Gaussian is exp(-r^2/2) in sigma units, so at this radius alpha is below
#: opacity x 0.011, under the 1/255 cut for all but opaque splats.
SPLAT_SIGMAS = 3.0
#: The reference rasteriser's alpha ceiling and cut (3DGS: min(0.99, alpha), skipped below 1/255).
ALPHA_MAX, ALPHA_MIN = 0.99, 1.0 / 255.0
SH_C1 = 0.4886025119029199


def _vmath(ng, op, x, y):
    node = ng.nodes.new("ShaderNodeVectorMath")
    node.operation = op
    node.location = (x, y)
    return node


def _store(ng, name, data_type, x, y, geometry, value):
    """A Store Named Attribute node (POINT domain) writing ``value`` = (node, output) into the
    geometry from ``geometry`` = (node, output); returns the node."""
    node = ng.nodes.new("GeometryNodeStoreNamedAttribute")
    node.data_type = data_type
    node.domain = "POINT"
    node.inputs["Name"].default_value = name
    node.location = (x, y)
    _link(ng, geometry[0], geometry[1], node, "Geometry")
    _link(ng, value[0], value[1], node, "Value")
    return node


def _srgb_to_linear(ng, value_socket, x, y):
    """Math nodes for the sRGB EOTF (IEC 61966-2-1) of one channel in [0, 1]; returns the output socket."""
    lo = _math(ng, "DIVIDE", x, y, None, 12.92)
    ng.links.new(value_socket, lo.inputs[0])
    off = _math(ng, "MULTIPLY_ADD", x, y - 60, None, 1.0 / 1.055)
    off.inputs[2].default_value = 0.055 / 1.055
    ng.links.new(value_socket, off.inputs[0])
    hi = _math(ng, "POWER", x + 150, y - 60, None, 2.4)
    _link(ng, off, 0, hi, 0)
    step = _math(ng, "GREATER_THAN", x, y - 120, None, 0.04045)
    ng.links.new(value_socket, step.inputs[0])
    diff = _math(ng, "SUBTRACT", x + 300, y - 30)
    _link(ng, hi, 0, diff, 0)
    _link(ng, lo, 0, diff, 1)
    out = _math(ng, "MULTIPLY_ADD", x + 450, y)
    _link(ng, diff, 0, out, 0)
    _link(ng, step, 0, out, 1)
    _link(ng, lo, 0, out, 2)
    return out.outputs[0]


def splat_node_group():
    """The shared geometry-nodes group that displays a mesh avatar's splats (created once per .blend).

    Per point it stores, for the material: ``fa_color``, the splat's colour as Blender's own
    splats take it -- the SH evaluated to degree 1 towards the scene camera (``0.5 + C0 f_dc +
    C1 (-y f1 + z f2 - x f3)``, the camera's direction in the avatar's frame, 3DGS's basis),
    clamped to [0, 1] and converted sRGB -> linear so that the Standard view shows the PLY's
    colours; ``fa_alpha`` = sigmoid(opacity); ``fa_sigmas`` = the proxy's radius in standard
    deviations. It instances an ico sphere per splat, rotated by ``rot`` (normalised by the
    node) and scaled by ``Splat Scale`` (default :data:`SPLAT_SIGMAS`) x the dilated std-devs
    ``sqrt(exp(2 scale) + s^2)`` (:func:`_dilation_sq`, from the ``Pixel Angle`` input): the
    ellipsoid inside which the material evaluates the Gaussian (:func:`splat_material`)."""
    ng = bpy.data.node_groups.get(NODE_GROUP)
    if ng is not None:
        return ng

    def inputs(ng):
        scale_socket = ng.interface.new_socket("Splat Scale", in_out="INPUT", socket_type="NodeSocketFloat")
        scale_socket.default_value, scale_socket.min_value, scale_socket.max_value = SPLAT_SIGMAS, 0.5, 10.0
        sub = ng.interface.new_socket("Subdivisions", in_out="INPUT", socket_type="NodeSocketInt")
        sub.default_value, sub.min_value, sub.max_value = 2, 1, 4
        _pixel_angle_socket(ng)

    ng, n_in, n_out = _geometry_group(NODE_GROUP, inputs, (-2000, 0), (1100, 0))

    # view direction: from the scene camera (in this object's frame) to the splat, normalised
    info = _camera_info(ng, -1900, 900)
    pos = ng.nodes.new("GeometryNodeInputPosition")
    pos.location = (-1700, 700)
    dvec = _vmath(ng, "SUBTRACT", -1500, 800)
    _link(ng, pos, 0, dvec, 0)
    _link(ng, info, "Location", dvec, 1)
    dnorm = _vmath(ng, "NORMALIZE", -1350, 800)
    _link(ng, dvec, 0, dnorm, 0)
    dsep = ng.nodes.new("ShaderNodeSeparateXYZ")
    dsep.location = (-1200, 800)
    _link(ng, dnorm, 0, dsep, 0)
    # basis of coefficients 1..3 (3DGS): -C1 y, C1 z, -C1 x
    basis = []
    for axis, sign, yy in ((1, -SH_C1, 900), (2, SH_C1, 820), (0, -SH_C1, 740)):
        m = _math(ng, "MULTIPLY", -1050, yy, None, sign)
        _link(ng, dsep, axis, m, 0)
        basis.append(m)

    # colour = linear(clamp(0.5 + C0 f_dc + sum_k basis_k f_rest_{15c + k})), stored on the points
    comb = ng.nodes.new("ShaderNodeCombineXYZ")
    comb.location = (-100, 400)
    for c in range(3):
        y0 = 600 - 260 * c
        dc = _named(ng, f"f_dc_{c}", -1200, y0)
        acc = _math(ng, "MULTIPLY_ADD", -900, y0, None, SH_C0)
        acc.inputs[2].default_value = 0.5
        _link(ng, dc, "Attribute", acc, 0)
        for k in range(3):
            f = _named(ng, f"f_rest_{15 * c + k}", -1200, y0 - 60 * (k + 1))
            nxt = _math(ng, "MULTIPLY_ADD", -900 + 110 * (k + 1), y0 - 40 * (k + 1))
            _link(ng, f, "Attribute", nxt, 0)
            _link(ng, basis[k], 0, nxt, 1)
            _link(ng, acc, 0, nxt, 2)
            acc = nxt
        acc.use_clamp = True
        ng.links.new(_srgb_to_linear(ng, acc.outputs[0], -500, y0), comb.inputs[c])
    store_c = _store(ng, "fa_color", "FLOAT_COLOR", 150, 300, (n_in, 0), (comb, 0))

    # alpha = sigmoid(opacity) = 1 / (1 + exp(-opacity))
    op = _named(ng, "opacity", -1200, -300)
    neg = _math(ng, "MULTIPLY", -1000, -300, None, -1.0)
    ex = _math(ng, "EXPONENT", -850, -300)
    add = _math(ng, "ADD", -700, -300, None, 1.0)
    inv = _math(ng, "DIVIDE", -550, -300, 1.0)
    _link(ng, op, "Attribute", neg, 0)
    _link(ng, neg, 0, ex, 0)
    _link(ng, ex, 0, add, 0)
    _link(ng, add, 0, inv, 1)
    store_a = _store(ng, "fa_alpha", "FLOAT", 350, 200, (store_c, "Geometry"), (inv, 0))
    store_k = _store(ng, "fa_sigmas", "FLOAT", 550, 200, (store_a, "Geometry"), (n_in, 1))

    # rotation from rot_0..3 (w, x, y, z); scale = splat_scale * exp(log-scale)
    q = ng.nodes.new("FunctionNodeQuaternionToRotation")
    q.location = (-600, -600)
    for i, sock in enumerate(("W", "X", "Y", "Z")):
        _link(ng, _named(ng, f"rot_{i}", -900, -550 - 110 * i), "Attribute", q, sock)
    sc = ng.nodes.new("ShaderNodeCombineXYZ")
    sc.location = (-600, -1050)
    s2 = _dilation_sq(ng, info, n_in.outputs[PIXEL_ANGLE], -2000, -1500, rel=dvec)
    for i in range(3):
        e = _math(ng, "EXPONENT", -1100, -1000 - 110 * i)
        _link(ng, _named(ng, f"scale_{i}", -1300, -1000 - 110 * i), "Attribute", e, 0)
        ng.links.new(_dilated_sigma(ng, e.outputs[0], s2, -950, -1000 - 110 * i), sc.inputs[i])
    vs = _vmath(ng, "SCALE", -400, -1050)
    _link(ng, sc, 0, vs, 0)
    _link(ng, n_in, 1, vs, "Scale")

    ico = ng.nodes.new("GeometryNodeMeshIcoSphere")
    ico.location = (-400, -400)
    ico.inputs["Radius"].default_value = 1.0
    _link(ng, n_in, 2, ico, "Subdivisions")
    setmat = ng.nodes.new("GeometryNodeSetMaterial")
    setmat.location = (0, -400)
    setmat.inputs["Material"].default_value = splat_material()
    _link(ng, ico, "Mesh", setmat, "Geometry")

    inst = ng.nodes.new("GeometryNodeInstanceOnPoints")
    inst.location = (800, 100)
    _link(ng, store_k, "Geometry", inst, "Points")
    _link(ng, setmat, "Geometry", inst, "Instance")
    _link(ng, q, "Rotation", inst, "Rotation")
    _link(ng, vs, "Vector", inst, "Scale")
    _link(ng, inst, "Instances", n_out, 0)
    return ng


def splat_material():
    """The splat material of the mesh display: the reference rasteriser's per-splat alpha, emission.

    In the instance's space the proxy (:func:`splat_node_group`) is the unit sphere and the
    Gaussian is isotropic with sigma = 1 / ``fa_sigmas``. The viewing ray through the shaded point
    ``p`` (Texture Coordinate *Object*) with direction ``d`` (the *Incoming* vector taken to object
    space) comes closest to the centre at ``r^2 = |p|^2 - (p.d)^2 / |d|^2``, where the 3D Gaussian
    along the ray peaks (3D Gaussian ray tracing, Moenne-Loccoz et al. 2024, as Blender's own
    splats do); ``alpha = min(0.99, fa_alpha exp(-fa_sigmas^2 r^2 / 2))``, zero below 1/255 and on
    back faces (each splat counts once). Emission of ``fa_color`` (linear) mixed with a
    transparent BSDF by alpha: Blender composites in linear light, like its native splats."""
    mat = bpy.data.materials.get(MATERIAL)
    if mat is not None:
        return mat
    mat = bpy.data.materials.new(MATERIAL)
    if mat.node_tree is None:  # Blender < 5.0; from 5.0 every material has nodes (use_nodes is deprecated)
        mat.use_nodes = True
    # EEVEE: dithered (stochastic, order-independent) transparency; "blended" sorts per object, not
    # per splat, and blends overlapping splats out of order (18.7 dB against 24.7 dB dithered)
    for attr, value in (("blend_method", "HASHED"), ("surface_render_method", "DITHERED"),
                        ("show_transparent_back", False), ("use_backface_culling", True)):
        if hasattr(mat, attr):
            try:
                setattr(mat, attr, value)
            except (TypeError, ValueError):
                pass
    nt = mat.node_tree
    nt.nodes.clear()

    def node(kind, x, y, **props):
        n = nt.nodes.new(kind)
        n.location = (x, y)
        for k, v in props.items():
            setattr(n, k, v)
        return n

    def attr(name, x, y):
        return node("ShaderNodeAttribute", x, y, attribute_type="INSTANCER", attribute_name=name)

    out = node("ShaderNodeOutputMaterial", 1400, 0)
    tc = node("ShaderNodeTexCoord", -1200, 0)
    geo = node("ShaderNodeNewGeometry", -1200, -300)
    to_obj = node("ShaderNodeVectorTransform", -1000, -300, vector_type="VECTOR",
                  convert_from="WORLD", convert_to="OBJECT")
    nt.links.new(geo.outputs["Incoming"], to_obj.inputs[0])
    pp = node("ShaderNodeVectorMath", -800, 100, operation="DOT_PRODUCT")
    nt.links.new(tc.outputs["Object"], pp.inputs[0])
    nt.links.new(tc.outputs["Object"], pp.inputs[1])
    pd = node("ShaderNodeVectorMath", -800, -100, operation="DOT_PRODUCT")
    nt.links.new(tc.outputs["Object"], pd.inputs[0])
    nt.links.new(to_obj.outputs[0], pd.inputs[1])
    dd = node("ShaderNodeVectorMath", -800, -300, operation="DOT_PRODUCT")
    nt.links.new(to_obj.outputs[0], dd.inputs[0])
    nt.links.new(to_obj.outputs[0], dd.inputs[1])
    pd2 = node("ShaderNodeMath", -600, -100, operation="MULTIPLY")
    nt.links.new(pd.outputs["Value"], pd2.inputs[0])
    nt.links.new(pd.outputs["Value"], pd2.inputs[1])
    ratio = node("ShaderNodeMath", -450, -150, operation="DIVIDE")
    nt.links.new(pd2.outputs[0], ratio.inputs[0])
    nt.links.new(dd.outputs["Value"], ratio.inputs[1])
    r2 = node("ShaderNodeMath", -300, 0, operation="SUBTRACT")
    nt.links.new(pp.outputs["Value"], r2.inputs[0])
    nt.links.new(ratio.outputs[0], r2.inputs[1])
    k = attr("fa_sigmas", -600, 300)
    k2 = node("ShaderNodeMath", -400, 300, operation="MULTIPLY")
    nt.links.new(k.outputs["Fac"], k2.inputs[0])
    nt.links.new(k.outputs["Fac"], k2.inputs[1])
    expo = node("ShaderNodeMath", -150, 150, operation="MULTIPLY")
    nt.links.new(r2.outputs[0], expo.inputs[0])
    nt.links.new(k2.outputs[0], expo.inputs[1])
    expo2 = node("ShaderNodeMath", 0, 150, operation="MULTIPLY")
    expo2.inputs[1].default_value = -0.5
    nt.links.new(expo.outputs[0], expo2.inputs[0])
    g = node("ShaderNodeMath", 150, 150, operation="EXPONENT")
    nt.links.new(expo2.outputs[0], g.inputs[0])
    a = attr("fa_alpha", 0, 400)
    alpha = node("ShaderNodeMath", 300, 250, operation="MULTIPLY")
    nt.links.new(a.outputs["Fac"], alpha.inputs[0])
    nt.links.new(g.outputs[0], alpha.inputs[1])
    cap = node("ShaderNodeMath", 450, 250, operation="MINIMUM")
    cap.inputs[1].default_value = ALPHA_MAX
    nt.links.new(alpha.outputs[0], cap.inputs[0])
    keep = node("ShaderNodeMath", 450, 50, operation="GREATER_THAN")
    keep.inputs[1].default_value = ALPHA_MIN
    nt.links.new(alpha.outputs[0], keep.inputs[0])
    front = node("ShaderNodeMath", 450, -150, operation="SUBTRACT")
    front.inputs[0].default_value = 1.0
    nt.links.new(geo.outputs["Backfacing"], front.inputs[1])
    m1 = node("ShaderNodeMath", 650, 150, operation="MULTIPLY")
    nt.links.new(cap.outputs[0], m1.inputs[0])
    nt.links.new(keep.outputs[0], m1.inputs[1])
    m2 = node("ShaderNodeMath", 800, 100, operation="MULTIPLY", use_clamp=True)
    nt.links.new(m1.outputs[0], m2.inputs[0])
    nt.links.new(front.outputs[0], m2.inputs[1])
    col = attr("fa_color", 600, 500)
    emit = node("ShaderNodeEmission", 900, 400)
    nt.links.new(col.outputs["Color"], emit.inputs["Color"])
    transp = node("ShaderNodeBsdfTransparent", 900, 250)
    mix = node("ShaderNodeMixShader", 1150, 200)
    nt.links.new(m2.outputs[0], mix.inputs["Fac"])
    nt.links.new(transp.outputs[0], mix.inputs[1])
    nt.links.new(emit.outputs[0], mix.inputs[2])
    nt.links.new(mix.outputs[0], out.inputs["Surface"])
    return mat


#: The reference rasteriser's screen-space low-pass filter (3DGS's ``eps2d``, px^2; the default of
#: ``fastavatar_engine.render.torch_rasterizer.rasterize`` and gsplat): every projected covariance
#: gets ``+ 0.3 I``, opacity unchanged, so a sub-pixel splat still covers ~0.55 px.
SCREEN_DILATION_PX2 = 0.3
PIXEL_ANGLE = "Pixel Angle"
FILTER_GROUP = "FastAvatar Splat Filter"
FILTER_MODIFIER = "FastAvatar Splat Filter"
DISPLAY_MODIFIER = "FastAvatar Splats"


def _dilation_sq(ng, info, pixel_angle, x, y, rel=None):
    """Nodes for the reference rasteriser's ``eps2d`` as a 3D dilation; returns the output socket.

    Adding ``s^2 I`` to a Gaussian's 3D covariance adds ``s^2 J J^T ~ s^2 (f/z)^2 I`` to its
    projection (the EWA Jacobian J at depth z, focal f in pixels), so ``s^2 = eps2d (z / f)^2`` is
    3DGS's ``+ eps2d I`` in the image (exactly at the image centre, to second order in the
    field angle elsewhere). z = the point's depth along the camera's view axis (``info``: Object
    Info of the scene camera, RELATIVE, so z is in this object's units), ``pixel_angle`` =
    1 / f in radians per pixel (:func:`pixel_angle`); ``rel``: an existing node whose output 0 is
    position - camera location (made here when None). Per point field, m^2 in object units."""
    if rel is None:
        pos = ng.nodes.new("GeometryNodeInputPosition")
        pos.location = (x, y)
        rel = _vmath(ng, "SUBTRACT", x + 150, y)
        _link(ng, pos, 0, rel, 0)
        _link(ng, info, "Location", rel, 1)
    fwd = ng.nodes.new("FunctionNodeRotateVector")
    fwd.location = (x + 150, y - 150)
    fwd.inputs["Vector"].default_value = (0.0, 0.0, -1.0)  # a camera looks down its -Z
    _link(ng, info, "Rotation", fwd, "Rotation")
    depth = _vmath(ng, "DOT_PRODUCT", x + 300, y)
    _link(ng, rel, 0, depth, 0)
    _link(ng, fwd, 0, depth, 1)
    z = _math(ng, "MAXIMUM", x + 450, y, None, 0.0)
    _link(ng, depth, "Value", z, 0)
    s = _math(ng, "MULTIPLY", x + 600, y)
    _link(ng, z, 0, s, 0)
    ng.links.new(pixel_angle, s.inputs[1])
    s2 = _math(ng, "MULTIPLY", x + 750, y)
    _link(ng, s, 0, s2, 0)
    _link(ng, s, 0, s2, 1)
    out = _math(ng, "MULTIPLY", x + 900, y, None, SCREEN_DILATION_PX2)
    _link(ng, s2, 0, out, 0)
    return out.outputs[0]


def _dilated_sigma(ng, sigma, s2, x, y):
    """Math nodes for ``sqrt(sigma^2 + s2)`` (sockets in, socket out): a std-dev after the dilation."""
    sq = _math(ng, "MULTIPLY", x, y)
    ng.links.new(sigma, sq.inputs[0])
    ng.links.new(sigma, sq.inputs[1])
    add = _math(ng, "ADD", x + 150, y)
    _link(ng, sq, 0, add, 0)
    ng.links.new(s2, add.inputs[1])
    root = _math(ng, "SQRT", x + 300, y)
    _link(ng, add, 0, root, 0)
    return root.outputs[0]


def _camera_info(ng, x, y):
    """The scene camera's Object Info in this object's frame (RELATIVE)."""
    cam = ng.nodes.new("GeometryNodeInputActiveCamera")
    cam.location = (x, y)
    info = ng.nodes.new("GeometryNodeObjectInfo")
    info.transform_space = "RELATIVE"
    info.location = (x + 200, y)
    _link(ng, cam, 0, info, "Object")
    return info


def _geometry_group(name: str, add_inputs, at_in, at_out):
    """A new geometry-nodes group ``name``: a Geometry input, the inputs ``add_inputs(ng)`` adds,
    a Geometry output; returns ``(group, Group Input node, Group Output node)``."""
    ng = bpy.data.node_groups.new(name, "GeometryNodeTree")
    ng.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    add_inputs(ng)
    ng.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    n_in = ng.nodes.new("NodeGroupInput")
    n_in.location = at_in
    n_out = ng.nodes.new("NodeGroupOutput")
    n_out.location = at_out
    return ng, n_in, n_out


def _pixel_angle_socket(ng):
    """Add the ``Pixel Angle`` group input (radians per pixel; 0 = no dilation)."""
    sock = ng.interface.new_socket(PIXEL_ANGLE, in_out="INPUT", socket_type="NodeSocketFloat")
    sock.default_value, sock.min_value, sock.max_value = 0.0, 0.0, 1.0
    return sock


def splat_filter_group():
    """The geometry-nodes group that gives a Gaussian-splat point cloud (Blender >= 5.3) the
    reference rasteriser's screen-space dilation (created once per .blend).

    Blender's own splats are drawn without 3DGS's ``eps2d`` low-pass, so the many sub-pixel
    Gaussians of a fitted avatar (eyes, ears, hair) fade out where the engine shows them. The
    group replaces the evaluated ``scale`` attribute by ``sqrt(scale^2 + s^2)`` per axis
    (:func:`_dilation_sq`; opacity unchanged, as in the reference): the rotation's axes are the
    covariance's eigenvectors, so ``R (S^2 + s^2 I) R^T`` is exactly representable. The object's
    own data is untouched (``read_packed`` and export read it)."""
    ng = bpy.data.node_groups.get(FILTER_GROUP)
    if ng is not None:
        return ng
    ng, n_in, n_out = _geometry_group(FILTER_GROUP, _pixel_angle_socket, (-1200, 0), (900, 0))
    s2 = _dilation_sq(ng, _camera_info(ng, -1200, 400), n_in.outputs[PIXEL_ANGLE], -800, 400)
    scale = ng.nodes.new("GeometryNodeInputNamedAttribute")
    scale.data_type = "FLOAT_VECTOR"
    scale.inputs["Name"].default_value = "scale"
    scale.location = (-800, -200)
    sep = ng.nodes.new("ShaderNodeSeparateXYZ")
    sep.location = (-600, -200)
    _link(ng, scale, "Attribute", sep, 0)
    comb = ng.nodes.new("ShaderNodeCombineXYZ")
    comb.location = (300, -200)
    for i in range(3):
        ng.links.new(_dilated_sigma(ng, sep.outputs[i], s2, -350, -100 - 120 * i), comb.inputs[i])
    store = _store(ng, "scale", "FLOAT_VECTOR", 600, 0, (n_in, 0), (comb, 0))
    _link(ng, store, "Geometry", n_out, 0)
    return ng


def _modifier_input(mod, name: str):
    """(get, set) for the geometry-nodes modifier input called ``name``: an ID property keyed by
    the socket identifier before Blender 5.0, ``mod.properties.inputs`` after. Raises KeyError
    when ``mod`` has no node group or its group no such input."""
    ident = next((s.identifier for s in (mod.node_group.interface.items_tree if mod.node_group else ())
                  if getattr(s, "in_out", None) == "INPUT" and s.name == name), None)
    if ident is None:
        raise KeyError(name)
    if hasattr(mod, "properties"):
        item = getattr(mod.properties.inputs, ident)
        return (lambda: item.value), (lambda v: setattr(item, "value", v))
    return (lambda: mod[ident]), (lambda v: mod.__setitem__(ident, v))


def pixel_angle(scene) -> float:
    """Radians per pixel at the image centre (1 / focal length in pixels) of ``scene``'s camera at
    its render resolution: ``2 tan(angle / 2) / N``, N the pixels along the sensor-fit axis
    (Auto: the larger side; resolution percentage applied). 0.0 for no camera or a
    non-perspective one (then no dilation)."""
    cam = scene.camera
    if cam is None or cam.type != "CAMERA" or cam.data.type != "PERSP":
        return 0.0
    r = scene.render
    w, h = (r.resolution_x * r.resolution_percentage / 100.0, r.resolution_y * r.resolution_percentage / 100.0)
    fit = cam.data.sensor_fit
    n = w if fit == "HORIZONTAL" else h if fit == "VERTICAL" else max(w, h)
    return 2.0 * math.tan(0.5 * cam.data.angle) / max(n, 1.0)


def update_pixel_angles(scene) -> int:
    """Set the ``Pixel Angle`` input of every avatar's geometry-nodes modifiers in ``scene`` (the
    display or the filter, whatever they are called now; appended ones too) to
    :func:`pixel_angle`; the add-on does this at creation and before every render. A modifier
    without the input (a display saved before the dilation) is left alone. Returns how many
    modifiers changed."""
    value, n = pixel_angle(scene), 0
    for obj in scene.objects:
        if not is_avatar(obj):
            continue
        for mod in obj.modifiers:
            if mod.type != "NODES":
                continue
            try:
                get, put = _modifier_input(mod, PIXEL_ANGLE)
            except KeyError:
                continue
            if abs(get() - value) > 1e-12:
                put(value)
                obj.update_tag()  # an ID-property write does not tag the depsgraph itself
                n += 1
    return n


# ---------------------------------------------------------------------- objects
def is_avatar(obj) -> bool:
    """Whether ``obj`` is a FastAvatar avatar (a mesh or point-cloud object carrying a code)."""
    return obj is not None and obj.type in {"MESH", "POINTCLOUD"} and CODE_KEY in obj


def get_code(obj) -> np.ndarray:
    """The avatar's code w as float32 [D]; KeyError when ``obj`` is not an avatar."""
    return np.asarray(obj[CODE_KEY], dtype=np.float64).astype(np.float32)


def create_avatar_object(context, g, code, *, name: str = "Avatar", model_id: str = "", photo: str = "",
                         face_index: int = -1, camera: dict | None = None, refined_steps: int = 0,
                         location=None):
    """Create and link the avatar object in the active collection; returns it.

    ``g``: GaussianSet (engine frame); ``code``: [D] float32; ``location``: world position
    (default: the 3D cursor). A Gaussian-splat point cloud where Blender has them
    (:func:`native_splats`), else a vertices-only mesh with the display modifier. The object is
    rotated +90 deg about X (y-up -> z-up). Raises
    ``GaussianValidationError`` (a ValueError) for inconsistent arrays, before anything is created."""
    g.validate()
    native = native_splats()
    if native:
        data = bpy.data.pointclouds.new(name)
        data.type = "GAUSSIAN_SPLAT"
    else:
        data = bpy.data.meshes.new(name)
    write_gaussians(data, g)
    obj = bpy.data.objects.new(name, data)
    obj.rotation_mode = "XYZ"
    obj.rotation_euler = (math.pi / 2, 0.0, 0.0)
    obj.location = context.scene.cursor.location.copy() if location is None else location
    (context.collection or context.scene.collection).objects.link(obj)
    set_avatar_metadata(obj, code, model_id=model_id, photo=photo, face_index=face_index, camera=camera,
                        refined_steps=refined_steps)
    mod = obj.modifiers.new(FILTER_MODIFIER if native else DISPLAY_MODIFIER, "NODES")
    mod.node_group = splat_filter_group() if native else splat_node_group()
    update_pixel_angles(context.scene)
    return obj


def set_avatar_metadata(obj, code, *, model_id: str, photo: str, face_index: int = -1, camera=None,
                        refined_steps: int = 0) -> None:
    """Store the code and provenance on ``obj`` (ID properties + the ``fastavatar`` group)."""
    import json

    obj[CODE_KEY] = [float(v) for v in np.asarray(code, np.float32)]
    props = obj.fastavatar
    props.is_avatar = True
    props.model_id = model_id
    props.photo = photo or ""
    props.face_index = face_index
    props.refined_steps = refined_steps
    props.camera_json = json.dumps(camera) if camera else ""
