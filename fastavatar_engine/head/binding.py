"""Gaussians bound to the head mesh's triangles (the binding of GaussianAvatars, Qian et al., CVPR 2024).

Every Gaussian k is attached to one triangle t_k of a rest mesh (the head model at the engine
template's own identity): the closest point on that triangle, ``p0 = sum_i b_i v0_i`` with
barycentric weights ``b`` [3], and the Gaussian's offset from it expressed in the triangle's
local frame, ``o = R0_t^T (mu0 - p0) / k0_t``. The triangle frame ``R_t`` [3,3] has columns
(first edge direction, in-plane perpendicular, unit normal) and ``k_t`` is the triangle's scale
(square root of twice its area, metres). On a deformed mesh (other identity or expression
coefficients, or any rigid motion) the Gaussian becomes

    mu      = sum_i b_i v_i + k_t R_t o
    R_gauss = R_t R0_t^T R0_gauss          (quaternion: q_t * conj(q0_t) * q0)
    log s   = log s0 + log(k_t / k0_t)

so zero change reproduces the template exactly, a rigid motion of the mesh moves and rotates
every Gaussian exactly, and stretching a triangle scales its Gaussians with it. (GaussianAvatars
uses the triangle centroid; the closest point keeps the offset of surface Gaussians near zero.)
Offsets of Gaussians far from the skin (hair, shoulders) grow with their triangle's scale;
``max_offset_scale`` caps that growth so a thin neck triangle cannot fling a shoulder away.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def closest_points_on_triangles(P: np.ndarray, A: np.ndarray, B: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Barycentric weights [N,3] (float64) of the closest point to P[n] on triangle (A[n], B[n], C[n]).

    Ericson, *Real-Time Collision Detection*, 5.1.5 (region tests over the triangle's Voronoi
    regions), vectorised. All inputs [N,3].
    """
    P, A, B, C = (np.asarray(x, dtype=np.float64) for x in (P, A, B, C))
    ab, ac, ap = B - A, C - A, P - A
    d1, d2 = (ab * ap).sum(1), (ac * ap).sum(1)
    bp = P - B
    d3, d4 = (ab * bp).sum(1), (ac * bp).sum(1)
    cp = P - C
    d5, d6 = (ab * cp).sum(1), (ac * cp).sum(1)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    n = len(P)
    out = np.zeros((n, 3))
    done = np.zeros(n, bool)

    def put(mask, w):
        m = mask & ~done
        out[m] = w[m] if w.ndim == 2 else w
        done[m] = True

    one = np.ones(n)
    zero = np.zeros(n)
    put((d1 <= 0) & (d2 <= 0), np.array([1.0, 0, 0]))
    put((d3 >= 0) & (d4 <= d3), np.array([0, 1.0, 0]))
    with np.errstate(divide="ignore", invalid="ignore"):
        v = d1 / (d1 - d3)
        put((vc <= 0) & (d1 >= 0) & (d3 <= 0), np.stack([1 - v, v, zero], 1))
        put((d6 >= 0) & (d5 <= d6), np.array([0, 0, 1.0]))
        w = d2 / (d2 - d6)
        put((vb <= 0) & (d2 >= 0) & (d6 <= 0), np.stack([1 - w, zero, w], 1))
        w = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        put((va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0), np.stack([zero, 1 - w, w], 1))
        denom = 1.0 / (va + vb + vc)
        v, w = vb * denom, vc * denom
        put(np.ones(n, bool), np.stack([one - v - w, v, w], 1))
    return np.nan_to_num(out, nan=1.0 / 3.0)


def triangle_frames(V, tris):
    """Local frames and scales of triangles (torch or numpy, float).

    Args:
        V: [...,N,3] vertices; tris: [T,3] int indices.
    Returns ``(R [...,T,3,3], k [...,T])``: columns of R are the unit first edge, the in-plane
    perpendicular and the unit normal (right-handed); ``k = sqrt(|e1 x e2|)`` (twice the area, rooted).
    """
    import torch

    is_np = isinstance(V, np.ndarray)
    Vt = torch.as_tensor(V)
    tr = torch.as_tensor(np.asarray(tris), dtype=torch.long, device=Vt.device)
    a, b, c = Vt[..., tr[:, 0], :], Vt[..., tr[:, 1], :], Vt[..., tr[:, 2], :]
    e1, e2 = b - a, c - a
    cr = torch.linalg.cross(e1, e2)
    area2 = cr.norm(dim=-1).clamp_min(1e-12)
    n = cr / area2[..., None]
    x = e1 / e1.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    y = torch.linalg.cross(n, x)
    R = torch.stack([x, y, n], dim=-1)
    k = area2.sqrt()
    return (R.numpy(), k.numpy()) if is_np else (R, k)


def _quat_from_matrix(R):
    """Unit quaternions (w,x,y,z) [...,4] from rotation matrices [...,3,3] (torch), numerically safe."""
    import torch

    m = R
    t = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = torch.stack([
        torch.stack([1 + t, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                     m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0],
                     1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                     1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1),
    ], -2)  # [...,4,4]: candidate k is proportional to q * (4 q_k)
    diag = torch.stack([1 + t, 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                        1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1)
    best = diag.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    q = q / q.norm(dim=-1, keepdim=True)
    return q * torch.where(q[..., :1] < 0, -1.0, 1.0)


def quat_multiply(a, b):
    """Hamilton product of quaternions (w,x,y,z) [...,4] (torch)."""
    import torch

    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz,
                        aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw], -1)


@dataclass
class HeadBinding:
    """Per-Gaussian attachment to a mesh (see the module docstring).

    Attributes:
        triangles: [T,3] int64 mesh triangles (the head model's).
        tri: [N] int64 bound triangle per Gaussian.
        bary: [N,3] float64 barycentric weights of the closest point on it.
        offset: [N,3] float64 offset in the rest triangle's frame, in units of its scale ``k0``.
        rest_R: [N,3,3] float64 rest frame of each Gaussian's triangle.
        rest_k: [N] float64 rest scale of each Gaussian's triangle (metres).
        max_offset_scale: cap on ``k / k0`` applied to offsets (not to the Gaussians' own scales).
    """

    triangles: np.ndarray
    tri: np.ndarray
    bary: np.ndarray
    offset: np.ndarray
    rest_R: np.ndarray
    rest_k: np.ndarray
    max_offset_scale: float = 1.5

    @classmethod
    def bind(cls, means: np.ndarray, rest_vertices: np.ndarray, triangles: np.ndarray, candidates: int = 24,
             allowed_triangles: np.ndarray | None = None) -> "HeadBinding":
        """Bind Gaussian centres ``means`` [N,3] (metres) to the closest triangle of the rest mesh.

        ``rest_vertices`` [V,3] metres (same frame), ``triangles`` [T,3]. The closest triangle is
        searched among the ``candidates`` triangles with the nearest centroids (exact point-to-
        triangle distance). ``allowed_triangles`` [T] bool restricts which triangles may bind.
        Raises ``ValueError`` for non-finite or mis-shaped input.
        """
        from scipy.spatial import cKDTree

        P = np.asarray(means, dtype=np.float64)
        V = np.asarray(rest_vertices, dtype=np.float64)
        T = np.asarray(triangles, dtype=np.int64)
        if P.ndim != 2 or P.shape[1] != 3 or V.ndim != 2 or V.shape[1] != 3 or not np.isfinite(P).all() \
                or not np.isfinite(V).all():
            raise ValueError("HeadBinding.bind: means [N,3] and rest_vertices [V,3] must be finite")
        ids = np.arange(len(T)) if allowed_triangles is None else np.nonzero(allowed_triangles)[0]
        cent = V[T[ids]].mean(axis=1)
        _, nn = cKDTree(cent).query(P, k=min(candidates, len(ids)))
        nn = ids[np.atleast_2d(nn.T).T]
        best_d = np.full(len(P), np.inf)
        best_t = np.zeros(len(P), np.int64)
        best_b = np.zeros((len(P), 3))
        for j in range(nn.shape[1]):
            t = nn[:, j]
            A, B, C = V[T[t, 0]], V[T[t, 1]], V[T[t, 2]]
            b = closest_points_on_triangles(P, A, B, C)
            q = b[:, :1] * A + b[:, 1:2] * B + b[:, 2:] * C
            d = np.linalg.norm(P - q, axis=1)
            better = d < best_d
            best_d[better], best_t[better], best_b[better] = d[better], t[better], b[better]
        R0, k0 = triangle_frames(V, T[best_t])
        p0 = np.einsum("nk,nkd->nd", best_b, V[T[best_t]])
        offset = np.einsum("nji,nj->ni", R0, P - p0) / k0[:, None]
        return cls(triangles=T, tri=best_t, bary=best_b, offset=offset, rest_R=R0, rest_k=k0)

    def rows(self, idx) -> "HeadBinding":
        """The binding of the Gaussians ``idx`` [M] (int indices) only, on the same triangles."""
        idx = np.asarray(idx, np.int64)
        return HeadBinding(self.triangles, self.tri[idx], self.bary[idx], self.offset[idx], self.rest_R[idx],
                           self.rest_k[idx], self.max_offset_scale)

    def with_rows(self, idx, other: "HeadBinding") -> "HeadBinding":
        """A copy with the Gaussians ``idx`` [M] bound as ``other`` (a binding of M Gaussians on
        the same triangles) binds them."""
        idx = np.asarray(idx, np.int64)
        out = HeadBinding(self.triangles, self.tri.copy(), self.bary.copy(), self.offset.copy(), self.rest_R.copy(),
                          self.rest_k.copy(), self.max_offset_scale)
        out.tri[idx], out.bary[idx], out.offset[idx] = other.tri, other.bary, other.offset
        out.rest_R[idx], out.rest_k[idx] = other.rest_R, other.rest_k
        return out

    def deform(self, vertices, rotations=None, log_scales=None):
        """The bound Gaussians carried by the mesh ``vertices`` [V,3] (torch, metres, any float
        dtype, differentiable): their centres from the stored barycentric points and offsets.

        ``rotations`` [N,4] (w,x,y,z) and ``log_scales`` [N,3]: the Gaussians' rest rotations and
        log-scales (torch), carried along when given. Returns ``(means [N,3], rotations [N,4] unit
        or None, log_scales [N,3] or None)``.
        """
        import torch

        V = vertices
        dev, dt = V.device, V.dtype
        T = torch.as_tensor(self.triangles[self.tri], device=dev)
        Rt, kt = triangle_frames(V, self.triangles[self.tri])
        b = torch.as_tensor(self.bary, dtype=dt, device=dev)
        p = (b[:, :, None] * V[T]).sum(1)
        R0 = torch.as_tensor(self.rest_R, dtype=dt, device=dev)
        k0 = torch.as_tensor(self.rest_k, dtype=dt, device=dev)
        ratio = kt / k0
        o = torch.as_tensor(self.offset, dtype=dt, device=dev)
        off_scale = k0 * ratio.clamp(max=self.max_offset_scale, min=1.0 / self.max_offset_scale)
        mu = p + torch.einsum("nij,nj->ni", Rt, o) * off_scale[:, None]
        rot = ls = None
        if rotations is not None:
            dq = _quat_from_matrix(Rt @ R0.transpose(1, 2))
            rot = quat_multiply(dq, rotations / rotations.norm(dim=-1, keepdim=True))
            rot = rot / rot.norm(dim=-1, keepdim=True)
        if log_scales is not None:
            ls = log_scales + torch.log(ratio)[:, None]
        return mu, rot, ls
