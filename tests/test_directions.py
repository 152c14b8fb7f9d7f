"""Attribute directions: SVM training (scikit-learn) on planted data, the library file format
and its validation, expression measures from landmarks."""

import json

import numpy as np
import pytest

from fastavatar_engine.directions import (
    Direction, DirectionError, cosine, direction_from_json, expression_measures, load_direction, load_library,
    median_split_labels, save_direction, train_direction,
)

pytest.importorskip("sklearn")


def planted(n=1000, d=512, seed=0):
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    codes = rng.standard_normal((n, d)) * 0.3
    codes += np.outer(rng.choice([-1.0, 1.0], n) * rng.uniform(0.3, 1.5, n), direction)  # a margin along it
    labels = (codes @ direction > 0).astype(np.uint8)
    return codes.astype(np.float32), labels, direction


def test_svm_recovers_a_planted_direction():
    codes, labels, direction = planted()
    d = train_direction(codes, labels, "planted", "model-x")
    assert cosine(d.vector, direction) >= 0.95
    assert abs(np.linalg.norm(d.vector) - 1) < 1e-6
    assert d.accuracy["train"] >= 0.99 and d.accuracy["cross_validated"] >= 0.95 and d.accuracy["folds"] == 5
    assert d.provenance["C_selection"] == "cross-validation" and d.provenance["C"] < 1
    assert d.provenance["samples"] == {"positive": int(labels.sum()), "negative": int((1 - labels).sum())}
    # flipping the labels flips the direction: it points towards "has"
    assert cosine(train_direction(codes, 1 - labels, "x", "model-x").vector, direction) <= -0.95


def test_svm_on_random_labels_reports_chance_cross_validation():
    codes, _, _ = planted(n=120)
    labels = np.random.default_rng(3).integers(0, 2, 120).astype(np.uint8)
    d = train_direction(codes, labels, "noise", "m")
    assert d.accuracy["cross_validated"] < 0.7  # honest: the training accuracy alone would say 1.0


@pytest.mark.parametrize("codes,labels,match", [
    (np.zeros((4, 8)), np.array([1, 0, 0, 0]), "at least 2"),
    (np.zeros((4, 8)), np.array([1, 0, 2, 0]), "0 .* or 1"),
    (np.zeros((4, 8)), np.array([1, 0, 1]), "codes \\[N,D\\]"),
    (np.full((4, 8), np.nan), np.array([1, 0, 1, 0]), "non-finite"),
])
def test_training_rejects_bad_sets(codes, labels, match):
    with pytest.raises(DirectionError, match=match):
        train_direction(codes, labels, "x", "m")


def test_file_round_trip_and_atomic_write(tmp_path):
    d = Direction("smile", "model-x", np.arange(1, 9, dtype=np.float64), {"source": "test"}, {"train": 1.0})
    path = save_direction(d, tmp_path / "lib" / "smile.json")
    assert [p.name for p in path.parent.iterdir()] == ["smile.json"]  # no temporary left behind
    data = json.loads(path.read_text())  # independent reader: plain JSON
    assert data["format"] == "fastavatar-direction" and data["code_dim"] == 8
    np.testing.assert_allclose(data["vector"], np.arange(1, 9) / np.linalg.norm(np.arange(1, 9)), rtol=1e-6)
    back = load_direction(path)
    assert back.name == "smile" and back.model_id == "model-x" and back.provenance == {"source": "test"}
    np.testing.assert_array_equal(back.vector, d.vector)


def _doc(**over):
    doc = {"format": "fastavatar-direction", "version": 1, "name": "n", "model_id": "m", "code_dim": 3,
           "vector": [1.0, 0.0, 0.0], "provenance": {}, "accuracy": {}}
    doc.update(over)
    return doc


@pytest.mark.parametrize("over,match", [
    ({"format": "something"}, "not a FastAvatar direction"),
    ({"version": 2}, "version"),
    ({"vector": [1.0, "a", 0.0]}, "list of numbers"),
    ({"code_dim": 4}, "code_dim"),
    ({"vector": [0.0, 0.0, 0.0]}, "zero"),
    ({"vector": [1e400, 0.0, 0.0]}, "non-finite"),
    ({"name": "../../etc/passwd"}, "name"),
    ({"model_id": ""}, "model id"),
    ({"provenance": []}, "objects"),
])
def test_invalid_direction_documents_are_refused(over, match):
    with pytest.raises(DirectionError, match=match):
        direction_from_json(_doc(**over))


def test_unreadable_and_oversized_files_are_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe{not json")
    with pytest.raises(DirectionError, match="cannot read"):
        load_direction(bad)
    big = tmp_path / "big.json"
    big.write_text(" " * (5 * 1024 * 1024))
    with pytest.raises(DirectionError, match="too large"):
        load_direction(big)


def test_model_check_and_library_filter(tmp_path):
    save_direction(Direction("a", "m1", np.ones(4)), tmp_path / "a.json")
    save_direction(Direction("b", "m2", np.ones(4)), tmp_path / "b.json")
    (tmp_path / "broken.json").write_text("{}")
    dirs, problems = load_library(tmp_path, "m1")
    assert [d.name for d in dirs] == ["a"] and len(problems) == 1 and "broken.json" in problems[0]
    with pytest.raises(DirectionError, match="belongs to model 'm1'"):
        dirs[0].check_model("m2")
    with pytest.raises(DirectionError, match="4 values"):
        dirs[0].check_model("m1", code_dim=512)
    assert load_library(tmp_path / "missing") == ([], [])


def test_expression_measures_follow_the_landmark_geometry():
    lm = np.zeros((478, 2))
    lm[10], lm[152] = (50, 0), (50, 100)  # face height 100 px
    lm[33], lm[263] = (20, 40), (80, 40)  # eye corners 60 px apart
    lm[61], lm[291] = (35, 80), (65, 80)  # mouth 30 px wide
    lm[13], lm[14] = (50, 78), (50, 82)  # lips 4 px apart
    m = expression_measures(lm)
    assert m == {"mouth_open": 0.04, "smile": 0.5}
    lm2 = lm * 3 + 7  # scale- and translation-free
    assert expression_measures(lm2) == m
    with pytest.raises(ValueError, match="468"):
        expression_measures(lm[:100])
    np.testing.assert_array_equal(median_split_labels([0.1, 0.5, 0.2, 0.9]), [0, 1, 0, 1])
