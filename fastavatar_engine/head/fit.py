"""Camera and head shape from a photo's landmarks, in one fit.

:func:`fit_head` fits, to the 478 MediaPipe landmarks of one or more photos of one person:

* per photo a camera: rotation (axis-angle), translation (metres) and focal length (pixels,
  square pixels, principal point at the image centre) unless the intrinsics are given;
* per photo the 53 ARKit expression coefficients (in [0,1]; L1 prior);
* one set of identity coefficients shared by all photos (Gaussian prior N(0,1): ICT's modes are
  scaled by their standard deviation).

The fixed landmarks are matched to their points on the mesh (:mod:`.landmarks`); the cheek and
jaw contour landmarks to the silhouette of the posed mesh (each outer round re-picks, for each
contour landmark, the closest projected silhouette vertex among the contour candidates:
"landmark marching", as in 3DDFA). Landmarks on the far side of a turned head are down-weighted
by their mesh normal. Given person masks, the mask's outline beside the face, row by row from
the eyes to the chin, pulls the posed mesh's leftmost and rightmost vertex on each row
(:mod:`.silhouette`; gated, so hair beside the face does not). Residuals are measured in units of the face's size in the image
(``sqrt`` of the landmarks' bounding-box area), so priors mean the same at any resolution.
The optimiser is projected Levenberg-Marquardt with analytic Jacobians (:mod:`.lm`, float64;
``SOLVER = "lbfgs"``: PyTorch's L-BFGS with a strong-Wolfe line search, the first solver,
also used for a free focal length). It starts from the
PnP camera against the mean landmark template (:func:`fastavatar_engine.face.estimate_camera`),
which also stays the fallback when the fit does not converge (see :class:`HeadFit.converged`).

Frames: the engine's head frame (y up, metres, face towards +z); cameras come out as
:class:`~fastavatar_engine.face.pose.CameraEstimate` (OpenGL c2w, K in pixels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..face.landmarks import IRIS_LANDMARKS
from .basis import NUM_EXPRESSION, NUM_IDENTITY, HeadModel, load_head_model
from .landmarks import CONTOUR, contour_candidates

if TYPE_CHECKING:
    from .lm import PhotoTerms

#: Fit settings (see :func:`fit_head`); measured on the 48 calibrated sample views.
LANDMARK_SIGMA = 0.01     # landmark noise, as a fraction of the face size
IDENTITY_WEIGHT = 5.0     # weight of sum(identity^2)
EXPRESSION_WEIGHT = 5.0   # weight of sum(expression) (L1 on [0,1]); with the box parametrisation on the
                          # 48 sample views (mean rotation error / shape error) and 8 London training pairs
                          # (fitted mouth-width change smiling vs neutral; the photos': +18.3%):
                          # 0.5 -> 4.18 deg / 2.45 mm / +13.1%, 2 -> 4.06 / 2.37 / +12.9%,
                          # 5 -> 3.94 / 2.30 / +11.7%, 10 -> 3.95 / 2.24 / +9.8%;
                          # the sigmoid parametrisation at 0.5: 3.87 / 2.13 / +0.03%
FOCAL_SIGMA = 0.5         # prior std-dev of log(focal / default focal)
CONTOUR_WEIGHT = 0.5      # weight of a contour landmark relative to a fixed one
SILHOUETTE_COS = 0.2      # |normal . view| below which a candidate vertex is on the silhouette
DATA_WEIGHT = 50.0        # the landmark term is DATA_WEIGHT x its mean over landmarks (MediaPipe's
                          # errors are correlated, so the 468 points count as far fewer observations)
FIT_SHAPE = True          # False: rigid camera fit on the registered mean head only (diagnostics)
FIT_EXPRESSION = True     # False: identity only
EXPRESSION_PARAM = "box"  # "box": coefficients optimised directly, kept in [0,1] by a quadratic
                          # penalty; "sigmoid": through a sigmoid from logit -4 (the first
                          # parametrisation: its gradient there is 0.018x, so L-BFGS left the
                          # coefficients near 0.018 and mouth width went into identity)
EXPRESSION_BOX_WEIGHT = 1e3  # weight of the squared excursion of a coefficient outside [0,1]
SOLVER = "lm"             # "lm": projected Levenberg-Marquardt with analytic Jacobians (:mod:`.lm`);
                          # "lbfgs": torch's L-BFGS on the same objective (the first solver)
FIT_FOCAL = False         # False: keep the starting focal length (default field of view or EXIF)
RELIABILITY_WEIGHTS = False  # weight landmarks by their multi-view consistency (template statistics)
SILHOUETTE_WEIGHT = 12.0  # weight of a silhouette row side (person mask outline) relative to a landmark
                          # (48 sample views: 0 -> 4.46 deg mean rotation error, 0.5 -> 4.52, 4 -> 4.21,
                          # 12 -> 3.87, 30 -> 3.84 with the shape 2.12 -> 2.20 mm)
SILHOUETTE_ROWS = 24      # rows from the eyes to the chin where the mask's outline is matched
SILHOUETTE_GATE = 0.05    # a row side further than this (fraction of the face size) from the mesh is
                          # hair, a hand or a collar, not the skin: left out


@dataclass
class HeadFit:
    """Result of :func:`fit_head`.

    Attributes:
        identity: [100] float64 identity coefficients (shared by the photos).
        expressions: [P,53] float64 expression coefficients per photo, in [0,1].
        cameras: per photo a :class:`~fastavatar_engine.face.pose.CameraEstimate` relative to the
            fitted head (``focal_source`` 'head_fit', or the given K's source).
        rms_px: [P] RMS landmark error per photo (pixels, fixed landmarks).
        converged: False when a photo's error stayed above ``max_rms_face`` of its face size, a
            value became non-finite or a camera implausible; the caller should then use the PnP
            camera (``fallback``) and say so.
        reason: why it did not converge ('' when it did).
        seconds: wall time of the fit.
    """

    identity: np.ndarray
    expressions: np.ndarray
    cameras: list
    rms_px: np.ndarray
    converged: bool
    reason: str = ""
    seconds: float = 0.0
    fallback: list = field(default_factory=list)

    def vertices(self, model: HeadModel | None = None, photo: int | None = None) -> np.ndarray:
        """[V,3] engine-frame vertices of the fitted head (neutral expression unless ``photo`` given)."""
        m = model or load_head_model()
        return m.vertices(self.identity, None if photo is None else self.expressions[photo])


class _Problem:
    """Precomputed landmark and contour bases of the head model (torch float64)."""

    def __init__(self, model: HeadModel, num_identity: int):
        import torch

        self.model = model
        self.nid = num_identity
        self.binding = lb = model.landmark_binding()
        fixed = [i for i in range(478) if lb.tri[i] >= 0 and i not in IRIS_LANDMARKS and i not in CONTOUR]
        self.fixed = np.asarray(fixed)
        self.reliability = np.ones(len(fixed))
        if RELIABILITY_WEIGHTS:
            from ..face.pose import load_landmark_template

            rms = np.asarray(load_landmark_template().meta["per_landmark"]["reproj_rms_px"])[self.fixed]
            self.reliability = (np.median(rms) / rms) ** 2
        W = lb.matrix(model.triangles, model.num_vertices, self.fixed)
        mean, modes = model.torch_basis(dtype=torch.float64)
        V = model.num_vertices
        mean3, modes3 = mean.view(V, 3), modes.view(len(modes), V, 3)
        keep = np.r_[np.arange(num_identity), NUM_IDENTITY + np.arange(NUM_EXPRESSION)]
        Wt = torch.as_tensor(W)
        self.lm_mean = Wt @ mean3                                   # [L,3]
        self.lm_modes = torch.einsum("lv,kvd->kld", Wt, modes3[keep])  # [K,L,3]
        cand = contour_candidates(model.neutral_cm.astype(np.float64), lb, model.triangles)
        self.cand = cand
        self.c_mean = mean3[cand]
        self.c_modes = modes3[keep][:, cand]
        self.mean3, self.modes3 = mean3, modes3[keep]  # for the silhouette's vertices
        self.tris = model.triangles

    def numpy_bases(self):
        """``(landmarks [L,3,K], contour candidates [C,3,K])`` float64: the coefficient
        derivatives of the fixed landmarks and contour candidates, for :mod:`.lm` (cached)."""
        if not hasattr(self, "_np_bases"):
            self._np_bases = (self.lm_modes.permute(1, 2, 0).numpy().copy(),
                              self.c_modes.permute(1, 2, 0).numpy().copy())
        return self._np_bases

    def coeffs_full(self, a, b):
        return np.r_[np.pad(a, (0, NUM_IDENTITY - len(a))), b]

    def normals(self, V: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """[len(idx),3] unit vertex normals (area-weighted sum of the incident triangles' normals)
        of the vertices ``idx`` on the mesh ``V`` [V,3]; only their triangles are evaluated."""
        from scipy.sparse import csr_matrix

        idx = np.asarray(idx)
        key = idx.tobytes()
        cache = self.__dict__.setdefault("_incidence", {})
        if key not in cache:  # the triangles touching idx, and the [len(idx), their count] incidence
            pos = np.full(len(V), -1, np.int64)
            pos[idx] = np.arange(len(idx))
            faces = np.nonzero((pos[self.tris] >= 0).any(1))[0]
            rows, cols = pos[self.tris[faces]].ravel(), np.repeat(np.arange(len(faces)), 3)
            keep = rows >= 0
            cache[key] = (self.tris[faces], csr_matrix((np.ones(keep.sum()), (rows[keep], cols[keep])),
                                                       shape=(len(idx), len(faces))))
        T, A = cache[key]
        vn = A @ np.cross(V[T[:, 1]] - V[T[:, 0]], V[T[:, 2]] - V[T[:, 0]])
        return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def _rodrigues(r):
    import torch

    th = torch.sqrt((r * r).sum() + 1e-20)
    k = r / th
    Kx = torch.zeros(3, 3, dtype=r.dtype)
    Kx[0, 1], Kx[0, 2], Kx[1, 0], Kx[1, 2], Kx[2, 0], Kx[2, 1] = -k[2], k[1], k[2], -k[0], -k[1], k[0]
    return torch.eye(3, dtype=r.dtype) + torch.sin(th) * Kx + (1 - torch.cos(th)) * (Kx @ Kx)


def fit_head(faces, Ks=None, model: HeadModel | None = None, num_identity: int = NUM_IDENTITY,
             rounds: int = 2, iterations: int = 40, max_rms_face: float = 0.05, masks=None) -> HeadFit:
    """Fit cameras, identity and expressions to the landmarks of one person's photos.

    Args:
        faces: a :class:`~fastavatar_engine.face.Face` or a list of them (one per photo), with
            478 landmarks in continuous pixel coordinates.
        Ks: None (unknown cameras: focal fitted, principal point at the centre), or per photo a
            [3,3] K or None; a given K is kept fixed.
        model: the head model (the packaged one by default); it must carry a registration.
        num_identity: how many identity modes to fit (the rest stay 0).
        rounds: outer rounds (contour re-assignment and visibility weights).
        iterations: solver iterations per round (Levenberg-Marquardt steps, or L-BFGS iterations).
        max_rms_face: convergence test on the final RMS error as a fraction of the face size.
        masks: None, or per photo an [H,W] person mask in [0,1] (same pixels as the landmarks) or
            None: its outline beside the face is fitted too (:mod:`.silhouette`).
    Returns a :class:`HeadFit`. Raises ``ValueError`` for malformed landmarks and
    :class:`~fastavatar_engine.face.pose.PoseEstimationError` when even the starting PnP fails.
    """
    import time

    import torch

    from ..cameras import c2w_from_viewmat, intrinsics, viewmat_from_c2w
    from ..face.pose import CameraEstimate, camera_angles, default_intrinsics, estimate_camera

    t0 = time.perf_counter()
    faces = list(faces) if isinstance(faces, (list, tuple)) else [faces]
    Ks = list(Ks) if Ks is not None else [None] * len(faces)
    masks = list(masks) if masks is not None else [None] * len(faces)
    if len(Ks) != len(faces) or len(masks) != len(faces) or not faces:
        raise ValueError("fit_head: give one K (or None) and one mask (or None) per face")
    m = model or load_head_model()
    if "landmarks" not in m.registration:
        raise ValueError("fit_head: the head model has no landmark registration")
    prob = _problem(m, num_identity)
    dt = torch.float64
    P = len(faces)
    obs, scales, f0s, pps, fixed_focal, init = [], [], [], [], [], []
    for face, K in zip(faces, Ks):
        uv = np.asarray(face.landmarks, np.float64)[:, :2]
        if uv.shape != (478, 2) or not np.isfinite(uv).all():
            raise ValueError(f"fit_head: expected finite [478,2] landmarks, got {uv.shape}")
        w, h = face.image_size
        lo, hi = uv[:468].min(0), uv[:468].max(0)
        scales.append(float(np.sqrt(np.prod(np.maximum(hi - lo, 1.0)))))
        K0 = default_intrinsics(w, h) if K is None else np.asarray(K, np.float64)
        f0s.append(float(K0[0, 0]))
        pps.append((float(K0[0, 2]), float(K0[1, 2])))
        fixed_focal.append(K is not None)
        cam = estimate_camera(face, K=K)  # K None: the default field of view (K0)
        init.append(cam)
        obs.append(torch.as_tensor(uv, dtype=dt))
    # parameters
    import cv2

    rv, tv = [], []
    for cam in init:
        vm = viewmat_from_c2w(cam.c2w)
        rv.append(cv2.Rodrigues(vm[:3, :3])[0][:, 0])
        tv.append(vm[:3, 3])
    rvec = torch.tensor(np.array(rv), dtype=dt, requires_grad=True)
    tvec = torch.tensor(np.array(tv), dtype=dt, requires_grad=True)
    logf = torch.zeros(P, dtype=dt, requires_grad=True)
    ida = torch.zeros(num_identity, dtype=dt, requires_grad=True)
    box = EXPRESSION_PARAM == "box"
    exr = torch.full((P, NUM_EXPRESSION), 0.0 if box else -4.0, dtype=dt, requires_grad=True)

    def expr(p):  # [53] expression coefficients of photo p (in [0,1] up to the box penalty)
        return exr[p] if box else torch.sigmoid(exr[p])
    f0 = torch.tensor(f0s, dtype=dt)
    pp = torch.tensor(pps, dtype=dt)
    free_f = torch.tensor([0.0 if ff or not FIT_FOCAL else 1.0 for ff in fixed_focal], dtype=dt)
    sc = torch.tensor(scales, dtype=dt)
    fixed = prob.fixed
    contour_idx = [np.zeros(len(CONTOUR), np.int64)] * P
    outlines = [_outline(mask, face, sc_) for mask, face, sc_ in zip(masks, faces, scales)]
    sil = [(np.zeros(0, np.int64), torch.zeros(0, dtype=dt))] * P  # per photo: vertex ids, target x
    vis_w = [torch.ones(len(fixed), dtype=dt)] * P

    def project(p, X):
        R = _rodrigues(rvec[p])
        Xc = X @ R.T + tvec[p]
        f = f0[p] * torch.exp(logf[p] * free_f[p])
        z = Xc[:, 2].clamp_min(1e-3)
        return torch.stack([f * Xc[:, 0] / z + pp[p, 0], f * Xc[:, 1] / z + pp[p, 1]], -1)

    def coeffs(p):
        return torch.cat([ida, expr(p)])

    def landmarks3d(p):
        c = coeffs(p)
        return prob.lm_mean + torch.einsum("k,kld->ld", c, prob.lm_modes), \
            prob.c_mean + torch.einsum("k,kld->ld", c, prob.c_modes)

    def loss_fn():
        total = 0.0
        for p in range(P):
            L, C = landmarks3d(p)
            r = (project(p, L) - obs[p][fixed]) / (sc[p] * LANDMARK_SIGMA)
            rc = (project(p, C[contour_idx[p]]) - obs[p][list(CONTOUR)]) / (sc[p] * LANDMARK_SIGMA)
            data = (vis_w[p] * _huber(r.norm(dim=-1))).sum() + CONTOUR_WEIGHT * _huber(rc.norm(dim=-1)).sum()
            norm = vis_w[p].sum() + CONTOUR_WEIGHT * len(CONTOUR)
            ids, tx = sil[p]
            if len(ids):
                c = coeffs(p)
                X = prob.mean3[ids] + torch.einsum("k,kvd->vd", c, prob.modes3[:, ids])
                rs = (project(p, X)[:, 0] - tx) / (sc[p] * LANDMARK_SIGMA)
                data = data + SILHOUETTE_WEIGHT * _huber(rs.abs()).sum()
                norm = norm + SILHOUETTE_WEIGHT * len(ids)
            total = total + DATA_WEIGHT * data / norm
            if box:
                e = exr[p]
                total = total + EXPRESSION_WEIGHT * e.clamp_min(0).sum() + EXPRESSION_BOX_WEIGHT * (
                    e.clamp_max(0) ** 2 + (e - 1).clamp_min(0) ** 2).sum()
            else:
                total = total + EXPRESSION_WEIGHT * torch.sigmoid(exr[p]).sum()
            total = total + 0.5 * (logf[p] * free_f[p] / FOCAL_SIGMA) ** 2
        return total / P + IDENTITY_WEIGHT * (ida ** 2).sum()

    # Levenberg-Marquardt (:mod:`.lm`) for the default settings; L-BFGS for a free focal length or
    # the sigmoid expressions
    use_lm = SOLVER == "lm" and box and not float(free_f.sum())
    params = [rvec, tvec, logf] + ([ida] if FIT_SHAPE else []) + ([exr] if FIT_SHAPE and FIT_EXPRESSION else [])
    opt = torch.optim.LBFGS(params, lr=1, max_iter=iterations, history_size=20,
                            line_search_fn="strong_wolfe")
    for _ in range(rounds):
        with torch.no_grad():
            for p in range(P):
                f = float(f0[p] * torch.exp(logf[p] * free_f[p]))
                vw, contour_idx[p], sil[p] = _assign(prob, m, ida.numpy(), expr(p).clamp(0, 1).numpy(),
                                                     _rodrigues(rvec[p]).numpy(), tvec[p].numpy(), f, pps[p],
                                                     obs[p].numpy(), outlines[p], scales[p])
                vis_w[p] = torch.as_tensor(vw, dtype=dt)
        if use_lm:
            _lm_round(prob, m, obs, fixed, vis_w, contour_idx, sil, scales, f0s, pps, rvec, tvec, ida, exr,
                      iterations)
            continue

        def closure():
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            return loss

        opt.step(closure)

    # results
    cams, rms, reason = [], [], ""
    with torch.no_grad():
        for p in range(P):
            L, _ = landmarks3d(p)
            uv = project(p, L).numpy()
            err = np.linalg.norm(uv - obs[p][fixed].numpy(), axis=1)
            rms.append(float(np.sqrt(np.mean(err ** 2))))
            R = _rodrigues(rvec[p]).numpy()
            vm = np.eye(4)
            vm[:3, :3], vm[:3, 3] = R, tvec[p].numpy()
            f = float(f0[p] * torch.exp(logf[p] * free_f[p]))
            K = intrinsics(f, f, float(pp[p, 0]), float(pp[p, 1]))
            c2w = c2w_from_viewmat(vm)
            yaw, pitch, roll = camera_angles(c2w)
            w, h = faces[p].image_size
            depth = (L.numpy() @ R.T + tvec[p].numpy())[:, 2]
            fov = math.degrees(2 * math.atan(0.5 * max(w, h) / f))
            if not np.isfinite(vm).all() or not math.isfinite(f):
                reason = reason or f"photo {p}: non-finite fit"
            elif (depth <= 0).any():
                reason = reason or f"photo {p}: head behind the camera"
            elif not (3.0 <= fov <= 120.0):
                reason = reason or f"photo {p}: implausible field of view {fov:.1f} deg"
            elif rms[-1] > max_rms_face * scales[p]:
                reason = reason or f"photo {p}: landmark error {rms[-1]:.1f} px ({rms[-1] / scales[p]:.1%} of the face)"
            cams.append(CameraEstimate(c2w=c2w, K=K, image_size=(int(w), int(h)), reprojection_error_px=float(err.mean()),
                                       reprojection_rms_px=rms[-1], yaw_deg=yaw, pitch_deg=pitch, roll_deg=roll,
                                       num_points=len(fixed),
                                       focal_source="head_fit" if float(free_f[p]) else init[p].focal_source))
        a = np.pad(ida.numpy().copy(), (0, NUM_IDENTITY - num_identity))
        ex = torch.stack([expr(p) for p in range(P)]).clamp(0, 1).numpy().copy()
    return HeadFit(identity=a, expressions=ex, cameras=cams, rms_px=np.array(rms), converged=not reason,
                   reason=reason, seconds=time.perf_counter() - t0, fallback=init)


def _assign(prob: _Problem, m: HeadModel, a, e, R, t, f: float, pp, uv, outline, scale: float, V=None,
            smooth_normals: bool = False):
    """A round's assignments for one photo, at identity ``a`` [nid], expression ``e`` [53] and
    camera ``R`` [3,3], ``t`` [3], focal ``f`` and principal point ``pp`` (pixels): the fixed
    landmarks' visibility weights [L] (from their mesh normals), the contour landmarks' candidate
    vertices [len(CONTOUR)] (the nearest silhouette candidates in the image) and the mask
    outline's (vertex ids, target x) (:func:`_silhouette_targets`; empty without a mask).
    ``V``: the head's [V,3] vertices at ``a``, ``e`` when the caller has them (a tracker).
    ``smooth_normals``: visibility from the surface around each landmark
    (:func:`_smoothed_landmark_normals`) instead of its own triangle's."""
    import torch

    lm_B, c_B = prob.numpy_bases()
    c = np.r_[a, e]
    if V is None:
        full = prob.coeffs_full(a, e)
        V = m.vertices(full[:NUM_IDENTITY], full[NUM_IDENTITY:])
    cam_c = -R.T @ t  # camera centre in the head frame

    def project(X):
        Xc = X @ R.T + t
        return f * Xc[:, :2] / np.maximum(Xc[:, 2:3], 1e-3) + np.asarray(pp)

    lb_pts = prob.lm_mean.numpy() + lm_B @ c
    view = cam_c[None] - lb_pts
    view /= np.linalg.norm(view, axis=1, keepdims=True)
    normals = _smoothed_landmark_normals(prob, V) if smooth_normals else _landmark_normals(prob, V)
    cosv = (normals * view).sum(1)
    vis_w = np.clip(cosv / 0.3, 0.05, 1.0) * prob.reliability
    cn = prob.normals(V, prob.cand)
    cview = cam_c[None] - V[prob.cand]
    cview /= np.linalg.norm(cview, axis=1, keepdims=True)
    on_sil = np.abs((cn * cview).sum(1)) < SILHOUETTE_COS
    if on_sil.sum() < 3:
        on_sil = np.ones(len(prob.cand), bool)
    uvc = project(prob.c_mean.numpy() + c_B @ c)
    d = np.linalg.norm(uvc[None, on_sil] - uv[list(CONTOUR)][:, None], axis=2)
    contour_idx = np.nonzero(on_sil)[0][d.argmin(1)]
    sil = (np.zeros(0, np.int64), torch.zeros(0, dtype=torch.float64))
    if outline is not None:  # the mask's outline: each row's extreme vertices
        sil = _silhouette_targets(outline, project(V), SILHOUETTE_GATE * scale, torch.float64)
    return vis_w, contour_idx, sil


def _lm_round(prob: _Problem, m: HeadModel, obs, fixed, vis_w, contour_idx, sil, scales, f0s, pps,
              rvec, tvec, ida, exr, iterations: int) -> None:
    """One round of :func:`.lm.solve` on the round's assignments; writes the parameters back into
    the torch tensors ``rvec``, ``tvec``, ``ida`` and ``exr`` (in place)."""
    import cv2
    import torch

    from .lm import HeadProblem, solve

    nid = prob.nid
    terms = [photo_terms(prob, obs[p].numpy(), vis_w[p].numpy(), contour_idx[p], sil[p][0], sil[p][1].numpy(),
                         scales[p], f0s[p], pps[p]) for p in range(len(obs))]
    problem = HeadProblem(terms, nid, DATA_WEIGHT, IDENTITY_WEIGHT, EXPRESSION_WEIGHT, 3.0)
    with torch.no_grad():
        rots = np.stack([cv2.Rodrigues(rvec[p].numpy())[0] for p in range(len(obs))])
        a, rots, tv, ex, _ = solve(problem, ida.numpy(), rots, tvec.numpy(), exr.numpy().clip(0, 1),
                                   iterations=iterations, fit_expressions=FIT_EXPRESSION, fit_shape=FIT_SHAPE)
        ida.copy_(torch.as_tensor(a))
        exr.copy_(torch.as_tensor(ex))
        tvec.copy_(torch.as_tensor(tv))
        rvec.copy_(torch.as_tensor(np.stack([cv2.Rodrigues(R)[0][:, 0] for R in rots])))


def photo_terms(prob: _Problem, uv: np.ndarray, vis_w: np.ndarray, contour_idx: np.ndarray, sil_ids: np.ndarray,
                sil_x: np.ndarray, scale: float, f: float, pp, identity=None) -> "PhotoTerms":
    """One photo's data terms (:class:`.lm.PhotoTerms`, coefficients identity first) for a round's
    assignments (:func:`_assign`): landmarks ``uv`` [478,2] pixels, the fixed landmarks'
    visibility weights ``vis_w`` [L], the contour landmarks' vertices ``contour_idx``, the mask
    outline's vertex ids and target x (pixels), the face size ``scale`` (pixels), focal ``f`` and
    principal point ``pp`` (pixels). ``identity`` [nid] given: it is baked into the points and
    the terms' coefficients are the 53 expressions only (a problem with ``nid`` 0)."""
    from .lm import PhotoTerms

    lm_B, c_B = prob.numpy_bases()
    fixed, ci = prob.fixed, contour_idx
    X0 = [prob.lm_mean.numpy(), prob.c_mean.numpy()[ci]]
    B = [lm_B, c_B[ci]]
    if identity is not None:  # no mask outline in this case (a tracker has none)
        a = np.asarray(identity, np.float64)
        X0 = [x + b[..., :prob.nid] @ a for x, b in zip(X0, B)]
        B = [b[..., prob.nid:] for b in B]
        sil_ids = sil_ids[:0]
    target = [uv[fixed], uv[list(CONTOUR)]]
    mask = [np.ones((len(fixed), 2)), np.ones((len(ci), 2))]
    weight = [np.asarray(vis_w, np.float64), np.full(len(ci), CONTOUR_WEIGHT)]
    if len(sil_ids):
        X0.append(prob.mean3[sil_ids].numpy())
        B.append(prob.modes3[:, sil_ids].permute(1, 2, 0).numpy())
        target.append(np.stack([np.asarray(sil_x, np.float64), np.zeros(len(sil_ids))], 1))
        mask.append(np.tile([1.0, 0.0], (len(sil_ids), 1)))
        weight.append(np.full(len(sil_ids), SILHOUETTE_WEIGHT))
    norm = float(np.sum(vis_w)) + CONTOUR_WEIGHT * len(ci) + SILHOUETTE_WEIGHT * len(sil_ids)
    return PhotoTerms(np.concatenate(X0), np.concatenate(B), np.concatenate(target), np.concatenate(mask),
                      np.concatenate(weight), norm, scale * LANDMARK_SIGMA, f, np.asarray(pp, np.float64))


def _outline(mask, face, scale: float):
    """(ys, left, right, half_height) of the photo's mask outline (:func:`.silhouette.outline_rows`), or None."""
    if mask is None or SILHOUETTE_WEIGHT <= 0:
        return None
    from .silhouette import outline_rows

    m = np.asarray(mask, np.float32)
    w, h = face.image_size
    if m.shape != (int(h), int(w)):
        raise ValueError(f"fit_head: mask {list(m.shape)} does not match the photo {[int(h), int(w)]}")
    ys, left, right = outline_rows(m, np.asarray(face.landmarks, np.float64), SILHOUETTE_ROWS)
    spacing = abs(ys[-1] - ys[0]) / max(1, len(ys) - 1)
    return ys, left, right, max(0.5 * spacing, 0.01 * scale)


def _silhouette_targets(outline, uv_all: np.ndarray, gate_px: float, dt):
    """(vertex ids [N], target x [N] tensor): per row side, the mesh's extreme vertex and the mask's
    outline x, where both exist and lie within ``gate_px`` of each other."""
    import torch

    from .silhouette import extreme_vertices

    ys, left, right, half = outline
    lv, rv = extreme_vertices(uv_all, ys, half)
    ids, tx = [], []
    for verts, xs in ((lv, left), (rv, right)):
        for v, x in zip(verts, xs):
            if v >= 0 and np.isfinite(x) and abs(uv_all[v, 0] - x) <= gate_px:
                ids.append(v)
                tx.append(x)
    return np.asarray(ids, np.int64), torch.tensor(tx, dtype=dt)


def _huber(r, delta: float = 3.0):
    import torch

    return torch.where(r < delta, 0.5 * r * r, delta * (r - 0.5 * delta))


def _landmark_normals(prob: _Problem, V: np.ndarray) -> np.ndarray:
    """[L,3] unit normals of the fixed landmarks' triangles on the mesh ``V`` [V,3]."""
    T = prob.tris[prob.binding.tri[prob.fixed]]
    n = np.cross(V[T[:, 1]] - V[T[:, 0]], V[T[:, 2]] - V[T[:, 0]])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


#: Radius (metres, on the neutral head) of the surface whose mean normal decides a landmark's
#: visibility in :func:`_smoothed_landmark_normals`.
SMOOTH_RADIUS = 0.016


def _smoothed_landmark_normals(prob: _Problem, V: np.ndarray) -> np.ndarray:
    """[L,3] unit normals of the fixed landmarks: the mean vertex normal of the mesh ``V`` within
    :data:`SMOOTH_RADIUS` of each (picked once on the neutral head). A landmark's own triangle
    faces away from the camera on the lid and lip margins, where the skin turns into the eye
    socket or the mouth, although the margin is in plain view: with its own normal the tracker
    gave the eyelid landmarks the floor weight (0.05) on a frontal face, so a blink that
    MediaPipe saw (lid gap 7.8 -> 3.8 px) was fitted as no blink at all (issue 22)."""
    from scipy.sparse import csr_matrix
    from scipy.spatial import cKDTree

    cache = prob.__dict__.get("_smooth")
    if cache is None:
        neutral = prob.model.vertices()
        pts = prob.binding.points(neutral, prob.tris)[prob.fixed]
        near = cKDTree(neutral).query_ball_point(pts, r=SMOOTH_RADIUS)
        near = [n if n else [int(prob.tris[prob.binding.tri[i], 0])] for n, i in zip(near, prob.fixed)]
        idx = np.unique(np.concatenate(near))
        pos = np.full(len(neutral), -1, np.int64)
        pos[idx] = np.arange(len(idx))
        rows = np.repeat(np.arange(len(near)), [len(n) for n in near])
        cols = pos[np.concatenate(near)]
        cache = prob.__dict__["_smooth"] = (idx, csr_matrix((np.ones(len(rows)), (rows, cols)),
                                                            shape=(len(near), len(idx))))
    idx, A = cache
    n = A @ prob.normals(V, idx)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


_PROBLEMS: dict = {}


def prepare(model: HeadModel | None = None, num_identity: int = NUM_IDENTITY) -> None:
    """Load the head model and precompute the fit's landmark and contour bases (~1 s), so that the
    first :func:`fit_head` is as fast as the next (the engine calls this at start-up)."""
    _problem(model or load_head_model(), num_identity)


def _problem(model: HeadModel, num_identity: int) -> _Problem:
    key = (id(model), num_identity, RELIABILITY_WEIGHTS)
    if key not in _PROBLEMS:
        _PROBLEMS[key] = _Problem(model, num_identity)
    return _PROBLEMS[key]
