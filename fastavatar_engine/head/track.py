"""Expression and head-pose tracking with the head's identity held fixed (frame after frame).

:class:`HeadTracker` fits, to one video frame's 478 MediaPipe landmarks, the 53 ARKit expression
coefficients and the camera's rotation and translation relative to the head, with the identity
coefficients of a known head (an avatar's, or :func:`fastavatar_engine.head.fit.fit_head` once
over several frames). It is the head fit's objective (:mod:`.fit`: landmarks, contour marching,
visibility weights, L1 expression prior, Huber) solved by the same Levenberg–Marquardt
(:mod:`.lm`) with the identity held, warm-started from the previous frame: one round of a few
iterations per frame instead of the photo fit's two rounds from a PnP start. A frame that starts
cold (the first, or after a lost face) gets the photo fit's schedule.

Head pose. The video's camera is fixed and the head moves, so the tracker's per-frame camera
``[R_k | t_k]`` (head frame -> OpenCV camera, metres) is turned into the head's rigid motion seen
by one reference camera ``V_ref``: ``M_k = V_ref^-1 V_k``. :func:`reference_view` puts that
camera straight in front of the head (looking along the head's -z, OpenCV y down) at the median
translation of the sequence, so ``M_k``'s rotation is the head's turn away from facing the
camera and its translation the head's offset from its median position, both in the head frame
(metres). Rendering frame k at any camera ``V`` with the head posed is rendering at ``V M_k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .basis import NUM_EXPRESSION, NUM_IDENTITY, HeadModel, load_head_model

#: L1 weight on the gaze shapes (eyeLookDown/In/Out/Up) while tracking: high enough to hold them
#: at 0. ICT's eyeLookDown also lowers the upper lid, and the tracker fits no iris, so free gaze
#: shapes explained a blink as a downward look: on a driven avatar's rendered blink (MediaPipe's
#: lid gap 7.8 -> 3.8 px) the cold fit gave eyeLookDown 0.7-1.0 and eyeBlink 0 (issue 22).
#: The avatar's eyeballs do not turn either (:mod:`.eyes`).
GAZE_WEIGHT = 100.0

#: OpenCV camera axes of a camera in front of the head looking at it: x right, y down, z forward.
FRONT = np.diag([1.0, -1.0, -1.0])


@dataclass
class TrackedFrame:
    """One frame's fit: ``expression`` [53] float64 in [0,1] (ARKit names, the head model's
    order); ``rotation`` [3,3] and ``translation`` [3] (metres) the head frame -> OpenCV camera
    transform; ``rms_px`` the RMS landmark error (pixels); ``cold`` whether it started from PnP;
    ``lost`` whether the error stayed above the tracker's bound (the next frame starts cold)."""

    expression: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    rms_px: float
    cold: bool
    lost: bool = False


class HeadTracker:
    """Per-frame expression and head-pose fit for one person's head (module docstring).

    Args:
        identity: [100] identity coefficients of the head (held fixed).
        K: [3,3] intrinsics of the video's frames (pixels).
        model: the head model (the packaged one by default).
        iterations: Levenberg–Marquardt iterations per round of a warm frame.
        rounds: rounds per warm frame (each re-picks the contour vertices and visibility at the
            current pose, then solves: a turning head moves its silhouette).
        lost_rms_face: a frame whose RMS landmark error exceeds this fraction of the face size is
            reported and the next frame starts cold.
        expression_weight: the L1 weight on the expression coefficients (default the photo
            fit's); the gaze shapes (eyeLook*) get :data:`GAZE_WEIGHT` instead.
    Raises ``ValueError`` for a malformed identity or K.
    """

    def __init__(self, identity, K, model: HeadModel | None = None, iterations: int = 6, rounds: int = 2,
                 lost_rms_face: float = 0.05, expression_weight: float | None = None):
        from .fit import _problem

        a = np.asarray(identity, np.float64).ravel()
        if a.size != NUM_IDENTITY or not np.isfinite(a).all():
            raise ValueError(f"tracker identity: expected {NUM_IDENTITY} finite coefficients, got {a.size}")
        K = np.asarray(K, np.float64)
        if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0:
            raise ValueError(f"tracker K: expected a [3,3] intrinsics matrix, got {K.shape}")
        self.model = m = model or load_head_model()
        self.prob = _problem(m, NUM_IDENTITY)
        self.identity, self.K = a, K
        self.iterations, self.lost_rms_face = int(iterations), float(lost_rms_face)
        self.rounds = int(rounds)
        from .fit import EXPRESSION_WEIGHT

        w = float(EXPRESSION_WEIGHT if expression_weight is None else expression_weight)
        self.expression_weight = np.array([GAZE_WEIGHT if n.startswith("eyeLook") else w for n in m.expression_names])
        self._state = None  # (R, t, e) of the last good frame
        # the head at this identity and its expression deltas, engine frame: V(e) = V0 + e @ E
        self._V0 = m.vertices(a, None)
        self._E = np.tensordot(m.expression_cm.astype(np.float64) * m.scale, m.R.T, axes=([2], [0]))

    def reset(self) -> None:
        """Forget the last frame: the next one starts cold (after a cut or a lost face)."""
        self._state = None

    def step(self, landmarks) -> TrackedFrame:
        """Fit one frame's landmarks ``[478,2]`` (pixels, same image size as K). Raises
        ``ValueError`` for malformed landmarks."""
        from ..cameras import viewmat_from_c2w
        from ..face.pose import estimate_camera
        from ..face.types import Face
        from .fit import DATA_WEIGHT, IDENTITY_WEIGHT, _assign, photo_terms
        from .lm import HeadProblem, solve

        uv = np.asarray(landmarks, np.float64)[:, :2]
        if uv.shape != (478, 2) or not np.isfinite(uv).all():
            raise ValueError(f"tracker: expected finite [478,2] landmarks, got {uv.shape}")
        lo, hi = uv[:468].min(0), uv[:468].max(0)
        scale = float(np.sqrt(np.prod(np.maximum(hi - lo, 1.0))))
        f, pp = float(self.K[0, 0]), (float(self.K[0, 2]), float(self.K[1, 2]))
        cold = self._state is None
        if cold:
            size = (int(round(2 * pp[0])), int(round(2 * pp[1])))
            face = Face(box=np.r_[lo, hi], score=1.0, landmarks5=np.zeros((5, 2)), landmarks=uv, image_size=size)
            vm = viewmat_from_c2w(estimate_camera(face, K=self.K).c2w)
            R, t, e = vm[:3, :3], vm[:3, 3], np.zeros(NUM_EXPRESSION)
            rounds, iterations = 2, 40
        else:
            R, t, e = self._realign(uv, *self._state)
            rounds, iterations = self.rounds, self.iterations
        none = np.zeros(0)
        for _ in range(rounds):
            V = self._V0 + np.tensordot(e, self._E, axes=1)
            vis_w, ci, _ = _assign(self.prob, self.model, self.identity, e, R, t, f, pp, uv, None, scale, V=V,
                                   smooth_normals=True)
            terms = photo_terms(self.prob, uv, vis_w, ci, none.astype(np.int64), none, scale, f, pp,
                                identity=self.identity)
            problem = HeadProblem([terms], 0, DATA_WEIGHT, IDENTITY_WEIGHT, self.expression_weight, 3.0)
            _, rots, tv, ex, _ = solve(problem, none, R[None], t[None], e[None], iterations=iterations)
            R, t, e = rots[0], tv[0], ex[0]
        rms = self._rms(uv, R, t, e, f, pp)
        ok = np.isfinite(rms) and rms <= self.lost_rms_face * scale
        self._state = (R, t, e) if ok else None
        return TrackedFrame(expression=np.clip(e, 0.0, 1.0), rotation=R, translation=t, rms_px=float(rms), cold=cold,
                            lost=not ok)

    def _realign(self, uv, R, t, e):
        """(R, t, e): the previous frame's head moved rigidly onto this frame's landmarks
        (OpenCV's iterative PnP from the previous pose). The fit's robust loss down-weights
        landmarks that moved far, so a few Levenberg–Marquardt steps from the previous pose lag a
        turning head by degrees; starting them here they do not."""
        import cv2

        lm_B, _ = self.prob.numpy_bases()
        X = self.prob.lm_mean.numpy() + lm_B @ np.r_[self.identity, e]
        ok, rvec, tvec = cv2.solvePnP(X, uv[self.prob.fixed].copy(), self.K, None, cv2.Rodrigues(R)[0],
                                      t.reshape(3, 1).copy(), useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
        if not ok or not np.isfinite(rvec).all() or not np.isfinite(tvec).all() or tvec[2, 0] <= 0:
            return R, t, e
        return cv2.Rodrigues(rvec)[0], tvec[:, 0], e

    def _rms(self, uv, R, t, e, f, pp) -> float:
        """RMS pixel error of the fixed landmarks at the frame's fit."""
        lm_B, _ = self.prob.numpy_bases()
        X = self.prob.lm_mean.numpy() + lm_B @ np.r_[self.identity, e]
        Xc = X @ R.T + t
        proj = f * Xc[:, :2] / np.maximum(Xc[:, 2:3], 1e-3) + np.asarray(pp)
        return float(np.sqrt(np.mean(np.sum((proj - uv[self.prob.fixed]) ** 2, 1))))


def reference_view(translations) -> np.ndarray:
    """[4,4] OpenCV view matrix (head frame -> camera) of the reference camera: straight in front
    of the head (:data:`FRONT`) at the median of ``translations`` [N,3] (metres)."""
    t = np.median(np.asarray(translations, np.float64).reshape(-1, 3), axis=0)
    V = np.eye(4)
    V[:3, :3], V[:3, 3] = FRONT, t
    return V


def head_pose(rotation, translation, V_ref) -> np.ndarray:
    """[4,4] the head's rigid motion ``M = V_ref^-1 [rotation | translation]`` in the head frame
    (module docstring): rendering at a camera ``V`` with the head posed is rendering at ``V M``."""
    V = np.eye(4)
    V[:3, :3], V[:3, 3] = rotation, translation
    return np.linalg.inv(V_ref) @ V
