"""Expressions (issue 22): the sequence file, ARKit CSV, the tracker, decode with expressions, animate."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from fastavatar_engine.expressions.sequence import ExpressionFileError, ExpressionSequence
from fastavatar_engine.head.basis import load_head_model

NAMES = load_head_model().expression_names


def _seq(F=6, seed=0):
    rng = np.random.default_rng(seed)
    q = Rotation.from_euler("y", np.linspace(0, 20, F)[:, None], degrees=True).as_quat()[:, [3, 0, 1, 2]]
    return ExpressionSequence(25.0, list(NAMES), rng.uniform(0, 1, (F, 53)), q, rng.normal(0, 0.01, (F, 3)),
                              np.zeros(F, bool), "test")


def test_sequence_file_round_trip_and_clear_errors(tmp_path):
    s = _seq()
    p = s.save(tmp_path / "e.json")
    back = ExpressionSequence.load(p)
    assert back.fps == 25.0 and back.names == NAMES and back.num_frames == 6
    np.testing.assert_allclose(back.coefficients, s.coefficients, atol=1e-4)
    np.testing.assert_allclose(back.rotations, s.rotations, atol=1e-4)
    # the head matrix is the quaternion's rotation (independent: scipy from Euler angles)
    np.testing.assert_allclose(back.head_matrix(5)[:3, :3], Rotation.from_euler("y", 20, degrees=True).as_matrix(),
                               atol=1e-4)
    d = json.loads(p.read_text())
    bad = {"format": ("not a fastavatar-expressions", lambda d: d.update(format="x")),
           "range": ("must lie in \\[0, 1\\]", lambda d: d["frames"][2]["coefficients"].__setitem__(0, 1.5)),
           "quat": ("not a unit quaternion", lambda d: d["frames"][1]["head_pose"].update(rotation=[2, 0, 0, 0])),
           "nan": ("non-finite", lambda d: d["frames"][0]["coefficients"].__setitem__(3, float("nan"))),
           "size": ("expected 53 coefficients", lambda d: d["frames"][4].update(coefficients=[0.1] * 3)),
           "fps": ("'fps' must be", lambda d: d.update(fps=0))}
    for name, (msg, mutate) in bad.items():
        dd = json.loads(json.dumps(d))
        mutate(dd)
        (tmp_path / f"{name}.json").write_text(json.dumps(dd))
        with pytest.raises(ExpressionFileError, match=msg):
            ExpressionSequence.load(tmp_path / f"{name}.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ExpressionFileError, match="cannot read"):
        ExpressionSequence.load(tmp_path / "junk.json")


def test_missing_frames_are_interpolated_and_smoothing_is_a_gaussian_average():
    s = _seq(F=9)
    s.missing[[0, 4, 5]] = True
    truth_c = s.coefficients.copy()
    s.fill_missing()
    np.testing.assert_allclose(s.coefficients[0], truth_c[1])  # before the first found frame: the nearest
    np.testing.assert_allclose(s.coefficients[4], truth_c[3] + (truth_c[6] - truth_c[3]) / 3)
    # rotations by slerp: frames 3 and 6 are yaw 7.5 and 15 deg, so frame 4 is yaw 10
    ang = Rotation.from_quat(s.rotations[4][[1, 2, 3, 0]]).as_euler("yxz", degrees=True)
    np.testing.assert_allclose(ang, [10.0, 0, 0], atol=1e-6)
    sm = s.smoothed(1.5)
    k = np.exp(-0.5 * (np.arange(-6, 7) / 1.5) ** 2)
    k /= k.sum()
    np.testing.assert_allclose(sm.coefficients[4], np.clip(k @ s.coefficients[np.clip(np.arange(-2, 11), 0, 8)], 0, 1),
                               atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(sm.rotations, axis=1), 1.0, atol=1e-12)
    none = _seq(F=3)
    none.missing[:] = True
    with pytest.raises(ExpressionFileError, match="no frame has a face"):
        none.fill_missing()


def test_arkit_live_link_face_csv(tmp_path):
    from fastavatar_engine.expressions.arkit import read_arkit_csv

    head = "Timecode,BlendShapeCount,EyeBlinkLeft,BrowInnerUp,JawOpen,CheekPuff,TongueOut,HeadYaw,HeadPitch,HeadRoll\n"
    rows = [f"10:00:00:{f:02d}.000,61,{0.1 * i:.1f},0.5,0.25,0.75,1.0,{math.radians(20 * i):.6f},0,0\n"
            for i, f in enumerate((57, 58, 59))]
    p = tmp_path / "take.csv"
    p.write_text(head + "".join(rows))
    s = read_arkit_csv(p)
    assert s.num_frames == 3 and s.fps == 60.0 and s.names == NAMES
    from fastavatar_engine.expressions import load_expressions

    np.testing.assert_array_equal(load_expressions(p).coefficients, s.coefficients)  # what animate reads
    c = s.coefficients
    assert c[2, NAMES.index("eyeBlink_L")] == pytest.approx(0.2) and c[2, NAMES.index("eyeBlink_R")] == 0
    assert c[0, NAMES.index("browInnerUp_L")] == c[0, NAMES.index("browInnerUp_R")] == 0.5  # ARKit's one shape
    assert c[0, NAMES.index("cheekPuff_L")] == c[0, NAMES.index("cheekPuff_R")] == 0.75
    assert c[0, NAMES.index("jawOpen")] == 0.25 and c.sum(1)[0] == pytest.approx(0.25 + 1.0 + 1.5)  # no TongueOut
    # yaw +20 deg turns the face (+z) towards +x
    fwd = s.head_matrix(1)[:3, :3] @ [0, 0, 1.0]
    assert math.degrees(math.atan2(fwd[0], fwd[2])) == pytest.approx(20.0, abs=1e-4)
    (tmp_path / "bad.csv").write_text(head + rows[0] + rows[1].replace("0.25", "abc"))
    with pytest.raises(ExpressionFileError, match="row 3, column JawOpen: not a number"):
        read_arkit_csv(tmp_path / "bad.csv")
    (tmp_path / "none.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ExpressionFileError, match="no ARKit blendshape columns"):
        read_arkit_csv(tmp_path / "none.csv")


@pytest.fixture(scope="module")
def model():
    from fastavatar_engine.model.io import FastAvatarModel

    return FastAvatarModel.load()


def test_decode_with_an_expression_moves_the_jaw_and_nothing_far_from_it(model):
    rng = np.random.default_rng(1)
    head = rng.normal(0, 0.5, 100).astype(np.float32)
    w = torch.as_tensor(np.r_[rng.normal(0, 1, 128), np.zeros(384)].astype(np.float32))
    rest = model.head_template.rest_expression
    with torch.no_grad():
        base = model.decode(w, head).means.numpy()
        np.testing.assert_array_equal(model.decode(w, head, rest).means.numpy(), base)
        e = rest.copy()
        e[NAMES.index("jawOpen")] = 1.0
        jaw = model.decode(w, head, e).means.numpy()
    # independent: the head model's own chin vertex (ICT's 68-point landmark 8) moves down with jawOpen
    m = model.head_template.model
    chin = m.landmarks68[8]
    dv = m.vertices(head, e)[chin] - m.vertices(head, rest)[chin]
    assert dv[1] < -0.01
    near = np.linalg.norm(base - m.vertices(head, rest)[chin], axis=1) < 0.01
    far = base[:, 1] > m.vertices(head, rest)[m.landmarks68[27]][1] + 0.03  # 3 cm above the nose bridge
    assert np.mean((jaw - base)[near, 1]) < -0.5 * abs(dv[1]) and np.abs(jaw - base)[far].max() < 5e-4
    with pytest.raises(ValueError, match="53"):
        model.decode(w, head, np.zeros(5))


def _synthetic_landmarks(m, identity, expression, M, K, V_cam):
    """[478,2] MediaPipe landmarks projected from the head model itself (iris: the eye corners' mean)."""
    from fastavatar_engine.head.fit import _problem

    b = _problem(m, 100).binding
    P = b.points(m.vertices(identity, expression), m.triangles)
    for iris in (range(468, 473), range(473, 478)):
        P[list(iris)] = np.nanmean(P[[33, 133]] if iris.start == 468 else P[[362, 263]], 0)
    X = P @ M[:3, :3].T + M[:3, 3]
    Xc = X @ V_cam[:3, :3].T + V_cam[:3, 3]
    return (Xc[:, :2] / Xc[:, 2:3]) * K[0, 0] + K[:2, 2]


def test_expression_names_match_the_head_model():
    from fastavatar_engine.expressions.names import EXPRESSION_NAMES, grouped

    assert list(EXPRESSION_NAMES) == list(NAMES)  # the add-on's copy (numpy-free) of the model's list
    groups = [n for _, names in grouped() for n in names]
    assert sorted(groups) == sorted(NAMES) and len(groups) == 53  # every name in exactly one panel group


def test_expressions_are_relative_to_the_avatars_own_and_the_rig_is_linear_per_shape(model):
    """D(e) = decode(w, head, e_rest + e) - decode(w, head, e_rest): zero at e = 0, the template's
    rest expression is not zero (so absolute coefficients would move an undriven face), and the
    rig's basis row k is D(unit_k) on the columns any shape moves."""
    from fastavatar_engine.animate import expression_basis, expression_delta
    from fastavatar_engine.gaussians import pack_gaussians

    rng = np.random.default_rng(2)
    head = rng.normal(0, 0.5, 100).astype(np.float32)
    w = np.r_[rng.normal(0, 1, 128), np.zeros(384)].astype(np.float32)
    rest = model.head_template.rest_expression
    assert np.abs(rest).max() > 0.5  # e.g. eyeWide 1.0: "0" is not the avatar's face
    assert not expression_delta(model, w, head, np.zeros(53)).any()
    e = np.zeros(53)
    e[NAMES.index("jawOpen")], e[NAMES.index("eyeBlink_L")] = 0.7, 1.0
    with torch.no_grad():
        expected = (pack_gaussians(model.decode(w, head, rest + e).to_numpy()).astype(np.float64)
                    - pack_gaussians(model.decode(w, head, rest).to_numpy()))
    np.testing.assert_allclose(expression_delta(model, w, head, e), expected, atol=1e-5)
    parents = np.array([3, 7])
    grown = expression_delta(model, w, head, e, parents)
    np.testing.assert_array_equal(grown[-2:], grown[parents])  # grown Gaussians move with their parent
    basis, cols = expression_basis(model, w, head)
    assert basis.shape == (53, model.decoder.num_gaussians, len(cols)) and set(cols) >= {0, 1, 2}
    assert not set(cols) & set(range(3, 51))  # colours never move
    # opacity: the blinks on the eyes' carriers, the shapes that part the lips on the seam's faders
    bt = model.head_template
    opacity = basis[:, :, list(cols).index(51)]
    moves = np.abs(opacity).max(1) > 0
    parting = [NAMES[k] for k in np.flatnonzero(bt.lips.rates)]
    assert {"jawOpen", "mouthFunnel", "mouthLowerDown_L", "mouthUpperUp_R"} <= set(parting)
    assert not {"mouthSmile_L", "mouthClose", "mouthPucker"} & set(parting)
    assert [NAMES[k] for k in np.flatnonzero(moves)] == sorted(["eyeBlink_L", "eyeBlink_R"] + parting,
                                                               key=NAMES.index)
    for k in np.flatnonzero(moves):
        rows = np.flatnonzero(opacity[k])
        expected = bt.eyes.carriers[bt.eyes.carrier_blink == k] if NAMES[k].startswith("eyeBlink") else bt.lips.rows
        np.testing.assert_array_equal(rows, np.sort(expected))
    unit = np.zeros(53)
    unit[NAMES.index("mouthSmile_R")] = 1.0
    np.testing.assert_allclose(basis[NAMES.index("mouthSmile_R")], expression_delta(model, w, head, unit)[:, cols],
                               atol=1e-6)


def test_tracks_are_calibrated_to_the_performers_neutral():
    C = np.zeros((40, 53))
    C[:, 0] = 0.2  # a coefficient the tracker reports at rest: taken as neutral
    C[10:20, 1] = 0.8  # a real expression on part of the clip
    C[:, 2] = np.linspace(0.1, 0.5, 40)
    seq = ExpressionSequence(25.0, list(NAMES), C, np.tile([1.0, 0, 0, 0], (40, 1)), np.zeros((40, 3)),
                             np.zeros(40, bool))
    rel = seq.relative_to_neutral(5.0)
    assert not rel.coefficients[:, 0].any() and rel.extra["neutral"][0] == 0.2
    np.testing.assert_allclose(rel.coefficients[:, 1], C[:, 1])
    np.testing.assert_allclose(rel.coefficients[:, 2], np.clip(C[:, 2] - np.percentile(C[:, 2], 5), 0, 1))
    with pytest.raises(ValueError, match="percentile"):
        seq.relative_to_neutral(80)


def test_tracker_follows_a_turning_head_from_exact_landmarks():
    """The tracker on landmarks made by the head model itself, frame after frame: every warm frame
    lands where a cold fit (PnP start, the photo fit's schedule) of the same frame lands (within
    0.6 deg, jaw within 0.03), and both within 1.2 deg of the truth, jaw within 0.03. (Not
    closer: the fit matches the cheek and jaw contour landmarks to the mesh's silhouette, and
    these synthetic ones lie on the mesh inside it; at 25 deg of yaw that costs ~1 deg, and the
    warm and cold fits settle up to 0.56 deg apart there, each within 0.91 deg of the truth.)"""
    from fastavatar_engine.face.pose import default_intrinsics
    from fastavatar_engine.head.track import FRONT, HeadTracker

    m = load_head_model()
    a = np.random.default_rng(2).normal(0, 0.7, 100)
    K = default_intrinsics(640, 480)
    V_cam = np.eye(4)
    V_cam[:3, :3], V_cam[:3, 3] = FRONT, [0, 0.02, 0.6]
    warm, cold = HeadTracker(a, K), HeadTracker(a, K)
    jaw = NAMES.index("jawOpen")
    for k, yaw in enumerate(np.linspace(-25, 25, 11)):
        e = np.zeros(53)
        e[jaw] = 0.3 + 0.3 * np.sin(k)
        M = np.eye(4)
        M[:3, :3] = Rotation.from_euler("yx", [yaw, 5 * np.cos(k)], degrees=True).as_matrix()
        uv = _synthetic_landmarks(m, a, e, M, K, V_cam)
        fw = warm.step(uv)
        cold.reset()
        fc = cold.step(uv)
        assert (k == 0) == fw.cold and fc.cold and not fw.lost
        truth = V_cam[:3, :3] @ M[:3, :3]
        angle = lambda R1, R2: np.degrees(Rotation.from_matrix(R1 @ R2.T).magnitude())  # noqa: E731
        assert angle(fw.rotation, fc.rotation) < 0.6 and abs(fw.expression[jaw] - fc.expression[jaw]) < 0.03, k
        assert angle(fw.rotation, truth) < 1.2 and angle(fc.rotation, truth) < 1.2, k
        assert abs(fw.expression[jaw] - e[jaw]) < 0.03, k
    with pytest.raises(ValueError, match="478"):
        warm.step(np.zeros((10, 2)))


def test_track_and_animate_from_the_command_line(astronaut_png, tmp_path, capsys):
    """An avatar made its jaw open and shut over 12 rendered frames (one of them blank) ->
    ``fastavatar track`` (the blank frame missing and interpolated, the jaw followed) ->
    ``fastavatar animate`` (a PNG and a posed PLY per frame, read back with plyfile)."""
    from plyfile import PlyData

    from fastavatar_engine.animate import Animator
    from fastavatar_engine.cameras import intrinsics, orbit_c2w
    from fastavatar_engine.cli import main
    from fastavatar_engine.edit import read_coded_avatar
    from fastavatar_engine.images import save_png
    from fastavatar_engine.model.io import FastAvatarModel
    from fastavatar_engine.render import render_to_uint8

    ply = tmp_path / "a.ply"
    assert main(["generate", str(astronaut_png), "-o", str(ply), "--refine", "0"]) == 0
    model, avatar = FastAvatarModel.load(), read_coded_avatar(ply)
    anim = Animator(model, avatar)
    m = model.head_template.model
    ctr = m.vertices(avatar.head)[m.landmarks68].mean(0)
    c2w, K = orbit_c2w(0, 0, 0.55, ctr), intrinsics(410, 410, 128, 128)
    jaw = np.array([0, 0.6] * 6, float)
    frames = tmp_path / "frames"
    for k, j in enumerate(jaw):
        e = np.zeros(53)
        e[NAMES.index("jawOpen")] = j
        img = np.full((256, 256, 3), 255, np.uint8) if k == 6 else render_to_uint8(anim.gaussians(e), c2w, K, 256, 256)
        save_png(frames / f"{k:03d}.png", img)
    out = tmp_path / "e.json"
    capsys.readouterr()
    assert main(["track", str(frames), "-o", str(out), "--avatar", str(ply), "--fps", "25", "--smooth", "0"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["frames"] == 12 and summary["missing"] == 1
    seq = ExpressionSequence.load(out)
    assert seq.missing.tolist() == [k == 6 for k in range(12)] and seq.fps == 25
    got = seq.coefficients[:, NAMES.index("jawOpen")]
    assert got[6] == pytest.approx(0.5 * (got[5] + got[7]), abs=2e-4)  # the file keeps 4 decimals
    seen = [k for k in range(12) if k != 6]
    assert np.corrcoef(got[seen], jaw[seen])[0, 1] > 0.8 and got[1::2].min() > got[[0, 2, 4, 8, 10]].max()
    # animate: one PNG and one posed PLY per frame; a rigid pose keeps the distances between Gaussians
    anim_dir = tmp_path / "anim"
    assert main(["animate", str(ply), str(out), "-o", str(anim_dir), "--size", "96", "--ply"]) == 0
    assert len(list(anim_dir.glob("frame_*.png"))) == 12
    v = PlyData.read(str(anim_dir / "frame_00003.ply"))["vertex"]
    posed = np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float64)
    e3 = seq.coefficients_for(NAMES)[3]
    plain = np.asarray(anim.gaussians(e3).means, np.float64)
    M = seq.head_matrix(3)
    np.testing.assert_allclose(posed, plain @ M[:3, :3].T + M[:3, 3], atol=2e-6)
    # clear errors
    for args, msg in ((["track", str(tmp_path / "none.mp4"), "-o", str(out)], "no such video file"),
                      (["track", str(ply), "-o", str(out)], "cannot open this video"),
                      (["track", str(tmp_path / "anim" / "sub"), "-o", str(out)], "no such video file"),
                      (["animate", str(ply), str(ply), "-o", str(anim_dir)], "cannot read an expression file")):
        if "sub" in args[1]:
            (tmp_path / "anim" / "sub").mkdir()
            msg = "no images"
        assert main(args) == 2
        assert msg in capsys.readouterr().err
