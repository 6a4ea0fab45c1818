"""Per-edit options shared by the pipeline and the command line, and their validation (no model needed)."""

from __future__ import annotations

import math
from typing import Any, Literal

from .errors import InvalidInputError
from .presets import Preset

MIN_FRAMES = 5
# Sides outside this range are refused before any model loads: below it no Wan model has a single latent patch,
# above it one edit needs far more memory than any GPU has (the 720p models use 1280).
MIN_SIDE_PX = 16
MAX_SIDE_PX = 4096
MAX_FRAMES = 1001
MAX_STEPS = 1000
MAX_SEED = 2**63 - 1
HistoryMode = Literal["slice", "reset"]
PositionMode = Literal["contiguous", "original"]
SigmaSchedule = Literal["default", "uniform"]
DecodeMode = Literal["all", "needed"]
HISTORY_MODES: tuple[str, ...] = ("slice", "reset")
POSITION_MODES: tuple[str, ...] = ("contiguous", "original")
SIGMA_SCHEDULES: tuple[str, ...] = ("default", "uniform")
DECODE_MODES: tuple[str, ...] = ("all", "needed")
OUTPUT_TYPES: tuple[str, ...] = ("pil", "np", "pt")
CALLBACK_TENSORS: tuple[str, ...] = ("latents", "prompt_embeds", "negative_prompt_embeds")


def check_options(
    *,
    prompt: str = "prompt",
    num_frames: int = 33,
    num_inference_steps: int = 8,
    guidance_scale: float = 1.0,
    guidance_scale_2: float | None = None,
    height: int | None = None,
    width: int | None = None,
    sigma_schedule: str = "default",
    tld_stride: int = 3,
    tld_threshold: float | None = None,
    tld_history: str = "slice",
    tld_positions: str = "contiguous",
    refine_frames: int | None = None,
    refine_steps: int | None = None,
    refine_strength: float = 1.0,
    decode_frames: str = "all",
    edit_position: float = 1.0,
    output_type: str = "pil",
    callback_on_step_end_tensor_inputs: tuple[str, ...] = (),
    **_: Any,
) -> None:
    """Loud, specific errors for bad edit options, before any model runs (the CLI calls it before loading)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInputError("prompt must be a non-empty string")
    _require(num_frames, "num_frames", f"an integer >= {MIN_FRAMES}", _is_int(num_frames, MIN_FRAMES))
    _require(
        refine_frames,
        "refine_frames",
        f"an integer >= {MIN_FRAMES} or None",
        refine_frames is None or _is_int(refine_frames, MIN_FRAMES),
    )
    _require(num_inference_steps, "num_inference_steps", "an integer >= 1", _is_int(num_inference_steps, 1))
    _require(refine_steps, "refine_steps", "an integer >= 1 or None", refine_steps is None or _is_int(refine_steps, 1))
    for name, value, most in (
        ("num_frames", num_frames, MAX_FRAMES),
        ("refine_frames", refine_frames, MAX_FRAMES),
        ("num_inference_steps", num_inference_steps, MAX_STEPS),
        ("refine_steps", refine_steps, MAX_STEPS),
    ):
        _require(value, name, f"at most {most}", value is None or value <= most)
    for name, side in (("height", height), ("width", width)):
        allowed = f"a whole number of pixels from {MIN_SIDE_PX} to {MAX_SIDE_PX}, or None for automatic"
        _require(side, name, allowed, side is None or _is_int(side, MIN_SIDE_PX, MAX_SIDE_PX))
    _require(guidance_scale, "guidance_scale", "a number >= 0", _is_number(guidance_scale, 0))
    _require(
        guidance_scale_2,
        "guidance_scale_2",
        "a number >= 0 or None",
        guidance_scale_2 is None or _is_number(guidance_scale_2, 0),
    )
    _require(sigma_schedule, "sigma_schedule", " or ".join(SIGMA_SCHEDULES), sigma_schedule in SIGMA_SCHEDULES)
    _require(tld_stride, "tld_stride", "an integer >= 1 (1 disables dropout)", _is_int(tld_stride, 1))
    _require(
        tld_threshold,
        "tld_threshold",
        "a timestep fraction in (0, 1]",
        tld_threshold is None or (_is_number(tld_threshold, 0) and 0 < tld_threshold <= 1),
    )
    _require(tld_history, "tld_history", " or ".join(HISTORY_MODES), tld_history in HISTORY_MODES)
    _require(tld_positions, "tld_positions", " or ".join(POSITION_MODES), tld_positions in POSITION_MODES)
    _require(
        refine_strength,
        "refine_strength",
        "a number in (0, 1]",
        _is_number(refine_strength, 0) and 0 < refine_strength <= 1,
    )
    _require(decode_frames, "decode_frames", " or ".join(DECODE_MODES), decode_frames in DECODE_MODES)
    _require(
        edit_position,
        "edit_position",
        "a fraction of the clip in (0, 1] (1: its end, the paper's edit)",
        _is_number(edit_position, 0) and 0 < edit_position <= 1,
    )
    # Wan's VAE packs 4 frames per latent frame after the first; the pipeline repeats this with its own VAE's factor.
    latent_span = (num_frames - 1) // 4
    _require(
        edit_position,
        "edit_position",
        f"at least {0.5 / max(latent_span, 1):.3g} for {num_frames} frames (lower falls on the source frame itself)",
        latent_span == 0 or math.floor(edit_position * latent_span + 0.5) > 0,
    )
    _require(output_type, "output_type", ", ".join(OUTPUT_TYPES), output_type in OUTPUT_TYPES)
    unknown = [name for name in callback_on_step_end_tensor_inputs if name not in CALLBACK_TENSORS]
    _require(unknown, "callback_on_step_end_tensor_inputs", f"names from {', '.join(CALLBACK_TENSORS)}", not unknown)


def check_seed(seed: Any) -> None:
    """A seed is a whole number that torch's generators take (refused before any model loads)."""
    allowed = f"a whole number from 0 to {MAX_SEED}, or None for a new one"
    _require(seed, "seed", allowed, seed is None or _is_int(seed, 0, MAX_SEED))


def _is_int(value, minimum: int, maximum: int | None = None) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= minimum
        and (maximum is None or value <= maximum)
    )


def _is_number(value, minimum: float) -> bool:
    """A finite real number >= minimum: inf and NaN would run and give a black image."""
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= minimum
    )


def _require(value, name: str, allowed: str, ok: bool) -> None:
    if not ok:
        raise InvalidInputError(f"{name} must be {allowed}, got {value!r}")


# Options the pipeline takes that are not part of a preset's recipe, with their defaults.
EDIT_DEFAULTS: dict[str, Any] = {
    "negative_prompt": None,
    "height": None,
    "width": None,
    "tld_history": "slice",
    "tld_positions": "contiguous",
    "refine_prompt": None,
    "refine_frames": None,
    "refine_steps": None,
    "refine_strength": 1.0,
    "decode_frames": "all",
    "edit_position": 1.0,
}


# Cheaper than the paper's recipe (`ifedit edit --fast`), each part measured in the README's Performance section:
# a 5-frame refinement from the chosen frame re-noised halfway, and decoding only the last two kept latent frames.
FAST_SETTINGS: dict[str, Any] = {"refine_frames": 5, "refine_strength": 0.5, "decode_frames": "needed"}


def edit_settings(preset: Preset, **overrides: Any) -> dict[str, Any]:
    """Pipeline keyword arguments: the preset's recipe and our defaults, with every override that is not None."""
    unknown = set(overrides) - set(EDIT_DEFAULTS) - set(preset.call_kwargs())
    if unknown:
        raise TypeError(f"unknown edit settings: {', '.join(sorted(unknown))}")
    settings = {**preset.call_kwargs(), **EDIT_DEFAULTS}
    settings.update({name: value for name, value in overrides.items() if value is not None})
    return settings
