"""`ifedit toyworld` (scenes and training of the toy world) and `ifedit demo` (its edits on a few held-out scenes)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import InvalidInputError
from ..io import check_output_path
from ..presets import resolve_model
from ..toyworld.config import TrainConfig
from ..toyworld.scenes import EVENTS
from .options import Parser, check_seed_option, quiet_libraries, whole_number

logger = logging.getLogger("ifedit")


def register(commands) -> None:
    toyworld = commands.add_parser(
        "toyworld",
        help="scenes and training for the toy world, a small model that makes real edits on a CPU",
        description="The toy world: coloured shapes, events that change them (move, fall, grow, shrink, "
        "recolour, fade, appear), and a small Wan2.2-architecture model trained on such clips.",
    )
    toyworld.set_defaults(func=run)
    actions = toyworld.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=Parser)
    sample = actions.add_parser(
        "sample",
        help="write a scene's source, target and instruction",
        description="Write source.png (first frame), target.png (ground-truth last frame), instruction.txt and "
        "case.json for one scene. Seeds from 1000000 up are never used in training.",
    )
    sample.add_argument("--seed", type=int, required=True, help="scene seed (evaluation: >= 1000000)")
    sample.add_argument("--out", required=True, help="folder to write into (created if missing)")
    sample.add_argument("--event", choices=EVENTS, help="force the event (default: drawn from the seed)")
    sample.add_argument("--overwrite", action="store_true", help="replace files already in --out")
    train = actions.add_parser(
        "train",
        help="train the toy world's model from scratch (about four hours on 2 CPU cores)",
        description="Train the VAE, then its decoder alone, then the text encoder (which is then frozen), then "
        "both experts, with fixed seeds, and save a pipeline folder that --model accepts. OUT must be new, empty "
        "or an interrupted run's (whose VAE, once saved, the next run with the same VAE settings reuses); one run "
        "at a time may write into it. Averaged expert weights are saved to OUT/snapshot every 1000 steps while "
        "training.",
    )
    train.add_argument("--out", required=True, help="folder for the trained pipeline")
    train.add_argument(
        "--vae-steps", type=whole_number(1), default=TrainConfig.vae_steps, help="VAE steps (default: %(default)s)"
    )
    train.add_argument(
        "--expert-steps",
        type=whole_number(1),
        default=TrainConfig.dit_steps,
        help="expert steps (default: %(default)s)",
    )
    train.add_argument(
        "--clips",
        type=whole_number(1),
        default=TrainConfig.clips,
        help="training clips for the experts (default: %(default)s)",
    )
    train.add_argument(
        "--polish-steps",
        type=whole_number(0),
        default=TrainConfig.expert_polish_steps,
        help="steps of an optional second, slower expert stage on other clips, from the first stage's "
        "weights (0: none; the shipped weights have none; default: %(default)s)",
    )
    train.add_argument("--seed", type=int, default=TrainConfig.seed, help="training seed (default: %(default)s)")
    demo = commands.add_parser(
        "demo",
        help="edit a few toy-world scenes on the CPU and save a before/after/target picture and its record",
        description="Run the toy world's model on a handful of held-out scenes (about 10 s on a CPU) and "
        "write one picture: for each scene its source, the edit, and the ground-truth target; beside it, the "
        "picture's name with .json records each scene, its prompt, seed and settings, and whether it met its target.",
    )
    demo.add_argument("-o", "--output", default="ifedit_demo.png", help="picture to write (default: %(default)s)")
    demo.add_argument("--model", default="toyworld", help="the toy world model (default: the installed one)")
    demo.add_argument("--overwrite", action="store_true", help="replace the picture and its record if they exist")
    demo.set_defaults(func=_demo)


def run(args: argparse.Namespace) -> int:
    if args.action == "sample":
        from ..toyworld.files import write_sample

        check_seed_option(args.seed)
        for path in write_sample(args.seed, Path(args.out), args.event, args.overwrite):
            print(path)
        return 0
    check_seed_option(args.seed)  # numpy's generators refuse a negative seed, an hour into training
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out} is a file; name a folder for the trained pipeline")
    quiet_libraries()
    from ..toyworld.train import train

    config = TrainConfig(
        seed=args.seed,
        vae_steps=args.vae_steps,
        dit_steps=args.expert_steps,
        clips=args.clips,
        expert_polish_steps=args.polish_steps,
    )
    train(out, config, log=lambda message: logger.info("%s", message))
    return 0


def _demo(args: argparse.Namespace) -> int:
    output = check_output_path(args.output, args.overwrite)
    check_output_path(output.with_suffix(".json"), args.overwrite, suffixes=(".json",))  # the record beside it
    preset = resolve_model(args.model)
    if preset.name != "toyworld":  # its scenes mean nothing to another model, and its CPU run suits no other
        raise InvalidInputError(
            f"ifedit demo runs a toy world model: the installed one (toyworld) or a folder `ifedit toyworld train` "
            f"wrote; {args.model} is not one (`ifedit edit --model {args.model}` edits your own photos)"
        )
    quiet_libraries()
    from ..toyworld.demo import run_demo

    run_demo(preset, output, log=lambda message: logger.info("%s", message), overwrite=args.overwrite)
    return 0
