"""``fastavatar train``: the training stages (multi-view subjects, single-photo people, the prior).

Stages of v1 (multi-view NeRSemble subjects, :mod:`.train`): ``fit``, ``template``, ``decoder``,
``encoder``, ``all``, ``package``. Stages of v2 (many people, :mod:`.train.prior`): ``people``
(the likeness fit of every training person, resumable), ``prior`` (template, decoder, encoder
and directions over the people and the subjects), ``package-prior`` (the model bundle with its
card and direction library).
"""

from __future__ import annotations

import sys
from pathlib import Path


def _cli_error(msg: str):
    from .cli_errors import CliError

    return CliError(msg)


def cmd_train(args) -> int:
    data = Path(args.data)
    out = Path(args.out)
    if args.stage == "people":
        from .train.people import fit_people

        fit_people(data, out, args.weights, limit=args.limit, refit_expressions=args.refit_expressions)
        return 0
    if args.stage in ("prior", "package-prior"):
        return _prior(args, data, out)
    if not args.subjects:
        raise _cli_error(f"train {args.stage} needs --subjects")
    if args.stage in ("fit", "all"):
        from .train.fit import FitConfig, fit_subject

        cfg = FitConfig(steps=args.fit_steps, image_scale=args.image_scale, device=args.device)
        for s in args.subjects:
            if (out / "fits" / f"{s}.ply").is_file() and not args.force:
                print(f"[fit {s}] already done ({out / 'fits' / f'{s}.ply'}); --force to redo", file=sys.stderr)
                continue
            fit_subject(data / s, out, cfg, resume=not args.force)
    if args.stage in ("template", "all"):
        from .train.template import build_template_from_fits

        build_template_from_fits(out, args.subjects)
    if args.stage in ("decoder", "all"):
        from .train.autodecoder import DecoderTrainConfig, train_decoder

        cfg = DecoderTrainConfig(steps=args.decoder_steps, distill_steps=args.decoder_distill_steps,
                                 image_scale=args.image_scale, device=args.device)
        train_decoder(data, out, args.subjects, cfg, resume=not args.force)
    if args.stage in ("encoder", "all"):
        from .train.encoder_train import EncoderTrainConfig, train_encoder

        train_encoder(data, out, args.subjects, EncoderTrainConfig(steps=args.encoder_steps))
    if args.stage == "package":
        from .train.package import package_run

        if not args.model_dir:
            raise _cli_error("train package needs --model-dir")
        print(package_run(out, args.model_dir, args.model_id, args.subjects, args.commands or [], args.eval_json or []))
    return 0


def _prior(args, data: Path, out: Path) -> int:
    from .model.io import FastAvatarModel
    from .train.encoder_train import LatentEncoderConfig
    from .train.latent import LatentDecoderConfig
    from .train.people import load_split
    from .train.prior import collect_targets, run_prior

    if args.stage == "package-prior":
        from .train.package import package_prior

        if not args.model_dir:
            raise _cli_error("train package-prior needs --model-dir")
        print(package_prior(out, args.model_dir, args.model_id, args.commands or [], args.eval_json or []))
        return 0
    if args.subjects and not args.subject_weights:
        raise _cli_error("train prior with --subjects needs --subject-weights (the model that decodes them)")
    fit_model = FastAvatarModel.load(args.weights)
    subject_model = FastAvatarModel.load(args.subject_weights) if args.subjects else None
    targets = collect_targets(out, args.nersemble, args.subjects, subject_model, load_split()["held_out"])
    run_prior(out, targets, fit_model, LatentDecoderConfig(steps=args.decoder_steps, components=args.components),
              LatentEncoderConfig(steps=args.encoder_steps), model_id=args.model_id,
              stages=args.prior_stages or ("template", "decoder", "encoder", "directions"))
    return 0


def add_train_parser(sub) -> None:
    """Add the ``train`` sub-command to ``sub`` (argparse sub-parsers)."""
    t = sub.add_parser("train", help="train a FastAvatar model (resumable stages; v1 multi-view, v2 many people)")
    t.add_argument("stage", choices=["fit", "people", "template", "decoder", "encoder", "all", "package", "prior",
                                     "package-prior"])
    t.add_argument("--data", required=True, help="folder of subject folders (e.g. ../shared/data/nersemble_samples); "
                   "people / prior: the folder holding london/ and faces/ (../shared/data)")
    t.add_argument("--subjects", nargs="+", default=[], help="subject folder names, e.g. 128 306 369")
    t.add_argument("--out", required=True, help="run folder (checkpoints and results)")
    t.add_argument("--weights", help="people / prior: the model whose likeness fit makes the people's targets")
    t.add_argument("--subject-weights", help="prior: the model that decodes the --subjects' codes")
    t.add_argument("--nersemble", default="../shared/data/nersemble_samples", help="prior: the subjects' folder")
    t.add_argument("--prior-stages", nargs="+", choices=["template", "decoder", "encoder", "directions"],
                   help="prior: run only these stages")
    t.add_argument("--limit", type=int, help="people: fit at most this many entries in this call")
    t.add_argument("--refit-expressions", action="store_true",
                   help="people: first refit each London person's neutral and smiling expressions jointly")
    t.add_argument("--fit-steps", type=int, default=1000)
    t.add_argument("--decoder-steps", type=int, default=2800)
    t.add_argument("--components", type=int, default=64,
                   help="prior: principal components of the codes and of the decoder's linear basis")
    t.add_argument("--encoder-steps", type=int, default=2000)
    t.add_argument("--image-scale", type=float, default=0.5, help="training image scale (0.5 = 275x401)")
    t.add_argument("--decoder-distill-steps", type=int, default=2500, help="warm-start steps of the decoder stage")
    t.add_argument("--device", default="cpu", help="torch device for fit/decoder (cuda: gsplat rendering)")
    t.add_argument("--force", action="store_true", help="redo finished stages instead of resuming")
    t.add_argument("--model-dir", help="package: where to write the model bundle")
    t.add_argument("--model-id", default="fastavatar-custom", help="package / prior: the model's id")
    t.add_argument("--eval-json", nargs="*", help="package: evaluation JSON files to include in the card")
    t.add_argument("--commands", nargs="*", help="package: the exact commands that produced the run, for the card")
    t.set_defaults(func=cmd_train)
