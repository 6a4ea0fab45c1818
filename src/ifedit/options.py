"""The settings of one edit, their defaults and their checks (no model needed): the pipeline, presets, the command
line, the web page, the API server and benchmark runs all take them in this one shape."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .errors import InvalidInputError

MIN_FRAMES = 5
# Sides outside this range are refused before any model loads: below it no Wan model has a single latent patch,
# above it one edit needs far more memory than any GPU has (the 720p models use 1280).
MIN_SIDE_PX = 16
MAX_SIDE_PX = 4096
MAX_FRAMES = 1001
MAX_STEPS = 1000
MAX_SEED = 2**63 - 1
# Classifier-free guidance multiplies the text's pull on every step: Wan2.2 uses 3.5, and far above that the
# samples saturate and then overflow into a black image.
MAX_GUIDANCE = 100
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


DEFAULT_MAX_AREA = 480 * 832  # 480p


@dataclass(frozen=True)
class EditSettings:
    """Every setting of one edit, with its default and its checks: the one shape of the pipeline's keyword arguments
    (documented on `IFEditPipeline.__call__`), a preset's recipe, the command line's, the web page's, the API
    server's and a benchmark run's settings, and the `settings` of every record. Bad values raise
    InvalidInputError when it is made, before any model loads."""

    # What a preset's recipe sets.
    num_inference_steps: int = 8
    guidance_scale: float = 1.0
    guidance_scale_2: float | None = None
    num_frames: int = 33
    max_area: int = DEFAULT_MAX_AREA
    sigma_schedule: SigmaSchedule = "default"
    tld_stride: int = 3
    tld_threshold: float | None = None
    max_sequence_length: int = 512
    refine: bool = True
    # What users change per edit.
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    tld_history: HistoryMode = "slice"
    tld_positions: PositionMode = "contiguous"
    refine_prompt: str | None = None
    refine_frames: int | None = None
    refine_steps: int | None = None
    refine_strength: float = 1.0
    decode_frames: DecodeMode = "all"
    edit_position: float = 1.0

    def __post_init__(self) -> None:
        num_frames, refine_frames = self.num_frames, self.refine_frames
        steps, refine_steps = self.num_inference_steps, self.refine_steps
        _require(num_frames, "num_frames", f"an integer >= {MIN_FRAMES}", _is_int(num_frames, MIN_FRAMES))
        _require(
            refine_frames,
            "refine_frames",
            f"an integer >= {MIN_FRAMES} or None",
            refine_frames is None or _is_int(refine_frames, MIN_FRAMES),
        )
        _require(steps, "num_inference_steps", "an integer >= 1", _is_int(steps, 1))
        _require(
            refine_steps, "refine_steps", "an integer >= 1 or None", refine_steps is None or _is_int(refine_steps, 1)
        )
        for name, value, most in (
            ("num_frames", num_frames, MAX_FRAMES),
            ("refine_frames", refine_frames, MAX_FRAMES),
            ("num_inference_steps", steps, MAX_STEPS),
            ("refine_steps", refine_steps, MAX_STEPS),
        ):
            _require(value, name, f"at most {most}", value is None or value <= most)
        for name, side in (("height", self.height), ("width", self.width)):
            allowed = f"a whole number of pixels from {MIN_SIDE_PX} to {MAX_SIDE_PX}, or None for automatic"
            _require(side, name, allowed, side is None or _is_int(side, MIN_SIDE_PX, MAX_SIDE_PX))
        guidance, guidance_2 = self.guidance_scale, self.guidance_scale_2
        allowed = f"a number from 0 to {MAX_GUIDANCE}"
        _require(guidance, "guidance_scale", allowed, _is_number(guidance, 0) and guidance <= MAX_GUIDANCE)
        _require(
            guidance_2,
            "guidance_scale_2",
            f"{allowed}, or None",
            guidance_2 is None or (_is_number(guidance_2, 0) and guidance_2 <= MAX_GUIDANCE),
        )
        _require_choice(self.sigma_schedule, "sigma_schedule", SIGMA_SCHEDULES)
        _require(self.tld_stride, "tld_stride", "an integer >= 1 (1 disables dropout)", _is_int(self.tld_stride, 1))
        threshold = self.tld_threshold
        _require(
            threshold,
            "tld_threshold",
            "a timestep fraction in (0, 1]",
            threshold is None or (_is_number(threshold, 0) and 0 < threshold <= 1),
        )
        _require_choice(self.tld_history, "tld_history", HISTORY_MODES)
        _require_choice(self.tld_positions, "tld_positions", POSITION_MODES)
        strength = self.refine_strength
        _require(strength, "refine_strength", "a number in (0, 1]", _is_number(strength, 0) and 0 < strength <= 1)
        _require_choice(self.decode_frames, "decode_frames", DECODE_MODES)
        position = self.edit_position
        _require(
            position,
            "edit_position",
            "a fraction of the clip in (0, 1] (1: its end, the paper's edit)",
            _is_number(position, 0) and 0 < position <= 1,
        )
        # Wan's VAE packs 4 frames per latent frame after the first; the pipeline repeats this with its VAE's factor.
        latent_span = (num_frames - 1) // 4
        _require(
            position,
            "edit_position",
            f"at least {0.5 / max(latent_span, 1):.3g} for {num_frames} frames "
            "(lower falls on the source frame itself)",
            latent_span == 0 or math.floor(position * latent_span + 0.5) > 0,
        )

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def from_keywords(cls, keywords: Mapping[str, Any]) -> EditSettings:
        """The settings among a call's keyword arguments (other names are left out)."""
        return cls(**{name: keywords[name] for name in cls.names()})

    def as_kwargs(self) -> dict[str, Any]:
        """The pipeline's keyword arguments, as records keep them."""
        return dataclasses.asdict(self)


def check_call(prompt: Any, output_type: Any, callback_on_step_end_tensor_inputs: Sequence[str]) -> None:
    """The pipeline's arguments that belong to one call rather than to the edit's settings."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInputError("prompt must be a non-empty string")
    _require_choice(output_type, "output_type", OUTPUT_TYPES, ", ")
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


def _require_choice(value, name: str, choices: tuple[str, ...], joiner: str = " or ") -> None:
    _require(value, name, joiner.join(choices), value in choices)


# Cheaper than the paper's recipe (`ifedit edit --fast`), each part measured in the README's Performance section:
# a 5-frame refinement from the chosen frame re-noised halfway, and decoding only the last two kept latent frames.
FAST_SETTINGS: dict[str, Any] = {"refine_frames": 5, "refine_strength": 0.5, "decode_frames": "needed"}
