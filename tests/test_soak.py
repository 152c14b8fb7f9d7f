"""Engine memory under many decode requests (benchmarks/soak_engine.py; 1,000 in the benchmark,
fewer here): no growth per request after warm-up."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc for RSS")
def test_rss_stays_flat_over_decode_requests():
    from soak_engine import soak

    r = soak(requests=240, every=20)
    # one leaked answer per request would add 2.4 MB each (~2,400 MiB per 1,000 requests)
    assert r["rss_trend_mib_per_1000_requests"] < 150, r
    lo, hi = r["rss_range_after_warmup_mib"]
    assert hi - lo < 200, r
