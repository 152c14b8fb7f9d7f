"""Video (or a folder of frames) -> :class:`.sequence.ExpressionSequence`: ``fastavatar track``.

Per frame: the 478 MediaPipe landmarks (:class:`~fastavatar_engine.face.FaceFrontEnd`, the
face's box carried over from the previous frame so the detectors run only when the face is lost),
then the 53 expression coefficients and the head pose with the identity held fixed
(:class:`~fastavatar_engine.head.track.HeadTracker`). The identity is the avatar's when given,
else one :func:`~fastavatar_engine.head.fit.fit_head` over up to ``init_frames`` frames spread over
the first ``init_window`` frames with a face. The video's camera has the default field of view
(:func:`~fastavatar_engine.face.pose.default_intrinsics`), as a photo without EXIF. Frames
without a face, or whose fit stays above the tracker's error bound, are marked missing and
interpolated; the sequence is then smoothed over time (``smooth`` frames, Gaussian).

Frames are decoded by OpenCV (``cv2.VideoCapture``: whatever its FFmpeg build reads: mp4, mpg,
avi, mov ...), or read from a folder of images in name order.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .sequence import ExpressionFileError, ExpressionSequence, matrix_to_quaternion

#: The L1 weight on the expression coefficients while tracking. The photo fit's (head.fit.EXPRESSION_WEIGHT,
#: 5) outweighs what a blink or a raised brow adds to the landmark term, so video blinks came out 0.
#: On two GRID clips (python benchmarks/bench_track.py --clips 2; per-frame correlation between
#: the source's and the driven avatar's lip gap / eye opening): 5 -> 0.62 / 0.07, 1 -> 0.78 / 0.59,
#: 0.5 -> 0.80 / 0.70, 0.2 -> 0.72 / 0.64.
EXPRESSION_WEIGHT = 0.5
#: percentile per coefficient taken as the performer's neutral (track's ``neutral``)
NEUTRAL_PERCENTILE = 5.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: Frames beyond this are refused (about 9 hours at 30 frames/s).
MAX_FRAMES = 1_000_000


class TrackCancelled(Exception):
    """The progress callback asked to stop."""


def open_frames(source, fps: float | None = None) -> tuple[Iterator[np.ndarray], float, int | None]:
    """(iterator of [H,W,3] uint8 RGB frames, frames per second, frame count or None) for a video
    file, a folder of images or a list of [H,W,3] uint8 RGB arrays (``fps`` default 30 for a
    folder or a list; for a video, its own rate unless given). Raises :class:`ExpressionFileError` for a path that is neither, a video OpenCV cannot
    open, or a folder without images."""
    import cv2

    if isinstance(source, (list, tuple)):  # frames already in memory (tests, the engine service)
        frames = [np.asarray(f) for f in source]
        if not frames or any(f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8 for f in frames):
            raise ExpressionFileError("frames: expected a non-empty list of [H,W,3] uint8 RGB arrays")
        return iter(frames), float(fps or 30.0), len(frames)
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ExpressionFileError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")

        def images():
            from ..images import load_image

            for f in files:
                yield load_image(f)

        return images(), float(fps or 30.0), len(files)
    if not path.is_file():
        raise ExpressionFileError(f"{path}: no such video file or folder of frames")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ExpressionFileError(f"{path}: cannot open this video (OpenCV/FFmpeg could not read it)")
    rate = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) or None

    def frames():
        try:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                yield np.ascontiguousarray(bgr[:, :, ::-1])
        finally:
            cap.release()

    first = None
    it = frames()
    try:
        first = next(it)
    except StopIteration:
        raise ExpressionFileError(f"{path}: the video has no readable frame") from None

    def chained():
        yield first
        yield from it

    return chained(), float(fps or (rate if 0 < rate <= 1000 else 30.0)), count


def track(source, identity=None, fps: float | None = None, smooth: float = 1.0, front_end=None,
          progress: Callable[[int, int | None], bool | None] | None = None, init_frames: int = 8,
          init_window: int = 60, iterations: int = 6, neutral: float | None = NEUTRAL_PERCENTILE) -> ExpressionSequence:
    """Track ``source`` (a video file or a folder of frames); returns the smoothed sequence, its
    coefficients relative to the performer's neutral (``neutral``-th percentile per coefficient,
    :meth:`ExpressionSequence.relative_to_neutral`; None: the head model's absolute values).

    ``identity``: [100] head identity coefficients (an avatar's sidecar ``head``), or None to fit
    it from the first frames. ``progress(frames done, total or None)`` is called every frame;
    returning False raises :class:`TrackCancelled`. The result's ``extra["timing"]`` holds the
    frames per second of the landmarks and of the fit. Raises :class:`ExpressionFileError` for an
    unreadable source or one where no frame has a face."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):  # the fit's small LAPACK solves lose more to BLAS threads than they gain
        seq = _track(source, identity, fps, smooth, front_end, progress, init_frames, init_window, iterations)
    return seq if neutral is None else seq.relative_to_neutral(neutral)


def _track(source, identity, fps, smooth, front_end, progress, init_frames, init_window, iterations):
    from ..face import FaceFrontEnd
    from ..face.pose import default_intrinsics

    frames, fps, total = open_frames(source, fps)
    name = f"<{total} frames>" if isinstance(source, (list, tuple)) else str(source)
    own = front_end is None
    fe = front_end or FaceFrontEnd()
    try:
        buffer, results, K, tracker, prev = [], [], None, None, None
        t_mesh = t_fit = 0.0
        n = 0
        for img in frames:
            if n >= MAX_FRAMES:
                raise ExpressionFileError(f"{name}: more than {MAX_FRAMES} frames")
            if K is None:
                K = default_intrinsics(img.shape[1], img.shape[0])
                size = (img.shape[1], img.shape[0])
            elif (img.shape[1], img.shape[0]) != size:
                raise ExpressionFileError(f"{name}: frame {n} is {img.shape[1]}x{img.shape[0]}, not "
                                          f"{size[0]}x{size[1]} like the first")
            t = time.perf_counter()
            face = fe.track(img, prev)
            t_mesh += time.perf_counter() - t
            prev = face
            lm = None if face is None else np.asarray(face.landmarks, np.float64)
            n += 1
            if tracker is None:
                buffer.append(lm)
                with_face = [x for x in buffer if x is not None]
                if len(with_face) >= init_window or (identity is not None and with_face):
                    tracker, dt = _start(identity, K, size, with_face, init_frames, iterations)
                    t_fit += dt
                    t = time.perf_counter()
                    results += [_fit(tracker, x) for x in buffer]
                    t_fit += time.perf_counter() - t
                    buffer = []
            else:
                t = time.perf_counter()
                results.append(_fit(tracker, lm))
                t_fit += time.perf_counter() - t
            if progress is not None and progress(n, total) is False:
                raise TrackCancelled()
        if tracker is None:  # a short clip: fewer frames with a face than the window
            with_face = [x for x in buffer if x is not None]
            if not with_face:
                raise ExpressionFileError(f"{name}: no face in any of its {n} frames")
            tracker, dt = _start(identity, K, size, with_face, init_frames, iterations)
            t_fit += dt
            t = time.perf_counter()
            results += [_fit(tracker, x) for x in buffer]
            t_fit += time.perf_counter() - t
    finally:
        if own:
            fe.close()
    seq = _sequence(results, fps, tracker, K, size, name)
    seq.extra["timing"] = {"frames": n, "landmarks_fps": round(n / max(t_mesh, 1e-9), 1),
                           "fit_fps": round(n / max(t_fit, 1e-9), 1),
                           "total_fps": round(n / max(t_mesh + t_fit, 1e-9), 1)}
    return seq.fill_missing().smoothed(smooth)


def _start(identity, K, size, faces_lm, init_frames: int, iterations: int):
    """(tracker, seconds): the identity given, or fitted jointly over up to ``init_frames`` of the
    landmark sets ``faces_lm`` spread evenly."""
    from ..face.types import Face
    from ..head.fit import fit_head
    from ..head.track import HeadTracker

    t = time.perf_counter()
    if identity is None:
        pick = np.unique(np.linspace(0, len(faces_lm) - 1, min(init_frames, len(faces_lm))).round().astype(int))
        faces = [Face(box=np.r_[faces_lm[i][:468].min(0), faces_lm[i][:468].max(0)], score=1.0,
                      landmarks5=np.zeros((5, 2)), landmarks=faces_lm[i], image_size=size) for i in pick]
        identity = fit_head(faces, Ks=[K] * len(faces)).identity
    tracker = HeadTracker(identity, K, iterations=iterations, expression_weight=EXPRESSION_WEIGHT)
    return tracker, time.perf_counter() - t


def _fit(tracker, lm):
    """The tracker's frame for landmarks ``lm`` (None: no face -> None, and the next frame starts cold)."""
    if lm is None:
        tracker.reset()
        return None
    fr = tracker.step(lm)
    return None if fr.lost else fr


def _sequence(results, fps, tracker, K, size, source) -> ExpressionSequence:
    """The raw sequence (missing frames zero) with head poses relative to the reference camera."""
    from ..head.track import head_pose, reference_view

    F = len(results)
    names = tracker.model.expression_names
    C, Q, T = np.zeros((F, len(names))), np.tile([1.0, 0, 0, 0], (F, 1)), np.zeros((F, 3))
    missing = np.array([r is None for r in results])
    found = [r for r in results if r is not None]
    if not found:
        raise ExpressionFileError(f"{source}: no frame could be fitted")
    V_ref = reference_view([r.translation for r in found])
    for i, r in enumerate(results):
        if r is None:
            continue
        M = head_pose(r.rotation, r.translation, V_ref)
        C[i], Q[i], T[i] = r.expression, matrix_to_quaternion(M[:3, :3]), M[:3, 3]
    camera = {"view": np.round(V_ref, 6).tolist(), "K": np.round(K, 4).tolist(), "image_size": list(size)}
    rms = [r.rms_px for r in found]
    return ExpressionSequence(fps, list(names), C, Q, T, missing, source, tracker.identity, camera,
                              {"landmark_rms_px_median": round(float(np.median(rms)), 2)})
