"""`ifedit plan`: an edit's predicted GPU and host memory for every placement, without a GPU or weights."""

from __future__ import annotations

import argparse
import json

from ..errors import InvalidInputError, SetupError
from ..presets import DEFAULT_PRESET, resolve_model
from .options import finite_float, quiet_libraries


def register(commands) -> None:
    plan = commands.add_parser(
        "plan",
        help="predict an edit's GPU and host memory for every memory plan, and which one --memory auto takes",
        description="Predict, without a GPU or any weights, the peak GPU and host memory of one edit for every "
        "memory plan (fastest first: resident, model, fp8-model, group, gguf, sequential), which fit, and the "
        "one `--memory auto` would take. The formulas are in the module ifedit.memory.",
        epilog="example: ifedit plan --model paper --gpu-memory 24 --host-memory 64",
    )
    plan.add_argument("--model", default=DEFAULT_PRESET, help=f"a preset or a local pipeline folder (default: "
                      f"{DEFAULT_PRESET})")  # fmt: skip
    plan.add_argument("--gpu-memory", type=finite_float, required=True, metavar="GB",
                      help="free GPU memory in GiB (a '24 GB' card has 24)")  # fmt: skip
    plan.add_argument("--host-memory", type=finite_float, metavar="GB", help="free host memory in GiB (default: "
                      "not checked)")  # fmt: skip
    plan.add_argument("--frames", type=int, help="video frames, 4n+1 (default: the preset's)")
    plan.add_argument(
        "--height",
        type=int,
        help="video height in px (default: the preset's area at the aspect of "
        "its usual photo, 832 x 480; toyworld's 64 x 64)",
    )
    plan.add_argument("--width", type=int, help="video width in px")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..memory import clip_for, format_plan, known_size, plan_memory
    from ..sizes import fit_size, round_frames

    for flag, value in (("--gpu-memory", args.gpu_memory), ("--host-memory", args.host_memory)):
        if value is not None and value <= 0:
            raise InvalidInputError(f"{flag} must be a positive number of GiB, got {value:g}")
    preset = resolve_model(args.model)
    size = known_size(preset.model_id)
    if size is None:  # built in memory, or a Hub id that may be in the download cache
        quiet_libraries()
        from ..loading import model_size

        size = model_size(preset)
    if size is None:
        raise SetupError(f"cannot size {args.model} without its files: download it (`hf download {args.model}`) "
                         "and pass the folder, or name a preset")  # fmt: skip
    recipe = preset.recipe
    frames = round_frames(recipe.num_frames if args.frames is None else args.frames, size.vae_temporal)
    height, width = fit_size(preset.usual_photo, args.height, args.width, recipe.max_area, size.size_multiple)
    plan = plan_memory(size, clip_for(preset, size, frames, height, width), args.gpu_memory, args.host_memory)
    if args.json:
        print(json.dumps({"model": args.model, "model_id": preset.model_id, **plan.to_dict()}, indent=2))
    else:
        print(format_plan(plan, args.model))
    return 0
