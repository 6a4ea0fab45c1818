"""What several commands share: exit statuses, the parser class, the option groups and how their values become the
library's objects (edit settings, load options, LoRAs, the prompt stage)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import re
from typing import NoReturn

from ..errors import InvalidInputError
from ..memory import MEMORY_CHOICES
from ..options import FAST_SETTINGS, EditSettings, check_seed
from ..presets import DEFAULT_PRESET, PRESETS, LoraWeights, Preset, edit_settings, resolve_model
from ..prompting import DEFAULT_LOCAL_MODEL, ENHANCER_CHOICES, INPUT_KINDS, PromptOptions
from ..redact import safe_text

logger = logging.getLogger("ifedit")

EXIT_SETUP = 1  # a setup problem: a missing extra, weights or GPU, a server that failed
EXIT_INPUT = 2  # bad input, said in one line
EXIT_CASES_FAILED = 3  # `bench run` finished, but some cases failed (a rerun retries them)
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line instead of a usage block, and takes no abbreviations
    (`--vlm-api-k KEY` would otherwise be a key that the record's masking does not recognise)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_INPUT, f"{self.prog}: error: {safe_text(message)} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        # A command's unknown option is refused by the command's parser, whose --help lists its options; argparse
        # would pass it up to `ifedit`, whose --help does not.
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and self._subparsers is None:
            self.error(f"unrecognized arguments: {' '.join(_unknown_shown(extras))}")
        return namespace, extras


def _unknown_shown(extras: list[str]) -> list[str]:
    """Unrecognised arguments as a message may show them: the value of an unknown option, which may be a key under
    a misspelt name, is `***`."""
    shown, after_option = [], False
    for arg in extras:
        if arg.startswith("-") and len(arg) > 1:
            name, inline, _ = arg.partition("=")
            shown.append(f"{name}=***" if inline else arg)
            after_option = not inline
        else:
            shown.append("***" if after_option else arg)
            after_option = False
    return shown


def finite_float(text: str) -> float:
    """argparse type: a real number; 'inf' and 'nan' would run and give a black image."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def whole_number(minimum: int):
    """argparse type: a whole number of at least `minimum`, for counts a command cannot run with fewer of."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}")
        return value

    return parse


def add_model_and_sampling_arguments(
    parser: argparse.ArgumentParser, seed_help: str = "random seed (default: a new one, recorded in the JSON)"
) -> None:
    """Model, memory and every edit setting: shared by `edit` and `bench run`."""
    speed = add_model_arguments(parser)
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
    add_sampling_arguments(parser, seed_help)


def add_model_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Which model and how it is loaded (the options of `load_options`): shared by `edit`, `bench run` and `ui`.
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
    model.add_argument(
        "--offline", action="store_true", help="use only weights already downloaded (the local VLM's too)"
    )
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


def add_sampling_arguments(parser: argparse.ArgumentParser, seed_help: str) -> None:
    """Sampling, dropout and refinement settings (the pipeline's keyword arguments; see `edit_settings_of`)."""
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


def add_prompt_arguments(parser: argparse.ArgumentParser, input_kind: bool = True) -> argparse._ArgumentGroup:
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
    group.add_argument(
        "--vlm",
        metavar="MODEL",
        help=f"local VLM (Hub id or folder); --prompt-enhancer local without it runs {DEFAULT_LOCAL_MODEL}",
    )
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


def edit_settings_of(preset: Preset, args: argparse.Namespace) -> EditSettings:
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
            given[name] = user_text(given[name], "--" + name.replace("_", "-"))
    if args.fast:  # the shortcuts fill in what was not given explicitly
        given.update({name: value for name, value in FAST_SETTINGS.items() if given[name] is None})
    try:
        return edit_settings(preset, **given)
    except InvalidInputError as error:
        raise in_option_terms(error) from None


# EditSettings' fields that the command line names otherwise; the others are their option's name.
SETTING_OPTIONS = {
    "num_inference_steps": "steps",
    "num_frames": "frames",
    "guidance_scale": "guidance",
    "guidance_scale_2": "guidance_2",
    "decode_frames": "decode",
}


def in_option_terms(error: InvalidInputError) -> InvalidInputError:
    """A setting's message as EditSettings words it (Python's names; None for "not given") worded with the option
    that sets it."""
    name, _, rest = str(error).partition(" ")
    if name not in {"seed", *(field.name for field in dataclasses.fields(EditSettings))}:
        return error
    rest = re.sub(r",? or None( for [^,]*)?", "", rest)  # leaving an option out is how a command line says None
    return InvalidInputError(f"--{SETTING_OPTIONS.get(name, name).replace('_', '-')} {rest}")


def check_seed_option(seed) -> None:
    """--seed checked as `options.check_seed` checks a seed, in the option's words."""
    try:
        check_seed(seed)
    except InvalidInputError as error:
        raise in_option_terms(error) from None


def note_unused_options(args: argparse.Namespace, settings: EditSettings) -> None:
    """Say which options given will not act, rather than ignore them silently."""
    unused = []
    if not settings.refine:
        reason = "the refinement pass is off (--refine turns it on)"
        unused += [(name, reason) for name in ("refine_frames", "refine_steps", "refine_strength", "refine_prompt")]
    if settings.tld_stride == 1:
        unused.append(("tld_threshold", "--tld-stride 1 drops no frames"))
    if getattr(args, "prompt", None) is not None:
        reason = "--prompt is used as given"
        unused += [(name, reason) for name in ("vlm", "vlm_base_url", "vlm_api_model", "strict_prompt")]
    for name, reason in unused:
        if getattr(args, name, None) not in (None, False):
            logger.warning("--%s has no effect: %s", name.replace("_", "-"), reason)


def load_options(args: argparse.Namespace):
    from ..loading import LoadOptions

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


def with_lora_options(preset: Preset, args: argparse.Namespace) -> Preset:
    """Apply --no-lora / --lora-* to the preset's LoRA list."""
    if args.no_lora:
        named = {"--lora-high": args.lora_high, "--lora-low": args.lora_low, "--lora-source": args.lora_source,
                 "--lora-subfolder": args.lora_subfolder, "--lora-scale": args.lora_scale}  # fmt: skip
        given = [flag for flag, value in named.items() if value is not None]
        if given:
            raise InvalidInputError(f"--no-lora and {given[0]} contradict each other: drop one")
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


def prompt_options(args: argparse.Namespace) -> PromptOptions:
    """The prompt stage as the prompt-enhancement options ask: the one place they become `PromptOptions`."""
    return PromptOptions(
        enhancer=_enhancer_for(args),
        vlm_model=args.vlm,
        api_base_url=args.vlm_base_url,
        api_model=args.vlm_api_model,
        api_key=args.vlm_api_key,
        timeout=args.vlm_timeout,
        use_cache=not args.no_cache,
        strict=args.strict_prompt,
        local_files_only=getattr(args, "offline", False),  # `ifedit prompt` has no --offline: HF_HUB_OFFLINE is it
    )


def enhance(args: argparse.Namespace, image, text: str, device: str | None = None):
    """Run the prompt stage as the arguments ask (before any video model is loaded)."""
    from ..prompting import enhance

    return enhance(image, text, kind=args.input_kind, device=device, **prompt_options(args).kwargs())


def _enhancer_for(args: argparse.Namespace) -> str:
    """The prompt backend to ask for: the toy world was trained on the offline template's wording, so with no VLM
    named it gets the template, without the notice that a real model would want a VLM."""
    from ..prompting.api import configured_base_url

    model = getattr(args, "model", None)
    if args.prompt_enhancer != "auto" or not model or args.vlm or configured_base_url(args.vlm_base_url):
        return args.prompt_enhancer
    return "template" if resolve_model(model).name == "toyworld" else "auto"


def user_text(text: str, name: str) -> str:
    """An instruction or ready prompt as the prompt stage takes it: control characters (a pasted escape sequence,
    a NUL) are refused, as every other way in refuses them, rather than passed to the model and the record."""
    from ..prompting.base import check_text

    if not text.strip():
        raise InvalidInputError(f"{name} must not be empty")
    try:
        return check_text(text)
    except InvalidInputError as error:
        raise InvalidInputError(f"{name}: {error}") from None


def quiet_libraries() -> None:
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    if logger.level >= logging.WARNING:  # -q: the libraries' loading bars go too
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
