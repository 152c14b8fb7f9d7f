"""Shared test helpers: where the NeRSemble sample data lives, a skip when it is absent, and the
public-domain astronaut photo (scikit-image) as a PNG file."""

from pathlib import Path

import pytest

#: ../shared/data/nersemble_samples next to the repository (never copied into it).
SAMPLES = Path(__file__).resolve().parents[1].parent / "shared/data/nersemble_samples"
SUBJECTS = ("128", "306", "369")


#: Marker for tests that need the sample data (skipped when it is absent).
needs_samples = pytest.mark.skipif(
    not all((SAMPLES / s / "transforms.json").is_file() for s in SUBJECTS),
    reason=f"sample data not found at {SAMPLES}",
)


def require_samples() -> Path:
    """Return :data:`SAMPLES`, or skip the calling test when the sample data is not present."""
    if not (SAMPLES / SUBJECTS[0] / "transforms.json").is_file():
        pytest.skip(f"sample data not found at {SAMPLES}")
    return SAMPLES


@pytest.fixture
def samples() -> Path:
    """The sample-data folder (skips the test when it is absent)."""
    return require_samples()


@pytest.fixture(scope="session")
def astronaut_png(tmp_path_factory) -> Path:
    """``skimage.data.astronaut()`` (512x512 RGB, public domain) saved as a PNG; skips without scikit-image."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(path)
    return path
