"""``fastavatar track`` (a video, a folder of frames or an ARKit CSV -> an expressions JSON) and
``fastavatar animate`` (an avatar driven by one: a PNG, and optionally a PLY, per frame).

    fastavatar track talking.mp4 -o expressions.json                 # the speaker's head fitted from the first frames
    fastavatar track me_talking.mp4 -o expressions.json --avatar me.ply  # the video shows the avatar's person
    fastavatar track frames/ -o expressions.json --fps 25
    fastavatar track livelinkface.csv -o expressions.json            # an iPhone Live Link Face recording
    fastavatar animate me.ply expressions.json -o frames/ [--size 512] [--ply]

The file format is :mod:`fastavatar_engine.expressions.sequence`'s; tracking is
:mod:`fastavatar_engine.expressions.video`'s, driving :mod:`fastavatar_engine.animate`'s.
"""

from __future__ import annotations

import json
import math
import sys
import time


def _progress(label: str):
    state = {"t0": time.perf_counter(), "last": 0.0}

    def report(done: int, total: int | None) -> bool:
        now = time.perf_counter()
        if now - state["last"] >= 1.0 or done == total:
            state["last"] = now
            el = now - state["t0"]
            rate = done / max(el, 1e-9)
            left = "" if not total else f", ~{(total - done) / max(rate, 1e-9):.0f}s left"
            print(f"{label} {done}/{total or '?'} frames  {rate:.1f} frames/s{left}", file=sys.stderr)
        return True

    return report


def cmd_track(args) -> int:
    from pathlib import Path

    from .cli_errors import CliError
    from .expressions.sequence import ExpressionFileError

    if args.fps is not None and not (math.isfinite(args.fps) and 0 < args.fps <= 1000):
        raise CliError(f"--fps must be in (0, 1000], got {args.fps}")
    if not (math.isfinite(args.smooth) and 0 <= args.smooth <= 50):
        raise CliError(f"--smooth must be in [0, 50] frames, got {args.smooth}")
    src = Path(args.input)
    try:
        if src.suffix.lower() == ".csv":
            from .expressions.arkit import read_arkit_csv

            seq = read_arkit_csv(src, fps=args.fps).smoothed(args.smooth)
        else:
            from .expressions.video import NEUTRAL_PERCENTILE, track

            identity = None
            if args.avatar:
                from .edit import EditError, read_coded_avatar

                try:
                    identity = read_coded_avatar(args.avatar).head
                except EditError as exc:
                    raise CliError(str(exc)) from None
                if identity is None:
                    raise CliError(f"{args.avatar}: the avatar carries no head shape (made without the head model)")
            seq = track(src, identity=identity, fps=args.fps, smooth=args.smooth, progress=_progress("track"),
                        neutral=None if args.absolute else NEUTRAL_PERCENTILE)
    except ExpressionFileError as exc:
        raise CliError(str(exc)) from None
    out = seq.save(args.output)
    summary = {"output": str(out), "frames": seq.num_frames, "fps": seq.fps, "missing": int(seq.missing.sum())}
    summary.update({k: v for k, v in seq.extra.items() if k in ("timing", "landmark_rms_px_median")})
    print(json.dumps(summary))
    return 0


def cmd_animate(args) -> int:
    from .animate import AnimateError, animate
    from .cli_errors import CliError
    from .edit import EditError, read_coded_avatar
    from .expressions import load_expressions
    from .expressions.sequence import ExpressionFileError
    from .model.io import FastAvatarModel

    try:
        avatar = read_coded_avatar(args.avatar)
        seq = load_expressions(args.expressions)
        model = FastAvatarModel.load(args.weights)
        report = _progress("animate")
        paths = animate(model, avatar, seq, args.output, size=args.size, ply=args.ply,
                        progress=lambda done, total: report(done, total))
    except (EditError, ExpressionFileError, AnimateError) as exc:
        raise CliError(str(exc)) from None
    print(json.dumps({"output": str(args.output), "frames": len(paths), "fps": seq.fps, "ply": bool(args.ply)}))
    return 0


def add_expression_parsers(sub) -> None:
    """Add the ``track`` and ``animate`` sub-commands to ``sub`` (argparse sub-parsers)."""
    a = sub.add_parser("animate", help="drive an avatar with an expressions JSON (or ARKit CSV): PNG (+ PLY) per frame")
    a.add_argument("avatar", help="an avatar PLY with its .fastavatar.json sidecar")
    a.add_argument("expressions", help="expressions JSON from 'fastavatar track' (or a Live Link Face .csv)")
    a.add_argument("-o", "--output", required=True, help="folder for frame_00000.png ...")
    a.add_argument("--size", type=int, default=512, help="longer side of the frames, pixels (default 512)")
    a.add_argument("--ply", action="store_true", help="also write the posed Gaussians of every frame as PLY")
    a.add_argument("--weights", help="model bundle folder (default: the packaged model)")
    a.set_defaults(func=cmd_animate)
    t = sub.add_parser("track", help="video / frames folder / ARKit CSV -> per-frame expressions and head pose (JSON)")
    t.add_argument("input", help="a video file, a folder of frames, or a Live Link Face .csv")
    t.add_argument("-o", "--output", required=True, help="the expressions JSON to write")
    t.add_argument("--avatar", help="an avatar PLY (with its .fastavatar.json) of the person in the video: hold "
                                    "its head shape fixed (default: fitted from the first frames; use that when "
                                    "someone else drives the avatar)")
    t.add_argument("--fps", type=float, default=None,
                   help="frame rate (default: the video's; 30 for a folder; the timecode's for a CSV)")
    t.add_argument("--smooth", type=float, default=1.0, help="temporal smoothing, Gaussian sigma in frames (0: off)")
    t.add_argument("--absolute", action="store_true",
                   help="keep the head model's absolute coefficients (default: relative to the performer's neutral "
                        "face, the 5th percentile of each coefficient over the clip, as avatars take them)")
    t.set_defaults(func=cmd_track)
