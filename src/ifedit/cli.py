"""The `ifedit` command: a thin caller of the library that turns user mistakes into one clear line."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from . import __version__
from .errors import IFEditError, InvalidInputError, SetupError
from .io import check_output_path, check_writable, load_image
from .memory import MEMORY_CHOICES
from .options import FAST_SETTINGS, EditSettings, check_seed
from .presets import DEFAULT_PRESET, PRESETS, LoraWeights, Preset, edit_settings, resolve_model
from .prompting import DEFAULT_LOCAL_MODEL, ENHANCER_CHOICES, INPUT_KINDS
from .redact import redact, register_secret, safe_text, strip_control
from .toyworld.config import TrainConfig
from .toyworld.scenes import EVENTS

logger = logging.getLogger("ifedit")

EXIT_INPUT = 2
EXIT_SETUP = 1
EXIT_INTERRUPTED = 130


# Every option whose value is a secret; their values are masked in records and output.
SECRET_OPTIONS = ("--vlm-api-key", "--judge-api-key", "--api-key")
# Words that make an unknown option's value a secret too (a misspelt key option is quoted in the parser's error).
SECRET_WORDS = ("key", "token", "secret", "passw")
# Environment variables that may hold a key; masked wherever their values show up.
SECRET_VARIABLES = ("IFEDIT_VLM_API_KEY", "OPENAI_API_KEY", "IFEDIT_JUDGE_API_KEY", "IFEDIT_SERVE_API_KEY")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line instead of a usage block, and takes no abbreviations
    (`--vlm-api-k KEY` would otherwise be a key that the record's masking does not recognise)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_INPUT, f"{self.prog}: error: {safe_text(message)} (see {self.prog} --help)\n")


def finite_float(text: str) -> float:
    """argparse type: a real number; 'inf' and 'nan' would run and give a black image."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ifedit",
        description="Edit images with image-to-video diffusion models (IF-Edit, arXiv 2511.19435): the edit is "
        "generated as a short video that starts at your photo, and the result is read off its end.",
    )
    parser.add_argument("--version", action="version", version=f"ifedit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _add_edit_parser(commands)
    prompt = commands.add_parser(
        "prompt",
        help="write the video prompt for an image and instruction, without editing",
        description="Print the time-ordered video prompt that `ifedit edit` would use for IMAGE and TEXT, and "
        "which backend wrote it.",
    )
    prompt.add_argument("image", help="source image")
    prompt.add_argument("text", help="the instruction (or, with --input-kind target, a caption of the result)")
    _add_prompt_arguments(prompt)
    prompt.add_argument("--json", action="store_true", help="print the full record as JSON")
    _add_toyworld_parsers(commands)
    _add_bench_parsers(commands)
    _add_ui_parser(commands)
    _add_plan_parser(commands)
    _add_serve_parser(commands)
    commands.add_parser(
        "info",
        help="show versions, devices and model presets",
        description="Show package versions, the accelerators PyTorch sees, and the model presets.",
    )
    return parser


def _add_edit_parser(commands) -> None:
    edit = commands.add_parser(
        "edit",
        help="edit an image as an instruction says",
        description="Edit IMAGE as INSTRUCTION says and write the result to OUTPUT, with a JSON record of how it "
        "was made beside it (same name, .json). Settings left out come from the model preset.",
        epilog="example: ifedit edit cat.jpg 'the cat stands up' -o cat_standing.png",
    )
    edit.add_argument("image", help="source image (PNG, JPEG, WebP, ...; at least 64 px a side)")
    edit.add_argument("instruction", help="what should happen, e.g. 'the ice cube melts'")
    edit.add_argument("-o", "--output", required=True, help="edited image to write (.png, .jpg, .jpeg or .webp)")
    edit.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    edit.add_argument("--save-video", action="store_true", help="also write the edit clip as OUTPUT.mp4")
    edit.add_argument(
        "--save-frames",
        metavar="DIR",
        help="also write every frame of both clips and contact sheets of the "
        "candidate frames with their sharpness scores to DIR",
    )
    edit.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes")

    prompt = _add_prompt_arguments(edit)
    prompt.add_argument("--prompt", help="a ready video prompt: skips prompt enhancement")
    prompt.add_argument("--negative-prompt", help="what to avoid (only used when guidance is above 1)")
    _add_model_and_sampling_arguments(edit)


def _add_model_and_sampling_arguments(
    parser: argparse.ArgumentParser, seed_help: str = "random seed (default: a new one, recorded in the JSON)"
) -> None:
    """Model, memory and every edit setting: shared by `edit` and `bench run`."""
    speed = _add_model_arguments(parser)
    speed.add_argument(
        "--fast",
        action="store_true",
        help="the measured shortcuts: "
        + ", ".join(f"{name}={value}" for name, value in FAST_SETTINGS.items())
        + " (options given explicitly win)",
    )
    speed.add_argument(
        "--decode",
        choices=["all", "needed"],
        help="decode every kept latent frame (default), or only the last two (faster; slightly different candidates)",
    )
    _add_sampling_arguments(parser, seed_help)


def _add_model_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Which model and how it is loaded (the options of `_load_options`): shared by `edit`, `bench run` and `ui`.
    Returns the speed group for the per-edit shortcuts of the commands that take settings."""
    model = parser.add_argument_group("model and memory")
    model.add_argument(
        "--model",
        default=DEFAULT_PRESET,
        help=f"a preset ({', '.join(PRESETS)}), a local diffusers pipeline "
        f"folder, or a Hugging Face Hub id (default: {DEFAULT_PRESET}; see `ifedit info`)",
    )
    model.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    model.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float16", "float32"],
        help="weights' dtype; auto is bfloat16 on a GPU, float32 on the CPU",
    )
    model.add_argument(
        "--memory",
        default="auto",
        choices=MEMORY_CHOICES,
        help="how weights are placed on a CUDA GPU: auto (default) takes the fastest placement predicted to fit "
        "this GPU and this machine's memory, and retries one leaner on running out; or one of them, fastest first "
        "(see `ifedit plan`). --offload, --storage-dtype and --vae-tiling replace its choices",
    )
    model.add_argument(
        "--offload",
        choices=["none", "model", "sequential", "group"],
        help="keep weights on the CPU and move them to the GPU as needed: model (whole models, "
        "small slowdown), group (layer groups, streamed), sequential (least memory, slowest); default: --memory's",
    )
    model.add_argument(
        "--vae-tiling",
        action=argparse.BooleanOptionalAction,
        help="decode in tiles to save GPU memory (default: when --memory finds the decode would not fit)",
    )
    model.add_argument("--offline", action="store_true", help="use only weights already downloaded")
    model.add_argument("--lora-source", help="Hub id or folder holding the LoRA files (default: the preset's)")
    model.add_argument("--lora-subfolder", help="folder inside --lora-source (default: the preset's)")
    model.add_argument("--lora-high", metavar="FILE", help="LoRA file for the high-noise expert (transformer)")
    model.add_argument("--lora-low", metavar="FILE", help="LoRA file for the low-noise expert (transformer_2)")
    model.add_argument("--lora-scale", type=finite_float, help="weight of the LoRAs (default: 1.0)")
    model.add_argument("--no-lora", action="store_true", help="load the model without the preset's LoRAs")
    model.add_argument(
        "--transformer",
        metavar="FILE",
        help="load the high-noise expert (a one-expert model's transformer) from FILE instead of the model's: "
        ".safetensors with Wan's or diffusers' names (bfloat16, float16, float8, ComfyUI's fp8 scaled), or .gguf "
        "(Q8_0, Q4_K, ...; placed by the gguf memory tier)",
    )
    model.add_argument("--transformer-2", metavar="FILE", help="load the low-noise expert from FILE, as --transformer")

    speed = parser.add_argument_group("speed (see the README's Performance section)")
    speed.add_argument(
        "--attention-backend",
        metavar="NAME",
        help="diffusers' attention backend for the experts: auto (the fastest installed here), native, flash, "
        "_flash_3, sage, ... (needs its kernels)",
    )
    speed.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks (slow first edit)")
    speed.add_argument(
        "--first-block-cache",
        type=finite_float,
        metavar="THRESHOLD",
        help="skip the rest of a step when its first block changed less than THRESHOLD (e.g. 0.05; approximate)",
    )
    speed.add_argument(
        "--storage-dtype",
        choices=["float8_e4m3fn", "float8_e5m2"],
        help="store the experts' weights in 8 bits, computing in --dtype (about half their memory)",
    )
    speed.add_argument(
        "--fp8-compute",
        action="store_true",
        help="run the experts' linear layers in float8 with per-row scales (torchao; GPU compute capability 8.9+)",
    )
    speed.add_argument(
        "--vae-dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="the VAE's precision for encoding and decoding (default: %(default)s)",
    )
    speed.add_argument("--vae-channels-last", action="store_true", help="the VAE's convolutions in channels-last")
    return speed


def _add_sampling_arguments(parser: argparse.ArgumentParser, seed_help: str) -> None:
    """Sampling, dropout and refinement settings (the pipeline's keyword arguments; see `_edit_settings`)."""
    sampling = parser.add_argument_group("sampling (defaults come from the preset)")
    sampling.add_argument("--steps", type=int, help="denoising steps (paper: 8)")
    sampling.add_argument("--frames", type=int, help="video frames, 4n+1 (paper: 33)")
    sampling.add_argument("--seed", type=int, help=seed_help)
    sampling.add_argument("--height", type=int, help="video height in px (default: the image's aspect at 480p area)")
    sampling.add_argument("--width", type=int, help="video width in px")
    sampling.add_argument("--guidance", type=finite_float, help="guidance scale of the high-noise expert (paper: 1.0)")
    sampling.add_argument("--guidance-2", type=finite_float, help="guidance scale of the low-noise expert")
    sampling.add_argument(
        "--edit-position",
        type=finite_float,
        metavar="F",
        help="how far along the clip to read the edit, in (0, 1]: 1 (default) is its end, the full edit; 0.5 "
        "reads the frames halfway, a partial edit (the record says which frame was used)",
    )

    dropout = parser.add_argument_group("temporal latent dropout")
    dropout.add_argument(
        "--tld-stride", type=int, help="keep every K-th latent frame and the last (paper: 3; 1 = off)"
    )
    dropout.add_argument(
        "--tld-threshold",
        type=finite_float,
        help="timestep fraction below which frames are dropped (default: the expert switch, 0.9)",
    )
    dropout.add_argument(
        "--tld-history",
        choices=["slice", "reset"],
        default="slice",
        help="multistep scheduler history at the cut: thin it, or restart at first order",
    )
    dropout.add_argument(
        "--tld-positions",
        choices=["contiguous", "original"],
        default="contiguous",
        help="RoPE positions of kept frames: renumbered, or as in the full clip",
    )

    refine = parser.add_argument_group("still-video refinement")
    refine.add_argument(
        "--refine",
        action=argparse.BooleanOptionalAction,
        help="re-render the chosen frame as a still video (default: the preset's; on for every model but toyworld)",
    )
    refine.add_argument("--refine-prompt", help="prompt of the still video")
    refine.add_argument("--refine-frames", type=int, help="frames of the still video (default: --frames)")
    refine.add_argument("--refine-steps", type=int, help="steps of the still video (default: --steps)")
    refine.add_argument(
        "--refine-strength",
        type=finite_float,
        help="1.0 (default) starts from noise; lower starts from the re-noised chosen frame (fewer steps)",
    )


def _add_toyworld_parsers(commands) -> None:
    toyworld = commands.add_parser(
        "toyworld",
        help="scenes and training for the toy world, a small model that makes real edits on a CPU",
        description="The toy world: coloured shapes, events that change them (move, fall, grow, shrink, "
        "recolour, fade, appear), and a small Wan2.2-architecture model trained on such clips.",
    )
    actions = toyworld.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=_Parser)
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
        help="train the toy world's model from scratch (an hour or more on 2 CPU cores)",
        description="Train the VAE, then its decoder alone, then both experts and the text encoder, with fixed "
        "seeds, and save a pipeline folder that --model accepts. A VAE already in OUT/vae is reused; averaged "
        "expert weights are saved to OUT/snapshot every 1000 steps while training.",
    )
    train.add_argument("--out", required=True, help="folder for the trained pipeline")
    train.add_argument("--vae-steps", type=int, default=TrainConfig.vae_steps, help="VAE steps (default: %(default)s)")
    train.add_argument(
        "--expert-steps", type=int, default=TrainConfig.dit_steps, help="expert steps (default: %(default)s)"
    )
    train.add_argument(
        "--clips", type=int, default=TrainConfig.clips, help="training clips for the experts (default: %(default)s)"
    )
    train.add_argument("--seed", type=int, default=TrainConfig.seed, help="training seed (default: %(default)s)")
    demo = commands.add_parser(
        "demo",
        help="edit a few toy-world scenes on the CPU and save a before/after/target picture",
        description="Run the toy world's model on a handful of held-out scenes (under a minute on a CPU) and "
        "write one picture: for each scene its source, the edit, and the ground-truth target.",
    )
    demo.add_argument("-o", "--output", default="ifedit_demo.png", help="picture to write (default: %(default)s)")
    demo.add_argument("--model", default="toyworld", help="the toy world model (default: the installed one)")
    demo.add_argument("--overwrite", action="store_true", help="replace the picture if it exists")


def _add_bench_parsers(commands) -> None:
    from .bench.benchmarks import BENCHMARKS
    from .bench.published import JUDGE_MODEL

    bench = commands.add_parser(
        "bench",
        help="run, score and report TEdBench, ByteMorph-Bench, RISEBench and ImgEdit-Bench",
        description="Benchmark runs that survive interruptions and spread over every GPU (with Ray): outputs in "
        "the layout each benchmark's own scorer reads, a record per case, scores and a report.",
    )
    actions = bench.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=_Parser)
    run = actions.add_parser(
        "run",
        help="edit every case of a benchmark (a rerun continues where the last one stopped)",
        description="Write the video prompt of every case first, then edit them into OUT in the layout the "
        "benchmark's scorer reads. Finished cases are skipped on a rerun; failed and partial ones are redone.",
        epilog="example: ifedit bench run --benchmark tedbench --data tedbench/ --out runs/tedbench --ray",
    )
    run.add_argument("--benchmark", required=True, choices=tuple(BENCHMARKS), help="which benchmark --data holds")
    run.add_argument("--data", required=True, help="your copy of the benchmark, in its official format")
    run.add_argument("--out", required=True, help="run folder (created; an existing run in it is continued)")
    run.add_argument("--limit", type=int, help="only the first N cases (after --categories)")
    run.add_argument("--categories", help="comma-separated categories or edit types to run, e.g. causal_reasoning")
    run.add_argument(
        "--allow-outside-data",
        action="store_true",
        help="let the listing name images outside --data (after following links); refused by default, so a "
        "downloaded listing cannot send other files of this machine to a prompt server or into a report",
    )
    run.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="edit on Ray: alone, a local cluster on this machine; with ADDRESS (e.g. auto or "
        "ray://head:10001), join that cluster. One worker per GPU, or CPU workers without GPUs",
    )
    run.add_argument("--workers", type=int, help="Ray workers (default: one per GPU, else one per CPU core)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar or notes")
    prompt = _add_prompt_arguments(run, input_kind=False)
    prompt.add_argument("--negative-prompt", help="what to avoid (only used when guidance is above 1)")
    _add_model_and_sampling_arguments(
        run, seed_help="run seed; each case's seed derives from it and its id (default: 0)"
    )

    score = actions.add_parser(
        "score",
        help="score a run: TEdBench metrics, sharpness, and the benchmarks' official judges",
        description="Laplacian sharpness of every output; for TEdBench LPIPS, CLIP-I and CLIP-T; for ByteMorph, "
        "RISEBench and ImgEdit the official scorer from your checkout of its repository, with your judge "
        "endpoint. Writes DIR/scores.json.",
    )
    score.add_argument("dir", help="a run folder written by `ifedit bench run`")
    score.add_argument("--clip", metavar="MODEL", help="CLIP for CLIP-I/CLIP-T: a folder or Hub id, e.g. "
                       "openai/clip-vit-large-patch14")  # fmt: skip
    score.add_argument(
        "--lpips-alexnet", metavar="FILE", help="torchvision AlexNet weights (alexnet-owt-7be5be79.pth)"
    )
    score.add_argument("--lpips-heads", metavar="FILE", help="LPIPS linear heads (alex.pth of the lpips package)")
    score.add_argument("--device", default="auto", help="where metrics run: auto, cpu, cuda, cuda:N")
    score.add_argument("--scorer-repo", metavar="DIR", help="your checkout of the benchmark's official repository")
    score.add_argument(
        "--scorer-python",
        default=sys.executable,
        metavar="PATH",
        help="the Python with the official scorer's requirements (default: this one)",
    )
    score.add_argument(
        "--judge-base-url", metavar="URL", help="OpenAI-compatible judge (default $IFEDIT_JUDGE_BASE_URL)"
    )
    score.add_argument(
        "--judge-model",
        metavar="NAME",
        help=f"judge model, sent to every scorer and recorded (default $IFEDIT_JUDGE_MODEL, else {JUDGE_MODEL}: "
        "RISEBench's own choice and the paper's judge for RISEBench and ImgEdit; left alone, ImgEdit's script asks "
        "for gpt-4o and ByteMorph's for its Azure deployment, and the paper's ByteMorph numbers used Claude 3.7)",
    )
    score.add_argument("--judge-api-key", metavar="KEY", help="judge key (prefer $IFEDIT_JUDGE_API_KEY)")
    score.add_argument("-q", "--quiet", action="store_true", help="no notes")

    report = actions.add_parser(
        "report",
        help="a Markdown table and an HTML page of a scored run, beside the paper's numbers",
        description="Write DIR/report.md and DIR/report.html: per-case thumbnails and scores, per-category and "
        "overall numbers, and the paper's published numbers for the benchmark.",
    )
    report.add_argument("dir", help="a run folder (scored with `ifedit bench score` for numbers)")
    report.add_argument("-q", "--quiet", action="store_true", help="no notes")


def _add_ui_parser(commands) -> None:
    ui = commands.add_parser(
        "ui",
        help="edit in a web page: upload a photo, type the instruction, see the result and its frames",
        description="Load the model once and serve a web page (Gradio) for editing: the video prompt can be read "
        "and changed before running, and the result comes with a before/after view, the candidate frames with "
        "their sharpness, the clip and the JSON record. Edits run one at a time; others wait in a visible queue.",
        epilog="example: ifedit ui --model toyworld  (then open http://127.0.0.1:7860)",
    )
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine)")
    ui.add_argument("--port", type=int, default=7860, help="port to listen on (default: %(default)s)")
    ui.add_argument("--share", action="store_true", help="also publish the page through a temporary gradio.live link")
    _add_model_arguments(ui)
    _add_prompt_arguments(ui)


def _add_serve_parser(commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve edits over HTTP: OpenAI's image-edit API, in this process or on Ray Serve replicas",
        description="Load the model and answer OpenAI's POST /v1/images/edits (OpenAI's clients edit with it as "
        "they are), jobs for long edits (POST /v1/edits, then GET or DELETE /v1/edits/ID), GET /v1/models, /health "
        "and /metrics. The edit options below are the defaults of every request; a request changes the per-edit "
        "ones with form fields of the same name (steps, tld_stride, refine, fast, ...).",
        epilog="example: ifedit serve --model toyworld  (then POST to http://127.0.0.1:8000/v1/images/edits)",
    )
    server = serve.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, loopback)")
    server.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    server.add_argument(
        "--api-key",
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' (prefer $IFEDIT_SERVE_API_KEY); needed for any --host but loopback",
    )
    server.add_argument(
        "--queue-size",
        type=int,
        default=4,
        help="requests waiting per replica beyond the one it edits; more get 429 (default: %(default)s)",
    )
    server.add_argument(
        "--timeout", type=float, default=600.0, help="seconds per request, waiting included (default: %(default)s)"
    )
    server.add_argument(
        "--url-ttl",
        type=float,
        default=3600.0,
        help="seconds result URLs and finished jobs are kept (default: %(default)s)",
    )
    server.add_argument("--public-url", metavar="URL", help="the server's address as clients reach it through a proxy")
    ray = serve.add_argument_group("replicas on Ray Serve (without these, one model in this process)")
    ray.add_argument("--replicas", type=int, help="model replicas: one per GPU, or CPU replicas where there is none")
    ray.add_argument("--min-replicas", type=int, help="autoscale with the queue down to this many")
    ray.add_argument("--max-replicas", type=int, help="autoscale with the queue up to this many")
    ray.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="alone, a Ray cluster on this machine (the default); with ADDRESS (auto, ray://head:10001), join it",
    )
    _add_model_and_sampling_arguments(serve, seed_help="seed of every edit that names none (default: a new one)")
    prompt = _add_prompt_arguments(serve)
    prompt.add_argument("--negative-prompt", help="what to avoid (only used when guidance is above 1)")


def _add_plan_parser(commands) -> None:
    plan = commands.add_parser(
        "plan",
        help="predict an edit's GPU and host memory for every memory plan, and which one --memory auto takes",
        description="Predict, without a GPU or any weights, the peak GPU and host memory of one edit for every "
        "memory plan (fastest first: resident, model, fp8-model, group, gguf, sequential), which fit, and the "
        "one `--memory auto` would take. The formulas are in src/ifedit/memory.py.",
        epilog="example: ifedit plan --model paper --gpu-memory 24 --host-memory 64",
    )
    plan.add_argument("--model", default=DEFAULT_PRESET, help=f"a preset or a local pipeline folder (default: "
                      f"{DEFAULT_PRESET})")  # fmt: skip
    plan.add_argument("--gpu-memory", type=finite_float, required=True, metavar="GB",
                      help="free GPU memory in GiB (a '24 GB' card has 24)")  # fmt: skip
    plan.add_argument("--host-memory", type=finite_float, metavar="GB", help="free host memory in GiB (default: "
                      "not checked)")  # fmt: skip
    plan.add_argument("--frames", type=int, help="video frames, 4n+1 (default: the preset's)")
    plan.add_argument("--height", type=int, help="video height in px (default: the preset's area at 480 x 832)")
    plan.add_argument("--width", type=int, help="video width in px")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")


def _add_prompt_arguments(parser: argparse.ArgumentParser, input_kind: bool = True) -> argparse._ArgumentGroup:
    """Options of the prompt-enhancement stage, shared by `edit`, `prompt` and `bench run` (whose benchmark says
    whether its texts are instructions or target captions, hence `input_kind`)."""
    group = parser.add_argument_group(
        "prompt enhancement",
        "A vision-language model rewrites the instruction as a time-ordered video prompt. By default: the "
        "OpenAI-compatible server in $IFEDIT_VLM_BASE_URL (model $IFEDIT_VLM_MODEL, key $IFEDIT_VLM_API_KEY or "
        "$OPENAI_API_KEY) if set, else the local model named by --vlm, else an offline template.",
    )
    group.add_argument("--prompt-enhancer", choices=ENHANCER_CHOICES, default="auto", help="force a backend")
    if input_kind:
        group.add_argument(
            "--input-kind",
            choices=INPUT_KINDS,
            default="instruction",
            help="the text is an instruction ('make the dog sit') or a target caption ('A sitting dog.')",
        )
    group.add_argument("--vlm", metavar="MODEL", help=f"local VLM (Hub id or folder), e.g. {DEFAULT_LOCAL_MODEL}")
    group.add_argument("--vlm-base-url", metavar="URL", help="OpenAI-compatible server, e.g. http://localhost:8000/v1")
    group.add_argument("--vlm-api-model", metavar="NAME", help="model name on that server")
    group.add_argument(
        "--vlm-api-key",
        metavar="KEY",
        help="API key (prefer $IFEDIT_VLM_API_KEY: a command line is visible to other users)",
    )
    group.add_argument(
        "--vlm-timeout",
        type=finite_float,
        default=30.0,
        metavar="S",
        help="seconds per request; the whole call, retries included, takes at most 3 times this",
    )
    group.add_argument("--no-cache", action="store_true", help="ask the VLM again instead of reusing its answer")
    group.add_argument(
        "--strict-prompt",
        action="store_true",
        help="stop with an error instead of falling back to the next prompt backend",
    )
    return group


def _enhance(args: argparse.Namespace, image, text: str, device: str | None = None):
    """Run the prompt stage as the arguments ask (before any video model is loaded)."""
    from .prompting import enhance

    return enhance(
        image,
        text,
        kind=args.input_kind,
        enhancer=_enhancer_for(args),
        vlm_model=args.vlm,
        api_base_url=args.vlm_base_url,
        api_model=args.vlm_api_model,
        api_key=args.vlm_api_key,
        timeout=args.vlm_timeout,
        use_cache=not args.no_cache,
        strict=args.strict_prompt,
        device=device,
    )


def _enhancer_for(args: argparse.Namespace) -> str:
    """The prompt backend to ask for: the toy world was trained on the offline template's wording, so with no VLM
    named it gets the template, without the notice that a real model would want a VLM."""
    from .prompting.api import configured_base_url

    model = getattr(args, "model", None)
    if args.prompt_enhancer != "auto" or not model or args.vlm or configured_base_url(args.vlm_base_url):
        return args.prompt_enhancer
    return "template" if resolve_model(model).name == "toyworld" else "auto"


def _prompt(args: argparse.Namespace) -> int:
    result = _enhance(args, load_image(args.image), args.text)
    if args.json:
        print(redact(json.dumps(result.to_record(), indent=2, ensure_ascii=False)))
        return 0
    # Everything printed here may come from a server: masked and without control codes, like every record.
    print(safe_text(result.prompt))
    source = result.backend + (f" ({result.model})" if result.model else "")
    cached = ", from cache" if result.cached else ""
    print(safe_text(f"# written by {source} in {result.elapsed_s:.1f} s{cached}"), file=sys.stderr)
    for fallback in result.fallbacks:
        print(safe_text(f"# passed over {fallback.backend}: {fallback.reason}"), file=sys.stderr)
    return 0


def _check_common_options(args: argparse.Namespace) -> None:
    """Options shared by several commands whose bad values would only show after a model loaded or a server was
    called (or never: a timeout is used only when a server is)."""
    from .prompting.api import MAX_TIMEOUT_S

    timeout = getattr(args, "vlm_timeout", None)
    if timeout is not None and not 0 < timeout <= MAX_TIMEOUT_S:
        raise InvalidInputError(f"--vlm-timeout must be more than 0 and at most {MAX_TIMEOUT_S:g} s, got {timeout:g}")
    model = getattr(args, "vlm_api_model", None)
    if model is not None and (not model.strip() or strip_control(model) != model):
        raise InvalidInputError("--vlm-api-model must be a model name without control characters")
    threshold = getattr(args, "first_block_cache", None)
    if threshold is not None and threshold <= 0:
        raise InvalidInputError(f"--first-block-cache must be a threshold above 0 (e.g. 0.05), got {threshold:g}")
    lora_scale = getattr(args, "lora_scale", None)
    if lora_scale is not None and abs(lora_scale) > 100:
        raise InvalidInputError(f"--lora-scale must be between -100 and 100, got {lora_scale:g}")


def _is_secret_option(arg: str) -> bool:
    """An option that holds a key, however it is spelled: the real ones, abbreviations and misspellings (refused by
    the parser, whose message quotes them) such as `--vlm-api-k`, `--VLM-API-KEY`, `--vlm-token=`, `-api_key`."""
    name = re.split("[=:]", arg, maxsplit=1)[0].lower().replace("_", "-")
    return name.startswith("-") and (
        any(word in name for word in SECRET_WORDS)
        or any(option.startswith(name) and name.startswith(option[: -len("ey")]) for option in SECRET_OPTIONS)
    )


def recorded_argv(argv: Sequence[str]) -> list[str]:
    """The command line as records keep it: the value of every key option replaced by `***`."""
    recorded: list[str] = []
    value_is_secret = False
    for arg in argv:
        if value_is_secret:
            recorded.append("***")
            value_is_secret = False
        elif _is_secret_option(arg):
            inline = re.search("[=:]", arg)
            recorded.append(arg[: inline.end()] + "***" if inline else arg)
            value_is_secret = not inline
        else:
            recorded.append(arg)
    return recorded


def _register_secrets(argv: Sequence[str]) -> None:
    """Every key this run knows of, registered before parsing so that no message or record shows it: argparse
    quotes bad arguments, and a server may echo a key in an error."""
    for arg, recorded in zip(argv, recorded_argv(argv), strict=True):
        if recorded == "***":  # the value after a key option
            register_secret(arg)
        elif recorded != arg:  # `--option=KEY`: what the mask replaced
            register_secret(arg[len(recorded) - len("***") :])
    for variable in SECRET_VARIABLES:
        register_secret(os.environ.get(variable))


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a service manager, `kill`, a closed terminal's shell) stops a run the way Ctrl-C does, so temporary
    outputs are removed on the way out instead of left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _register_secrets(argv)
    # Paths that are not valid UTF-8 and text from servers must not crash a print after a finished edit.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    args.argv = recorded_argv(argv)
    _configure_logging(quiet=getattr(args, "quiet", False))
    try:
        _check_common_options(args)
        commands = {
            "edit": _edit,
            "prompt": _prompt,
            "toyworld": _toyworld,
            "demo": _demo,
            "info": _info,
            "bench": _bench,
            "ui": _ui,
            "plan": _plan,
            "serve": _serve,
        }
        with _terminate_as_interrupt():
            return commands[args.command](args)
    except InvalidInputError as error:
        print(f"ifedit: error: {safe_text(error)}", file=sys.stderr)
        return EXIT_INPUT
    except IFEditError as error:
        print(f"ifedit: error: {safe_text(error)}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        print("ifedit: interrupted; outputs of the unfinished work were not written", file=sys.stderr)
        return EXIT_INTERRUPTED


def _edit(args: argparse.Namespace) -> int:
    # Everything a user can get wrong is checked before the (slow) model load.
    preset = _with_lora_options(resolve_model(args.model), args)
    settings = _edit_settings(preset, args)
    check_seed(args.seed)
    instruction = _user_text(args.instruction, "instruction")
    if args.prompt is not None:
        args.prompt = _user_text(args.prompt, "--prompt")
    image = load_image(args.image)
    outputs = _output_paths(args)
    _quiet_libraries()
    from .editor import Editor, final_frame
    from .io import save_image, save_json, staged_outputs
    from .loading import check_placement

    options = _load_options(args)
    check_placement(preset, options)
    # The prompt stage runs first: a local VLM is loaded, used and released before the video model loads.
    if args.prompt is not None:
        prompt, provenance = args.prompt.strip(), {"backend": "given"}
    else:
        enhanced = _enhance(args, image, instruction, device=None if args.device == "auto" else args.device)
        prompt, provenance = enhanced.prompt, enhanced.to_record()
    editor = Editor(preset, options)
    editor.pipe.set_progress_bar_config(disable=args.quiet, leave=False)
    edit = editor.edit(
        image,
        instruction,
        settings,
        prompt=prompt,
        prompt_provenance=provenance,
        seed=args.seed,
        return_frames=bool(args.save_video or args.save_frames),
        source=str(Path(args.image).resolve()),
    )
    result = edit.result

    # Every output is written to a temporary first and all are moved into place together, the record last: an
    # interruption or a full disk leaves none of them, and a JSON beside an image means the edit finished.
    outputs_record = {name: str(path) for name, path in outputs.items() if name != "record"}
    with staged_outputs(outputs, folders=("frames",), overwrite=args.overwrite) as staged:
        if args.save_frames:
            _write_frames(result, staged["frames"])
        if args.save_video:
            from .outputs import save_video

            save_video(result.frames, staged["video"], preset.fps)
        save_image(result.image, staged["image"])
        save_json({**edit.record, "outputs": outputs_record, "argv": args.argv}, staged["record"])
    index, sharpness = final_frame(result)
    logger.info(
        "wrote %s (%dx%d, frame %d, sharpness %.1f) in %.1f s; record: %s",
        outputs["image"],
        result.width,
        result.height,
        index,
        sharpness,
        result.timings["total"],
        outputs["record"],
    )
    return 0


def _edit_settings(preset: Preset, args: argparse.Namespace) -> EditSettings:
    """The preset's recipe with the edit options given, checked (shared by `edit`, `bench run` and `serve`)."""
    given = dict(
        num_inference_steps=args.steps,
        num_frames=args.frames,
        height=args.height,
        width=args.width,
        guidance_scale=args.guidance,
        guidance_scale_2=args.guidance_2,
        negative_prompt=args.negative_prompt,
        tld_stride=args.tld_stride,
        tld_threshold=args.tld_threshold,
        tld_history=args.tld_history,
        tld_positions=args.tld_positions,
        refine=args.refine,
        refine_prompt=args.refine_prompt,
        refine_frames=args.refine_frames,
        refine_steps=args.refine_steps,
        refine_strength=args.refine_strength,
        decode_frames=args.decode,
        edit_position=args.edit_position,
    )
    for name in ("negative_prompt", "refine_prompt"):  # typed text, checked like the instruction
        if given[name] is not None:
            given[name] = _user_text(given[name], "--" + name.replace("_", "-"))
    if args.fast:  # the shortcuts fill in what was not given explicitly
        given.update({name: value for name, value in FAST_SETTINGS.items() if given[name] is None})
    return edit_settings(preset, **given)


def _load_options(args: argparse.Namespace):
    from .loading import LoadOptions

    return LoadOptions(
        device=args.device,
        dtype=args.dtype,
        offload=args.offload,
        vae_tiling=args.vae_tiling,
        local_files_only=args.offline,
        memory=args.memory,
        plan_frames=getattr(args, "frames", None),
        plan_height=getattr(args, "height", None),
        plan_width=getattr(args, "width", None),
        attention_backend=args.attention_backend,
        compile=args.compile,
        first_block_cache=args.first_block_cache,
        fp8_compute=args.fp8_compute,
        vae_dtype=args.vae_dtype,
        vae_channels_last=args.vae_channels_last,
        storage_dtype=args.storage_dtype,
        transformer=args.transformer,
        transformer_2=args.transformer_2,
    )


def _with_lora_options(preset: Preset, args: argparse.Namespace) -> Preset:
    """Apply --no-lora / --lora-* to the preset's LoRA list."""
    if args.no_lora:
        return preset.with_loras(())
    given = {"transformer": args.lora_high, "transformer_2": args.lora_low}
    if not (args.lora_source or args.lora_subfolder or any(given.values()) or args.lora_scale is not None):
        return preset
    current = {lora.target: lora for lora in preset.loras}
    loras = []
    for target, weight_name in given.items():
        base = current.get(target)
        if weight_name is None and base is None:
            continue
        source = args.lora_source or (base.source if base else None)
        if source is None:
            raise InvalidInputError("--lora-high/--lora-low need --lora-source (a Hub id or a folder)")
        subfolder = args.lora_subfolder or (base.subfolder if base and source == base.source else None)
        loras.append(
            LoraWeights(
                source=source,
                weight_name=weight_name or base.weight_name,
                target=target,
                subfolder=subfolder,
                scale=args.lora_scale if args.lora_scale is not None else (base.scale if base else 1.0),
            )
        )
    if not loras:
        raise InvalidInputError(f"model {preset.name!r} has no LoRA to change; name files with --lora-high/--lora-low")
    return preset.with_loras(tuple(loras))


def _output_paths(args: argparse.Namespace) -> dict[str, Path]:
    """Every file the edit will write, refused up front if it exists (without --overwrite), is a folder, is named
    twice, or cannot be written."""
    image = check_output_path(args.output, args.overwrite)
    paths = {"image": image}
    if args.save_video:
        if importlib.util.find_spec("imageio_ffmpeg") is None:
            raise SetupError("--save-video needs the video extra: pip install 'ifedit[video]'")
        paths["video"] = image.with_suffix(".mp4")
    paths["record"] = image.with_suffix(".json")  # last: staged_outputs moves the record in after everything else
    for name, path in paths.items():
        if name != "image":
            _check_output_file(path, args.overwrite)
    if args.save_frames:
        folder = Path(args.save_frames)
        if not folder.parent.is_dir():
            raise InvalidInputError(f"folder for --save-frames does not exist: {folder.parent}")
        if any(folder.absolute() == path.absolute() for path in paths.values()):
            raise InvalidInputError(f"--save-frames {folder} is also the name of an output file; choose another")
        if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not args.overwrite)):
            raise InvalidInputError(
                f"--save-frames {folder} exists and is not empty (pass --overwrite to write into it)"
            )
        check_writable(folder.parent)
        paths = {"frames": folder, **paths}
    return paths


def _check_output_file(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise InvalidInputError(f"output {path} is a folder; move it away or name another output")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise InvalidInputError(f"output exists: {path} (pass --overwrite to replace it)")


def _user_text(text: str, name: str) -> str:
    """An instruction or ready prompt as the prompt stage takes it: control characters (a pasted escape sequence,
    a NUL) are refused, as every other way in refuses them, rather than passed to the model and the record."""
    from .prompting.base import check_text

    if not text.strip():
        raise InvalidInputError(f"{name} must not be empty")
    try:
        return check_text(text)
    except InvalidInputError as error:
        raise InvalidInputError(f"{name}: {error}") from None


def _write_frames(result, folder: Path) -> None:
    from .io import save_image
    from .outputs import candidate_sheet, save_frames

    save_frames(result.frames, folder, "edit")
    save_image(candidate_sheet(result.frames, result.sharpness, result.selected_index), folder / "edit_candidates.png")
    if result.refine_frames is not None:
        save_frames(result.refine_frames, folder, "refine")
        sheet = candidate_sheet(result.refine_frames, result.refine_sharpness, result.refine_selected_index)
        save_image(sheet, folder / "refine_candidates.png")


def _toyworld(args: argparse.Namespace) -> int:
    if args.action == "sample":
        from .toyworld.files import write_sample

        check_seed(args.seed)
        for path in write_sample(args.seed, Path(args.out), args.event, args.overwrite):
            print(path)
        return 0
    _quiet_libraries()
    from .toyworld.train import train

    config = TrainConfig(seed=args.seed, vae_steps=args.vae_steps, dit_steps=args.expert_steps, clips=args.clips)
    train(Path(args.out), config, log=lambda message: logger.info("%s", message))
    return 0


def _demo(args: argparse.Namespace) -> int:
    output = check_output_path(args.output, args.overwrite)
    preset = resolve_model(args.model)
    _quiet_libraries()
    from .toyworld.demo import run_demo

    run_demo(preset, output, log=lambda message: logger.info("%s", message))
    return 0


def _ui(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("gradio") is None or importlib.util.find_spec("imageio_ffmpeg") is None:
        raise SetupError("ifedit ui needs the ui extra: pip install 'ifedit[ui]'")
    if not 0 < args.port < 65536:
        raise InvalidInputError(f"--port must be between 1 and 65535, got {args.port}")
    preset = _with_lora_options(resolve_model(args.model), args)
    _quiet_libraries()
    # An editor of private photos reports no usage statistics unless the user asks Gradio to.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from .editor import Editor
    from .loading import check_placement
    from .ui import EditorApp, serve

    options = _load_options(args)
    check_placement(preset, options)
    editor = Editor(preset, options)
    device = None if args.device == "auto" else args.device
    from .prompting.chain import _plan as prompt_plan

    # Only a local VLM, here or as the fallback after a server, runs on the editor's device.
    on_device = "local" in prompt_plan(args.prompt_enhancer, args.vlm, args.vlm_base_url).vlms
    app = EditorApp(editor, lambda image, text: _enhance(args, image, text, device=device), prompt_on_device=on_device)
    logger.info("model loaded in %.1f s; serving on http://%s:%d", editor.load_seconds, args.host, args.port)
    try:
        serve(app, args.host, args.port, args.share)
    except OSError as error:
        raise SetupError(f"cannot serve on {args.host}:{args.port}: {error}") from None
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .serve.command import serve

    return serve(args)


def _plan(args: argparse.Namespace) -> int:
    from .memory import clip_for, format_plan, known_size, plan_memory
    from .sizes import fit_size, round_frames

    for flag, value in (("--gpu-memory", args.gpu_memory), ("--host-memory", args.host_memory)):
        if value is not None and value <= 0:
            raise InvalidInputError(f"{flag} must be a positive number of GiB, got {value:g}")
    preset = resolve_model(args.model)
    size = known_size(preset.model_id)
    if size is None:  # built in memory, or a Hub id that may be in the download cache
        _quiet_libraries()
        from .loading import model_size

        size = model_size(preset)
    if size is None:
        raise SetupError(f"cannot size {args.model} without its files: download it (`hf download {args.model}`) "
                         "and pass the folder, or name a preset")  # fmt: skip
    recipe = preset.recipe
    frames = round_frames(recipe.num_frames if args.frames is None else args.frames, size.vae_temporal)
    height, width = fit_size((832, 480), args.height, args.width, recipe.max_area, size.size_multiple)
    plan = plan_memory(size, clip_for(preset, size, frames, height, width), args.gpu_memory, args.host_memory)
    if args.json:
        print(json.dumps({"model": args.model, "model_id": preset.model_id, **plan.to_dict()}, indent=2))
    else:
        print(format_plan(plan, args.model))
    return 0


def _info(args: argparse.Namespace) -> int:
    _quiet_libraries()
    import torch

    from .outputs import versions

    print("versions:")
    for package, version in versions().items():
        print(f"  {package:<13} {version or 'not installed'}")
    print("devices:")
    print("  cpu")
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        name = torch.cuda.get_device_name(index)
        print(f"  cuda:{index}  {name}, {total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free)")
    if torch.backends.mps.is_available():
        print("  mps")
    print(f"presets (--model NAME; default {DEFAULT_PRESET}):")
    for preset in PRESETS.values():
        memory = f"GPU {preset.gpu_memory_gb:.0f} GB" if preset.gpu_memory_gb else "CPU ok"
        print(f"  {preset.name:<16} {memory:<10} {preset.description}")
        if preset.model_id:
            print(f"  {'':<16} {'':<10} weights: {preset.model_id}")
        if preset.notes:
            print(f"  {'':<16} {'':<10} {preset.notes}")
    print(f"Hugging Face cache: {os.environ.get('HF_HOME', '~/.cache/huggingface')}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.action == "report":
        from .bench.report import write_report

        for path in write_report(Path(args.dir)):
            logger.info("wrote %s", path)
        return 0
    _quiet_libraries()
    if args.action == "score":
        from .bench.scoring import ScoreOptions, score_run

        options = ScoreOptions(
            clip=args.clip,
            lpips_alexnet=args.lpips_alexnet,
            lpips_heads=args.lpips_heads,
            device=args.device,
            scorer_repo=args.scorer_repo,
            scorer_python=args.scorer_python,
            judge_base_url=args.judge_base_url,
            judge_model=args.judge_model,
            judge_api_key=args.judge_api_key,
        )
        path = score_run(Path(args.dir), options)
        logger.info("wrote %s", path)
        return 0
    return _bench_run(args)


def _bench_run(args: argparse.Namespace) -> int:
    from .bench.runner import PromptOptions, RunPlan, run

    if args.ray is not None:
        from .bench.distributed import import_ray

        import_ray()
    if args.workers is not None and args.workers < 1:
        raise InvalidInputError(f"--workers must be at least 1, got {args.workers}")
    if args.limit is not None and args.limit < 1:
        raise InvalidInputError(f"--limit must be at least 1, got {args.limit}")
    check_seed(args.seed)
    preset = _with_lora_options(resolve_model(args.model), args)
    settings = _edit_settings(preset, args)
    plan = RunPlan(
        benchmark=args.benchmark,
        data=Path(args.data).expanduser().resolve(),
        out=Path(args.out),
        preset=preset,
        load_options=_load_options(args),
        settings=settings,
        prompts=PromptOptions(
            enhancer=args.prompt_enhancer,
            vlm_model=args.vlm,
            api_base_url=args.vlm_base_url,
            api_model=args.vlm_api_model,
            api_key=args.vlm_api_key,
            timeout=args.vlm_timeout,
            use_cache=not args.no_cache,
            strict=args.strict_prompt,
        ),
        seed=0 if args.seed is None else args.seed,
        limit=args.limit,
        categories=tuple(name.strip() for name in (args.categories or "").split(",") if name.strip()),
        argv=tuple(args.argv),
        allow_outside_data=args.allow_outside_data,
    )
    from .loading import check_placement

    check_placement(preset, plan.load_options)
    summary = run(
        plan,
        ray_address=args.ray or None,
        use_ray=args.ray is not None,
        workers=args.workers,
        progress_bar=not args.quiet,
    )
    logger.info(
        "%s: %d cases, %d already done, %d edited, %d failed; outputs in %s",
        args.benchmark,
        summary.total,
        summary.skipped,
        summary.finished,
        len(summary.failed),
        summary.folder / "images",
    )
    if summary.failed:
        first_id, first_error = next(iter(summary.failed.items()))
        print(
            f"ifedit: error: {len(summary.failed)} cases failed (first: {first_id}: {first_error}); "
            f"records in {summary.folder / 'failures'}; a rerun retries them",
            file=sys.stderr,
        )
        return EXIT_SETUP
    return 0


def _configure_logging(quiet: bool) -> None:
    """Our notes and warnings as `ifedit: ...` lines; the libraries' own chatter only when it is an error."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SafeFormatter("ifedit: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


class _SafeFormatter(logging.Formatter):
    """Log lines with secrets masked and control codes removed (messages may quote a server's answer)."""

    def format(self, record: logging.LogRecord) -> str:
        return strip_control(redact(super().format(record)), keep_newlines=True)


def _quiet_libraries() -> None:
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    if logger.level >= logging.WARNING:  # -q: the libraries' loading bars go too
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
