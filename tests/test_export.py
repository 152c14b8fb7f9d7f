"""Export to PLY / .splat / .spz / glTF, read back by independent readers: PlayCanvas
``splat-transform`` (npm, installed by .ci/run into tests/js) converts our files to CSV, and for
glTF writes its own .glb from our PLY, which pygltflib reads beside ours."""

import csv
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from fastavatar_engine.export import ExportError, export_gaussians, rotate_gaussians
from fastavatar_engine.gaussians import GaussianSet, sigmoid
from fastavatar_engine.model.io import FastAvatarModel

ROOT = Path(__file__).resolve().parents[1]
SPLAT_TRANSFORM = ROOT / "tests" / "js" / "node_modules" / ".bin" / "splat-transform"
needs_reader = pytest.mark.skipif(
    not SPLAT_TRANSFORM.exists() or shutil.which("node") is None,
    reason="independent reader missing: npm ci --prefix tests/js (needs Node.js)")

#: real SH, 180 deg about z: coefficients with odd |m| change sign (3DGS order per band: m = -l..l)
SH_SIGNS_RZ180 = np.array([1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1], np.float64)


@pytest.fixture(scope="module")
def avatar():
    """A real avatar: the default model's decode of training subject 128 (10,144 splats)."""
    model = FastAvatarModel.load()
    with torch.no_grad():
        return model.decode(model.codes["128"]).to_numpy()


def splat_transform(*args):
    proc = subprocess.run([str(SPLAT_TRANSFORM), "-q", "-w", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def read_csv(path: Path) -> dict:
    with open(path) as f:
        rows = list(csv.reader(f))
    data = np.array(rows[1:], np.float64)
    return {name: data[:, i] for i, name in enumerate(rows[0])}


def quat_matrix(q: np.ndarray) -> np.ndarray:
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
                     np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
                     np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], 1)


def expected_ply_space(g: GaussianSet):
    """The 'ply' convention computed independently: 180 deg about z."""
    rz = np.diag([-1.0, -1.0, 1.0])
    return {"means": g.means.astype(np.float64) @ rz.T, "rot": rz @ quat_matrix(g.rotations.astype(np.float64)),
            "log_scales": g.log_scales.astype(np.float64), "alpha": sigmoid(g.opacity_logits.astype(np.float64)),
            "sh": g.sh.astype(np.float64) * SH_SIGNS_RZ180[None, :, None]}


def compare(c: dict, exp: dict, tol: dict, reordered: bool):
    """Rows of the reader's CSV ``c`` against ``exp`` within per-quantity tolerances; with
    ``reordered`` (.splat sorts its splats) each row is matched to the source splat at its position."""
    from scipy.spatial import cKDTree

    pos = np.stack([c["x"], c["y"], c["z"]], 1)
    assert len(pos) == len(exp["means"])
    if reordered:  # .splat stores float32 positions exactly: the nearest source splat is the one
        dist, idx = cKDTree(exp["means"]).query(pos)
        assert dist.max() < 1e-6 and len(np.unique(idx)) == len(idx)
    else:
        idx = np.arange(len(pos))
    np.testing.assert_allclose(pos, exp["means"][idx], rtol=0, atol=tol["pos"])
    np.testing.assert_allclose(np.stack([c[f"scale_{i}"] for i in range(3)], 1), exp["log_scales"][idx],
                               rtol=0, atol=tol["scale"])
    np.testing.assert_allclose(sigmoid(c["opacity"]), exp["alpha"][idx], rtol=0, atol=tol["alpha"])
    np.testing.assert_allclose(np.stack([c[f"f_dc_{i}"] for i in range(3)], 1), exp["sh"][idx, 0], rtol=0,
                               atol=tol["dc"])
    rot = quat_matrix(np.stack([c[f"rot_{i}"] for i in range(4)], 1))
    assert np.abs(rot - exp["rot"][idx]).max() < tol["rot"]
    if tol.get("rest") is not None:
        rest = np.stack([c[f"f_rest_{i}"] for i in range(45)], 1)
        exp_rest = exp["sh"][idx, 1:, :].transpose(0, 2, 1).reshape(len(idx), 45)
        np.testing.assert_allclose(rest, exp_rest, rtol=0, atol=tol["rest"])


@needs_reader
@pytest.mark.parametrize("fmt,tol", [
    ("ply", {"pos": 1e-7, "scale": 1e-6, "alpha": 1e-6, "dc": 1e-6, "rot": 1e-5, "rest": 1e-6}),
    # 8-bit colour (1/255 of 1/C0 per step), opacity 1/255, 8-bit quaternion components
    (".splat", {"pos": 1e-7, "scale": 1e-5, "alpha": 0.5 / 255 + 1e-6, "dc": 0.5 / 255 / 0.2820948 + 1e-6,
                "rot": 0.05, "rest": None}),
    # 2^-12 m positions, log-scale 1/16, colour 1/(255*0.15), SH 1/128, smallest-three rotations
    (".spz", {"pos": 0.5 / 4096 + 1e-7, "scale": 0.5 / 16 + 1e-6, "alpha": 0.5 / 255 + 1e-6,
              "dc": 0.5 / 255 / 0.15 + 1e-6, "rot": 0.01, "rest": 0.5 / 128 + 1e-6}),
])
def test_exported_files_read_back_with_splat_transform(avatar, tmp_path, fmt, tol):
    fmt = fmt.lstrip(".")
    report = export_gaussians(avatar, tmp_path / f"a.{fmt}")
    assert report["convention"] == "ply" and report["splats"] == 10144 and report["pruned"] == 0
    splat_transform(tmp_path / f"a.{fmt}", tmp_path / "a.csv")
    compare(read_csv(tmp_path / "a.csv"), expected_ply_space(avatar), tol, reordered=fmt == "splat")


@needs_reader
def test_glb_matches_splat_transforms_own_gltf_writer(avatar, tmp_path):
    pygltflib = pytest.importorskip("pygltflib")
    export_gaussians(avatar, tmp_path / "a.ply")  # PLY convention
    splat_transform(tmp_path / "a.ply", tmp_path / "reference.glb")  # their PLY -> glTF conversion
    report = export_gaussians(avatar, tmp_path / "ours.glb")
    assert report["convention"] == "engine"

    def read(path):
        gl = pygltflib.GLTF2.load(str(path))
        blob = gl.binary_blob()
        prim = json.loads(gl.to_json())["meshes"][0]["primitives"][0]
        out = {}
        for name, i in prim["attributes"].items():
            acc = gl.accessors[i]
            view = gl.bufferViews[acc.bufferView]
            dtype = {5126: np.float32, 5121: np.uint8}[acc.componentType]
            width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[acc.type]
            out[name] = np.frombuffer(blob, dtype, acc.count * width,
                                      view.byteOffset + (acc.byteOffset or 0)).reshape(acc.count, width)
        return out, prim, gl

    ours, prim, gl = read(tmp_path / "ours.glb")
    ref, ref_prim, _ = read(tmp_path / "reference.glb")
    assert prim["mode"] == 0 and prim["extensions"] == ref_prim["extensions"]
    assert gl.extensionsUsed == ["KHR_gaussian_splatting"] and sorted(ours) == sorted(ref)
    assert len(ours) == 5 + 16
    for name in ref:
        if name == "KHR_gaussian_splatting:ROTATION":  # unit quaternions, q and -q alike
            r = ref[name] / np.linalg.norm(ref[name], axis=1, keepdims=True)
            assert np.abs(np.abs((ours[name] * r).sum(1)) - 1).max() < 1e-5
        else:
            np.testing.assert_allclose(ours[name].astype(np.float64), ref[name].astype(np.float64),
                                       rtol=1e-5, atol=1e-6 if ref[name].dtype == np.float32 else 0, err_msg=name)
    # glTF is y-up like the engine frame: positions are the engine's
    np.testing.assert_allclose(ours["POSITION"], avatar.means, atol=1e-7)


def test_axis_conventions_rotate_means_rotations_and_view_dependent_colour(avatar):
    """An independent check of the SH rotation: rendering the converted splats from the
    correspondingly rotated camera gives the same image."""
    from fastavatar_engine.cameras import intrinsics, orbit_c2w
    from fastavatar_engine.render import render

    g = GaussianSet(avatar.means, avatar.log_scales, avatar.rotations, avatar.opacity_logits,
                    avatar.sh + np.random.default_rng(0).normal(0, 0.2, avatar.sh.shape).astype(np.float32))
    r = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # the 'blender' convention
    g2 = rotate_gaussians(g, r)
    c2w = orbit_c2w(math.radians(35), math.radians(10), 0.6)
    c2w2 = np.eye(4)
    c2w2[:3, :3], c2w2[:3, 3] = r @ c2w[:3, :3], r @ c2w[:3, 3]
    k = intrinsics(300, 300, 64, 64)
    with torch.no_grad():
        a, _ = render(g, c2w, k, 128, 128)
        b, _ = render(g2, c2w2, k, 128, 128)
    assert float((a - b).abs().max()) < 2e-4
    with torch.no_grad():  # and it is not the identity: the unrotated colours differ
        c, _ = render(GaussianSet(g2.means, g2.log_scales, g2.rotations, g2.opacity_logits, g.sh),
                      c2w2, k, 128, 128)
    assert float((a - c).abs().max()) > 1e-2


def test_pruning_reports_the_count_and_bad_exports_leave_no_file(avatar, tmp_path):
    alpha = sigmoid(avatar.opacity_logits.astype(np.float64))
    report = export_gaussians(avatar, tmp_path / "p.ply", min_opacity=0.2, convention="engine")
    assert report["pruned"] == int((alpha < 0.2).sum()) > 0
    from fastavatar_engine.ply import read_ply

    assert len(read_ply(tmp_path / "p.ply")) == 10144 - report["pruned"]
    far = GaussianSet(avatar.means * 1e5, avatar.log_scales, avatar.rotations, avatar.opacity_logits, avatar.sh)
    with pytest.raises(ExportError, match="do not fit .spz"):
        export_gaussians(far, tmp_path / "far.spz")
    with pytest.raises(ExportError, match="nothing to export"):
        export_gaussians(avatar, tmp_path / "none.splat", min_opacity=0.99999)
    with pytest.raises(ExportError, match="unknown export format"):
        export_gaussians(avatar, tmp_path / "x.obj")
    with pytest.raises(ExportError, match="axis convention"):
        export_gaussians(avatar, tmp_path / "x.ply", convention="sideways")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.ply"]  # nothing partial left behind


def test_export_cli(avatar, tmp_path, capsys):
    from fastavatar_engine.cli import main
    from fastavatar_engine.ply import write_ply

    write_ply(tmp_path / "in.ply", avatar)
    assert main(["export", str(tmp_path / "in.ply"), "-o", str(tmp_path / "out.spz"), "--min-opacity", "0.1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "spz" and report["pruned"] > 0 and (tmp_path / "out.spz").is_file()
    assert main(["export", str(tmp_path / "in.ply"), "-o", str(tmp_path / "out.xyz")]) == 2
