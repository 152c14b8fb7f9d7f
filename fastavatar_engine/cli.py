"""The ``fastavatar`` command line.

    fastavatar detect PHOTO [--face-index N] [--json OUT]     faces, landmarks and a camera, as JSON
    fastavatar render PLY --out PNG [--view front,left,...]   look at any 3DGS PLY or point cloud

Exit status: 0 on success, 2 for a usage error or a bad input file (the message says which file
and why), 1 for anything unexpected.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

#: Named views for ``render --view``: (yaw, pitch) in degrees around the model's centre. The head
#: faces +z, so yaw 0 is the front; positive yaw moves the camera to the subject's left (+x).
NAMED_VIEWS = {
    "front": (0.0, 0.0),
    "left": (90.0, 0.0),
    "right": (-90.0, 0.0),
    "back": (180.0, 0.0),
    "top": (0.0, 80.0),
    "three-quarter": (35.0, 10.0),
    "three-quarter-right": (-35.0, 10.0),
}


from .cli_errors import CliError  # noqa: E402 (re-exported: tests and callers import it from here)


# --------------------------------------------------------------------------- render
def _parse_colour(text: str) -> tuple[float, float, float]:
    names = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "grey": (0.5, 0.5, 0.5), "gray": (0.5, 0.5, 0.5)}
    if text.lower() in names:
        return names[text.lower()]
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3 or not all(0.0 <= v <= 1.0 for v in vals):
        raise CliError(f"--background: expected white, black, grey or 'R,G,B' in [0,1], got {text!r}")
    return vals  # type: ignore[return-value]


def _auto_point_size(points: np.ndarray) -> float:
    """0.8 x the median nearest-neighbour spacing (metres), from up to 2,000 sampled points."""
    n = len(points)
    if n < 2:
        return 0.01
    rng = np.random.default_rng(0)
    sample = points[rng.choice(n, size=min(n, 2000), replace=False)]
    best = np.full(len(sample), np.inf)
    for chunk in np.array_split(points, max(1, n // 4000)):
        d = ((sample[:, None, :] - chunk[None, :, :]) ** 2).sum(-1)
        d[d == 0] = np.inf  # the point itself
        best = np.minimum(best, d.min(1))
    finite = best[np.isfinite(best)]
    return float(0.8 * np.sqrt(np.median(finite))) if len(finite) else 0.0  # 0: every point coincides


def _load_for_render(path: Path, point_size: str):
    from .ply import PlyFormatError, read_point_cloud

    try:
        g = read_point_cloud(path)
    except PlyFormatError as exc:
        raise CliError(str(exc)) from exc
    if not g.extra.get("point_cloud"):
        return g, "gaussians"
    if point_size == "auto":
        size = _auto_point_size(g.means.astype(np.float64))
        if not size > 0:
            raise CliError(f"{path}: all {len(g)} points lie at one position; nothing to frame "
                           "(pass --point-size and a --distance to draw them anyway)")
    else:
        size = float(point_size)
    if not size > 0:
        raise CliError(f"--point-size must be positive, got {point_size}")
    g.log_scales[:] = np.float32(math.log(size))
    return g, f"point cloud ({len(g)} points drawn as {1000 * size:.2f} mm splats)"


def _framing(means: np.ndarray) -> tuple[np.ndarray, float]:
    """Robust centre and radius (metres) of a Gaussian set: 1st-99th percentile box."""
    lo, hi = np.percentile(means, 1, axis=0), np.percentile(means, 99, axis=0)
    centre = 0.5 * (lo + hi)
    radius = float(np.percentile(np.linalg.norm(means - centre, axis=1), 99))
    return centre, max(radius, 1e-3)


def cmd_render(args) -> int:
    from .cameras import CameraError, intrinsics_from_fov, load_subject, orbit_c2w
    from .images import save_png
    from .render import render_to_uint8

    path = Path(args.ply)
    g, kind = _load_for_render(path, args.point_size)
    background = _parse_colour(args.background)
    tiles, described = [], []
    if args.camera:
        cam_path = Path(args.camera)
        root = cam_path.parent if cam_path.is_file() else cam_path
        try:
            subject = load_subject(root)
            view = subject.view(args.camera_index)
        except (CameraError, KeyError) as exc:
            raise CliError(str(exc)) from exc
        tiles.append(render_to_uint8(g, view.c2w, view.K, view.width, view.height, background, args.backend, args.device))
        described.append(f"camera {view.camera_index} of {root}")
    else:
        width, height = args.size
        if not (16 <= width <= 8192 and 16 <= height <= 8192):
            raise CliError(f"--size must be within 16..8192 pixels, got {width}x{height}")
        centre, radius = _framing(g.means.astype(np.float64))
        fov = math.radians(args.fov)
        fov_y = 2.0 * math.atan(math.tan(0.5 * fov) * height / width)
        # the bounding sphere fits the narrower of the two fields of view, with a 8% margin
        distance = args.distance or 1.08 * radius / math.sin(0.5 * min(fov, fov_y))
        K = intrinsics_from_fov(width, height, fov)
        if args.yaw is not None or args.pitch is not None:
            views = [("custom", (args.yaw or 0.0, args.pitch or 0.0))]
        else:
            names = [v.strip() for v in args.view.split(",") if v.strip()]
            unknown = [v for v in names if v not in NAMED_VIEWS]
            if unknown or not names:
                raise CliError(f"--view: unknown view(s) {unknown}; choose from {', '.join(NAMED_VIEWS)}")
            views = [(n, NAMED_VIEWS[n]) for n in names]
        for name, (yaw, pitch) in views:
            c2w = orbit_c2w(yaw, pitch, distance, target=centre)
            tiles.append(render_to_uint8(g, c2w, K, width, height, background, args.backend, args.device))
            described.append(f"{name} (yaw {yaw:g}, pitch {pitch:g})")
    image = tiles[0] if len(tiles) == 1 else np.concatenate(tiles, axis=1)
    out = save_png(args.out, image)
    print(json.dumps({"ply": str(path), "content": kind, "gaussians": len(g), "views": described,
                      "out": str(out), "width": int(image.shape[1]), "height": int(image.shape[0])}))
    return 0


# --------------------------------------------------------------------------- detect
class _QuietNativeStderr:
    """Send file descriptor 2 to /dev/null inside the block (MediaPipe's C++ logging writes
    there before absl is initialised, so its environment switches cannot silence it).
    Python-level errors are raised after the block and still reach the user."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def __enter__(self):
        if self.enabled:
            import os

            sys.stderr.flush()
            self._saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            import os

            os.dup2(self._saved, 2)
            os.close(self._saved)
        return False


def cmd_detect(args) -> int:
    import os

    # MediaPipe's C++ logging writes INFO/WARNING lines to stderr; keep them out of the way.
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from .cameras import intrinsics
    from .face import FaceFrontEnd, create_embedder, select_face
    from .face.segment import PersonSegmenter
    from .images import load_image

    image = load_image(args.image)
    h, w = image.shape[:2]
    K = None
    if args.focal_px is not None:
        if not args.focal_px > 0:
            raise CliError(f"--focal-px must be positive, got {args.focal_px}")
        K = intrinsics(args.focal_px, args.focal_px, 0.5 * w, 0.5 * h)
    with _QuietNativeStderr(not args.verbose), FaceFrontEnd() as fe:
        faces = fe.detect(image)
        face = select_face(faces, args.face_index, image_name=str(args.image))  # NoFaceError / FaceIndexError
        segmenter = PersonSegmenter()
        report = fe.describe(image, with_camera=True, K=K, dense=not args.no_dense, faces=faces,
                             camera_fn=lambda f, K_: _head_camera(f, K_, segmenter.segment(image, f)))
        segmenter.close()
    report["image"] = str(args.image)
    report["selected_face"] = next(i for i, f in enumerate(faces) if f is face)
    if args.embed:
        embedder = create_embedder(args.embedder)
        report["faces"][report["selected_face"]]["embedding"] = {
            "model": embedder.name, "dim": embedder.dim,
            "values": [round(float(v), 6) for v in embedder.embed(image, face)],
        }
    text = json.dumps(report, indent=None if args.compact else 2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


def _head_camera(face, K, mask=None):
    """(camera, {"head": ...}) of one face from the head fit on its landmarks and the photo's person
    ``mask`` ([H,W] or None); PnP when the fit does not converge."""
    import warnings

    from .generate import photo_head

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (camera,), fit = photo_head([face], Ks=[K], masks=[mask])
    if fit is None:
        return camera, {"head": None, "camera_source": "pnp_template",
                        "camera_warning": "; ".join(str(w.message) for w in caught)}
    from .head import load_head_model

    names = load_head_model().expression_names
    ex = fit.expressions[0]
    return camera, {"camera_source": "head_fit", "head": {
        "identity": [round(float(v), 4) for v in fit.identity],
        "expression": {names[i]: round(float(ex[i]), 3) for i in np.argsort(-ex) if ex[i] >= 0.05},
        "landmark_rms_px": round(float(fit.rms_px[0]), 2), "fit_ms": round(1e3 * fit.seconds, 1)}}


# --------------------------------------------------------------------------- generate / evaluate
def _progress_bar(label: str):
    state = {"t0": None}

    def report(step: int, total: int, loss: float) -> bool:
        import time

        if state["t0"] is None:
            state["t0"] = time.perf_counter()
        if step == total or step % max(1, total // 20) == 0:
            el = time.perf_counter() - state["t0"]
            eta = el / step * (total - step)
            print(f"{label} {step}/{total}  loss {loss:.4f}  {el:.0f}s elapsed, ~{eta:.0f}s left", file=sys.stderr)
        return True

    return report


def cmd_generate(args) -> int:
    from .generate import DEFAULT_FIT_STEPS, AvatarGenerator, preview_strip, save_avatar
    from .images import load_image, save_png

    if args.refine is None:
        args.refine = DEFAULT_FIT_STEPS
    if args.refine < 0:
        raise CliError(f"--refine must be >= 0, got {args.refine}")
    images = [load_image(p) for p in args.photo]
    image = images[0]
    with _QuietNativeStderr(not args.verbose):
        gen = AvatarGenerator(args.weights, device=args.device or "cpu", embedder=args.embedder)
    try:
        with _QuietNativeStderr(not args.verbose):
            if len(images) == 1:
                avatar = gen.generate(image, face_index=args.face_index)
            else:  # several photos of one person: fused code, refinement against all of them
                avatar = gen.generate_multi(images, face_index=args.face_index)
                for view, path in zip(avatar.views, args.photo):
                    view.name = str(path)
        avatar.photo = str(args.photo[0])
        if args.refine:
            gen.refine(avatar, image, args.refine, progress=_progress_bar("fit" if args.refine == DEFAULT_FIT_STEPS
                                                                          else "refine"), mode=args.refine_mode,
                       geometry_anchor=args.geometry_anchor, precision=args.precision)
        ply, meta = save_avatar(avatar, args.output)
        out = {"ply": str(ply), "metadata": str(meta), "gaussians": len(avatar.gaussians),
               "model_id": avatar.model_id, "refined_steps": avatar.refined_steps,
               "camera": {k: avatar.camera.to_json()[k] for k in ("yaw_deg", "pitch_deg", "roll_deg", "distance_m")},
               "timings_ms": {k: round(v, 1) for k, v in avatar.timings_ms.items()}}
        if args.preview:
            out["preview"] = str(save_png(args.preview, preview_strip(avatar, image)))
    finally:
        gen.close()
    print(json.dumps(out, indent=2))
    return 0


def cmd_batch(args) -> int:
    from .batch.inputs import BatchInputError
    from .batch.run import run_batch

    if args.fit is not None and args.fit < 0:
        raise CliError(f"--fit must be >= 0, got {args.fit}")
    import contextlib
    import os

    sys.stderr.flush()
    user_stderr = os.fdopen(os.dup(2), "w")  # the progress line, past the native-log silencing
    try:  # stdout carries the summary only: Ray's driver prints worker deaths there
        with _QuietNativeStderr(not args.verbose), contextlib.redirect_stdout(user_stderr):
            summary = run_batch(args.input, args.out_dir, workers=args.workers, address=args.address, fit=args.fit,
                                preview=not args.no_preview, retries=args.retries, skip_failed=args.skip_failed,
                                weights=args.weights, device=args.device, stream=user_stderr, blend=args.blend,
                                blender=args.blender)
    except (BatchInputError, ValueError, ImportError, RuntimeError) as exc:
        raise CliError(str(exc)) from exc
    finally:
        user_stderr.close()
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"} | {"failures": summary["failures"][:20]},
                     indent=1))
    if summary["interrupted"]:
        return 130
    return 1 if summary["failed"] else 0


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


#: refinement options ``--refine-option`` may set, with their types
_REFINE_OPTIONS = {"symmetry": bool, "mirror_weight": float, "silhouette_weight": float, "landmark_weight": float,
                   "prior_weight": float, "prior_samples": int, "refine_size": int, "lr_code": float,
                   "lr_decoder": float, "code_reg": float, "ssim_weight": float, "camera": bool,
                   "detail_steps": int, "transfer": bool, "lr_detail_color": float, "detail_reg": float, "grow": int,
                   "crop": bool, "split": int, "split_after": int, "lr_detail_means": float}


def _refine_option(text: str):
    key, sep, value = text.partition("=")
    kind = _REFINE_OPTIONS.get(key.strip())
    if not sep or kind is None:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY one of {', '.join(_REFINE_OPTIONS)}, got {text!r}")
    try:
        if kind is bool:
            if value.strip().lower() not in ("true", "false", "1", "0", "on", "off"):
                raise ValueError
            return key.strip(), value.strip().lower() in ("true", "1", "on")
        return key.strip(), kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key}: not a valid {kind.__name__}: {value!r}") from None


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_subject

    with _QuietNativeStderr(not args.verbose):
        from .generate import AvatarGenerator

        gen = AvatarGenerator(args.weights)
    try:
        result = evaluate_subject(args.data, args.subject, args.input_view, args.refine, held_out=args.held_out,
                                  image_scale=args.image_scale, generator=gen, progress=_progress_bar("refine") if args.refine else None,
                                  refine_mode=args.refine_mode, geometry_anchor=args.geometry_anchor,
                                  precision=args.precision, oracle=args.oracle,
                                  refine_options=dict(args.refine_option or []), frame_aligned=args.frame_aligned)
    finally:
        gen.close()
    text = json.dumps(result, indent=2)
    if args.json:
        from .ply import _atomic_write

        _atomic_write(Path(args.json), lambda tmp: Path(tmp).write_text(text + "\n"))
    summary = {k: result[k]["mean"] | {"identity_similarity": result[k]["identity_similarity"]}
               | ({"frame_aligned": result[k]["frame_aligned"]["mean"]} if "frame_aligned" in result[k] else {})
               for k in ("feed_forward", "refined", "oracle_refined") if k in result}
    extra = {"frame_alignment": result["frame_alignment"]} if "frame_alignment" in result else {}
    print(json.dumps({"subject": args.subject, "input_view": args.input_view, **extra, **summary}, indent=2))
    return 0


# --------------------------------------------------------------------------- export
def cmd_export(args) -> int:
    from .export import ExportError, export_gaussians
    from .ply import PlyFormatError, read_ply

    try:
        g = read_ply(args.ply)
        report = export_gaussians(g, args.output, fmt=args.format, convention=args.axes, min_opacity=args.min_opacity)
    except (ExportError, PlyFormatError, FileNotFoundError) as e:
        raise CliError(str(e)) from None
    print(json.dumps(report, indent=2))
    return 0


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="fastavatar", description="FastAvatar engine command line.")
    p.add_argument("--version", action="version", version=f"fastavatar {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("detect", help="detect faces, landmarks and the photo's camera; prints JSON")
    d.add_argument("image", help="photo (JPEG, PNG, TIFF, WebP, ...)")
    d.add_argument("--face-index", type=int, default=None, help="which face when there are several (0 = largest; default largest)")
    d.add_argument("--focal-px", type=float, default=None, help="known focal length in pixels (default: a 30 degree field of view)")
    d.add_argument("--embed", action="store_true", help="also print the selected face's identity embedding")
    d.add_argument("--embedder", default=None,
                   help="identity model: default dlib (128-D), or an ArcFace .onnx / insightface pack folder (512-D)")
    d.add_argument("--no-dense", action="store_true", help="omit the 478 dense landmarks from the JSON")
    d.add_argument("--json", help="also write the JSON to this file")
    d.add_argument("--compact", action="store_true", help="one-line JSON")
    d.add_argument("--verbose", action="store_true", help="keep MediaPipe's native log lines on stderr")
    d.set_defaults(func=cmd_detect)

    r = sub.add_parser("render", help="render a 3DGS PLY (or a plain point cloud) to PNG")
    r.add_argument("ply", help="INRIA 3DGS PLY, or any PLY with x, y, z (drawn as small splats)")
    r.add_argument("--out", "-o", required=True, help="output PNG")
    r.add_argument("--view", default="front", help=f"comma-separated named views, side by side: {', '.join(NAMED_VIEWS)}")
    r.add_argument("--yaw", type=float, default=None, help="custom view: yaw in degrees (0 = front, + = subject's left)")
    r.add_argument("--pitch", type=float, default=None, help="custom view: pitch in degrees (+ = from above)")
    r.add_argument("--distance", type=float, default=None, help="camera distance in metres (default: frame the model)")
    r.add_argument("--fov", type=float, default=30.0, help="horizontal field of view in degrees (default 30)")
    r.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("W", "H"), help="image size in pixels")
    r.add_argument("--camera", help="render from a calibrated camera instead: a transforms.json (or its folder)")
    r.add_argument("--camera-index", type=int, default=8, help="camera_index within --camera (default 8, frontal)")
    r.add_argument("--background", default="white", help="white, black, grey or 'R,G,B' in [0,1]")
    r.add_argument("--point-size", default="auto", help="splat std-dev in metres for plain point clouds (default: auto)")
    r.add_argument("--backend", default="auto", choices=["auto", "torch", "gsplat"])
    r.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default cpu)")
    r.set_defaults(func=cmd_render)

    g = sub.add_parser("generate", help="photo -> 3D Gaussian head avatar (PLY + code sidecar + preview)")
    g.add_argument("photo", nargs="+", help="face photo; several photos of one person give one fused avatar")
    g.add_argument("-o", "--output", required=True, help="output INRIA PLY (a .fastavatar.json sidecar is written beside)")
    g.add_argument("--refine", type=int, default=None, metavar="N",
                   help="refinement steps against the photo (default: the likeness fit, generate.DEFAULT_FIT_STEPS "
                        "steps; 0: the bare feed-forward avatar; the paper: 300)")
    g.add_argument("--refine-mode", default="auto", choices=["auto", "full", "heads"],
                   help="full (= auto): code + whole decoder, the paper's; heads: geometry fixed, colour and "
                        "opacity heads only (about 3x faster on CPU, a weaker appearance touch-up)")
    g.add_argument("--geometry-anchor", type=float, default=0.0, metavar="LAMBDA",
                   help="full refinement: pull the geometry towards the feed-forward one (0 = the paper's; "
                        "0.01 keeps single-view refinement from bending side views of a well-predicted face)")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="full refinement: bf16 autocast for the decoder MLP (auto: on CPUs with native bf16)")
    g.add_argument("--preview", help="PNG strip: the input face, then renders from -60 to +60 degrees of yaw")
    g.add_argument("--face-index", type=int, default=None, help="which face when there are several (0 = largest)")
    g.add_argument("--weights", default=None, help="model folder (default: the built-in model)")
    g.add_argument("--embedder", default=None, help="identity backbone override (ArcFace .onnx / buffalo_l folder)")
    g.add_argument("--device", default=None, help="torch device (default cpu)")
    g.add_argument("--verbose", action="store_true", help="keep MediaPipe's native log lines on stderr")
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("batch", help="many photos -> avatars, resumable (manifest.jsonl); Ray workers optional",
                       description="Writes OUT_DIR/<name>.ply, .fastavatar.json and .png per photo, appends each "
                                   "result to OUT_DIR/manifest.jsonl and skips what it holds as done on a re-run. "
                                   "Exit status 1 when any photo failed, 130 when interrupted.")
    b.add_argument("input", help="a folder of photos, a glob pattern (quoted), or a .txt/.csv list of photo paths")
    b.add_argument("out_dir", help="output folder (the manifest and the summary go here too)")
    b.add_argument("--workers", type=int, default=1, help="warm engines in parallel (more than 1 needs Ray)")
    b.add_argument("--address", default=None, help="a Ray cluster to run on (ray start --head prints it; or 'auto')")
    b.add_argument("--fit", type=int, default=None, metavar="N",
                   help="likeness-fit steps per photo (default: fastavatar generate's; 0: feed-forward only)")
    b.add_argument("--retries", type=int, default=2, help="more tries for a photo whose worker died (default 2)")
    b.add_argument("--skip-failed", action="store_true", help="a re-run does not retry photos that failed")
    b.add_argument("--no-preview", action="store_true", help="no preview strip PNG per photo")
    b.add_argument("--blend", action="store_true",
                   help="also a .blend per photo (the avatar as Generate Avatar makes it, a camera, Cycles), "
                        "by a warm Blender beside each worker")
    b.add_argument("--blender", default=None, metavar="PATH",
                   help="with --blend: a Blender executable, or a Python with bpy (default: this Python's bpy)")
    b.add_argument("--weights", default=None, help="model folder (default: the built-in model)")
    b.add_argument("--device", default=None, help="torch device (default cpu; cuda on a Ray cluster with GPUs)")
    b.add_argument("--verbose", action="store_true", help="keep MediaPipe's native log lines on stderr")
    b.set_defaults(func=cmd_batch)

    x = sub.add_parser("export", help="convert an INRIA PLY to .ply / .splat / .spz / .glb (KHR_gaussian_splatting)")
    x.add_argument("ply", help="INRIA 3DGS PLY (e.g. from fastavatar generate; engine frame, y up)")
    x.add_argument("--output", "-o", required=True, help="output file; the suffix picks the format")
    x.add_argument("--format", choices=["ply", "splat", "spz", "glb"], default=None, help="override the suffix")
    x.add_argument("--axes", default="auto", choices=["auto", "engine", "ply", "blender"],
                   help="axis convention: ply = y down (PLY/.splat/.spz viewers), engine = y up (glTF), "
                        "blender = z up; auto: ply for PLY/.splat/.spz, engine for .glb")
    x.add_argument("--min-opacity", type=float, default=0.0, help="drop splats below this opacity (0-1); "
                                                                   "the count is reported")
    x.set_defaults(func=cmd_export)

    e = sub.add_parser("evaluate", help="generate from one calibrated view, score the other views (JSON)")
    e.add_argument("--data", required=True, help="folder of subject folders")
    e.add_argument("--subject", required=True)
    e.add_argument("--input-view", type=_int_list, default=[8],
                   help="camera index of the input photo (default 8, frontal); several, comma-separated "
                        "(e.g. 8,2), for a multi-photo avatar")
    e.add_argument("--held-out", type=_int_list, default=None,
                   help="comma-separated cameras to score (default: every camera not used as input)")
    e.add_argument("--refine", type=int, default=0, metavar="N", help="also evaluate after N refinement steps")
    e.add_argument("--image-scale", type=float, default=0.5, help="scale of the evaluated views (default 0.5)")
    e.add_argument("--refine-mode", default="auto", choices=["auto", "full", "heads"])
    e.add_argument("--geometry-anchor", type=float, default=0.0, metavar="LAMBDA",
                   help="full refinement: pull the geometry towards the feed-forward one (0 = the paper's; "
                        "0.01 keeps single-view refinement from bending side views of a well-predicted face)")
    e.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="full refinement: bf16 autocast for the decoder MLP (auto: on CPUs with native bf16)")
    e.add_argument("--oracle", action="store_true",
                   help="also refine at the calibrated camera inside the dataset's foreground mask (an oracle "
                        "no user has), reported beside the product path as oracle_refined")
    e.add_argument("--refine-option", type=_refine_option, action="append", metavar="KEY=VALUE",
                   help="product-path refinement option, e.g. symmetry=false, landmark_weight=0, "
                        "silhouette_weight=0, prior_weight=0, mirror_weight=0.25 (repeatable)")
    e.add_argument("--no-frame-alignment", dest="frame_aligned", action="store_false",
                   help="score only in the subject's head frame (skip the frame_aligned scores, which move the "
                        "cameras into the landmark template's frame; see fastavatar_engine/evaluate.py)")
    e.add_argument("--weights", default=None, help="model folder (default: the built-in model)")
    e.add_argument("--json", help="write the full result (per view) here")
    e.add_argument("--verbose", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    sv = sub.add_parser("serve", help="run the engine service on stdin/stdout (the Blender add-on's engine)")
    sv.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    sv.add_argument("--weights", default=None, help="model folder (default: the built-in model)")
    sv.add_argument("--embedder", default=None, help="identity backbone override (ArcFace .onnx / buffalo_l folder)")
    sv.add_argument("--max-frame-mb", type=int, default=1024, help="largest request payload accepted (MiB)")
    sv.add_argument("--verbose", action="store_true", help="log every request on stderr")
    sv.set_defaults(func=cmd_serve)

    from .cli_edit import add_edit_parser
    from .cli_expressions import add_expression_parsers
    from .cli_train import add_train_parser

    add_train_parser(sub)
    add_edit_parser(sub)
    add_expression_parsers(sub)
    return p


def cmd_serve(args) -> int:
    from .serve import serve_main

    if not 1 <= args.max_frame_mb <= 1024:
        raise CliError(f"--max-frame-mb must be in 1..1024, got {args.max_frame_mb}")
    return serve_main(args.device, args.weights, args.embedder, args.verbose, args.max_frame_mb << 20)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fastavatar`` console script. Returns the exit status."""
    from .cameras import CameraError
    from .gaussians import GaussianValidationError
    from .images import ImageLoadError
    from .ply import PlyFormatError

    args = build_parser().parse_args(argv)
    user_errors: tuple[type[BaseException], ...] = (
        CliError, ImageLoadError, PlyFormatError, GaussianValidationError, CameraError, FileNotFoundError,
    )
    try:
        from .model.io import ModelLoadError

        user_errors += (ModelLoadError,)
    except ImportError:  # torch missing: the engine extra is not installed
        pass
    try:
        from .face import FaceError  # optional extra; absent -> only its own error type matters
        from .face._deps import FaceDependencyError

        user_errors += (FaceError, FaceDependencyError)
    except ImportError:
        pass
    try:
        return int(args.func(args) or 0)
    except user_errors as exc:
        print(f"fastavatar {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
