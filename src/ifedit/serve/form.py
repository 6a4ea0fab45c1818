"""An image-edit request's form: OpenAI's fields, and ifedit's settings checked by the CLI's own option parser.

Every setting of `ifedit edit` that belongs to one edit is a form field of the same name with underscores
(`steps`, `tld_stride`, `refine`, `fast`, ...). `ifedit serve` takes the same options as the server's defaults, and
a request's fields are parsed over them by the same argparse actions, so types, choices and messages match the CLI.
Options that name files, devices or servers (model, LoRA, VLM) are the operator's alone: no request can set them.
"""

from __future__ import annotations

import argparse
import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass

import PIL.Image

from ..cli import options as cli_options
from ..errors import InvalidInputError
from ..options import EditSettings
from ..presets import Preset
from ..prompting.base import check_text

RESPONSE_FORMATS = ("b64_json", "url")
MAX_N = 4  # edits per request: each is a full video generation
MAX_TEXT_CHARS = 4000
# A request may ask for more pixels and frames than the preset's recipe, but not without bound: memory grows with
# both, and one request must not take the replica down for everyone.
LIMIT_FACTOR = 4
OPENAI_FIELDS = ("prompt", "model", "n", "size", "response_format", "user")
# OpenAI's image-edit settings this server has no counterpart for: refused by name rather than quietly ignored.
OPENAI_ONLY_FIELDS = ("quality", "background", "output_format", "output_compression", "input_fidelity", "stream")
BOOLEAN_FIELDS = ("fast", "refine")
SIZE = re.compile(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})")
# How the command line's messages name an option: "argument --tld-history: ...", "--steps must be ...".
MESSAGE_NAME = re.compile(r"(?:argument )?-{0,2}([a-z][a-z0-9_-]*)")


def _sampling_fields() -> tuple[str, ...]:
    """The CLI's sampling, dropout and refinement options, less height and width (a request says `size`)."""
    parser = argparse.ArgumentParser(add_help=False)
    cli_options.add_sampling_arguments(parser, seed_help="")
    return tuple(name for name in vars(parser.parse_args([])) if name not in ("height", "width"))


SETTING_FIELDS = (*_sampling_fields(), "fast", "decode", "negative_prompt", "input_kind")
FIELDS = (*OPENAI_FIELDS, *SETTING_FIELDS, "video_prompt")


@dataclass(frozen=True)
class EditRequest:
    """What a replica needs for one request: the words, the pipeline's settings and a seed per image."""

    instruction: str
    video_prompt: str | None  # a ready video prompt; None runs the prompt stage
    input_kind: str
    settings: EditSettings
    seeds: tuple[int | None, ...]  # None: drawn by the editor and recorded
    response_format: str
    image: PIL.Image.Image | None = None
    source: str = "upload"  # the uploaded file's name, for records


class FieldError(InvalidInputError):
    """A bad form field, named as the form names it (`field`), not as the command line does."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def _in_form_terms(error: InvalidInputError) -> InvalidInputError:
    """The command line's message about an option or setting, worded with the form field it came from."""
    match = MESSAGE_NAME.match(str(error))
    name = match[1].replace("-", "_") if match else ""
    if name in ("height", "width"):
        return FieldError(f"size: {name}{str(error)[match.end() :]}", "size")
    if name not in FIELDS:
        return error
    return FieldError(name + str(error)[match.end() :], name)


def _checked_text(value: str, name: str) -> str:
    """A text field as the prompt stage takes it: control and bidirectional-override characters are refused here,
    before the request waits in the queue, as the command line refuses them."""
    try:
        return check_text(value)
    except InvalidInputError as error:
        raise FieldError(f"{name}: {error}", name) from None


class _FieldParser(argparse.ArgumentParser):
    """argparse whose mistakes are InvalidInputError with the CLI's own message."""

    def error(self, message: str):
        raise InvalidInputError(message)


def _field_parser() -> argparse.ArgumentParser:
    parser = _FieldParser(add_help=False)
    cli_options.add_model_and_sampling_arguments(parser)
    prompt = cli_options.add_prompt_arguments(parser)
    prompt.add_argument("--negative-prompt")
    return parser


_PARSER = _field_parser()


def parse_form(fields: Mapping[str, str], preset: Preset, defaults: argparse.Namespace, model: str) -> EditRequest:
    """The request that `fields` (every text field of the form) asks for, with the server's `defaults` (the
    `ifedit serve` options) for what they leave out; InvalidInputError names the first bad field (a FieldError
    when it is one field's), in the form's own words."""
    try:
        return _parse_form(fields, preset, defaults, model)
    except FieldError:
        raise
    except InvalidInputError as error:
        raise _in_form_terms(error) from None


def _parse_form(fields: Mapping[str, str], preset: Preset, defaults: argparse.Namespace, model: str) -> EditRequest:
    unknown = sorted(set(fields) - set(FIELDS))
    for name in unknown:
        if name in OPENAI_ONLY_FIELDS:
            message = f"{name} is one of OpenAI's settings that this server has no counterpart for; leave it out"
            raise FieldError(message, name)
    if unknown:
        raise FieldError(
            f"unknown field {unknown[0]!r}: this server takes image, {', '.join(OPENAI_FIELDS)} and ifedit's "
            f"settings ({', '.join((*SETTING_FIELDS, 'video_prompt'))})",
            unknown[0],
        )
    for name, value in fields.items():
        if len(value) > MAX_TEXT_CHARS:
            raise InvalidInputError(f"{name} is too long: {len(value)} characters (at most {MAX_TEXT_CHARS})")
    if not fields.get("prompt", "").strip():
        raise FieldError("prompt must not be empty: say what should happen, e.g. 'the ice cube melts'", "prompt")
    instruction = _checked_text(fields["prompt"], "prompt")
    if fields.get("model", model) != model:
        raise InvalidInputError(f"model must be {model!r} (see GET /v1/models), got {fields['model']!r}")
    response_format = fields.get("response_format", "b64_json")
    if response_format not in RESPONSE_FORMATS:
        raise InvalidInputError(f"response_format must be {' or '.join(RESPONSE_FORMATS)}, got {response_format!r}")
    n = _whole(fields.get("n", "1"), "n")
    if not 1 <= n <= MAX_N:
        raise InvalidInputError(f"n must be between 1 and {MAX_N}, got {n}")
    video_prompt = fields.get("video_prompt")
    if video_prompt is not None:
        if not video_prompt.strip():
            message = "video_prompt must not be empty (leave it out to have the prompt stage write one)"
            raise FieldError(message, "video_prompt")
        video_prompt = _checked_text(video_prompt, "video_prompt")

    options = _options(fields, defaults)
    settings = cli_options.edit_settings_of(preset, options)
    _check_limits(settings, preset)
    if options.seed is not None and not 0 <= options.seed <= 2**63 - n:
        raise InvalidInputError(f"seed must be between 0 and {2**63 - n}, got {options.seed}")
    seeds = tuple(None if options.seed is None else options.seed + index for index in range(n))
    return EditRequest(
        instruction=instruction,
        video_prompt=video_prompt,
        input_kind=options.input_kind,
        settings=settings,
        seeds=seeds,
        response_format=response_format,
    )


def _options(fields: Mapping[str, str], defaults: argparse.Namespace) -> argparse.Namespace:
    """The server's options with the request's settings parsed over them by the CLI's argparse actions."""
    options = copy.copy(defaults)
    argv = []
    for name in SETTING_FIELDS:
        if name not in fields:
            continue
        value = fields[name]
        if name in BOOLEAN_FIELDS:
            if value.lower() not in ("true", "false"):
                raise InvalidInputError(f"{name} must be true or false, got {value!r}")
            setattr(options, name, value.lower() == "true")
        else:
            argv.append(f"--{name.replace('_', '-')}={value}")
    options = _PARSER.parse_args(argv, namespace=options)
    size = fields.get("size")
    if size is not None and size != "auto":
        match = SIZE.fullmatch(size)
        if match is None:
            raise InvalidInputError(f"size must be WIDTHxHEIGHT in px (e.g. 832x480) or auto, got {size!r}")
        options.width, options.height = int(match[1]), int(match[2])
    elif size == "auto":
        options.width = options.height = None
    return options


def _check_limits(settings: EditSettings, preset: Preset) -> None:
    """Refuse sizes and clip lengths far beyond the preset's recipe (memory grows with both)."""
    height, width = settings.height, settings.width
    area_limit = LIMIT_FACTOR * preset.recipe.max_area
    if height is not None and width is not None and height * width > area_limit:
        raise InvalidInputError(
            f"size {width}x{height} is too large for this server: at most {area_limit} pixels "
            f"({LIMIT_FACTOR} times the {preset.name} recipe's area)"
        )
    frame_limit = LIMIT_FACTOR * preset.recipe.num_frames
    for name, frames in (("frames", settings.num_frames), ("refine_frames", settings.refine_frames)):
        if frames is not None and frames > frame_limit:
            raise InvalidInputError(f"{name} must be at most {frame_limit} on this server, got {frames}")


def _whole(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidInputError(f"{name} must be a whole number, got {value!r}") from None
