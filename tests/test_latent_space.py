"""The default model's latent space on people no training stage saw (``train/split_v2.json``):
interpolation moves identity from one person to the other, the shipped smile direction widens
the mouth, and ``fastavatar edit`` applies both to generated avatars. Needs ``../shared/data/london``."""

import json

import numpy as np
import pytest

pytest.importorskip("mediapipe")

from conftest import SHARED_DATA  # noqa: E402
from fastavatar_engine.cli import main  # noqa: E402
from fastavatar_engine.train.people import held_out_entries  # noqa: E402

LONDON = SHARED_DATA / "london"
needs_london = pytest.mark.skipif(not (LONDON / "london_info.csv").is_file(), reason="London Set not found")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Two held-out London people's feed-forward avatars written by ``fastavatar generate``."""
    from fastavatar_engine.images import load_image

    out = tmp_path_factory.mktemp("latent")
    people = [e for e in held_out_entries(SHARED_DATA) if e.name.endswith("-neutral")][:2]
    paths = []
    for e in people:
        p = out / f"{e.person}.ply"
        assert main(["generate", str(e.photos[0]), "-o", str(p), "--refine", "0"]) == 0
        paths.append((p, load_image(e.photos[0])))
    return out, paths


def _similarity_along(gen, a_path, photos, amounts):
    """dlib similarity of renders of ``fastavatar edit A --mix B --amount t`` (at A's camera) to each photo."""
    from fastavatar_engine.edit import edit_avatar, read_coded_avatar
    from fastavatar_engine.likeness import avatar_renders, render_embedding

    a, b = read_coded_avatar(a_path[0]), read_coded_avatar(a_path[1])
    cam = _camera(a.meta)
    embs = [gen.embedder.embed(p, gen.front_end.detect_one(p)) for p in photos]
    sims = []
    for t in amounts:
        g, _, _, _ = edit_avatar(gen.model, a, (), b, t)
        e = render_embedding(gen.front_end, gen.embedder, avatar_renders(g, cam, (0.0,))[0.0])
        assert e is not None, f"no face in the render at amount {t}"
        sims.append([float(e @ x) for x in embs])
    return np.array(sims)


def _camera(meta):
    from types import SimpleNamespace

    c = meta["camera"]
    return SimpleNamespace(c2w=np.asarray(c["c2w_opengl"]), K=np.asarray(c["K"]), image_size=tuple(c["image_size_wh"]))


@needs_london
def test_interpolating_two_held_out_people_moves_identity_from_one_to_the_other(generated):
    from fastavatar_engine.generate import AvatarGenerator

    _, paths = generated
    with AvatarGenerator() as gen:
        sims = _similarity_along(gen, [p for p, _ in paths], [im for _, im in paths], (0.0, 0.5, 1.0))
    to_a, to_b = sims[:, 0], sims[:, 1]
    # along the path the render leaves A and approaches B, monotonically (dlib similarity)
    assert np.all(np.diff(to_a) < 0) and np.all(np.diff(to_b) > 0), sims
    assert to_a[0] > to_b[0], sims


@needs_london
def test_edit_cli_lists_the_shipped_directions_and_smiles(generated, capsys):
    out, paths = generated
    assert main(["edit", "--list"]) == 0
    names = {d["name"] for d in json.loads(capsys.readouterr().out)["directions"]}
    assert {"smile", "age", "gender"} <= names
    src = paths[0][0]
    dst = out / "smiling.ply"
    assert main(["edit", str(src), "-o", str(dst), "--direction", "smile", "--strength", "1"]) == 0
    from fastavatar_engine.directions import expression_measures
    from fastavatar_engine.edit import read_coded_avatar
    from fastavatar_engine.face import FaceFrontEnd
    from fastavatar_engine.likeness import avatar_renders

    widths = []
    with FaceFrontEnd() as fe:
        for p in (src, dst):
            a = read_coded_avatar(p)
            img = avatar_renders(a.gaussians, _camera(a.meta), (0.0,))[0.0]
            widths.append(expression_measures(fe.detect_one(img).landmarks)["smile"])
    assert widths[1] > 1.05 * widths[0], widths
