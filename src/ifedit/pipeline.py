"""IFEditPipeline: edit an image by generating a short video that starts at it, then reading off a late frame.

IF-Edit (Zhang et al., "Are Image-to-Video Models Good Zero-Shot Image Editors?", arXiv 2511.19435) on a Wan
image-to-video model: denoise with an explicit expert switch and temporal latent dropout, decode, pick the sharpest
late frame, then re-render it with a short "still video" pass. Prompt enhancement (SPEC step 1) happens before this
pipeline is called; `prompt` here is the video prompt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import WanImageToVideoPipeline
from diffusers.pipelines.wan.pipeline_wan_i2v import retrieve_latents
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import get_module_execution_device

from .dropout import (
    clip_frame_index,
    dropout_step,
    kept_frame_indices,
    original_positions,
    position_latent_frame,
    reset_scheduler_history,
    scheduler_history,
    slice_frames,
    slice_scheduler_history,
)
from .errors import InvalidInputError, NumericalError
from .io import validate_image
from .options import DecodeMode, EditSettings, HistoryMode, PositionMode, SigmaSchedule, check_call
from .sharpness import laplacian_variance, latent_frame_candidates, sharpest
from .sizes import fit_size, round_frames

DEFAULT_REFINE_PROMPT = (
    "A perfectly still video. The camera is fixed on a tripod and nothing in the scene moves. "
    "Enhanced clarity, sharp focus, fine detail and clean textures."
)
DEFAULT_TLD_THRESHOLD = 0.9
DEFAULTS = EditSettings()  # the keyword arguments' defaults


@dataclass
class IFEditPipelineOutput(BaseOutput):
    """The edited image and how it was chosen.

    Frame indices count pixel frames of the clip they refer to: `selected_index` and `sharpness` the main clip's,
    `refine_selected_index` and `refine_sharpness` the refinement clip's (None when refinement is off). After
    temporal latent dropout the decoded clip is the thinned one (`kept_latent_frames`), so these indices count its
    frames; `selected_clip_frame` is the chosen frame numbered as in the whole clip of `num_frames` frames.
    `edit_latent_frame` is the latent frame the candidates came from (in the whole clip's numbering), and
    `edit_position_used` its place along the clip (the requested `edit_position`, snapped to a latent frame).
    """

    image: PIL.Image.Image | np.ndarray | torch.Tensor
    selected_index: int
    sharpness: dict[int, float]
    prompt: str
    timings: dict[str, float]
    height: int
    width: int
    num_frames: int
    kept_latent_frames: list[int] | None = None
    refine_selected_index: int | None = None
    refine_sharpness: dict[int, float] | None = None
    refine_kept_latent_frames: list[int] | None = None
    frames: list[PIL.Image.Image] | np.ndarray | torch.Tensor | None = None
    refine_frames: list[PIL.Image.Image] | np.ndarray | torch.Tensor | None = None
    edit_position: float = 1.0
    edit_position_used: float = 1.0
    edit_latent_frame: int | None = None
    selected_clip_frame: int | None = None


@dataclass
class _Clip:
    """One decoded pass: the video in [-1, 1] as (1, 3, T, H, W), its candidate scores and the chosen frame."""

    video: torch.Tensor
    kept: list[int] | None
    scores: dict[int, float]
    selected: int
    offset: int = 0  # frames of the whole clip left undecoded before `video`

    def frame(self, index: int) -> torch.Tensor:
        return self.video[:, :, index - self.offset]


@dataclass(frozen=True)
class _Pass:
    """One denoising pass and what it runs with; the refinement pass is the edit pass with a few fields replaced."""

    stage: str  # "edit" or "refine"
    settings: EditSettings  # the call's, with guidance_scale_2 and tld_threshold filled in
    num_frames: int
    num_inference_steps: int
    strength: float  # 1: from pure noise; below 1: from the still clip re-noised to this fraction of the trajectory
    latent_frame: int | None  # the latent frame whose pixels are the candidates (None: the last)
    latents: torch.Tensor | None  # initial noise (None: drawn from `generator`)
    generator: torch.Generator | None
    decode_all: bool
    callback: Callable[[Any, int, torch.Tensor, dict], dict] | None
    callback_tensors: tuple[str, ...]

    @property
    def prefix(self) -> str:
        """Of this pass's stage timings: none for the edit, "refine_" for the refinement."""
        return "refine_" if self.stage == "refine" else ""


class IFEditPipeline(WanImageToVideoPipeline):
    r"""Zero-shot image editing with a Wan image-to-video model (IF-Edit).

    Takes the components of diffusers' [`WanImageToVideoPipeline`] (tokenizer, text_encoder, vae, scheduler,
    transformer, optional transformer_2, optional image_encoder / image_processor; config `boundary_ratio` and
    `expand_timesteps`), so it loads Wan2.2-I2V-A14B (two experts), Wan2.2-TI2V-5B (`expand_timesteps`) and
    Wan2.1-I2V (CLIP image encoder) with `from_pretrained`. Prompt encoding, image encoding and latent preparation
    are inherited; the denoising loop is our own because temporal latent dropout changes the condition tensor and
    the scheduler's state mid-loop, which diffusers' step callback cannot do.
    """

    _stage: str | None = None

    @property
    def stage(self) -> str | None:
        """Which pass is running, "edit" or "refine" (None outside a call): for progress reporting."""
        return self._stage

    @property
    def boundary_timestep(self) -> float | None:
        """SPEC step 2: the timestep at which the low-noise expert takes over (None for one-expert models)."""
        if self.config.boundary_ratio is None or self.transformer_2 is None:
            return None
        return self.config.boundary_ratio * self.scheduler.config.num_train_timesteps

    def expert_for(self, timestep: float | torch.Tensor) -> str:
        """Name of the component that denoises at `timestep`: the high-noise expert while t >= boundary."""
        boundary = self.boundary_timestep
        return "transformer" if boundary is None or timestep >= boundary else "transformer_2"

    @property
    def size_multiple(self) -> int:
        """Pixel sides must be multiples of this: the VAE's spatial factor times the transformer's patch."""
        return self.vae_scale_factor_spatial * self.transformer.config.patch_size[1]

    @property
    def largest_side(self) -> int:
        """The longest side in px the transformer's rotary embedding has positions for (`rope_max_seq_len` patches)."""
        return self.transformer.config.rope_max_seq_len * self.size_multiple

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image,
        prompt: str,
        negative_prompt: str | None = DEFAULTS.negative_prompt,
        height: int | None = DEFAULTS.height,
        width: int | None = DEFAULTS.width,
        max_area: int = DEFAULTS.max_area,
        num_frames: int = DEFAULTS.num_frames,
        num_inference_steps: int = DEFAULTS.num_inference_steps,
        guidance_scale: float = DEFAULTS.guidance_scale,
        guidance_scale_2: float | None = DEFAULTS.guidance_scale_2,
        sigma_schedule: SigmaSchedule = DEFAULTS.sigma_schedule,
        tld_stride: int = DEFAULTS.tld_stride,
        tld_threshold: float | None = DEFAULTS.tld_threshold,
        tld_history: HistoryMode = DEFAULTS.tld_history,
        tld_positions: PositionMode = DEFAULTS.tld_positions,
        refine: bool = DEFAULTS.refine,
        refine_prompt: str | None = DEFAULTS.refine_prompt,
        refine_frames: int | None = DEFAULTS.refine_frames,
        refine_steps: int | None = DEFAULTS.refine_steps,
        refine_strength: float = DEFAULTS.refine_strength,
        decode_frames: DecodeMode = DEFAULTS.decode_frames,
        edit_position: float = DEFAULTS.edit_position,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        max_sequence_length: int = DEFAULTS.max_sequence_length,
        output_type: str = "pil",
        return_frames: bool = False,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
    ) -> IFEditPipelineOutput:
        r"""Edit `image` as `prompt` describes (SPEC steps 2-6).

        Args:
            image: the source image; it becomes the first frame of the video.
            prompt: the video prompt, ideally a time-ordered account of the change (see `ifedit.prompting`).
            negative_prompt: used only where guidance is above 1.
            height, width: pixel size of the video. By default the image's aspect ratio at `max_area` pixels;
                sides are rounded to the model's multiple (16 or 32) with a warning.
            max_area: target pixel area when height and width are not given (default 480p: 480 x 832).
            num_frames: frames of the edit video, rounded to 4n+1 with a warning; at least 5.
            num_inference_steps: denoising steps of the edit pass.
            guidance_scale: classifier-free guidance of the high-noise expert (1.0 turns guidance off).
            guidance_scale_2: guidance of the low-noise expert; defaults to `guidance_scale`.
            sigma_schedule: "default" lets the scheduler space its steps; "uniform" gives it noise levels evenly
                spaced in [1, 0) before its shift, the grid step-distilled models (Lightning) were trained on.
            tld_stride: temporal latent dropout stride K: keep latent frames {0, K, 2K, ...} and the last. 1 = off.
            tld_threshold: timestep fraction below which dropout happens (once, before that step's model call).
                Defaults to the expert boundary, or 0.9 for one-expert models.
            tld_history: "slice" thins a multistep scheduler's stored outputs; "reset" restarts it at first order.
            tld_positions: "contiguous" renumbers kept frames 0, 1, 2, ... for RoPE; "original" keeps their
                positions in the full clip.
            refine: run self-consistent post-refinement (SPEC step 5) on the chosen frame.
            refine_prompt: the "still video" prompt of the refinement pass (default `DEFAULT_REFINE_PROMPT`).
            refine_frames: frames of the refinement clip; defaults to `num_frames`.
            refine_steps: steps of the refinement pass; defaults to `num_inference_steps`.
            refine_strength: 1.0 starts refinement from pure noise; below 1 from the chosen frame re-noised to
                that fraction of the trajectory (fewer steps run).
            decode_frames: "all" decodes every kept latent frame; "needed" decodes only the last two (the earlier
                one primes the causal VAE's cache) when no clip is returned, since the candidates come from the
                last one. Faster; the decoded candidates differ slightly from a whole-clip decode.
            edit_position: how far along the clip the edit is read, in (0, 1]: the candidates are the frames decoded
                from the latent frame nearest to this fraction of the clip (1, the paper's choice: the last). That
                latent frame is kept through temporal latent dropout. Lower values give a partial edit.
            generator: torch generator for reproducible noise; the refinement pass draws from it after the edit.
            latents: initial noise for the edit pass, shape (1, C, F, H/8, W/8).
            max_sequence_length: text-encoder tokens (Wan uses 512).
            output_type: "pil", "np" or "pt" for `image`, `frames` and `refine_frames`.
            return_frames: also return the decoded clips (`frames`, `refine_frames`).
            attention_kwargs: passed to the transformer's attention processors.
            callback_on_step_end: called as `fn(pipe, step, timestep, tensors)` after each step of either pass
                (`pipe.stage` tells which); may return replacements for the tensors.
            callback_on_step_end_tensor_inputs: names of tensors given to the callback.
        """
        start = time.perf_counter()
        device = self._execution_device
        timer = _StageTimer(device)
        image = validate_image(image)
        # Every keyword that is an edit setting, checked as one (`EditSettings` is where they and their defaults live).
        settings = EditSettings.from_keywords(locals())
        check_call(prompt, output_type, callback_on_step_end_tensor_inputs)
        self._check_scheduler(settings)
        frames_per_latent = self.vae_scale_factor_temporal
        num_frames = round_frames(num_frames, frames_per_latent)
        refine_frames = num_frames if refine_frames is None else round_frames(refine_frames, frames_per_latent)
        num_latent_frames = (num_frames - 1) // frames_per_latent + 1
        edit_latent_frame = position_latent_frame(num_latent_frames, edit_position)
        if edit_latent_frame == 0:
            raise InvalidInputError(
                f"edit_position {edit_position:g} falls on the source frame of a {num_frames}-frame clip: use at "
                f"least {0.5 / (num_latent_frames - 1):.3g}"
            )
        height, width = fit_size(image.size, height, width, max_area, self.size_multiple, self.largest_side)
        self._check_positions(height, width, max(num_frames, refine_frames))
        settings = dataclasses.replace(
            settings,
            guidance_scale_2=guidance_scale if guidance_scale_2 is None else guidance_scale_2,
            tld_threshold=tld_threshold or self.config.boundary_ratio or DEFAULT_TLD_THRESHOLD,
        )
        self._interrupt = False
        self._attention_kwargs = attention_kwargs
        self._guidance_scale = guidance_scale

        # 1. Encode the edit prompt and the refinement prompt together, so an offloaded encoder loads once.
        with timer("text_encoding"):
            use_guidance = max(guidance_scale, settings.guidance_scale_2) > 1
            prompts = [prompt, refine_prompt or DEFAULT_REFINE_PROMPT] if refine else [prompt]
            embeds, negative_embeds = self.encode_prompt(
                prompt=prompts,
                negative_prompt=[negative_prompt or ""] * len(prompts),
                do_classifier_free_guidance=use_guidance,
                max_sequence_length=max_sequence_length,
                device=device,
            )

        edit = _Pass(
            stage="edit",
            settings=settings,
            num_frames=num_frames,
            num_inference_steps=num_inference_steps,
            strength=1.0,
            latent_frame=edit_latent_frame,
            latents=latents,
            generator=generator,
            decode_all=return_frames or decode_frames == "all",
            callback=callback_on_step_end,
            callback_tensors=callback_on_step_end_tensor_inputs,
        )
        try:
            # 2-4. The edit: a video from the source image, decoded, its sharpest late frame chosen.
            clip = self._run_pass(
                edit,
                self.video_processor.preprocess(image, height=height, width=width),
                image,
                _row(embeds, 0),
                _row(negative_embeds, 0),
                timer,
            )
            final = clip
            # 5. Self-consistent post-refinement: a still video from the chosen frame, its sharpest late frame.
            refined = None
            if refine and not self.interrupt:
                chosen = clip.frame(clip.selected)
                refinement = dataclasses.replace(
                    edit,
                    stage="refine",
                    num_frames=refine_frames,
                    num_inference_steps=refine_steps or num_inference_steps,
                    strength=refine_strength,
                    latent_frame=None,
                    latents=None,
                )
                refined = self._run_pass(
                    refinement,
                    chosen,
                    _to_pil(chosen),
                    _row(embeds, 1),
                    _row(negative_embeds, 1),
                    timer,
                )
                final = refined
        finally:
            self._stage = None
            self.maybe_free_model_hooks()

        # 6. Outputs in the requested type.
        timer.timings["total"] = time.perf_counter() - start
        return IFEditPipelineOutput(
            image=self._postprocess(final.frame(final.selected).unsqueeze(2), output_type)[0],
            selected_index=clip.selected,
            sharpness=clip.scores,
            prompt=prompt,
            timings=timer.timings,
            height=height,
            width=width,
            num_frames=num_frames,
            kept_latent_frames=clip.kept,
            refine_selected_index=refined.selected if refined else None,
            refine_sharpness=refined.scores if refined else None,
            refine_kept_latent_frames=refined.kept if refined else None,
            frames=self._postprocess(clip.video, output_type) if return_frames else None,
            refine_frames=self._postprocess(refined.video, output_type) if return_frames and refined else None,
            edit_position=edit_position,
            edit_position_used=edit_latent_frame / (num_latent_frames - 1),
            edit_latent_frame=edit_latent_frame,
            selected_clip_frame=clip_frame_index(clip.selected, clip.kept, frames_per_latent),
        )

    def _run_pass(
        self,
        run: _Pass,
        first_frame: torch.Tensor,
        first_frame_pil: PIL.Image.Image,
        prompt_embeds,
        negative_prompt_embeds,
        timer: _StageTimer,
    ) -> _Clip:
        """One pass: denoise a clip that starts at `first_frame`, decode it, score the frames of `run.latent_frame`
        (None: the last) and pick the sharpest."""
        self._stage = run.stage
        device = self._execution_device
        with timer(run.prefix + "image_encoding"):
            image_embeds = None
            if self.transformer.config.image_dim is not None:  # Wan2.1 conditions on CLIP image features too
                image_embeds = self.encode_image(first_frame_pil, device).to(self.transformer.dtype)
        latents, kept = self._denoise(
            run, first_frame.to(device, torch.float32), image_embeds, prompt_embeds, negative_prompt_embeds, timer
        )
        if not torch.isfinite(latents).all():
            raise NumericalError(
                f"the {run.stage} pass's video overflowed to NaN or infinity (in {self.transformer.dtype}); lower "
                "the guidance, or use float32 weights (--dtype float32)"
            )
        # The candidates' latent frame in the denoised (possibly thinned) sequence.
        if run.latent_frame is None:
            target = latents.shape[2] - 1
        else:
            target = run.latent_frame if kept is None else kept.index(run.latent_frame)
        with timer(run.prefix + "decode"):
            # Without a clip to return, only the target and the frame before it (which primes the causal VAE's
            # cache) are decoded.
            skipped = 0 if run.decode_all else max(target - 1, 0)
            video = self._decode(latents[:, :, skipped : None if run.decode_all else target + 1])
        with timer(run.prefix + "select"):
            # Frame numbers always count from the start of the whole decoded clip.
            offset = skipped * self.vae_scale_factor_temporal
            candidates = latent_frame_candidates(target, self.vae_scale_factor_temporal)
            frames = (video[0, :, [index - offset for index in candidates]].transpose(0, 1) / 2 + 0.5).clamp(0, 1)
            values = laplacian_variance(frames).tolist()
            scores = dict(zip(candidates, values, strict=True))
        return _Clip(video=video, kept=kept, scores=scores, selected=sharpest(scores), offset=offset)

    def _denoise(
        self,
        run: _Pass,
        image: torch.Tensor,
        image_embeds,
        prompt_embeds,
        negative_prompt_embeds,
        timer: _StageTimer,
    ) -> tuple[torch.Tensor, list[int] | None]:
        """Denoise from noise (or from the re-noised still clip when strength < 1) with the expert switch and TLD.

        Returns latents ready to decode (TI2V's clean first frame restored) and the latent frames dropout kept.
        """
        settings = run.settings
        device = self._execution_device
        height, width = image.shape[-2:]
        if settings.sigma_schedule == "uniform":
            self.scheduler.set_timesteps(sigmas=uniform_sigmas(run.num_inference_steps), device=device)
        else:
            self.scheduler.set_timesteps(run.num_inference_steps, device=device)
        first_step = refine_start_step(run.num_inference_steps, run.strength)
        timesteps = self.scheduler.timesteps[first_step:]
        if first_step:
            self.scheduler.set_begin_index(first_step)
        self._num_timesteps = len(timesteps)

        with timer(run.prefix + "vae_encode"):
            prepared = self.prepare_latents(
                image, 1, self.vae.config.z_dim, height, width, run.num_frames, torch.float32, device, run.generator,
                run.latents,
            )  # fmt: skip
            if self.config.expand_timesteps:  # TI2V: a clean first frame kept by a mask instead of a condition
                latents, condition, first_frame_mask = prepared
            else:
                (latents, condition), first_frame_mask = prepared, None
            if run.strength < 1:
                sigma = self.scheduler.sigmas[first_step].item()
                latents = sigma * latents + (1 - sigma) * self._encode_still(image, run.num_frames)

        num_latent_frames = latents.shape[2]
        self._reset_step_caches()
        drop_at = None
        if settings.tld_stride > 1:
            drop_at = dropout_step(timesteps, settings.tld_threshold * self.scheduler.config.num_train_timesteps)
        kept = None
        transformer_dtype = self.transformer.dtype
        with (
            timer(run.prefix + "denoise"),
            contextlib.ExitStack() as hooks,
            self._progress_bar(len(timesteps)) as progress_bar,
        ):
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    break
                self._current_timestep = t
                if i == drop_at:
                    # SPEC step 3, before this step's model call: every frame-indexed tensor at once.
                    also = () if run.latent_frame is None else (run.latent_frame,)
                    kept = kept_frame_indices(num_latent_frames, settings.tld_stride, also)
                    latents = slice_frames(latents, kept, num_latent_frames)
                    condition = slice_frames(condition, kept, num_latent_frames)
                    if first_frame_mask is not None:
                        first_frame_mask = slice_frames(first_frame_mask, kept, num_latent_frames)
                    if settings.tld_history == "slice":
                        slice_scheduler_history(self.scheduler, kept, num_latent_frames)
                    else:
                        reset_scheduler_history(self.scheduler)
                    if settings.tld_positions == "original":
                        experts = (self.transformer, self.transformer_2)
                        hooks.enter_context(original_positions(experts, kept, num_latent_frames))
                    self._reset_step_caches()

                expert = self.expert_for(t)
                model = getattr(self, expert)
                guidance = settings.guidance_scale if expert == "transformer" else settings.guidance_scale_2
                if first_frame_mask is not None:
                    # TI2V: the first latent frame stays clean, its tokens get timestep 0.
                    model_input = (1 - first_frame_mask) * condition + first_frame_mask * latents
                    _, patch_h, patch_w = model.config.patch_size
                    timestep = (first_frame_mask[0, 0, :, ::patch_h, ::patch_w] * t).flatten().unsqueeze(0)
                else:
                    model_input = torch.cat([latents, condition], dim=1)
                    timestep = t.expand(latents.shape[0])
                model_input = model_input.to(transformer_dtype)

                noise_pred = self._predict(model, model_input, timestep, prompt_embeds, image_embeds, "cond")
                if guidance > 1:
                    noise_uncond = self._predict(
                        model,
                        model_input,
                        timestep,
                        negative_prompt_embeds,
                        image_embeds,
                        "uncond",
                    )
                    noise_pred = noise_uncond + guidance * (noise_pred - noise_uncond)
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]

                if run.callback is not None:
                    tensors = {
                        "latents": latents,
                        "prompt_embeds": prompt_embeds,
                        "negative_prompt_embeds": negative_prompt_embeds,
                    }
                    given = {name: tensors[name] for name in run.callback_tensors}
                    returned = run.callback(self, i, t, given) or {}
                    latents = returned.get("latents", latents)
                    prompt_embeds = returned.get("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = returned.get("negative_prompt_embeds", negative_prompt_embeds)
                progress_bar.update()
        self._current_timestep = None
        if first_frame_mask is not None:
            latents = (1 - first_frame_mask) * condition + first_frame_mask * latents
        return latents, kept

    def _reset_step_caches(self) -> None:
        """Step caches (e.g. first-block cache) compare a step with the previous one, which a new pass or a dropout
        cut makes meaningless (and differently shaped)."""
        for expert in (self.transformer, self.transformer_2):
            if expert is not None and expert.is_cache_enabled:
                expert._reset_stateful_cache()

    def _progress_bar(self, total: int):
        """diffusers' progress bar (honouring `set_progress_bar_config`), labelled with the running pass."""
        config = getattr(self, "_progress_bar_config", {})
        self._progress_bar_config = {"desc": self._stage, **config}
        try:
            return self.progress_bar(total=total)
        finally:
            self._progress_bar_config = config

    def _predict(self, model, model_input, timestep, text_embeds, image_embeds, cache_name):
        with model.cache_context(cache_name):
            return model(
                hidden_states=model_input,
                timestep=timestep,
                encoder_hidden_states=text_embeds,
                encoder_hidden_states_image=image_embeds,
                attention_kwargs=self.attention_kwargs,
                return_dict=False,
            )[0]

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's per-channel latent mean and 1/std, shaped to broadcast over (B, C, F, H, W)."""
        z_dim = self.vae.config.z_dim
        mean = torch.tensor(self.vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(like.device, like.dtype)
        inverse_std = 1.0 / torch.tensor(self.vae.config.latents_std).view(1, z_dim, 1, 1, 1)
        return mean, inverse_std.to(like.device, like.dtype)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents to a (1, 3, T, H, W) video in [-1, 1]."""
        latents = latents.to(device=get_module_execution_device(self.vae), dtype=self.vae.dtype)
        mean, inverse_std = self._latent_stats(latents)
        return self.vae.decode(latents / inverse_std + mean, return_dict=False)[0].float()

    def _encode_still(self, frame: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Normalised latents of a clip that repeats `frame`: the clean target of a partial-strength refinement."""
        still = frame.unsqueeze(2).expand(-1, -1, num_frames, -1, -1)
        still = still.to(device=get_module_execution_device(self.vae), dtype=self.vae.dtype)
        clean = retrieve_latents(self.vae.encode(still), sample_mode="argmax").float()
        mean, inverse_std = self._latent_stats(clean)
        return ((clean - mean) * inverse_std).to(frame.device)

    def _postprocess(self, video: torch.Tensor, output_type: str):
        """A (1, 3, T, H, W) video in [-1, 1] to a list of PIL images, a (T, H, W, 3) array or (T, 3, H, W) tensor."""
        return self.video_processor.postprocess_video(video, output_type=output_type)[0]

    def _check_positions(self, height: int, width: int, num_frames: int) -> None:
        """The transformer's rotary embedding has `rope_max_seq_len` positions per axis; past them it fails deep
        inside the model, so say which size is allowed instead."""
        if max(height, width) > self.largest_side:
            raise InvalidInputError(
                f"{width}x{height} px is too large for this model: at most {self.largest_side} px a side "
                "(set a smaller height and width)"
            )
        largest_clip = (self.transformer.config.rope_max_seq_len - 1) * self.vae_scale_factor_temporal + 1
        if num_frames > largest_clip:
            raise InvalidInputError(f"{num_frames} frames are too many for this model: at most {largest_clip}")

    def _check_scheduler(self, settings: EditSettings) -> None:
        """Settings that only some schedulers support, refused before any step runs."""
        takes_sigmas = "sigmas" in inspect.signature(self.scheduler.set_timesteps).parameters
        if settings.sigma_schedule == "uniform" and not takes_sigmas:
            raise InvalidInputError(
                f"sigma_schedule 'uniform' needs a scheduler that takes sigmas, got {type(self.scheduler).__name__}"
            )
        if settings.refine_strength < 1 and not _is_flow_scheduler(self.scheduler):
            raise InvalidInputError(
                f"refine_strength < 1 needs a flow-matching scheduler, got {type(self.scheduler).__name__}"
            )
        if settings.tld_stride > 1:
            scheduler_history(self.scheduler)  # dropout must know which of its state to thin


def uniform_sigmas(num_inference_steps: int) -> np.ndarray:
    """Noise levels 1, (n-1)/n, ..., 1/n; the scheduler applies its flow shift on top."""
    return np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]


def refine_start_step(num_inference_steps: int, strength: float) -> int:
    """First step of a partial-strength pass: strength 1 runs all steps, 0.5 the second half."""
    return min(num_inference_steps - 1, int(round(num_inference_steps * (1 - strength))))


class _StageTimer:
    """Accumulates wall-clock seconds per named stage, synchronising the accelerator so times are honest."""

    def __init__(self, device: torch.device):
        self.device = device
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._synchronize()
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()


def _row(embeds: torch.Tensor | None, index: int) -> torch.Tensor | None:
    return None if embeds is None else embeds[index : index + 1]


def _to_pil(frame: torch.Tensor) -> PIL.Image.Image:
    """A (1, 3, H, W) frame in [-1, 1] to an 8-bit PIL image."""
    pixels = ((frame[0].float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return PIL.Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())


def _is_flow_scheduler(scheduler) -> bool:
    return "FlowMatch" in type(scheduler).__name__ or bool(getattr(scheduler.config, "use_flow_sigmas", False))
