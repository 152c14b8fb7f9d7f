"""``fastavatar detect`` end to end on a real public-domain photo (skimage's astronaut)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("mediapipe")
skimage_data = pytest.importorskip("skimage.data")

from fastavatar_engine.cameras import rotation_angle_deg  # noqa: E402
from fastavatar_engine.cli import main  # noqa: E402


def _fastavatar(*args):
    exe = shutil.which("fastavatar")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "fastavatar_engine.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def astronaut(astronaut_png):
    return astronaut_png


def test_detect_prints_face_landmarks_and_camera(astronaut):
    proc = _fastavatar("detect", str(astronaut))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # stdout is exactly one JSON document
    assert report["num_faces"] == 1 and report["selected_face"] == 0
    face = report["faces"][0]
    x0, y0, x1, y1 = face["box_xyxy"]
    assert 150 < x0 < x1 < 300 and 60 < y0 < y1 < 220  # the astronaut's face, upper middle
    lm = np.array(face["landmarks"])
    assert lm.shape == (478, 2)
    inside = (lm[:, 0] > x0 - 20) & (lm[:, 0] < x1 + 20) & (lm[:, 1] > y0 - 30) & (lm[:, 1] < y1 + 20)
    assert inside.mean() > 0.95
    l5 = np.array(face["landmarks5"])
    assert l5[0, 0] < l5[1, 0] and l5[3, 0] < l5[4, 0]  # eyes and mouth corners left-to-right in the image
    assert l5[0, 1] < l5[2, 1] < l5[3, 1]  # eyes above nose above mouth
    cam = face["camera"]
    c2w = np.array(cam["c2w_opengl"])
    np.testing.assert_allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-4)
    assert abs(cam["yaw_deg"]) < 15 and cam["reprojection_error_px"] < 3.0
    assert 0.3 < cam["distance_m"] < 5.0
    assert c2w[2, 3] > 0  # the camera is in front of the face (+z)
    # the camera looks roughly at the head: its -z axis points towards the origin
    to_head = -c2w[:3, 3] / np.linalg.norm(c2w[:3, 3])
    assert np.dot(-c2w[:3, 2], to_head) > np.cos(np.radians(15))
    assert rotation_angle_deg(c2w, np.eye(4)) < 30
    # the camera comes from the head fit, which also reports the photo's head shape and expression
    assert face["camera_source"] == "head_fit"
    assert len(face["head"]["identity"]) == 100 and face["head"]["landmark_rms_px"] < 5.0


def test_detect_embedding_and_json_file(astronaut, tmp_path, capsys):
    out = tmp_path / "face.json"
    assert main(["detect", str(astronaut), "--embed", "--no-dense", "--json", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads(out.read_text())
    assert printed == saved
    emb = np.array(saved["faces"][0]["embedding"]["values"])
    assert saved["faces"][0]["embedding"]["dim"] == emb.size == 128
    assert abs(np.linalg.norm(emb) - 1) < 1e-3
    assert "landmarks" not in saved["faces"][0]


def test_detect_errors(astronaut, tmp_path, capsys):
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((240, 320, 3), 128, np.uint8)).save(grey)
    assert main(["detect", str(grey)]) == 2
    assert "no face found" in capsys.readouterr().err
    assert main(["detect", str(astronaut), "--face-index", "2"]) == 2
    assert "out of range: 1 face" in capsys.readouterr().err
    text = tmp_path / "notes.png"
    text.write_text("hello")
    assert main(["detect", str(text)]) == 2
    assert "notes.png" in capsys.readouterr().err


def test_detect_two_faces_index(tmp_path, capsys):
    img = skimage_data.astronaut()
    small = np.asarray(Image.fromarray(img).resize((256, 256)))
    canvas = np.full((512, 800, 3), 255, np.uint8)
    canvas[:, :512] = img
    canvas[128:384, 530:786] = small
    path = tmp_path / "two.png"
    Image.fromarray(canvas).save(path)
    assert main(["detect", str(path), "--no-dense", "--face-index", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_faces"] == 2 and report["selected_face"] == 1
    big, little = report["faces"]
    assert big["box_xyxy"][0] < 512 <= little["box_xyxy"][0]  # largest first, the small copy second
