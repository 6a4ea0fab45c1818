"""An editor: one loaded model and its recipe, turning (image, prompt) into an edit and the record of how it was made.

The command line, the web UI and the benchmark runner all edit through this, so every output is recorded alike.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import PIL.Image
import torch

from . import __version__
from .errors import InvalidInputError
from .loading import LoadOptions, check_placement, free_accelerator_memory, load_pipeline, out_of_memory, retry_tier
from .options import EditSettings
from .outputs import versions
from .pipeline import DEFAULT_REFINE_PROMPT, IFEditPipelineOutput
from .presets import Preset


def new_seed() -> int:
    return secrets.randbelow(2**31)


@dataclass
class Edit:
    """A finished edit: the pipeline's output and the JSON-able record of how it was made."""

    result: IFEditPipelineOutput
    record: dict[str, Any]


class Editor:
    """Loads a preset's model once and edits with it as often as asked."""

    def __init__(self, preset: Preset, options: LoadOptions | None = None):
        self.preset = preset
        self.options = options = options or LoadOptions()
        self.device, self.dtype = check_placement(preset, options)
        start = time.perf_counter()
        self.pipe = load_pipeline(preset, options)
        self.load_seconds = time.perf_counter() - start

    def refine(
        self,
        frame: PIL.Image.Image,
        settings: EditSettings,
        *,
        seed: int | None = None,
        callback: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        source: str | None = None,
    ) -> Edit:
        """The refinement pass alone (SPEC step 5) on a frame the user picked from an edit's clip: a still video from
        it with the refinement settings, and its sharpest late frame. It starts from noise, as the refinement of an
        edit does by default; a `refine_strength` below 1 needs the edit's own clip and is refused here."""
        if settings.refine_strength < 1:
            raise InvalidInputError(
                "refining a picked frame starts from noise: set refine strength to 1 "
                f"(got {settings.refine_strength:g})"
            )
        still = dataclasses.replace(
            settings,
            num_frames=settings.refine_frames or settings.num_frames,
            num_inference_steps=settings.refine_steps or settings.num_inference_steps,
            height=frame.height,
            width=frame.width,
            refine=False,
            edit_position=1.0,
        )
        prompt = settings.refine_prompt or DEFAULT_REFINE_PROMPT
        provenance = {"backend": "refinement"}
        return self.edit(
            frame, prompt, still, prompt=prompt, prompt_provenance=provenance, seed=seed, return_frames=True,
            callback=callback, source=source,
        )  # fmt: skip

    def edit(
        self,
        image: PIL.Image.Image,
        instruction: str,
        settings: EditSettings,
        *,
        prompt: str | None = None,
        prompt_provenance: dict[str, Any] | None = None,
        seed: int | None = None,
        return_frames: bool = False,
        callback: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        source: str | None = None,
    ) -> Edit:
        """Edit `image`; `prompt` is the video prompt (the instruction itself when None), `seed` drawn if None."""
        seed = new_seed() if seed is None else seed
        prompt = instruction if prompt is None else prompt
        result = self._run(
            lambda: self.pipe(
                image,
                prompt,
                generator=torch.Generator("cpu").manual_seed(seed),
                return_frames=return_frames,
                callback_on_step_end=callback,
                **settings.as_kwargs(),
            )
        )
        memory = self.pipe.memory_plan
        record = {
            "ifedit": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": {"path": source, "width": image.width, "height": image.height},
            "instruction": instruction,
            "prompt": prompt,
            "prompt_enhancement": prompt_provenance or {"backend": "none"},
            "model": {**model_record(self.preset), **self.pipe.weights_record},
            "seed": seed,
            "settings": {
                **settings.as_kwargs(),
                "height": result.height,
                "width": result.width,
                "num_frames": result.num_frames,
            },
            "placement": {
                "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."),
                "offload": memory.offload,
                "vae_tiling": memory.vae_tiling,
                "storage_dtype": memory.storage_dtype,
                "first_block_cache": self.options.first_block_cache,
                "attention_backend": memory.attention_backend,
                "fp8_compute": memory.fp8_compute,
                "vae_dtype": memory.vae_dtype,
                "vae_channels_last": memory.vae_channels_last,
                "compile": self.options.compile,
            },
            "memory_plan": memory.record(),
            "result": {
                "selected_index": result.selected_index,
                "selected_clip_frame": result.selected_clip_frame,
                "edit_position": {
                    "requested": result.edit_position,
                    "used": result.edit_position_used,
                    "latent_frame": result.edit_latent_frame,
                },
                "sharpness": result.sharpness,
                "kept_latent_frames": result.kept_latent_frames,
                "refine_selected_index": result.refine_selected_index,
                "refine_sharpness": result.refine_sharpness,
                "refine_kept_latent_frames": result.refine_kept_latent_frames,
            },
            "timings": {"load": self.load_seconds, **result.timings},
            "versions": dict(versions()),
        }
        return Edit(result=result, record=record)

    def _run(self, call: Callable[[], IFEditPipelineOutput]) -> IFEditPipelineOutput:
        """Run an edit; out of GPU memory under --memory auto, reload the model one tier leaner and run it again."""
        try:
            return call()
        except torch.OutOfMemoryError:
            failed = self.pipe.memory_plan
            tier = retry_tier(failed)  # the one-line error, with the option to try, when there is no retry
        progress = getattr(self.pipe, "_progress_bar_config", {})
        self.pipe = None  # out of the handler, the failed call's tensors are gone; the weights go before reloading
        free_accelerator_memory()
        self.pipe = load_pipeline(self.preset, self.options, retry=(failed, tier))
        self.pipe.set_progress_bar_config(**progress)
        try:
            return call()
        except torch.OutOfMemoryError:
            raise out_of_memory(self.pipe.memory_plan) from None


def model_record(preset: Preset) -> dict[str, Any]:
    """Which weights and recipe an edit used, as its record and a benchmark run's manifest keep it."""
    return {
        "preset": preset.name,
        "model_id": preset.model_id,
        "scheduler": preset.scheduler,
        "flow_shift": preset.flow_shift,
        "loras": [dataclasses.asdict(lora) for lora in preset.loras],
    }


def final_frame(result: IFEditPipelineOutput) -> tuple[int, float]:
    """Index and sharpness of the frame the edit returned (the refinement clip's when refinement ran)."""
    if result.refine_sharpness is not None:
        return result.refine_selected_index, result.refine_sharpness[result.refine_selected_index]
    return result.selected_index, result.sharpness[result.selected_index]
