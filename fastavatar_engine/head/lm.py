"""Levenberg–Marquardt rounds of the head fit (:func:`fastavatar_engine.head.fit.fit_head`).

The fit's objective per photo ``p`` (landmark, contour and mask-outline terms, each a Huber
penalty on a normalised image residual, plus an L1 prior on the expression coefficients kept in
[0, 1]) and over the photos (an L2 prior on the shared identity) is minimised here by projected
Levenberg–Marquardt with iteratively reweighted Huber weights and analytic Jacobians: every
model point is linear in the coefficients (``X = X0 + B c``), so its Jacobian is the projection's
2x3 derivative times ``R B``, and a rotation step is a left perturbation ``exp([d]x) R``.

Why our own solver: the first one, torch's L-BFGS over the same objective, spent ~190 evaluations
of ~4.5 ms each (torch's per-op overhead on 159 parameters; ~0.8 s per photo), which is most of
the feed-forward time. ``scipy.optimize.least_squares`` handles bounds and robust losses, but
applies the Huber loss per scalar residual rather than to each landmark's 2D residual norm, and
cannot express the L1 prior (a linear term, not a squared residual); the objective would change.

Conventions: points in the head frame (metres), OpenCV camera (x right, y down, z forward),
pixels with the principal point ``pp``; residuals are divided by ``scale`` (the face size times the
landmark noise, pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..face.triangulate import axis_angle_to_matrix as _rotation  # exp([d]x), Rodrigues


@dataclass
class PhotoTerms:
    """One photo's data terms for a round (assignments fixed within the round).

    ``X0`` [N,3] float64 the points' positions at zero coefficients; ``B`` [N,3,K] their
    derivative in the K coefficients (the first ``nid`` identity, then 53 expression);
    ``target`` [N,2] pixels; ``mask`` [N,2] 1 for a coordinate that counts (an outline point
    counts in x only); ``weight`` [N] each point's weight (visibility, contour or outline weight);
    ``norm`` the sum the photo's data term is divided by; ``scale`` pixels per unit residual;
    ``f`` focal length and ``pp`` [2] principal point (pixels)."""

    X0: np.ndarray
    B: np.ndarray
    target: np.ndarray
    mask: np.ndarray
    weight: np.ndarray
    norm: float
    scale: float
    f: float
    pp: np.ndarray


def _skew(v: np.ndarray) -> np.ndarray:
    """[N,3,3] cross-product matrices of v [N,3]."""
    z = np.zeros(len(v))
    return np.stack([np.stack([z, -v[:, 2], v[:, 1]], -1), np.stack([v[:, 2], z, -v[:, 0]], -1),
                     np.stack([-v[:, 1], v[:, 0], z], -1)], 1)


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    return np.where(r < delta, 0.5 * r * r, delta * (r - 0.5 * delta))


class HeadProblem:
    """The objective of :func:`solve` for P photos sharing ``nid`` identity coefficients.

    ``terms`` [P] :class:`PhotoTerms`; ``data_weight``, ``identity_weight``, ``expression_weight``
    (the L1 weight: one for all coefficients, or [53] per coefficient) and ``delta`` (the Huber
    threshold in residual units) as in :mod:`.fit`."""

    def __init__(self, terms: list[PhotoTerms], nid: int, data_weight: float, identity_weight: float,
                 expression_weight: float, delta: float):
        self.terms, self.nid = terms, nid
        self.dw, self.iw, self.delta = data_weight, identity_weight, delta
        self.ew = expression_weight if np.ndim(expression_weight) == 0 else np.asarray(expression_weight, np.float64)
        self.P = len(terms)

    def _residuals(self, t: PhotoTerms, R, tv, c):
        X = t.X0 + t.B @ c
        Xc = X @ R.T + tv
        z = np.maximum(Xc[:, 2], 1e-3)
        uv = t.f * Xc[:, :2] / z[:, None] + t.pp
        r = (uv - t.target) / t.scale * t.mask
        return r, Xc, z

    def value(self, a, rots, tvecs, exprs) -> float:
        """The objective at identity ``a`` [nid], rotations [P] 3x3, translations [P,3], expressions [P,53]."""
        total = 0.0
        for t, R, tv, e in zip(self.terms, rots, tvecs, exprs):
            r, _, _ = self._residuals(t, R, tv, np.r_[a, e])
            rho = np.linalg.norm(r, axis=1)
            total += self.dw * float((t.weight * _huber(rho, self.delta)).sum()) / t.norm + float(np.sum(self.ew * e))
        return total / self.P + self.iw * float(a @ a)

    def normal_equations(self, a, rots, tvecs, exprs):
        """Gauss–Newton (IRLS) matrix H and gradient g over x = [a, per photo (d 3, t 3, e 53)]."""
        nid, P = self.nid, self.P
        n_loc = 6 + exprs.shape[1]
        n = nid + P * n_loc
        H = np.zeros((n, n))
        g = np.zeros(n)
        for p, (t, R, tv, e) in enumerate(zip(self.terms, rots, tvecs, exprs)):
            r, Xc, z = self._residuals(t, R, tv, np.r_[a, e])
            rho = np.linalg.norm(r, axis=1)
            w = t.weight * np.where(rho < self.delta, 1.0, self.delta / np.maximum(rho, 1e-12))
            w = w * self.dw / t.norm / P
            # d uv / d Xc, divided by the residual scale and masked: [N,2,3]
            D = np.zeros((len(z), 2, 3))
            D[:, 0, 0] = D[:, 1, 1] = t.f / z
            D[:, 0, 2] = -t.f * Xc[:, 0] / z ** 2
            D[:, 1, 2] = -t.f * Xc[:, 1] / z ** 2
            D *= (t.mask / t.scale)[:, :, None]
            J = np.concatenate([np.matmul(D @ R, t.B),                   # coefficients [N,2,K]
                                D @ -_skew(Xc),                           # rotation step d
                                D], 2)                                    # translation
            # reorder the local columns to [identity | d, t, e]
            J = np.concatenate([J[:, :, :nid], J[:, :, -6:], J[:, :, nid:-6]], 2).reshape(-1, nid + n_loc)
            wr = np.repeat(w, 2)
            Hp, gp = J.T @ (J * wr[:, None]), J.T @ (wr * r.reshape(-1))
            lo = nid + p * n_loc
            H[:nid, :nid] += Hp[:nid, :nid]
            H[:nid, lo:lo + n_loc] += Hp[:nid, nid:]
            H[lo:lo + n_loc, :nid] += Hp[nid:, :nid]
            H[lo:lo + n_loc, lo:lo + n_loc] += Hp[nid:, nid:]
            g[:nid] += gp[:nid]
            g[lo:lo + n_loc] += gp[nid:]
            g[nid + p * n_loc + 6:nid + (p + 1) * n_loc] += self.ew / P
        H[np.arange(nid), np.arange(nid)] += 2 * self.iw
        g[:nid] += 2 * self.iw * a
        return H, g


def solve(problem: HeadProblem, a, rots, tvecs, exprs, iterations: int = 10, fit_expressions: bool = True,
          fit_shape: bool = True, tol: float = 1e-7):
    """Projected Levenberg–Marquardt from the given parameters; returns the improved
    ``(a [nid], rots [P,3,3], tvecs [P,3], exprs [P,53], value)``. Expressions stay in [0, 1]: a
    coefficient at a bound whose gradient points outwards is held there for the step, the others
    are clipped. ``fit_shape`` False holds identity and expressions (a rigid camera fit); a known
    head is tracked with ``nid`` 0 and the identity baked into the terms (:mod:`.track`)."""
    a, rots, tvecs, exprs = (np.array(x, np.float64) for x in (a, rots, tvecs, exprs))
    nid, P = problem.nid, problem.P
    n_loc = 6 + exprs.shape[1]
    f = problem.value(a, rots, tvecs, exprs)
    lam = 1e-3
    for _ in range(iterations):
        H, g = problem.normal_equations(a, rots, tvecs, exprs)
        free = np.ones(len(g), bool)
        if not fit_shape:
            free[:nid] = False
        for p in range(P):
            sl = slice(nid + p * n_loc + 6, nid + (p + 1) * n_loc)
            e = exprs[p]
            at_bound = ((e <= 0) & (g[sl] > 0)) | ((e >= 1) & (g[sl] < 0))
            free[sl] = fit_shape and fit_expressions and ~at_bound
        idx = np.nonzero(free)[0]
        Hf, gf = H[np.ix_(idx, idx)], g[idx]
        improved = False
        for _ in range(8):
            A = Hf + lam * np.diag(np.diag(Hf)) + 1e-9 * np.eye(len(idx))
            try:
                step = np.zeros(len(g))
                step[idx] = -np.linalg.solve(A, gf)
            except np.linalg.LinAlgError:
                lam *= 10
                continue
            a1 = a + step[:nid]
            r1, t1, e1 = rots.copy(), tvecs.copy(), exprs.copy()
            for p in range(P):
                s = step[nid + p * n_loc:nid + (p + 1) * n_loc]
                r1[p] = _rotation(s[:3]) @ rots[p]
                t1[p] = _rotation(s[:3]) @ tvecs[p] + s[3:6]  # the perturbation rotates the camera-frame point
                e1[p] = np.clip(exprs[p] + s[6:], 0.0, 1.0)
            f1 = problem.value(a1, r1, t1, e1)
            if f1 < f:
                improved = True
                rel = (f - f1) / max(abs(f), 1e-12)
                a, rots, tvecs, exprs, f = a1, r1, t1, e1, f1
                lam = max(lam / 3, 1e-9)
                break
            lam *= 4
        if not improved or rel < tol:
            break
    return a, rots, tvecs, exprs, f
