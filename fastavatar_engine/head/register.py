"""Registering the head model to 3D points: similarity (Umeyama) and linear shape fits.

Used by ``tools/build_head_registration.py`` to place ICT-FaceKit's head in the engine's FLAME
head frame and to find MediaPipe's landmarks on its surface, from the sample subjects'
triangulated landmarks. numpy + scipy only.
"""

from __future__ import annotations

import numpy as np

from .binding import closest_points_on_triangles


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ~ s R src + t`` (Umeyama, PAMI 1991).

    ``src``, ``dst`` [N,3] (N >= 3, not collinear). Returns ``(s, R [3,3], t [3])`` with det R = +1.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    U, S, Vt = np.linalg.svd(b.T @ a / len(src))
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1
    R = U @ D @ Vt
    s = float(np.trace(np.diag(S) @ D) / (a ** 2).sum(1).mean()) if with_scale else 1.0
    return s, R, mu_d - s * R @ mu_s


def fit_shape(model, W: np.ndarray, target: np.ndarray, id_sigma: float = 1.0, ex_weight: float = 0.05,
              num_identity: int = 100, iterations: int = 8, fit_expression: bool = True):
    """Fit similarity, identity and expression so that ``W @ vertices`` matches ``target``.

    Args:
        model: :class:`~fastavatar_engine.head.HeadModel` (ICT frame, cm).
        W: [L,V] landmark weights (:meth:`LandmarkBinding.matrix`).
        target: [L,3] points in the target frame (any units; the similarity absorbs them).
        id_sigma: identity prior std-dev in units of the target residual per cm (ridge weight
            ``1/id_sigma``); ``ex_weight``: L2 weight of the expression coefficients (bounded [0,1]).
    Returns ``(s, R, t, identity [num_identity], expression [53], rms)`` with
    ``target ~ s R (W @ v(identity, expression)) + t`` and the RMS residual in target units.
    """
    from scipy.optimize import lsq_linear

    Wn = W @ model.neutral_cm.astype(np.float64)                      # [L,3]
    Wi = np.einsum("lv,kvd->kld", W, model.identity_cm[:num_identity].astype(np.float64))
    We = np.einsum("lv,kvd->kld", W, model.expression_cm.astype(np.float64))
    nid, nex = Wi.shape[0], We.shape[0]
    a, b = np.zeros(nid), np.zeros(nex)
    for _ in range(iterations):
        pts = Wn + np.tensordot(a, Wi, 1) + np.tensordot(b, We, 1)
        s, R, t = umeyama(pts, target)
        # target mapped back into ICT cm: (target - t) R / s, then linear least squares for a, b
        back = (target - t) @ R / s
        rhs = (back - Wn).reshape(-1)
        cols = [Wi.reshape(nid, -1).T]
        if fit_expression:
            cols.append(We.reshape(nex, -1).T)
        A = np.concatenate(cols, 1)
        nreg = A.shape[1]
        reg = np.zeros((nreg, nreg))
        reg[:nid, :nid] = np.eye(nid) / id_sigma
        if fit_expression:
            reg[nid:, nid:] = np.eye(nex) * ex_weight
        A2 = np.concatenate([A, reg], 0)
        rhs2 = np.concatenate([rhs, np.zeros(nreg)])
        lb = np.concatenate([np.full(nid, -4.0), np.zeros(nex if fit_expression else 0)])
        ub = np.concatenate([np.full(nid, 4.0), np.ones(nex if fit_expression else 0)])
        sol = lsq_linear(A2, rhs2, bounds=(lb, ub), method="bvls" if nreg < 200 else "trf")
        a = sol.x[:nid]
        if fit_expression:
            b = sol.x[nid:]
    pts = Wn + np.tensordot(a, Wi, 1) + np.tensordot(b, We, 1)
    s, R, t = umeyama(pts, target)
    rms = float(np.sqrt(((s * pts @ R.T + t - target) ** 2).sum(1).mean()))
    return s, R, t, a, b, rms


def project_to_surface(points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray, candidates: int = 24):
    """Closest surface points: ``(tri [N], bary [N,3], distance [N])`` of ``points`` [N,3] on the mesh."""
    from scipy.spatial import cKDTree

    P = np.asarray(points, np.float64)
    V = np.asarray(vertices, np.float64)
    cent = V[triangles].mean(1)
    _, nn = cKDTree(cent).query(P, k=candidates)
    best = (np.full(len(P), np.inf), np.zeros(len(P), np.int64), np.zeros((len(P), 3)))
    for j in range(candidates):
        t = nn[:, j]
        A, B, C = V[triangles[t, 0]], V[triangles[t, 1]], V[triangles[t, 2]]
        b = closest_points_on_triangles(P, A, B, C)
        d = np.linalg.norm(P - (b[:, :1] * A + b[:, 1:2] * B + b[:, 2:] * C), axis=1)
        m = d < best[0]
        best[0][m], best[1][m], best[2][m] = d[m], t[m], b[m]
    return best[1], best[2], best[0]
