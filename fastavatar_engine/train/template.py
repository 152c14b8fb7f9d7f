"""Stage b: the template T = per-parameter mean of the subjects' fits (FastAvatar Sec. 3.1).

Means, log-scales, opacity logits and SH coefficients are averaged directly. Rotations are
normalised and sign-aligned to the first subject's (q and -q are the same rotation) before
averaging, then renormalised.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..gaussians import GaussianSet
from ..ply import read_ply, write_ply


def mean_gaussians(sets: list[GaussianSet]) -> GaussianSet:
    """Per-parameter mean of Gaussian sets in correspondence (same N, same order)."""
    if not sets:
        raise ValueError("mean_gaussians: no Gaussian sets")
    n = sets[0].count
    if any(s.count != n for s in sets):
        raise ValueError(f"mean_gaussians: sets differ in size {[s.count for s in sets]}")
    q = np.stack([s.unit_rotations for s in sets]).astype(np.float64)  # [S,N,4]
    sign = np.sign((q * q[:1]).sum(-1, keepdims=True))
    sign[sign == 0] = 1
    qm = (q * sign).mean(0)
    qm /= np.linalg.norm(qm, axis=1, keepdims=True).clip(1e-12)
    avg = lambda f: np.mean([getattr(s, f) for s in sets], axis=0)  # noqa: E731
    return GaussianSet(avg("means"), avg("log_scales"), qm, avg("opacity_logits"), avg("sh")).validate()


def build_template_from_fits(run_dir, subjects) -> Path:
    """Average ``RUN/fits/{subject}.ply`` into ``RUN/template.ply``; returns its path."""
    run_dir = Path(run_dir)
    sets = [read_ply(run_dir / "fits" / f"{s}.ply") for s in subjects]
    template = mean_gaussians(sets)
    out = write_ply(run_dir / "template.ply", template)
    spread = float(np.mean([np.linalg.norm(s.means - template.means, axis=1).mean() for s in sets]))
    (run_dir / "template.json").write_text(json.dumps(
        {"subjects": list(subjects), "gaussians": template.count, "mean_position_spread_m": round(spread, 5)}, indent=2))
    print(f"[template] {template.count} Gaussians from {list(subjects)}; mean distance of a subject's "
          f"Gaussian to the template {1000 * spread:.1f} mm -> {out}", file=sys.stderr)
    return out
