"""Likeness helpers (fastavatar_engine.likeness) and the EXIF focal length, checked independently."""

import io

import numpy as np
import pytest
from PIL import Image

from fastavatar_engine.cameras import look_at, rotation_angle_deg
from fastavatar_engine.images import FILM_DIAGONAL_MM, exif_focal_px
from fastavatar_engine.likeness import orbit_camera, rank1


def test_rank1_matches_a_brute_force_count():
    rng = np.random.default_rng(0)
    persons = ["a", "a", "b", "c", "c", "d"]
    photos = [v / np.linalg.norm(v) for v in rng.normal(size=(6, 8))]
    renders = [p + 0.3 * rng.normal(size=8) for p in photos]
    renders = [r / np.linalg.norm(r) for r in renders] + [None]
    gallery, people = photos + [photos[0]], persons + ["e"]  # "e" looks exactly like photo 0
    got = rank1(renders, gallery, people)
    for i, r in enumerate(renders[:6]):
        own = float(np.dot(r, gallery[i]))
        best_other = max(float(np.dot(r, gallery[j])) for j in range(7) if people[j] != people[i])
        assert got[i] == (own > best_other)
    assert got[0] is False  # a look-alike of another person ties: not rank-1
    assert got[6] is False  # no face in the render: a miss
    with pytest.raises(ValueError):
        rank1(renders[:2], photos, persons)


def test_orbit_camera_turns_about_the_head_axis_through_the_centre():
    centre = np.array([0.0, 0.02, -0.01])
    c2w = look_at(centre + [0, 0, 1.0], centre)
    turned = orbit_camera(c2w, 30.0, centre)
    assert abs(rotation_angle_deg(turned, c2w) - 30.0) < 1e-6
    assert np.isclose(np.linalg.norm(turned[:3, 3] - centre), 1.0)
    assert turned[0, 3] > 0  # positive yaw: towards +x, the subject's left
    np.testing.assert_allclose(orbit_camera(turned, -30.0, centre), c2w, atol=1e-12)


def test_exif_35mm_focal_length_gives_the_focal_in_pixels(tmp_path):
    img = Image.new("RGB", (600, 400), (128, 128, 128))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 50  # FocalLengthIn35mmFilm
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    f = exif_focal_px(buf.getvalue())
    assert f == pytest.approx(50 * np.hypot(600, 400) / FILM_DIAGONAL_MM)
    path = tmp_path / "a.jpg"
    path.write_bytes(buf.getvalue())
    assert exif_focal_px(str(path)) == pytest.approx(f)
    plain = tmp_path / "b.jpg"
    img.save(plain)
    assert exif_focal_px(str(plain)) is None and exif_focal_px(b"not an image") is None
