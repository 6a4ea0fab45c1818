"""The method as the tiny real models see it: each test names the deliberate bug in the pipeline it catches.

Forward hooks record what every expert call was given (frames, text, rotary positions) and returned; reference
loops rebuild the scheduler's trajectory and the noisy start of a refinement by hand and compare. `tools/mutants.py`
plants these bugs in a copy of the source and checks that these tests fail.
"""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from ifedit.pipeline import DEFAULT_REFINE_PROMPT
from ifedit.sharpness import laplacian_variance
from ifedit.sizes import fit_size
from observe import frame_rows, laplacian_variance_of, recorded_calls, steps_of, to_pixels

PROMPT = "the square slides to the right"
NEGATIVE = "blurry, distorted"
# 17 frames are 5 latent frames; K = 3 keeps these three. The default 8-step grid at shift 5 has three steps at or
# above the a14b boundary (t = 1000, 967.9, 926.4 >= 900).
SMALL = {"height": 64, "width": 96, "num_frames": 17, "num_inference_steps": 8}
LATENT_FRAMES = 5
KEPT = [0, 3, 4]
HIGH_NOISE_STEPS = 3
Z_DIM = 16  # latent channels of the tiny a14b VAE; the rest of the model input is the I2V condition


def _encoded(pipe, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt and NEGATIVE as the text encoder embeds them alone: what the experts should be given."""
    return pipe.encode_prompt(
        prompt=prompt,
        negative_prompt=NEGATIVE,
        do_classifier_free_guidance=True,
        max_sequence_length=512,
        device=torch.device("cpu"),
    )


def _same_text(given: torch.Tensor, expected: torch.Tensor) -> bool:
    """Whether an expert got these embeddings; encoding prompts in one batch moves them by float rounding only."""
    return torch.allclose(given, expected, rtol=0, atol=1e-5)


def _unipc(pipe) -> None:
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5)


def _guided(step, scales: dict[str, float]) -> torch.Tensor:
    """The step's noise prediction from its recorded conditional (and unconditional) outputs."""
    cond = step[0].output
    if len(step) == 1:
        return cond
    return step[1].output + scales[step[0].expert] * (cond - step[1].output)


@pytest.mark.parametrize("guidance", [(1.0, 1.0), (3.0, 2.0)], ids=["no-guidance", "guidance"])
def test_multistep_history_is_thinned_with_the_kept_frames(load_tiny, source_image, guidance):
    """Mutation: the scheduler's stored outputs thinned with frames 0..len(kept)-1 instead of the kept ones.

    A scheduler treats frames independently, so UniPC run by hand on the kept frames from the start, fed the
    experts' recorded predictions, must land on the pipeline's latents after every step. With guidance above 1
    both calls of a step see the same thinned clip, and each expert uses its own scale.
    """
    pipe = load_tiny("a14b")
    _unipc(pipe)
    after = []
    with recorded_calls(pipe) as calls:
        result = pipe(
            source_image, PROMPT, negative_prompt=NEGATIVE, guidance_scale=guidance[0], guidance_scale_2=guidance[1],
            refine=False, generator=torch.Generator().manual_seed(0),
            callback_on_step_end=lambda p, i, t, tensors: after.append(tensors["latents"].clone()) or {}, **SMALL,
        )  # fmt: skip
    assert result.kept_latent_frames == KEPT
    steps = steps_of(calls)
    per_step = 2 if guidance[0] > 1 else 1
    assert [len(step) for step in steps] == [per_step] * 8
    frames = [[LATENT_FRAMES] * per_step] * HIGH_NOISE_STEPS + [[len(KEPT)] * per_step] * (8 - HIGH_NOISE_STEPS)
    assert [[call.frames for call in step] for step in steps] == frames
    reference = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    reference.set_timesteps(8)
    scales = dict(zip(("transformer", "transformer_2"), guidance, strict=True))
    sample = steps[0][0].hidden_states[:, :Z_DIM, KEPT]
    for index, (t, step, latents) in enumerate(zip(reference.timesteps, steps, after, strict=True)):
        assert step[0].t == pytest.approx(t.item())
        prediction = _guided(step, scales)
        thinned = prediction if prediction.shape[2] == len(KEPT) else prediction[:, :, KEPT]
        sample = reference.step(thinned, t, sample)[0]
        expected = latents if latents.shape[2] == len(KEPT) else latents[:, :, KEPT]
        torch.testing.assert_close(expected, sample, rtol=0, atol=1e-6, msg=f"latents after step {index}")


def test_guidance_pairs_each_prompt_with_its_call_and_thins_the_condition_alike(load_tiny, source_image):
    """Mutations: the unconditional call given the prompt, the I2V condition thinned with other frames than the
    latents, an expert guided with the other expert's scale."""
    pipe = load_tiny("a14b")
    positive, negative = _encoded(pipe, PROMPT)
    with recorded_calls(pipe) as calls:
        pipe(source_image, PROMPT, negative_prompt=NEGATIVE, guidance_scale=3.0, guidance_scale_2=1.0, refine=False,
             generator=torch.Generator().manual_seed(0), **SMALL)  # fmt: skip
    steps = steps_of(calls)
    # Guidance 1 for the low-noise expert: one call a step there.
    assert [len(step) for step in steps] == [2] * HIGH_NOISE_STEPS + [1] * (8 - HIGH_NOISE_STEPS)
    assert [step[0].expert for step in steps] == ["transformer"] * 3 + ["transformer_2"] * 5
    for step in steps:
        assert _same_text(step[0].text, positive)
        if len(step) == 2:
            assert _same_text(step[1].text, negative)
            assert torch.equal(step[1].hidden_states, step[0].hidden_states)
    full_condition = calls[0].hidden_states[:, Z_DIM:]
    for call in calls:
        condition = call.hidden_states[:, Z_DIM:]
        assert torch.equal(condition, full_condition if call.frames == LATENT_FRAMES else full_condition[:, :, KEPT])


@pytest.mark.parametrize(("variant", "threshold"), [("a14b", 1.0), ("ti2v", None)])
def test_original_positions_reach_every_expert_that_runs_on_the_thinned_clip(
    load_tiny, source_image, variant, threshold
):
    """Mutation: "original" RoPE positions hooked on `transformer_2` only, which does nothing for one-expert models
    (TI2V, Wan2.1) or for the high-noise steps after a cut above the boundary.

    Every thinned call's blocks must use the full clip's rotary rows of the kept frames.
    """
    pipe = load_tiny(variant)
    with recorded_calls(pipe) as calls:
        pipe(source_image, PROMPT, tld_positions="original", tld_threshold=threshold, refine=False,
             generator=torch.Generator().manual_seed(0), **SMALL)  # fmt: skip
    thinned = [call for call in calls if call.frames == len(KEPT)]
    # With the cut at t < 1000 the high-noise expert runs two thinned steps before the boundary.
    experts = {"transformer", "transformer_2"} if variant == "a14b" else {"transformer"}
    assert {call.expert for call in thinned} == experts
    for call in thinned:
        model = getattr(pipe, call.expert)
        batch, channels, _, height, width = call.hidden_states.shape
        full = model.rope(torch.zeros(batch, channels, LATENT_FRAMES, height, width))
        contiguous = model.rope(torch.zeros(batch, channels, len(KEPT), height, width))
        for used, whole, renumbered in zip(call.rope, full, contiguous, strict=True):
            assert torch.equal(used, frame_rows(whole, KEPT, LATENT_FRAMES)), f"{call.expert} at t={call.t:.1f}"
            assert not torch.equal(used, renumbered)


def test_original_positions_change_only_the_steps_after_the_cut(load_tiny, source_image):
    """Mutation: "original" positions applied to the whole clip too, or to none of the thinned steps.

    Same seed, both modes: the full-clip (high-noise) steps predict bitwise alike; from the cut on, the first
    thinned step gets the same input and predicts differently.
    """
    runs = {}
    for mode in ("contiguous", "original"):
        pipe = load_tiny("a14b")
        with recorded_calls(pipe) as calls:
            pipe(source_image, PROMPT, tld_positions=mode, refine=False, generator=torch.Generator().manual_seed(0),
                 **SMALL)  # fmt: skip
        runs[mode] = calls
    contiguous, original = runs["contiguous"], runs["original"]
    assert [call.frames for call in original] == [LATENT_FRAMES] * HIGH_NOISE_STEPS + [len(KEPT)] * 5
    for before, after in zip(contiguous[:HIGH_NOISE_STEPS], original[:HIGH_NOISE_STEPS], strict=True):
        assert torch.equal(before.output, after.output)
    first = HIGH_NOISE_STEPS
    assert torch.equal(contiguous[first].hidden_states, original[first].hidden_states)
    for before, after in zip(contiguous[first:], original[first:], strict=True):
        assert (before.output - after.output).abs().max() > 1e-4


def test_refinement_is_conditioned_on_the_still_video_prompt(load_tiny, source_image):
    """Mutation: the refinement pass conditioned on the edit prompt instead of the "still video" prompt."""
    pipe = load_tiny("a14b")
    small = {**SMALL, "num_frames": 9, "num_inference_steps": 2}
    with recorded_calls(pipe) as calls:
        pipe(source_image, PROMPT, negative_prompt=NEGATIVE, guidance_scale=2.0,
             generator=torch.Generator().manual_seed(0), **small)  # fmt: skip
    for stage, prompt in (("edit", PROMPT), ("refine", DEFAULT_REFINE_PROMPT)):
        positive, negative = _encoded(pipe, prompt)
        stage_calls = [call for call in calls if call.stage == stage]
        assert len(stage_calls) == 4, stage  # two steps, each a conditional and an unconditional call
        assert all(_same_text(call.text, positive) for call in stage_calls[0::2]), stage
        assert all(_same_text(call.text, negative) for call in stage_calls[1::2]), stage


def test_partial_strength_refinement_starts_from_the_renoised_still_clip(load_tiny, source_image, monkeypatch):
    """Mutation: the noise and the still clip mixed the wrong way round at a partial refinement strength.

    The first refinement step must see scheduler.scale_noise(still clip, t, noise): the still clip encoded by the
    VAE and normalised, the noise prepare_latents drew, t the first step the strength leaves.
    """
    pipe = load_tiny("a14b")
    prepared = []
    prepare_latents = pipe.prepare_latents

    def keep_noise(image, *args, **kwargs):
        made = prepare_latents(image, *args, **kwargs)
        prepared.append((image.clone(), made[0].clone()))
        return made

    monkeypatch.setattr(pipe, "prepare_latents", keep_noise)
    with recorded_calls(pipe) as calls:
        pipe(source_image, PROMPT, refine_frames=9, refine_steps=4, refine_strength=0.75,
             generator=torch.Generator().manual_seed(0), **SMALL)  # fmt: skip
    frame, noise = prepared[1]
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(4)
    refine_calls = [call for call in calls if call.stage == "refine"]
    # Strength 0.75 of 4 steps skips the first; the first step left runs on the whole 3-latent-frame clip.
    assert [call.t for call in refine_calls] == pytest.approx(scheduler.timesteps[1:].tolist())
    assert refine_calls[0].frames == 3
    with torch.no_grad():
        encoded = pipe.vae.encode(frame[:, :, None].repeat(1, 1, 9, 1, 1)).latent_dist.mode()
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
    still = (encoded - mean) / std
    expected = scheduler.scale_noise(still, scheduler.timesteps[1:2], noise)
    torch.testing.assert_close(refine_calls[0].hidden_states[:, :Z_DIM], expected, rtol=0, atol=1e-5)


def test_the_sharpest_of_the_last_latent_frames_pixels_is_chosen(load_tiny, source_image):
    """Mutation: the blurriest candidate chosen, or candidates scored on other frames than the last latent frame's.

    Also pins the numbering: after dropout `frames` is the thinned clip (3 kept latent frames, 9 pixel frames),
    and `selected_index` and the `sharpness` keys count its frames: the candidates are its last four.
    """
    pipe = load_tiny("a14b")
    result = pipe(source_image, PROMPT, refine=False, return_frames=True, output_type="np",
                  generator=torch.Generator().manual_seed(0), **SMALL)  # fmt: skip
    assert len(result.frames) == 9
    scores = {index: laplacian_variance_of(to_pixels(result.frames[index])) for index in range(5, 9)}
    assert result.sharpness == pytest.approx(scores, rel=1e-6)
    assert len(set(scores.values())) == 4
    assert result.selected_index == max(scores, key=scores.get)
    assert np.array_equal(result.image, result.frames[result.selected_index])


@pytest.mark.parametrize(("stride", "candidates"), [(1, [13, 14, 15, 16]), (3, [5, 6, 7, 8])])
def test_decoding_only_the_needed_frames_scores_the_last_latent_frame(load_tiny, source_image, stride, candidates):
    """Mutation: `decode_frames="needed"` decoding, or numbering, other frames than the last latent frame's.

    Only the last two latent frames are decoded (one decode of 2 frames); the candidates are the pixel frames of
    the last one, numbered in the denoised clip: 13-16 of 17 without dropout, 5-8 of the thinned 9 with K = 3.
    """
    pipe = load_tiny("a14b")
    decoded, final = [], []
    pipe.vae.post_quant_conv.register_forward_pre_hook(lambda module, args: decoded.append(args[0].shape[2]))
    result = pipe(
        source_image, PROMPT, tld_stride=stride, decode_frames="needed", refine=False, output_type="np",
        generator=torch.Generator().manual_seed(0),
        callback_on_step_end=lambda p, i, t, tensors: final.append(tensors["latents"].clone()) or {}, **SMALL,
    )  # fmt: skip
    assert decoded == [2]
    # The last two latent frames decoded alone and scored with the pipeline's own arithmetic (the score function is
    # tested on its own in test_sharpness): one pixel a rounding step away, float32 against float64 or x * std
    # against x / (1 / std), moves a score by 1e-3, which is no mutation's doing.
    mean, inverse_std = pipe._latent_stats(final[-1])
    with torch.no_grad():
        video = pipe.vae.decode(final[-1][:, :, -2:] / inverse_std + mean).sample  # (1, 3, 5, H, W) in [-1, 1]
    frames = (video[0, :, 1:].transpose(0, 1) / 2 + 0.5).clamp(0, 1)  # the last latent frame's 4 pixel frames
    scores = dict(zip(candidates, laplacian_variance(frames).tolist(), strict=True))
    assert result.sharpness == pytest.approx(scores, rel=1e-6)
    assert result.selected_index == max(scores, key=scores.get)
    chosen = frames[candidates.index(result.selected_index)].permute(1, 2, 0).numpy()
    assert np.abs(result.image - chosen).max() < 1e-5


def test_the_step_at_the_boundary_is_high_noise_and_the_cut_is_strictly_below(load_tiny, source_image):
    """Mutations: the expert boundary compared with > instead of >=, or the dropout threshold with <= instead of <.

    With boundary 0.9375 the uniform 8-step grid at shift 5 has a step exactly at t = 937.5: it belongs to the
    high-noise expert (as in diffusers' Wan pipeline) and, the threshold defaulting to the boundary, runs unthinned.
    """
    pipe = load_tiny("a14b")
    pipe.register_to_config(boundary_ratio=0.9375)
    with recorded_calls(pipe) as calls:
        pipe(source_image, PROMPT, sigma_schedule="uniform", refine=False, generator=torch.Generator().manual_seed(0),
             **SMALL)  # fmt: skip
    assert calls[2].t == 937.5
    expected = [("transformer", LATENT_FRAMES)] * HIGH_NOISE_STEPS + [("transformer_2", len(KEPT))] * 5
    assert [(call.expert, call.frames) for call in calls] == expected


def test_only_the_longest_side_needs_to_pass_the_models_limit_to_shrink_the_default_area():
    """Mutation: the default size shrunk only when the shorter side passes the model's rotary limit.

    A 4:1 image at 480p's area is 1264 x 316 px: too wide for a model with 512 px a side though only 316 px tall.
    """
    assert fit_size((200, 50), None, None, 480 * 832, 16, largest_side=512) == (128, 512)
