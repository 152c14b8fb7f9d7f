"""``fastavatar edit``: attribute directions and interpolation applied to a generated avatar.

    fastavatar edit --list                                   # the directions of the model
    fastavatar edit a.ply -o smiling.ply --direction smile --strength 1
    fastavatar edit a.ply -o ab.ply --mix b.ply --amount 0.5 [--direction age --strength -0.5]

See :mod:`fastavatar_engine.edit` for what an edit computes.
"""

from __future__ import annotations

import json
import math
import sys


def cmd_edit(args) -> int:
    from .cli_errors import CliError
    from .directions import DirectionError
    from .edit import EditError, edit_avatar, library, read_coded_avatar, write_edited
    from .model.io import FastAvatarModel

    model = FastAvatarModel.load(args.weights)
    lib = library(model, args.library or ())
    if args.list:
        rows = [{"name": d.name, "unit_amount": d.unit_amount, "cross_validated_accuracy":
                 d.accuracy.get("cross_validated"), "source": d.provenance.get("source", "")} for d in lib.values()]
        print(json.dumps({"model_id": model.model_id, "directions": rows}, indent=1))
        return 0
    if not args.avatar or not args.output:
        raise CliError("give AVATAR.ply and -o OUT.ply (or --list)")
    names, strengths = args.direction or [], args.strength or []
    if len(strengths) not in (0, len(names)):
        raise CliError(f"{len(names)} --direction but {len(strengths)} --strength: give one strength per direction")
    strengths = strengths or [1.0] * len(names)
    unknown = [n for n in names if n not in lib]
    if unknown:
        raise CliError(f"unknown direction(s) {unknown}; the library of {model.model_id} has {sorted(lib) or 'none'}")
    if any(not math.isfinite(s) for s in strengths):
        raise CliError("--strength must be finite")
    if args.amount is not None and args.mix is None:
        raise CliError("--amount needs --mix OTHER.ply")
    try:
        src = read_coded_avatar(args.avatar)
        other = read_coded_avatar(args.mix) if args.mix else None
        g, code, head, parents = edit_avatar(model, src, [(lib[n], s) for n, s in zip(names, strengths)], other,
                                             0.5 if args.amount is None else args.amount)
    except (EditError, DirectionError) as exc:
        raise CliError(str(exc)) from None
    edits = {"directions": dict(zip(names, strengths)), "mix": args.mix,
             "amount": None if args.mix is None else (0.5 if args.amount is None else args.amount)}
    out = write_edited(args.output, g, code, head, parents, src, edits)
    print(json.dumps({"output": str(out), "gaussians": g.count, **edits}), file=sys.stdout)
    return 0


def add_edit_parser(sub) -> None:
    """Add the ``edit`` sub-command to ``sub`` (argparse sub-parsers)."""
    e = sub.add_parser("edit", help="apply library directions and interpolation to a generated avatar")
    e.add_argument("avatar", nargs="?", help="an avatar PLY with its .fastavatar.json sidecar")
    e.add_argument("-o", "--output", help="the edited avatar's PLY (a sidecar is written beside)")
    e.add_argument("--direction", action="append", help="a direction of the library (repeatable)")
    e.add_argument("--strength", action="append", type=float,
                   help="strength of the matching --direction (1 = the direction's typical amount; default 1)")
    e.add_argument("--mix", help="another avatar of the same model to interpolate towards")
    e.add_argument("--amount", type=float, help="interpolation amount in [0, 1] (0 = AVATAR, 1 = --mix; default 0.5)")
    e.add_argument("--list", action="store_true", help="list the model's directions (JSON) and exit")
    e.add_argument("--library", action="append", help="an extra direction folder (repeatable)")
    e.add_argument("--weights", help="model bundle folder (default: the packaged model)")
    e.set_defaults(func=cmd_edit)
