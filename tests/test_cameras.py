"""Tests for fastavatar_engine.cameras: convention conversions (checked against OpenCV and plain
linear algebra), the sample-data loader, and the projection acceptance test on the samples."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from PIL import Image

from fastavatar_engine.cameras import (
    BLENDER_TO_YUP,
    GL_TO_CV,
    YUP_TO_BLENDER,
    CameraError,
    c2w_cv_to_gl,
    c2w_from_blender,
    c2w_from_viewmat,
    c2w_gl_to_cv,
    c2w_to_blender,
    intrinsics,
    intrinsics_from_fov,
    invert_rigid,
    load_subject,
    look_at,
    orbit_c2w,
    points_from_blender,
    points_to_blender,
    project_points,
    rotation_angle_deg,
    viewmat_from_c2w,
)


def random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def random_c2w(rng) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = random_rotation(rng)
    m[:3, 3] = rng.normal(size=3)
    return m


def rodrigues(axis, angle_rad) -> np.ndarray:
    axis = np.asarray(axis, np.float64)
    R, _ = cv2.Rodrigues(axis / np.linalg.norm(axis) * angle_rad)
    return R


# --------------------------------------------------------------------------- conventions
def test_gl_cv_round_trip_and_axes():
    rng = np.random.default_rng(0)
    for _ in range(10):
        c2w = random_c2w(rng)
        cv = c2w_gl_to_cv(c2w)
        np.testing.assert_allclose(c2w_cv_to_gl(cv), c2w, atol=1e-15)
        np.testing.assert_array_equal(cv[:, 0], c2w[:, 0])  # x (right) kept
        np.testing.assert_array_equal(cv[:, 1], -c2w[:, 1])  # OpenCV y is down
        np.testing.assert_array_equal(cv[:, 2], -c2w[:, 2])  # OpenCV looks down +z, GL down -z
        np.testing.assert_array_equal(cv[:, 3], c2w[:, 3])  # same camera centre
        assert np.linalg.det(cv[:3, :3]) == pytest.approx(1.0)
    np.testing.assert_array_equal(GL_TO_CV @ GL_TO_CV, np.eye(4))


def test_viewmat_is_inverse_of_cv_c2w():
    rng = np.random.default_rng(1)
    for _ in range(10):
        c2w = random_c2w(rng)
        vm = viewmat_from_c2w(c2w)
        np.testing.assert_allclose(vm @ c2w_gl_to_cv(c2w), np.eye(4), atol=1e-12)
        np.testing.assert_allclose(vm, np.linalg.inv(c2w @ np.diag([1.0, -1, -1, 1])), atol=1e-12)
        np.testing.assert_allclose(c2w_from_viewmat(vm), c2w, atol=1e-12)
        np.testing.assert_allclose(invert_rigid(c2w), np.linalg.inv(c2w), atol=1e-12)
        # the camera centre maps to the camera-frame origin
        np.testing.assert_allclose((vm @ c2w[:, 3])[:3], 0.0, atol=1e-12)


def test_matrix_argument_errors():
    with pytest.raises(CameraError, match="4x4"):
        c2w_gl_to_cv(np.eye(3))
    bad = np.eye(4)
    bad[0, 3] = np.nan
    with pytest.raises(CameraError, match="non-finite"):
        viewmat_from_c2w(bad)
    with pytest.raises(CameraError, match="coincide"):
        look_at([1, 2, 3], [1, 2, 3])
    with pytest.raises(CameraError, match="parallel"):
        look_at([0, 2, 0], [0, 0, 0])


def test_intrinsics():
    K = intrinsics(100.0, 110.0, 32.0, 24.5)
    np.testing.assert_array_equal(K, [[100, 0, 32], [0, 110, 24.5], [0, 0, 1]])
    K = intrinsics_from_fov(640, 480, math.radians(60))
    assert K[0, 0] == pytest.approx(320 / math.tan(math.radians(30)))
    assert K[1, 1] == K[0, 0] and (K[0, 2], K[1, 2]) == (320, 240)
    # a point on the edge of the horizontal field of view projects to the image's left/right edge
    c2w = np.eye(4)
    pt = np.array([[math.tan(math.radians(30)), 0.0, -1.0]])  # GL camera looks down -z
    uv, depth = project_points(pt, c2w, K)
    np.testing.assert_allclose(uv, [[640.0, 240.0]], atol=1e-9)
    np.testing.assert_allclose(depth, [1.0])


# --------------------------------------------------------------------------- projection
def test_project_points_agrees_with_cv2():
    rng = np.random.default_rng(2)
    K = intrinsics(2047.5, 2047.6, 274.9, 401.1)
    for _ in range(5):
        c2w = look_at(rng.normal(size=3) * 0.2 + [0, 0, 1.1], rng.normal(size=3) * 0.05)
        pts = rng.normal(0, 0.1, (200, 3))
        uv, depth = project_points(pts, c2w, K)
        # OpenCV's own pinhole model with the OpenCV extrinsics (world -> camera)
        vm = viewmat_from_c2w(c2w)
        rvec, _ = cv2.Rodrigues(vm[:3, :3])
        ref, _ = cv2.projectPoints(pts.reshape(-1, 1, 3), rvec, vm[:3, 3], K, None)
        np.testing.assert_allclose(uv, ref.reshape(-1, 2), rtol=0, atol=1e-6)
        # depth: distance along the viewing axis, -z in the GL camera frame
        local = (np.linalg.inv(c2w) @ np.c_[pts, np.ones(len(pts))].T).T
        np.testing.assert_allclose(depth, -local[:, 2], atol=1e-12)
        assert (depth > 0).all()


def test_point_straight_ahead_projects_to_principal_point():
    K = intrinsics(1000.0, 1000.0, 300.5, 200.25)
    eye, target = np.array([0.3, 0.2, 1.0]), np.array([-0.1, 0.05, 0.0])
    c2w = look_at(eye, target)
    uv, depth = project_points(target[None], c2w, K)
    np.testing.assert_allclose(uv, [[300.5, 200.25]], atol=1e-9)
    assert depth[0] == pytest.approx(np.linalg.norm(eye - target))
    # camera-right and camera-up in the world move the projection right and up (v decreases)
    right, up = c2w[:3, 0], c2w[:3, 1]
    uv, _ = project_points(np.stack([target + 0.01 * right, target + 0.01 * up]), c2w, K)
    assert uv[0, 0] > 300.5 and uv[0, 1] == pytest.approx(200.25)
    assert uv[1, 1] < 200.25 and uv[1, 0] == pytest.approx(300.5)


def test_points_behind_camera_are_nan():
    c2w = orbit_c2w(0, 0, distance=1.0)
    uv, depth = project_points(np.array([[0, 0, 0.0], [0, 0, 2.0], [0, 0, 1.0]]), c2w, intrinsics(10, 10, 5, 5))
    assert np.isfinite(uv[0]).all() and depth[0] == pytest.approx(1.0)
    assert np.isnan(uv[1]).all() and depth[1] == pytest.approx(-1.0)
    assert np.isnan(uv[2]).all() and depth[2] == pytest.approx(0.0)


def test_orbit_c2w():
    c2w = orbit_c2w(0, 0, distance=1.1)
    np.testing.assert_allclose(c2w[:3, 3], [0, 0, 1.1], atol=1e-12)  # on +z
    np.testing.assert_allclose(-c2w[:3, 2], [0, 0, -1], atol=1e-12)  # looking along -z
    np.testing.assert_allclose(c2w[:3, 1], [0, 1, 0], atol=1e-12)  # y up
    np.testing.assert_allclose(c2w[:3, 0], [1, 0, 0], atol=1e-12)
    c2w = orbit_c2w(90, 0, distance=2.0, target=(0.1, 0.2, 0.3))
    np.testing.assert_allclose(c2w[:3, 3], [2.1, 0.2, 0.3], atol=1e-12)  # positive yaw -> +x
    np.testing.assert_allclose(-c2w[:3, 2], [-1, 0, 0], atol=1e-12)
    c2w = orbit_c2w(0, 30)
    assert c2w[1, 3] == pytest.approx(1.1 * math.sin(math.radians(30)))  # positive pitch -> up
    for yaw, pitch in [(17, -20), (-130, 45), (200, 10)]:
        c2w = orbit_c2w(yaw, pitch, distance=1.3)
        R = c2w[:3, :3]
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        assert np.linalg.norm(c2w[:3, 3]) == pytest.approx(1.3)
        uv, _ = project_points(np.zeros((1, 3)), c2w, intrinsics(500, 500, 320, 240))
        np.testing.assert_allclose(uv, [[320, 240]], atol=1e-9)  # the target is centred


# --------------------------------------------------------------------------- Blender axes
def test_yup_to_blender():
    R = YUP_TO_BLENDER[:3, :3]
    np.testing.assert_array_equal(R @ [0, 1, 0], [0, 0, 1])  # engine up -> Blender up
    np.testing.assert_array_equal(R @ [0, 0, 1], [0, -1, 0])  # engine front (+z) -> Blender -y
    np.testing.assert_array_equal(R @ [1, 0, 0], [1, 0, 0])
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=0)
    assert np.linalg.det(R) == pytest.approx(1.0)  # a proper rotation, not a reflection
    np.testing.assert_allclose(R, rodrigues([1, 0, 0], math.pi / 2), atol=1e-12)  # +90 deg about x
    np.testing.assert_array_equal(YUP_TO_BLENDER[3], [0, 0, 0, 1])
    np.testing.assert_array_equal(YUP_TO_BLENDER[:3, 3], 0)
    np.testing.assert_array_equal(BLENDER_TO_YUP @ YUP_TO_BLENDER, np.eye(4))


def test_points_blender_round_trip():
    pts = np.random.default_rng(3).normal(size=(50, 3))
    b = points_to_blender(pts)
    np.testing.assert_array_equal(b, np.stack([pts[:, 0], -pts[:, 2], pts[:, 1]], axis=1))
    np.testing.assert_allclose(points_from_blender(b), pts, atol=0)
    np.testing.assert_array_equal(points_from_blender([[0, 0, 1.0]]), [[0, 1, 0]])


def test_c2w_blender_conversion():
    rng = np.random.default_rng(4)
    K = intrinsics(800, 800, 256, 256)
    pts = rng.normal(0, 0.1, (30, 3))
    for _ in range(5):
        c2w = look_at(rng.normal(size=3) + [0, 0, 2], rng.normal(size=3) * 0.1)
        mb = c2w_to_blender(c2w)
        R = mb[:3, :3]
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)  # camera axes orthonormal
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_allclose(mb[:3, 3], points_to_blender(c2w[:3, 3][None])[0], atol=1e-12)
        np.testing.assert_allclose(mb[:3, 2], points_to_blender(c2w[:3, 2][None])[0], atol=1e-12)
        np.testing.assert_allclose(c2w_from_blender(mb), c2w, atol=1e-12)
        # the picture does not change: Blender camera + Blender points == engine camera + points
        uv_engine, d_engine = project_points(pts, c2w, K)
        uv_blender, d_blender = project_points(points_to_blender(pts), mb, K)
        np.testing.assert_allclose(uv_blender, uv_engine, atol=1e-9)
        np.testing.assert_allclose(d_blender, d_engine, atol=1e-12)


def test_rotation_angle_deg():
    rng = np.random.default_rng(5)
    for angle in (0.0, 1.0, 37.0, 90.0, 179.0, 180.0):
        Ra = random_rotation(rng)
        Rb = Ra @ rodrigues(rng.normal(size=3), math.radians(angle))
        assert rotation_angle_deg(Ra, Rb) == pytest.approx(angle, abs=1e-5)
        assert rotation_angle_deg(Rb, Ra) == pytest.approx(angle, abs=1e-5)
    A, B = np.eye(4), np.eye(4)
    B[:3, :3] = rodrigues([0, 1, 0], math.radians(25))
    B[:3, 3] = [5, 6, 7]  # translation is ignored
    assert rotation_angle_deg(A, B) == pytest.approx(25.0)


# --------------------------------------------------------------------------- loader on synthetic folders
def _frame(i, **over):
    c2w = orbit_c2w(20 * i - 20, 0)
    f = {"camera_index": i, "file_path": f"images/{i:02d}.png", "fg_mask_path": f"masks/{i:02d}.png",
         "transform_matrix": c2w.tolist(), "fl_x": 100.0, "fl_y": 101.0, "cx": 16.0, "cy": 12.0, "w": 32, "h": 24}
    f.update(over)
    return f


def _subject(tmp_path, frames, top=None, splits=None):
    root = tmp_path / "subj"
    root.mkdir(exist_ok=True)
    data = dict(top or {})
    data["frames"] = frames
    (root / "transforms.json").write_text(json.dumps(data))
    for name, content in (splits or {}).items():
        (root / f"transforms_{name}.json").write_text(content if isinstance(content, str) else json.dumps(content))
    return root


def test_load_synthetic_subject(tmp_path):
    frames = [_frame(0), _frame(1, file_path="images/01"), _frame(2, fg_mask_path=None)]
    for k in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
        del frames[2][k]  # frame 2 takes its intrinsics from the top level
    top = {"fl_x": 50.0, "fl_y": 51.0, "cx": 8.0, "cy": 6.0, "w": 16, "h": 12}
    root = _subject(tmp_path, frames, top, splits={"train": {"frames": [{"camera_index": 0}, {"camera_index": 2}]},
                                                   "val": {"frames": [{"camera_index": 1}]}})
    s = load_subject(root)
    assert [v.camera_index for v in s.views] == [0, 1, 2] and s.name == "subj"
    np.testing.assert_array_equal(s.view(0).K, intrinsics(100, 101, 16, 12))
    np.testing.assert_array_equal(s.view(2).K, intrinsics(50, 51, 8, 6))
    assert (s.view(2).width, s.view(2).height) == (16, 12)
    assert s.view(1).image_path == root / "images/01.png"  # suffix added
    assert s.view(0).mask_path == root / "masks/00.png" and s.view(2).mask_path is None
    np.testing.assert_array_equal(s.view(1).c2w, np.array(frames[1]["transform_matrix"]))
    np.testing.assert_allclose(s.view(1).viewmat, viewmat_from_c2w(frames[1]["transform_matrix"]))
    assert [v.camera_index for v in s.split("train")] == [0, 2]
    assert [v.camera_index for v in s.split("val")] == [1]
    assert len(s.split("test")) == 3  # no file: all views
    with pytest.raises(KeyError):
        s.view(7)
    # images and masks go through the project's loader, with a size check
    (root / "images").mkdir()
    (root / "masks").mkdir()
    Image.fromarray(np.full((24, 32, 3), 77, np.uint8)).save(root / "images/00.png")
    Image.fromarray(np.full((24, 32), 128, np.uint8)).save(root / "masks/00.png")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(root / "images/01.png")
    assert s.view(0).load_image().shape == (24, 32, 3)
    np.testing.assert_allclose(s.view(0).load_mask(), 128 / 255)
    with pytest.raises(CameraError, match="10x10"):
        s.view(1).load_image()
    with pytest.raises(CameraError, match="no foreground mask"):
        s.view(2).load_mask()


NOT_RIGID = (np.diag([2.0, 2.0, 2.0, 1.0])).tolist()
MIRRORED = np.diag([1.0, 1.0, -1.0, 1.0]).tolist()


@pytest.mark.parametrize(
    "frames, top, reason",
    [
        ("{not json", None, "cannot read"),
        ([1, 2], "RAW", "expected a JSON object"),
        ([], None, "no frames"),
        ({"a": 1}, None, "no frames"),
        ([17], None, "malformed frame"),
        ([_frame(0, transform_matrix=None)], None, "malformed frame"),
        ([{k: v for k, v in _frame(0).items() if k != "transform_matrix"}], None, "malformed frame"),
        ([_frame(0, transform_matrix=np.eye(4)[:3].tolist())], None, "4x4"),
        ([_frame(0, transform_matrix=[[1, 0, 0, 0], [0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]])], None, "malformed frame"),
        ([_frame(0, transform_matrix=[[float("nan")] * 4] * 4)], None, "non-finite"),
        ([_frame(0, transform_matrix=NOT_RIGID)], None, "not a rigid"),
        ([_frame(0, transform_matrix=MIRRORED)], None, "not a rigid"),
        ([{k: v for k, v in _frame(0).items() if k != "fl_x"}], None, "malformed frame"),
        ([_frame(0, fl_x="abc")], None, "malformed frame"),
        ([_frame(0, w=0)], None, "implausible"),
        ([_frame(0, fl_y=-5)], None, "implausible"),
        ([_frame(0, cx=float("nan"))], None, "implausible"),
        ([_frame(0, camera_index="front")], None, "malformed frame"),
        ([_frame(0, file_path=None)], None, "malformed frame"),
        ([_frame(0, file_path=3)], None, "malformed frame"),
        ([_frame(0, fg_mask_path=["a"])], None, "malformed frame"),
    ],
)
def test_malformed_transforms(tmp_path, frames, top, reason):
    root = tmp_path / "subj"
    root.mkdir()
    if isinstance(frames, str):
        text = frames
    elif top == "RAW":
        text = json.dumps(frames)
    else:
        text = json.dumps({"frames": frames})
    (root / "transforms.json").write_text(text)
    with pytest.raises(CameraError, match=reason):
        load_subject(root)


def test_missing_transforms(tmp_path):
    with pytest.raises(CameraError, match="no transforms.json"):
        load_subject(tmp_path)
    (tmp_path / "transforms.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CameraError, match="cannot read"):
        load_subject(tmp_path)


@pytest.mark.parametrize(
    "content, reason",
    [
        ("{oops", "cannot read"),
        ({"frames": [{"no_index": 1}]}, "malformed split"),
        ({"frames": {"camera_index": 0}}, "malformed split"),
        ([0, 1], "malformed split"),
        ({"frames": [{"camera_index": 9}]}, r"camera_index \[9\] not among"),
    ],
)
def test_malformed_split_file(tmp_path, content, reason):
    root = _subject(tmp_path, [_frame(0), _frame(1)], splits={"val": content})
    with pytest.raises(CameraError, match=reason):
        load_subject(root)


# --------------------------------------------------------------------------- the sample data
@pytest.mark.sample_data
def test_load_sample_subject(samples):
    root = samples / "128"
    s = load_subject(root)
    data = json.loads((root / "transforms.json").read_text())
    assert len(s.views) == 16
    assert sorted(v.camera_index for v in s.views) == list(range(16))
    assert s.splits["val"] == [8]
    assert [v.camera_index for v in s.split("val")] == [8]
    train = s.split("train")
    assert len(train) == 15 and 8 not in [v.camera_index for v in train]
    for v, f in zip(s.views, data["frames"]):
        assert v.camera_index == f["camera_index"]
        np.testing.assert_array_equal(v.K, [[f["fl_x"], 0, f["cx"]], [0, f["fl_y"], f["cy"]], [0, 0, 1]])
        assert (v.width, v.height) == (f["w"], f["h"]) == (550, 802)
        np.testing.assert_array_equal(v.c2w, np.array(f["transform_matrix"]))
        assert v.image_path == root / f["file_path"] and v.image_path.is_file()
        assert v.mask_path == root / f["fg_mask_path"] and v.mask_path.is_file()
        assert 2000 < v.K[0, 0] < 2100
        assert 0.9 < np.linalg.norm(v.c2w[:3, 3]) < 1.3  # cameras about a metre from the head
    front = s.view(8)
    # the frontal camera sits in front of the face (+z) and looks back towards the origin (-z)
    assert front.c2w[2, 3] > 0.9 and front.c2w[2, 2] > 0.9
    img = front.load_image()
    assert img.shape == (802, 550, 3) and img.dtype == np.uint8
    mask = front.load_mask()
    assert mask.shape == (802, 550) and 0.05 < (mask > 0.5).mean() < 0.9


@pytest.mark.sample_data
@pytest.mark.parametrize("subject", ["128", "306", "369"])
def test_acceptance_points_project_inside_masks(samples, subject):
    """ACCEPTANCE: every sample subject's points3d.ply projects >= 95% inside the foreground
    mask (mask > 0.5 at pixel floor(uv)) in each of the 16 views."""
    s = load_subject(samples / subject)
    pts = s.points()
    assert pts.shape == (10144, 3)
    fractions = []
    for v in s.views:
        mask = v.load_mask() > 0.5
        uv, depth = project_points(pts, v.c2w, v.K)
        assert (depth > 0).all()
        ij = np.floor(uv).astype(np.int64)
        inside_image = (ij[:, 0] >= 0) & (ij[:, 0] < v.width) & (ij[:, 1] >= 0) & (ij[:, 1] < v.height)
        hit = np.zeros(len(pts), bool)
        hit[inside_image] = mask[ij[inside_image, 1], ij[inside_image, 0]]
        fractions.append(hit.mean())
        # the test can fail: the same matrix read in the OpenCV convention (camera looking down
        # +z) puts the head behind the camera, so almost nothing lands in the mask
        if v.camera_index == 8:
            bad_uv, bad_depth = project_points(pts, v.c2w @ GL_TO_CV, v.K)  # project_points sees c2w as CV
            assert (bad_depth < 0).mean() > 0.99 and np.isnan(bad_uv).all(axis=1).mean() > 0.99
    print(f"subject {subject}: min fraction inside mask {min(fractions):.4f} "
          f"(view {s.views[int(np.argmin(fractions))].camera_index}), mean {np.mean(fractions):.4f}")
    assert min(fractions) >= 0.95, dict(zip([v.camera_index for v in s.views], np.round(fractions, 4)))
