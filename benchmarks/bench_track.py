"""Expression tracking and driving (issue 22): round trip, GRID lip/eye following, speed. Prints JSON.

    python benchmarks/bench_track.py --out runs/expressions_v2/track.json
    python benchmarks/bench_track.py --photo ../shared/data/london/neutral/003_03.jpg --clips 3

* **Round trip**: the avatar of ``--photo`` (default Generate) rendered at a frontal camera with
  known expression coefficients (relative to its own expression, as ``fastavatar animate`` drives it) (jaw, blinks, inner brows, smile) and head poses (yaw +-15, pitch
  +-8, roll +-5 degrees) over 60 frames, then ``fastavatar track``'s tracker on the renders with
  the avatar's head: RMS error per driven coefficient and over the jaw, mouth, blink and brow
  coefficients, and the head rotation error (the tracker's reference camera differs from the
  render camera by a constant rotation, removed by its mean).
* **Round trip, oracle landmarks** (``--oracle``: this part only, no avatar): the same
  coefficients and poses on the head model itself, its 478 landmarks projected exactly instead of
  rendered and detected, then the same tracker: the error the fit alone adds (labelled oracle: a
  user's frames always go through rendering/photography and MediaPipe).
* **Round trip, several people** (``--round-trip-people``, London ids held out of training;
  default 003, 007, 018, 061: two women and two men, 003's brows under a fringe): the same on
  each one's default avatar, per person and the mean.
* **Head motion alone** (``--head-motion-only``: this part only): the round trip's head poses
  with every coefficient 0 on each person's avatar: what the tracker reports from turning alone
  is the floor of the round trip's error (MediaPipe's landmarks on renders of a turning head do not
  move as the head model's do).
* **GRID**: each clip of ``../shared/data/video/grid`` tracked (with the speaker's own head,
  fitted from the clip's first frames: the speaker is not the avatar's person), the avatar driven by it
  (``fastavatar animate``, at the avatar's photo camera), MediaPipe's lip gap (13-14 over 61-291)
  and eye opening (159-145 and 386-374 over the eye widths) measured on the source frames and on
  the avatar's, and their per-frame Pearson correlation.
* **Speed**: tracking frames per second (landmarks, fit, total) and one driven frame's decode (ms).

Renders and frames are never written (the photos and clips are not ours to share).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import cpu_description, emit  # noqa: E402

os.environ.setdefault("GLOG_minloglevel", "2")
DATA = ROOT.parent / "shared" / "data"
DRIVEN = ("jawOpen", "eyeBlink_L", "eyeBlink_R", "browInnerUp_L", "browInnerUp_R", "mouthSmile_L", "mouthSmile_R")


#: A clip whose speaker blinks: the source's eye opening (over the eye's width) spans at least this.
#: Without a blink it spans 0.03-0.05 (gaze and noise), and a correlation of two flat curves says little.
BLINK_RANGE = 0.1


def _mean(values):
    v = [x for x in values if x is not None]
    return round(float(np.mean(v)), 3) if v else None


def mouth_eyes(front_end, img):
    """(lip gap / mouth width, mean eye opening / eye width) of the largest face, or (nan, nan)."""
    faces = front_end.detect(img, tiles=False)
    if not faces:
        return np.nan, np.nan
    p = faces[0].landmarks
    d = lambda i, j: float(np.linalg.norm(p[i] - p[j]))  # noqa: E731
    return d(13, 14) / d(61, 291), 0.5 * (d(159, 145) / d(33, 133) + d(386, 374) / d(362, 263))


def performance(names, frames: int):
    """(E [frames,53] relative coefficients, yaw/pitch/roll [frames,3] degrees) of the round trip."""
    t = np.arange(frames) / 25.0
    E = np.zeros((frames, 53))
    wave = lambda period, shift=0.0: np.clip(np.sin(2 * np.pi * (t - shift) / period), 0, 1)  # noqa: E731
    E[:, names.index("jawOpen")] = 0.25 * (1 - np.cos(2 * np.pi * t / 1.2))
    for side in ("_L", "_R"):
        E[:, names.index("eyeBlink" + side)] = np.clip(1.5 - np.abs(t - 1.0) / 0.1, 0, 1)
        E[:, names.index("browInnerUp" + side)] = 0.6 * wave(2.4)
        E[:, names.index("mouthSmile" + side)] = 0.6 * wave(2.4, 1.2)
    ypr = np.stack([15 * np.sin(2 * np.pi * t / 2.4), 8 * np.sin(2 * np.pi * t / 1.6), 5 * np.sin(2 * np.pi * t / 3)], 1)
    return E, ypr


def head_motion(ypr, ctr) -> np.ndarray:
    """[4,4] the head's rotation by yaw/pitch/roll ``ypr`` [3] degrees about the point ``ctr`` [3]."""
    from scipy.spatial.transform import Rotation

    M = np.eye(4)
    M[:3, :3] = Rotation.from_euler("yxz", ypr, degrees=True).as_matrix()
    M[:3, 3] = ctr - M[:3, :3] @ ctr
    return M


def scores(names, E, C, Ms, Mt) -> dict:
    """RMS per driven coefficient and over the visible ones; rotation error (mean offset removed)."""
    from scipy.spatial.transform import Rotation

    frames = len(E)
    vis = [i for i, n in enumerate(names) if n.startswith(("jaw", "mouth", "eyeBlink", "brow"))]
    offset = Rotation.from_matrix(np.array([Mt[k] @ Ms[k][:3, :3].T for k in range(frames)])).mean().as_matrix()
    err = [np.degrees(Rotation.from_matrix(Mt[k].T @ offset @ Ms[k][:3, :3]).magnitude()) for k in range(frames)]
    per = np.sqrt(np.mean((C[:, vis] - E[:, vis]) ** 2, axis=0))
    return {"rms_driven": {n: round(float(np.sqrt(np.mean((C[:, names.index(n)] - E[:, names.index(n)]) ** 2))), 3)
                           for n in DRIVEN},
            "rms_visible_all": round(float(np.sqrt(np.mean((C[:, vis] - E[:, vis]) ** 2))), 3),
            "rms_visible_worst": {names[vis[j]]: round(float(per[j]), 3) for j in np.argsort(-per)[:8]},
            "rotation_error_deg": {"mean": round(float(np.mean(err)), 2), "max": round(float(np.max(err)), 2)}}


def round_trip_oracle(frames: int = 60, size: int = 320) -> dict:
    """The round trip with the head model's landmarks projected exactly (module docstring)."""
    from fastavatar_engine.cameras import intrinsics, orbit_c2w, viewmat_from_c2w
    from fastavatar_engine.expressions.video import EXPRESSION_WEIGHT, NEUTRAL_PERCENTILE
    from fastavatar_engine.head.basis import load_head_model
    from fastavatar_engine.head.track import HeadTracker

    m = load_head_model()
    names, head = m.expression_names, m.rest_identity()
    rest = np.asarray(m.registration["rest_expression"], np.float64)
    marks = m.landmark_binding()
    ctr = m.vertices(head)[m.landmarks68].mean(0)
    c2w, K = orbit_c2w(0, 0, 0.55, ctr), intrinsics(1.6 * size, 1.6 * size, size / 2, size / 2)
    E, ypr = performance(names, frames)
    tracker = HeadTracker(head, K, expression_weight=EXPRESSION_WEIGHT)
    C, Ms, Mt = [], [], []
    for k in range(frames):
        Ms.append(head_motion(ypr[k], ctr))
        P = marks.points(m.vertices(head, rest + E[k]), m.triangles)
        P[~np.isfinite(P).all(1)] = P[1]  # the iris points (not on the skin) are not fitted
        vm = viewmat_from_c2w(np.linalg.inv(Ms[k]) @ c2w)
        Xc = P @ vm[:3, :3].T + vm[:3, 3]
        fr = tracker.step(K[0, 0] * Xc[:, :2] / Xc[:, 2:3] + K[:2, 2])
        C.append(fr.expression)
        Mt.append(fr.rotation)  # head -> camera: the render camera's rotation times M_k (removed by scores)
    C = np.array(C)
    C = np.clip(C - np.percentile(C, NEUTRAL_PERCENTILE, axis=0), 0, 1)  # as track()'s neutral calibration
    return {"frames": frames, "landmarks": "oracle: the head model's, projected", **scores(names, E, C, Ms, Mt)}


def round_trip(gen, av, frames: int = 60, size: int = 320, still: bool = False) -> dict:
    from fastavatar_engine.animate import expression_delta
    from fastavatar_engine.cameras import intrinsics, orbit_c2w
    from fastavatar_engine.gaussians import pack_gaussians, unpack_gaussians
    from fastavatar_engine.expressions.video import track
    from fastavatar_engine.render import render_to_uint8

    m = gen.model.head_template.model
    names = m.expression_names
    ctr = m.vertices(av.head)[m.landmarks68].mean(0)
    c2w, K = orbit_c2w(0, 0, 0.55, ctr), intrinsics(1.6 * size, 1.6 * size, size / 2, size / 2)
    E, ypr = performance(names, frames)
    if still:  # head motion alone
        E = np.zeros_like(E)
    imgs, Ms = [], []
    base = pack_gaussians(av.gaussians)
    for k in range(frames):
        M = head_motion(ypr[k], ctr)  # about the face's centre
        Ms.append(M)
        g = unpack_gaussians(base + expression_delta(gen.model, av.code, av.head, E[k], av.parents))
        imgs.append(render_to_uint8(g, np.linalg.inv(M) @ c2w, K, size, size))
    seq = track(imgs, identity=av.head, fps=25, smooth=0.0)
    Mt = [seq.head_matrix(k)[:3, :3] for k in range(frames)]
    return {"frames": frames, "size": size, **scores(names, E, seq.coefficients, Ms, Mt),
            "timing": seq.extra.get("timing")}


def grid(gen, avatar_path, clips: list, size: int) -> list:
    import tempfile

    from fastavatar_engine.animate import animate
    from fastavatar_engine.edit import read_coded_avatar
    from fastavatar_engine.expressions.video import open_frames, track
    from fastavatar_engine.images import load_image

    coded = read_coded_avatar(avatar_path)
    rows = []
    for clip in clips:
        frames = list(open_frames(clip)[0])
        seq = track(frames, fps=25)  # the speaker's own head, fitted from the first frames (another person)
        with tempfile.TemporaryDirectory() as tmp:
            paths = animate(gen.model, coded, seq, tmp, size=size)
            drv = np.array([mouth_eyes(gen.front_end, load_image(p)) for p in paths])
        src = np.array([mouth_eyes(gen.front_end, f) for f in frames])
        ok = np.isfinite(src).all(1) & np.isfinite(drv).all(1)
        corr = [float(np.corrcoef(src[ok, j], drv[ok, j])[0, 1]) if ok.sum() > 2 else None for j in (0, 1)]
        rows.append({"clip": Path(clip).name, "frames": len(frames), "frames_scored": int(ok.sum()),
                     "source_eye_range": round(float(np.ptp(src[ok, 1])), 3) if ok.any() else None,
                     "lip_gap_correlation": None if corr[0] is None else round(corr[0], 3),
                     "eye_opening_correlation": None if corr[1] is None else round(corr[1], 3),
                     "tracking_fps": seq.extra["timing"]["total_fps"]})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_photo = DATA / "london" / "neutral" / "003_03.jpg"
    ap.add_argument("--photo", default=str(default_photo) if default_photo.is_file() else None,
                    help="the avatar's photo (default London 003, held out of training; else the astronaut)")
    ap.add_argument("--round-trip-people", default="003,007,018,061",
                    help="London people (held out of training) whose avatars also do the round trip; '' for none")
    ap.add_argument("--clips", type=int, default=None, help="how many GRID clips (default all; 0: none)")
    ap.add_argument("--size", type=int, default=512, help="driven frames' longer side (pixels)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--oracle", action="store_true", help="only the round trip on oracle landmarks (seconds)")
    ap.add_argument("--head-motion-only", action="store_true",
                    help="only the round trip's head motion with no expression, on --round-trip-people's avatars")
    args = ap.parse_args()
    if args.oracle:
        result = {"benchmark": "track_oracle", "machine": cpu_description(), "date": time.strftime("%Y-%m-%d"),
                  "command": "python benchmarks/bench_track.py " + " ".join(sys.argv[1:]),
                  "round_trip_oracle": round_trip_oracle()}
        emit(result, args.out)
        return

    import tempfile

    import torch

    if args.head_motion_only:
        from fastavatar_engine.generate import AvatarGenerator

        people = {}
        with AvatarGenerator() as gen:
            for pid in [p.strip() for p in args.round_trip_people.split(",") if p.strip()]:
                av = gen.generate(str(DATA / "london" / "neutral" / f"{pid}_03.jpg"), refine_steps=40)
                r = round_trip(gen, av, still=True)
                people[pid] = {k: r[k] for k in ("rms_visible_all", "rms_visible_worst", "rotation_error_deg")}
                print(json.dumps({pid: people[pid]}), file=sys.stderr, flush=True)
        result = {"benchmark": "track_head_motion_only", "machine": cpu_description(), "date": time.strftime("%Y-%m-%d"),
                  "command": "python benchmarks/bench_track.py " + " ".join(sys.argv[1:]), "people": people,
                  "rms_visible_all_mean": round(float(np.mean([r["rms_visible_all"] for r in people.values()])), 3)}
        emit(result, args.out)
        return

    from fastavatar_engine.animate import Animator
    from fastavatar_engine.edit import read_coded_avatar
    from fastavatar_engine.generate import AvatarGenerator, save_avatar

    t_all = time.perf_counter()
    with AvatarGenerator() as gen, tempfile.TemporaryDirectory() as tmp:
        if args.photo:
            photo, name = args.photo, Path(args.photo).name
        else:
            from skimage import data

            photo, name = data.astronaut(), "skimage astronaut"
        av = gen.generate(photo, refine_steps=40)
        ply, _ = save_avatar(av, Path(tmp) / "avatar.ply")
        rt = round_trip(gen, av)
        print(json.dumps({"round_trip": rt}), file=sys.stderr, flush=True)
        people = {}
        for pid in [p for p in args.round_trip_people.split(",") if p.strip()]:
            path = DATA / "london" / "neutral" / f"{pid.strip()}_03.jpg"
            if path.is_file() and args.photo and Path(args.photo).resolve() == path.resolve():
                people[pid.strip()] = r = rt  # the main avatar's
            elif path.is_file():
                people[pid.strip()] = r = round_trip(gen, gen.generate(str(path), refine_steps=40))
                print(json.dumps({"round_trip_" + pid: r}), file=sys.stderr, flush=True)
        panel = None
        if people:
            rows = list(people.values())
            panel = {"people": people,
                     "rms_visible_all_mean": round(float(np.mean([r["rms_visible_all"] for r in rows])), 3),
                     "rms_driven_mean": {n: round(float(np.mean([r["rms_driven"][n] for r in rows])), 3) for n in DRIVEN},
                     "rotation_error_deg_mean": round(float(np.mean([r["rotation_error_deg"]["mean"] for r in rows])), 2)}
        anim = Animator(gen.model, read_coded_avatar(ply))
        e = np.zeros(53)
        with torch.no_grad():
            anim.gaussians(e)
            t = time.perf_counter()
            for k in range(10):
                e[24 + k % 3] = 0.1 * k
                anim.gaussians(e)
        decode_ms = 1e3 * (time.perf_counter() - t) / 10
        clips = sorted((DATA / "video" / "grid").glob("*.mpg"))[: args.clips]
        rows = grid(gen, ply, clips, args.size) if clips else []
    lip = [r["lip_gap_correlation"] for r in rows if r["lip_gap_correlation"] is not None]
    eye = [r["eye_opening_correlation"] for r in rows if r["eye_opening_correlation"] is not None]
    result = {"benchmark": "track", "machine": cpu_description(), "date": time.strftime("%Y-%m-%d"),
              "command": "python benchmarks/bench_track.py " + " ".join(sys.argv[1:]), "avatar_photo": name,
              "round_trip": rt, "round_trip_people": panel, "driven_frame_decode_ms": round(decode_ms, 1),
              "grid": {"clips": len(rows), "lip_gap_correlation_mean": round(float(np.mean(lip)), 3) if lip else None,
                       "lip_gap_correlation_min": round(float(np.min(lip)), 3) if lip else None,
                       "eye_opening_correlation_mean": round(float(np.mean(eye)), 3) if eye else None,
                       "eye_opening_correlation_mean_blinking": _mean([r["eye_opening_correlation"] for r in rows
                                                                       if (r["source_eye_range"] or 0) >= BLINK_RANGE]),
                       "rows": rows},
              "time_s": round(time.perf_counter() - t_all, 1)}
    emit(result, args.out)


if __name__ == "__main__":
    main()
