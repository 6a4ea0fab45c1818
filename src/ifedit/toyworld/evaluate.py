"""Editing held-out toy-world scenes and measuring the edits: shared by `benchmarks/toyworld_eval.py`, the quality
tests and `tools/quality_margins.py`, so that the numbers in the README and the margins in CI come from one code.

Besides the shipped pipeline, it makes the wrong pipelines a change could turn it into, from the outside: the
experts swapped (`swapped_experts`), the blurriest candidate frame instead of the sharpest (`SceneEdit.blurriest`),
copying the source, and the VAE's own round trip, a ceiling for any experts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from ..editor import Editor
from ..options import EditSettings
from ..pipeline import DEFAULT_REFINE_PROMPT
from ..prompting.template import template_prompt
from ..sharpness import laplacian_variance
from .detect import MOVING_EVENTS, move_error, region_error_reduction, score_edit
from .scenes import EVAL_SEED_START, EVENTS, Case, render_clip, sample_case

BOOTSTRAP_SAMPLES = 2000


@dataclass(frozen=True)
class SceneEdit:
    """One scene's output under one setting, and its measures against the scene's target."""

    case: Case
    output: np.ndarray  # (H, W, 3) uint8
    success: bool  # by the colour detectors (`detect.score_edit`)
    region_gain: float  # `detect.region_error_reduction`; nan when the event changes nothing
    move_error: float  # pixels, nan unless the event moves the shape
    background_error: float  # mean 0-255 error outside the changed region
    sharpness: float
    seconds: float
    blurriest: np.ndarray | None = None  # the final clip's least sharp candidate frame, when frames were kept

    @property
    def changing(self) -> bool:
        return self.case.event != "still"


def sharpness(image: np.ndarray) -> float:
    """Laplacian variance of an (H, W, 3) uint8 image, as the pipeline scores its candidate frames."""
    return laplacian_variance(torch.tensor(image).permute(2, 0, 1)[None].float() / 255)[0].item()


def measure(
    case: Case,
    output: np.ndarray,
    seconds: float = 0.0,
    blurriest: np.ndarray | None = None,
    clip: np.ndarray | None = None,
) -> SceneEdit:
    """Score an output of `case` against its target (the last frame of its clip, rendered unless given)."""
    clip = render_clip(case) if clip is None else clip
    score = score_edit(case, output, clip[-1])
    return SceneEdit(
        case=case,
        output=output,
        success=score.success,
        region_gain=region_error_reduction(case, output, clip[0], clip[-1]),
        move_error=move_error(score.position_error) if case.event in MOVING_EVENTS else float("nan"),
        background_error=score.background_error,
        sharpness=sharpness(output),
        seconds=seconds,
        blurriest=blurriest,
    )


def edit_scene(
    editor: Editor, case: Case, settings: EditSettings, *, wording: str = "template", seed: int = 0, frames=False
) -> SceneEdit:
    """Edit the scene's source as `ifedit edit --model toyworld` does (the offline template prompt unless `wording`
    is "raw"); with `frames`, keep the final clip's blurriest candidate too (scored by this module, not the
    pipeline)."""
    clip = render_clip(case)
    source = clip[0]
    prompt = case.instruction if wording == "raw" else template_prompt(case.instruction, "instruction")
    start = time.perf_counter()
    result = editor.edit(
        PIL.Image.fromarray(source), case.instruction, settings, prompt=prompt, seed=seed, return_frames=frames
    ).result
    seconds = time.perf_counter() - start
    blurriest = None
    if frames:
        final = result.refine_frames if result.refine_frames is not None else result.frames
        candidates = [np.asarray(frame) for frame in final[-editor.pipe.vae_scale_factor_temporal :]]
        blurriest = min(candidates, key=sharpness)
    return measure(case, np.asarray(result.image), seconds, blurriest, clip)


def refined_target(editor: Editor, case: Case, settings: EditSettings, seed: int = 0) -> SceneEdit:
    """A probe of refinement alone: the still-video pass run on the scene's true target, as refinement runs on an
    edit's chosen frame (`DEFAULT_REFINE_PROMPT`, the settings' frames, steps and dropout). A perfect edit comes out
    of refinement as this does, so whatever this loses, refinement costs every edit."""
    clip = render_clip(case)
    target = clip[-1]
    still = dataclasses.replace(
        settings,
        refine=False,
        num_frames=settings.refine_frames or settings.num_frames,
        num_inference_steps=settings.refine_steps or settings.num_inference_steps,
    )
    start = time.perf_counter()
    result = editor.edit(
        PIL.Image.fromarray(target), DEFAULT_REFINE_PROMPT, still, prompt=settings.refine_prompt, seed=seed
    ).result
    return measure(case, np.asarray(result.image), time.perf_counter() - start, clip=clip)


@torch.no_grad()
def vae_round_trips(vae, clips: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """The last frame of each clip in `clips` (N, T, H, W, 3), encoded and decoded with the rest of its clip by `vae`
    (a pipeline's, or one being trained), as uint8 (N, H, W, 3). The clips go through the VAE `batch_size` at a time:
    on a CPU a batch of eight costs about what two clips one at a time do."""
    outputs = []
    for start in range(0, len(clips), batch_size):
        video = torch.from_numpy(clips[start : start + batch_size]).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        decoded = vae.decode(vae.encode(video).latent_dist.mode()).sample[:, :, -1]
        outputs.append(((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(outputs)


@contextlib.contextmanager
def swapped_experts(editor: Editor) -> Iterator[None]:
    """The high- and low-noise experts trade places while the block runs: the wrong pipeline a mix-up of the two
    (a reversed boundary test, transformers loaded into each other's slots) would make."""
    pipe = editor.pipe
    high, low = pipe.transformer, pipe.transformer_2
    pipe.transformer, pipe.transformer_2 = low, high
    try:
        yield
    finally:
        pipe.transformer, pipe.transformer_2 = high, low


def bootstrap(values, statistic=np.mean, seed: int = 0) -> tuple[float, float, float]:
    """The statistic of `values` (nan dropped) and its bootstrap 95% interval, resampling the values."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), size=(BOOTSTRAP_SAMPLES, len(values)))
    low, high = np.percentile(statistic(values[draws], axis=1), [2.5, 97.5])
    return float(statistic(values)), float(low), float(high)


# The scenes the CI's quality tests edit: held out from training, apart from the evaluation's and the demo's.
QUALITY_SEED_START = EVAL_SEED_START + 50_000
QUALITY_SCENES_PER_EVENT = 2
# A scene counts as improved when the edit removes more than this share of copying's error in the changed region.
IMPROVED = 0.2


def quality_cases() -> list[Case]:
    return [
        sample_case(QUALITY_SEED_START + index, EVENTS[index % len(EVENTS)])
        for index in range(QUALITY_SCENES_PER_EVENT * len(EVENTS))
    ]


@dataclass(frozen=True)
class QualityRuns:
    """The quality tests' material: the shipped pipeline's edits of `quality_cases`, the first scene of each event
    again with the experts swapped (they fail by a wide margin: one scene per event tells), and the VAE round trip
    of each source (as a still clip)."""

    shipped: list[SceneEdit]
    swapped: list[SceneEdit]
    source_round_trip: list[SceneEdit]


def quality_runs(editor: Editor, settings: EditSettings) -> QualityRuns:
    cases = quality_cases()
    shipped = [edit_scene(editor, case, settings, seed=index, frames=True) for index, case in enumerate(cases)]
    with swapped_experts(editor):
        swapped = [edit_scene(editor, case, settings, seed=index) for index, case in enumerate(cases[: len(EVENTS)])]
    clips = [render_clip(case) for case in cases]
    stills = np.stack([np.repeat(clip[:1], len(clip), axis=0) for clip in clips])
    outputs = vae_round_trips(editor.pipe.vae, stills)
    round_trips = [measure(case, output, clip=clip) for case, output, clip in zip(cases, outputs, clips, strict=True)]
    return QualityRuns(shipped, swapped, round_trips)


def quality_statistics(runs: QualityRuns) -> dict[str, tuple[np.ndarray, str]]:
    """Per-scene values of what the quality tests compare, and how each is summed up ("mean" or "median"):

    - improved over copying: whether the shipped edit removes more than IMPROVED of copying's error in the changed
      region, per changing scene (copying the source never does);
    - region gain: of the shipped edits on changing scenes (copying the source has 0 by definition);
    - gain over swapped experts: the shipped edit's region gain minus the swapped one's, per changing scene that
      was edited both ways;
    - sharpness over blurriest: the output's sharpness over the final clip's blurriest candidate's;
    - background over VAE round trip: the output's background error over the VAE round trip's of the source;
    - success: of the shipped edits on changing scenes."""
    changing = [index for index, edit in enumerate(runs.shipped) if edit.changing]
    shipped, swapped = runs.shipped, runs.swapped
    gains = np.array([shipped[i].region_gain for i in changing])
    return {
        "improved over copying": ((gains > IMPROVED).astype(float), "mean"),
        "region gain": (gains, "median"),
        "gain over swapped experts": (
            np.array([shipped[i].region_gain - swapped[i].region_gain for i in changing if i < len(swapped)]),
            "mean",
        ),
        "sharpness over blurriest": (np.array([e.sharpness / sharpness(e.blurriest) for e in shipped]), "mean"),
        "background over VAE round trip": (
            np.array(
                [e.background_error / r.background_error for e, r in zip(shipped, runs.source_round_trip, strict=True)]
            ),
            "mean",
        ),
        "success": (np.array([float(shipped[i].success) for i in changing]), "mean"),
    }
