"""Face front-end: detection, dense landmarks, face selection, alignment, identity embeddings.

Real photos: ``skimage.data.astronaut()`` and matplotlib's ``grace_hopper.jpg`` (public domain);
the NeRSemble sample views where marked ``sample_data``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastavatar_engine.face import (
    ARCFACE_TEMPLATE_112,
    ArcFaceEmbedder,
    DlibEmbedder,
    Face,
    FaceDependencyError,
    FaceError,
    FaceFrontEnd,
    FaceIndexError,
    FaceModelError,
    NoFaceError,
    align_face,
    alignment_matrix,
    estimate_camera,
    select_face,
)
from fastavatar_engine.face.landmarks import ARCFACE5_FROM_MESH, DLIB5_FROM_MESH

from conftest import SAMPLES, SUBJECTS, needs_samples  # noqa: E402


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def fe():
    with FaceFrontEnd() as front_end:
        yield front_end


@pytest.fixture(scope="module")
def astronaut():
    from skimage.data import astronaut as _astronaut

    return np.ascontiguousarray(_astronaut())


@pytest.fixture(scope="module")
def hopper():
    import matplotlib.cbook as cbook

    from fastavatar_engine.images import load_image

    return load_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@pytest.fixture(scope="module")
def astro_faces(fe, astronaut):
    return fe.detect(astronaut)


@pytest.fixture(scope="module")
def dlib_embedder():
    return DlibEmbedder()


@pytest.fixture(scope="module")
def two_faces_image(astronaut):
    import cv2

    canvas = np.full((560, 900, 3), 190, np.uint8)
    canvas[24:536, 0:512] = astronaut
    canvas[140:460, 560:880] = cv2.resize(astronaut, (320, 320), interpolation=cv2.INTER_AREA)
    return canvas


# --------------------------------------------------------------------------- packaging
def test_import_does_not_load_heavy_modules():
    code = ("import sys, fastavatar_engine, fastavatar_engine.face as f; "
            "f.Face; f.FaceFrontEnd; f.estimate_camera; "
            "print(sorted(m for m in ('mediapipe', 'cv2', 'dlib', 'onnxruntime', 'torch', 'insightface') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_missing_extra_gives_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # makes `import mediapipe` fail
    with pytest.raises(FaceDependencyError, match=r"fastavatar\[face\]"):
        FaceFrontEnd()
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(FaceDependencyError, match="dlib"):
        DlibEmbedder()
    assert issubclass(FaceDependencyError, ImportError)


# --------------------------------------------------------------------------- detection
def test_astronaut_one_face_with_plausible_box_and_landmarks(astro_faces, astronaut):
    assert len(astro_faces) == 1
    f = astro_faces[0]
    H, W = astronaut.shape[:2]
    x0, y0, x1, y1 = f.box
    assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
    assert 70 < x1 - x0 < 160 and 70 < y1 - y0 < 160  # her face is ~100 px wide in the 512 px photo
    assert 150 < (x0 + x1) / 2 < 260 and 90 < (y0 + y1) / 2 < 170
    assert 0.5 < f.score <= 1.0
    assert f.image_size == (W, H)
    assert f.landmarks.shape == (478, 2) and f.landmarks.dtype == np.float64 and np.isfinite(f.landmarks).all()
    w, h = x1 - x0, y1 - y0
    inside = ((f.landmarks[:, 0] > x0 - 0.25 * w) & (f.landmarks[:, 0] < x1 + 0.25 * w)
              & (f.landmarks[:, 1] > y0 - 0.25 * h) & (f.landmarks[:, 1] < y1 + 0.25 * h))
    assert inside.all()
    assert f.landmarks_depth.shape == (478,)


def test_five_points_order(astro_faces):
    f = astro_faces[0]
    le, re, nose, lm, rm = f.landmarks5
    np.testing.assert_array_equal(f.landmarks5, f.landmarks[list(ARCFACE5_FROM_MESH)])
    assert le[0] < nose[0] < re[0] and lm[0] < rm[0]  # image left / right
    assert max(le[1], re[1]) < nose[1] < min(lm[1], rm[1])  # eyes above nose above mouth
    # eye points are the iris centres: inside their eye corners
    assert f.landmarks[33, 0] < le[0] < f.landmarks[133, 0]
    assert f.landmarks[362, 0] < re[0] < f.landmarks[263, 0]


def test_crop_mesh_agrees_with_full_image_mesh(astro_faces, astronaut):
    """Independent check: MediaPipe Face Mesh run directly on the whole photo."""
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True) as mesh:
        res = mesh.process(astronaut)
    H, W = astronaut.shape[:2]
    ref = np.array([[p.x * W, p.y * H] for p in res.multi_face_landmarks[0].landmark])
    d = np.linalg.norm(astro_faces[0].landmarks - ref, axis=1)
    iod = np.linalg.norm(ref[33] - ref[263])
    assert np.median(d) < 0.05 * iod and np.percentile(d, 95) < 0.12 * iod


def test_mesh_five_points_agree_with_dlib_predictor(astro_faces, astronaut):
    """Independent check of the dlib 5-point layout read off the mesh: dlib's own 5-point model."""
    import dlib
    import face_recognition_models as frm

    f = astro_faces[0]
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    x0, y0, x1, y1 = (int(round(v)) for v in f.box)
    shape = sp(astronaut, dlib.rectangle(x0, y0, x1, y1))
    ref = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64) + 0.5  # to continuous pixels
    ours = f.landmarks[list(DLIB5_FROM_MESH)]
    iod = np.linalg.norm(f.landmarks[33] - f.landmarks[263])
    assert (np.linalg.norm(ours - ref, axis=1) < 0.08 * iod).all()


def test_face_to_json(astro_faces):
    import json

    d = json.loads(json.dumps(astro_faces[0].to_json()))
    assert len(d["box_xyxy"]) == 4 and len(d["landmarks5"]) == 5 and len(d["landmarks"]) == 478
    assert d["image_size_wh"] == [512, 512]
    assert "landmarks" not in astro_faces[0].to_json(dense=False)


def test_no_face_raises(fe, tmp_path):
    grey = np.full((320, 480, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert fe.detect(grey) == [] and fe.detect(noise) == []
    with pytest.raises(NoFaceError, match="no face found in the image"):
        fe.detect_one(noise)
    from PIL import Image

    path = tmp_path / "flat_grey.png"
    Image.fromarray(grey).save(path)
    with pytest.raises(NoFaceError, match="flat_grey.png") as ei:
        fe.detect_one(path)
    assert isinstance(ei.value, FaceError) and isinstance(ei.value, ValueError)


def test_bad_image_input(fe):
    with pytest.raises(ValueError, match="uint8"):
        fe.detect(np.zeros((10, 10), np.float32))
    from fastavatar_engine.images import ImageLoadError

    with pytest.raises(ImageLoadError):
        fe.detect(b"not an image")


def test_two_faces_largest_first_and_index(fe, two_faces_image):
    faces = fe.detect(two_faces_image)
    assert len(faces) == 2
    big, small = faces
    assert big.area > 1.5 * small.area
    assert (big.box[0] + big.box[2]) / 2 < 512 < (small.box[0] + small.box[2]) / 2
    # the dense landmarks belong to their own detection
    for f in faces:
        c = f.landmarks.mean(0)
        assert f.box[0] < c[0] < f.box[2] and f.box[1] < c[1] < f.box[3]
    assert select_face(faces) is big
    assert select_face(faces, 1) is small
    assert fe.detect_one(two_faces_image, index=1).box == pytest.approx(small.box)
    with pytest.raises(FaceIndexError, match="2 faces found") as ei:
        select_face(faces, 5, image_name="group.jpg")
    assert "group.jpg" in str(ei.value) and isinstance(ei.value, FaceError)
    with pytest.raises(FaceIndexError):
        select_face(faces, -1)
    with pytest.raises(NoFaceError):
        select_face([], None)


# --------------------------------------------------------------------------- alignment
def test_alignment_matrix_matches_skimage_similarity(astro_faces):
    from skimage.transform import SimilarityTransform

    f = astro_faces[0]
    M = alignment_matrix(f.landmarks5, 112)
    src = f.landmarks5 - 0.5
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        ref = SimilarityTransform.from_estimate(src, ARCFACE_TEMPLATE_112)
    else:
        ref = SimilarityTransform()
        assert ref.estimate(src, ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(M, ref.params[:2], atol=1e-9)
    np.testing.assert_allclose(alignment_matrix(f.landmarks5, 224), 2.0 * M, atol=1e-9)


def test_align_crop(fe, astro_faces, astronaut):
    import cv2

    f = astro_faces[0]
    crop = fe.align(astronaut, f, 112)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    _, M = align_face(astronaut, f.landmarks5, 112, return_matrix=True)
    mapped = (f.landmarks5 - 0.5) @ M[:, :2].T + M[:, 2]
    assert np.abs(mapped - ARCFACE_TEMPLATE_112).max() < 8.0  # 5 points land on the template
    big = fe.align(astronaut, f, 224)
    assert big.shape == (224, 224, 3)
    small = cv2.resize(big, (112, 112), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(small - crop.astype(float)).mean() < 6.0  # same content at twice the size
    assert crop.std() > 20  # a face, not an empty border


# --------------------------------------------------------------------------- camera on a real photo
def test_astronaut_camera_estimate(astro_faces):
    cam = estimate_camera(astro_faces[0])
    assert cam.focal_source == "default_fov"
    assert cam.image_size == (512, 512)
    assert cam.reprojection_error_px < 3.0
    assert abs(cam.yaw_deg) < 30 and abs(cam.pitch_deg) < 30 and abs(cam.roll_deg) < 20
    assert 0.2 < cam.distance_m < 3.0
    d = cam.to_json()
    assert d["focal_source"] == "default_fov" and len(d["c2w_opengl"]) == 4


# --------------------------------------------------------------------------- dlib embeddings
def test_dlib_embedding_unit_norm_and_deterministic(dlib_embedder, astro_faces, astronaut):
    f = astro_faces[0]
    e1 = dlib_embedder.embed(astronaut, f)
    e2 = dlib_embedder.embed(astronaut.copy(), f)
    assert dlib_embedder.dim == 128 and "dlib" in dlib_embedder.name
    assert e1.shape == (128,) and e1.dtype == np.float32
    assert np.linalg.norm(e1) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(e1, e2)


def test_dlib_embedding_matches_dlibs_own_pipeline(dlib_embedder, astro_faces, astronaut):
    """Independent reference: dlib's 5-point predictor + compute_face_descriptor(img, shape)."""
    import dlib
    import face_recognition_models as frm

    f = astro_faces[0]
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    net = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    x0, y0, x1, y1 = (int(round(v)) for v in f.box)
    ref = np.asarray(net.compute_face_descriptor(astronaut, sp(astronaut, dlib.rectangle(x0, y0, x1, y1))))
    ref /= np.linalg.norm(ref)
    assert np.linalg.norm(dlib_embedder.embed(astronaut, f) - ref) < 0.12


def test_dlib_identity_distances_on_public_photos(fe, dlib_embedder, astronaut, hopper):
    import cv2

    ea = dlib_embedder.embed(astronaut, fe.detect_one(astronaut))
    # the same photo mirrored and rescaled is the same person
    mirrored = np.ascontiguousarray(cv2.resize(astronaut[:, ::-1], (400, 400), interpolation=cv2.INTER_AREA))
    em = dlib_embedder.embed(mirrored, fe.detect_one(mirrored))
    eh = dlib_embedder.embed(hopper, fe.detect_one(hopper))
    assert np.linalg.norm(ea - em) < 0.25 < 0.4 < np.linalg.norm(ea - eh)


@pytest.mark.sample_data
@needs_samples
def test_dlib_same_subject_closer_than_different_subjects(fe, dlib_embedder):
    from fastavatar_engine.cameras import load_subject

    emb = {}
    for s in SUBJECTS:
        sub = load_subject(SAMPLES / s)
        for cam in (8, 6):  # two near-frontal views
            img = sub.view(cam).load_image()
            emb[s, cam] = dlib_embedder.embed(img, fe.detect_one(img))
    same = [float(np.linalg.norm(emb[s, 8] - emb[s, 6])) for s in SUBJECTS]
    diff = [float(np.linalg.norm(emb[a, ca] - emb[b, cb])) for (a, ca) in emb for (b, cb) in emb if a < b]
    print(f"\ndlib distances: same subject {np.round(same, 3)}, different subjects min {min(diff):.3f} max {max(diff):.3f}")
    assert max(same) < min(diff)
    assert max(same) < 0.25 and min(diff) > 0.35


# --------------------------------------------------------------------------- ArcFace (ONNX)
POOL = 8  # 112 / 8 = 14


def _tiny_arcface(path: Path, dim: int = 512, size: int = 112, batch="N", seed: int = 0) -> np.ndarray:
    """Write an ONNX model with the ArcFace signature: [N,3,S,S] float -> AveragePool 8x8 ->
    Flatten -> MatMul W -> [N,dim]. Returns W."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    feat = 3 * (size // POOL) ** 2
    W = np.random.default_rng(seed).normal(0, 1, (feat, dim)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["683"]),
        ],
        "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, [batch, dim])],
        initializer=[numpy_helper.from_array(W, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return W


def _numpy_reference(crop_rgb: np.ndarray, W: np.ndarray) -> np.ndarray:
    x = (crop_rgb.astype(np.float64) - 127.5) / 127.5  # RGB planes, as insightface feeds ArcFace
    x = x.transpose(2, 0, 1)  # [3,S,S]
    s = x.shape[1] // POOL
    pooled = x.reshape(3, s, POOL, s, POOL).mean(axis=(2, 4))
    e = pooled.reshape(-1) @ W.astype(np.float64)
    return e / np.linalg.norm(e)


def test_arcface_embedding_equals_numpy_computation(tmp_path, fe, astro_faces, astronaut):
    pack = tmp_path / "buffalo_l"
    pack.mkdir()
    W = _tiny_arcface(pack / "w600k_r50.onnx")
    emb = ArcFaceEmbedder(pack)  # the pack folder
    assert emb.dim == 512 and emb.input_size == 112 and "w600k_r50" in emb.name
    f = astro_faces[0]
    e = emb.embed(astronaut, f)
    assert e.shape == (512,) and e.dtype == np.float32
    assert np.linalg.norm(e) == pytest.approx(1.0, abs=1e-5)
    crop = fe.align(astronaut, f, 112)
    np.testing.assert_allclose(e, _numpy_reference(crop, W), atol=2e-5)
    np.testing.assert_array_equal(e, emb.embed(astronaut, f))  # deterministic
    # the .onnx file itself works too, and a static batch of 1
    W1 = _tiny_arcface(tmp_path / "static.onnx", batch=1, seed=3)
    np.testing.assert_allclose(ArcFaceEmbedder(tmp_path / "static.onnx").embed(astronaut, f),
                               _numpy_reference(crop, W1), atol=2e-5)


def test_arcface_matches_insightface_get_feat(tmp_path, fe, astro_faces, astronaut):
    """Independent reference: insightface's own ArcFaceONNX on the same aligned crop (BGR in)."""
    pytest.importorskip("insightface")
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    path = tmp_path / "w600k_r50.onnx"
    _tiny_arcface(path)
    crop = fe.align(astronaut, astro_faces[0], 112)
    ref = ArcFaceONNX(model_file=str(path)).get_feat(np.ascontiguousarray(crop[..., ::-1]))[0]
    ref = ref / np.linalg.norm(ref)
    np.testing.assert_allclose(ArcFaceEmbedder(path).embed_aligned(crop), ref, atol=2e-5)


def test_arcface_missing_or_wrong_model(tmp_path):
    with pytest.raises(FaceModelError, match="not found.*does not exist"):
        ArcFaceEmbedder(tmp_path / "nowhere" / "w600k_r50.onnx")
    empty_pack = tmp_path / "pack"
    empty_pack.mkdir()
    _tiny_arcface(empty_pack / "det_10g.onnx")
    with pytest.raises(FaceModelError, match=r"has no w600k_r50.onnx.*det_10g.onnx"):
        ArcFaceEmbedder(empty_pack)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model" * 10)
    with pytest.raises(FaceModelError, match="not a loadable ONNX model"):
        ArcFaceEmbedder(garbage)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(FaceModelError, match="empty"):
        ArcFaceEmbedder(tmp_path / "empty.onnx")
    # wrong signature: 4-D output (no Flatten/MatMul) -> rejected
    import onnx
    from onnx import TensorProto, helper

    def identity_model(path, channels):
        shape = [1, channels, 112, 112]
        g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        onnx.save(m, str(path))
        return path

    with pytest.raises(FaceModelError, match=r"\[N,D\] embedding output"):
        ArcFaceEmbedder(identity_model(tmp_path / "identity.onnx", 3))
    identity_model(tmp_path / "gray.onnx", 1)
    with pytest.raises(FaceModelError, match="NCHW"):
        ArcFaceEmbedder(tmp_path / "gray.onnx")


def test_face_dataclass_area():
    f = Face(box=np.array([10.0, 20.0, 30.0, 60.0]), score=0.9, landmarks5=np.zeros((5, 2)),
             landmarks=np.zeros((478, 2)), image_size=(100, 100))
    assert f.area == 800.0


def test_describe_report_for_cli(fe, two_faces_image, tmp_path):
    import json

    rep = json.loads(json.dumps(fe.describe(two_faces_image)))
    assert rep["num_faces"] == 2 and rep["image"] is None and rep["image_size_wh"] == [900, 560]
    assert [f["index"] for f in rep["faces"]] == [0, 1]
    for f in rep["faces"]:
        assert len(f["landmarks"]) == 478 and np.array(f["camera"]["c2w_opengl"]).shape == (4, 4)
    assert {"detect", "mesh", "pnp"} <= set(rep["timings_ms"])
    from PIL import Image

    p = tmp_path / "grey.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(p)
    rep = fe.describe(p, dense=False)
    assert rep["num_faces"] == 0 and rep["faces"] == [] and rep["image"].endswith("grey.png")


def test_landmarks_consistent_under_scale_and_at_image_border(fe, astro_faces, astronaut):
    import cv2

    ref = astro_faces[0].landmarks
    iod = np.linalg.norm(ref[33] - ref[263])
    # 3x larger photo: the crop is downscaled for Face Mesh; coordinates must scale back exactly
    big = cv2.resize(astronaut, (1536, 1536), interpolation=cv2.INTER_CUBIC)
    f3 = fe.detect_one(big)
    assert np.median(np.linalg.norm(f3.landmarks / 3.0 - ref, axis=1)) < 0.04 * iod
    # face close to the left edge: the crop is padded outside the image
    cut = np.ascontiguousarray(astronaut[:, 150:])
    fc = fe.detect_one(cut)
    assert fc.box[0] >= 0
    assert np.median(np.linalg.norm(fc.landmarks + [150.0, 0.0] - ref, axis=1)) < 0.04 * iod


def test_tile_pass_finds_small_faces_and_generate_skips_it_when_the_whole_image_has_one(fe, astronaut):
    """A face 10% of a 1400-px photo's width is found only by the tile pass; a large face is found
    without it, with the same landmarks. Generate (no face index) detects without tiles first and
    falls back to them, so it still finds the small face."""
    import cv2

    from fastavatar_engine.generate import AvatarGenerator

    canvas = np.full((1400, 1400, 3), 200, np.uint8)
    canvas[600:820, 700:920] = cv2.resize(astronaut, (220, 220), interpolation=cv2.INTER_AREA)
    assert fe.detect(canvas, tiles=False) == [] and len(fe.detect(canvas)) == 1
    big = np.full((1100, 1100, 3), 200, np.uint8)
    big[300:812, 300:812] = astronaut
    with_tiles, without = fe.detect(big), fe.detect(big, tiles=False)
    assert len(without) == 1 and len(with_tiles) >= 1
    np.testing.assert_array_equal(with_tiles[0].landmarks, without[0].landmarks)
    with AvatarGenerator() as gen:
        _, _, face, _ = gen._detect(canvas, None)
        assert 700 <= face.box[0] and face.box[2] <= 920
