"""IFEditPipeline end to end on tiny real Wan models loaded through from_pretrained."""

import logging

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, UniPCMultistepScheduler, WanImageToVideoPipeline

from ifedit import IFEditPipeline
from ifedit.errors import InvalidInputError, NumericalError
from ifedit.pipeline import DEFAULT_REFINE_PROMPT, refine_start_step, uniform_sigmas

PROMPT = "the square slides to the right"
SMALL = {"height": 64, "width": 96, "num_frames": 33, "num_inference_steps": 8}


def _record_calls(pipe, names=("transformer", "transformer_2")):
    """Forward hooks that log (expert, latent frames, timestep) for every model call: observation, not mocking."""
    calls = []
    for name in names:
        model = getattr(pipe, name)
        if model is None:
            continue

        def hook(module, args, kwargs, name=name):
            hidden = kwargs["hidden_states"]
            calls.append((name, hidden.shape[2], kwargs["timestep"].flatten()[-1].item(), kwargs["timestep"].numel()))

        model.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


@pytest.mark.parametrize("variant", ["a14b", "ti2v", "wan21"])
def test_without_dropout_and_refinement_the_clip_equals_diffusers(load_tiny, source_image, variant):
    reference = load_tiny(variant, WanImageToVideoPipeline)
    ours = load_tiny(variant)
    settings = {"height": 64, "width": 96, "num_frames": 9, "num_inference_steps": 6, "guidance_scale": 1.0}
    expected = reference(
        image=source_image, prompt=PROMPT, generator=torch.Generator().manual_seed(3), output_type="np", **settings
    ).frames[0]
    result = ours(
        source_image, PROMPT, tld_stride=1, refine=False, return_frames=True, output_type="np",
        generator=torch.Generator().manual_seed(3), **settings,
    )  # fmt: skip
    assert result.frames.shape == expected.shape == (9, 64, 96, 3)
    assert np.abs(result.frames - expected).max() < 1e-5
    assert result.kept_latent_frames is None


def test_equivalence_holds_with_guidance_and_unipc(load_tiny, source_image):
    reference, ours = load_tiny("a14b", WanImageToVideoPipeline), load_tiny("a14b")
    for pipe in (reference, ours):
        pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5)
    settings = {"height": 64, "width": 96, "num_frames": 9, "num_inference_steps": 5, "guidance_scale": 3.0}
    kwargs = {"negative_prompt": "blurry", "guidance_scale_2": 2.0, **settings}
    expected = reference(image=source_image, prompt=PROMPT, generator=torch.Generator().manual_seed(1),
                         output_type="np", **kwargs).frames[0]  # fmt: skip
    result = ours(source_image, PROMPT, tld_stride=1, refine=False, return_frames=True, output_type="np",
                  generator=torch.Generator().manual_seed(1), **kwargs)  # fmt: skip
    assert np.abs(result.frames - expected).max() < 1e-5


def test_experts_switch_at_the_boundary_and_the_low_noise_expert_sees_the_dropped_clip(load_tiny, source_image):
    pipe = load_tiny("a14b")
    calls = _record_calls(pipe)
    result = pipe(source_image, PROMPT, refine=False, sigma_schedule="uniform", generator=torch.Generator(), **SMALL)
    # 33 pixel frames are 9 latent frames; the SPEC's 8-step grid at shift 5 has 3 high-noise steps.
    timesteps = [round(t, 1) for _, _, t, _ in calls]
    assert timesteps == [1000.0, 972.2, 937.5, 892.9, 833.3, 750.0, 625.0, 416.7]
    assert [(name, frames) for name, frames, _, _ in calls] == [("transformer", 9)] * 3 + [("transformer_2", 4)] * 5
    assert result.kept_latent_frames == [0, 3, 6, 8]
    # 4 kept latent frames decode to 13 pixel frames; the candidates are the last latent frame's 4.
    assert sorted(result.sharpness) == [9, 10, 11, 12]
    assert result.selected_index == max(result.sharpness, key=result.sharpness.get)


@pytest.mark.parametrize(("stride", "kept"), [(2, [0, 2, 4, 6, 8]), (3, [0, 3, 6, 8]), (4, [0, 4, 8])])
def test_stride_sets_the_kept_frames(load_tiny, source_image, stride, kept):
    pipe = load_tiny("a14b")
    calls = _record_calls(pipe)
    result = pipe(source_image, PROMPT, refine=False, tld_stride=stride, generator=torch.Generator(), **SMALL)
    assert result.kept_latent_frames == kept
    assert {frames for name, frames, _, _ in calls if name == "transformer_2"} == {len(kept)}


def test_threshold_moves_the_cut(load_tiny, source_image):
    pipe = load_tiny("a14b")
    calls = _record_calls(pipe)
    pipe(source_image, PROMPT, refine=False, tld_threshold=0.7, sigma_schedule="uniform", generator=torch.Generator(),
         **SMALL)  # fmt: skip
    # Below 700 only the last two steps (625, 417) run thinned; the high-noise expert keeps all 9 frames.
    assert [frames for _, frames, _, _ in calls] == [9] * 6 + [4] * 2
    calls.clear()
    pipe(source_image, PROMPT, refine=False, tld_threshold=1.0, generator=torch.Generator(), **SMALL)
    assert [frames for _, frames, _, _ in calls] == [9] + [4] * 7  # t = 1000 is not below 1000


@pytest.mark.parametrize("history", ["slice", "reset"])
@pytest.mark.parametrize("scheduler", ["euler", "unipc"])
def test_dropout_stays_finite_for_each_scheduler_and_history_mode(load_tiny, source_image, scheduler, history):
    pipe = load_tiny("a14b")
    if scheduler == "unipc":
        pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5)
    result = pipe(source_image, PROMPT, tld_history=history, output_type="np", generator=torch.Generator(), **SMALL)
    assert np.isfinite(result.image).all()
    assert result.kept_latent_frames == [0, 3, 6, 8]


def test_unipc_history_mode_changes_the_result(load_tiny, source_image):
    pipe = load_tiny("a14b")
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5)
    images = {
        history: pipe(
            source_image,
            PROMPT,
            tld_history=history,
            refine=False,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
            **SMALL,
        ).image  # fmt: skip
        for history in ("slice", "reset")
    }
    assert np.abs(images["slice"] - images["reset"]).max() > 1e-4


def test_ti2v_dropout_thins_the_mask_and_per_token_timesteps(load_tiny, source_image):
    pipe = load_tiny("ti2v")
    calls = _record_calls(pipe)
    result = pipe(source_image, PROMPT, refine=False, generator=torch.Generator(), **SMALL)
    # One expert: dropout at the default threshold 0.9. 64x96 px is a 4x6 latent, 2x3 tokens per frame.
    assert result.kept_latent_frames == [0, 3, 6, 8]
    assert [(frames, tokens) for _, frames, _, tokens in calls[:3]] == [(9, 9 * 6)] * 3
    assert [(frames, tokens) for _, frames, _, tokens in calls[3:]] == [(4, 4 * 6)] * 5
    assert all(name == "transformer" for name, *_ in calls)


def test_wan21_encodes_the_image_for_each_pass(load_tiny, source_image):
    pipe = load_tiny("wan21")
    encoded = []
    pipe.image_encoder.register_forward_hook(lambda module, args, output: encoded.append(output))
    result = pipe(source_image, PROMPT, generator=torch.Generator(), **SMALL)
    assert len(encoded) == 2  # the source for the edit, the chosen frame for refinement
    assert result.refine_selected_index is not None


def test_same_seed_same_edit_other_seed_other_edit(load_tiny, source_image):
    pipe = load_tiny("a14b")

    def run(seed):
        return pipe(source_image, PROMPT, output_type="np", generator=torch.Generator().manual_seed(seed), **SMALL)

    first, again, other = run(7), run(7), run(8)
    assert np.array_equal(first.image, again.image)
    assert first.sharpness == again.sharpness
    assert np.abs(first.image - other.image).max() > 1e-3


def test_refinement_starts_from_the_selected_frame(load_tiny, source_image, monkeypatch):
    pipe = load_tiny("a14b")
    first_frames = []
    original = pipe.prepare_latents

    def spy(image, *args, **kwargs):
        first_frames.append(image.clone())
        return original(image, *args, **kwargs)

    monkeypatch.setattr(pipe, "prepare_latents", spy)
    calls = _record_calls(pipe)
    result = pipe(source_image, PROMPT, return_frames=True, output_type="pt", generator=torch.Generator(), **SMALL)
    assert len(first_frames) == 2
    chosen = result.frames[result.selected_index]  # (3, H, W) in [0, 1]
    torch.testing.assert_close(first_frames[1][0] / 2 + 0.5, chosen, atol=1e-6, rtol=0)
    assert result.refine_frames.shape == (13, 3, 64, 96)
    assert sorted(result.refine_sharpness) == [9, 10, 11, 12]  # never frame 0, the input
    assert result.refine_kept_latent_frames == [0, 3, 6, 8]
    assert len(calls) == 16  # two passes of 8 steps
    # The returned image is the refinement clip's chosen frame.
    torch.testing.assert_close(result.image, result.refine_frames[result.refine_selected_index])


def test_refinement_options(load_tiny, source_image):
    pipe = load_tiny("a14b")
    calls = _record_calls(pipe)
    result = pipe(source_image, PROMPT, refine_frames=17, refine_steps=4, refine_strength=0.5,
                  return_frames=True, generator=torch.Generator(), **SMALL)  # fmt: skip
    refine_calls = calls[8:]
    assert refine_start_step(4, 0.5) == 2
    assert len(refine_calls) == 2  # strength 0.5 of 4 steps
    assert len(result.refine_frames) == 9  # 17 frames are 5 latent frames, thinned to [0, 3, 4] -> 9 pixel frames
    assert result.refine_kept_latent_frames == [0, 3, 4]
    assert {frames for _, frames, _, _ in refine_calls} == {3}


def test_refine_prompt_reaches_the_text_encoder(load_tiny, source_image):
    pipe = load_tiny("a14b")
    seen = []
    original = pipe.encode_prompt
    pipe.encode_prompt = lambda prompt, **kwargs: seen.append(prompt) or original(prompt, **kwargs)
    pipe(source_image, PROMPT, generator=torch.Generator(), **SMALL)
    pipe(source_image, PROMPT, refine=False, generator=torch.Generator(), **SMALL)
    assert seen == [[PROMPT, DEFAULT_REFINE_PROMPT], [PROMPT]]


def test_outputs_in_each_type(load_tiny, source_image):
    pipe = load_tiny("a14b")
    pil = pipe(source_image, PROMPT, return_frames=True, generator=torch.Generator(), **SMALL)
    assert isinstance(pil.image, PIL.Image.Image) and pil.image.size == (96, 64)
    assert len(pil.frames) == 13 and all(isinstance(frame, PIL.Image.Image) for frame in pil.frames)
    array = pipe(source_image, PROMPT, output_type="np", generator=torch.Generator(), **SMALL)
    assert array.image.shape == (64, 96, 3) and array.frames is None and array.refine_frames is None
    stages = {"text_encoding", "vae_encode", "denoise", "decode", "select", "refine_denoise", "total"}
    assert set(pil.timings) >= stages
    assert pil.timings["total"] >= pil.timings["denoise"] > 0
    assert pil.prompt == PROMPT and (pil.height, pil.width, pil.num_frames) == (64, 96, 33)


def test_default_size_follows_the_image(load_tiny, caplog):
    pipe = load_tiny("ti2v")
    tall = PIL.Image.new("RGB", (300, 600), (90, 120, 200))
    with caplog.at_level(logging.WARNING, logger="ifedit"):
        result = pipe(tall, PROMPT, max_area=64 * 128, num_frames=5, num_inference_steps=2, refine=False)
    assert (result.height, result.width) == (128, 64)  # TI2V needs multiples of 32
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="ifedit"):
        result = pipe(tall, PROMPT, height=100, width=70, num_frames=6, num_inference_steps=2, refine=False)
    assert (result.height, result.width, result.num_frames) == (96, 64, 5)
    assert "width 70 -> 64, height 100 -> 96 (64x96 px" in caplog.text and "using 5 instead of 6" in caplog.text


def test_callback_sees_both_passes_and_can_interrupt(load_tiny, source_image):
    pipe = load_tiny("a14b")
    seen = []

    def callback(pipeline, step, timestep, tensors):
        seen.append((pipeline.stage, step, tuple(tensors["latents"].shape)))
        return {}

    pipe(source_image, PROMPT, callback_on_step_end=callback, generator=torch.Generator(), **SMALL)
    assert [stage for stage, _, _ in seen] == ["edit"] * 8 + ["refine"] * 8
    assert seen[2][2][2] == 9 and seen[3][2][2] == 4  # the latent is thinned from step 3 on

    def stop_after_two(pipeline, step, timestep, tensors):
        if step == 1:
            pipeline._interrupt = True
        return {}

    calls = _record_calls(pipe)
    result = pipe(source_image, PROMPT, callback_on_step_end=stop_after_two, generator=torch.Generator(), **SMALL)
    assert len(calls) == 2
    assert result.refine_sharpness is None


def test_save_and_reload_round_trip(load_tiny, source_image, tmp_path):
    pipe = load_tiny("a14b")
    pipe.save_pretrained(tmp_path / "copy")
    again = IFEditPipeline.from_pretrained(tmp_path / "copy")
    again.set_progress_bar_config(disable=True)
    assert again.config.boundary_ratio == 0.9 and again.transformer_2 is not None
    assert load_tiny("ti2v").config.expand_timesteps is True
    first = pipe(source_image, PROMPT, output_type="np", generator=torch.Generator().manual_seed(0), **SMALL)
    second = again(source_image, PROMPT, output_type="np", generator=torch.Generator().manual_seed(0), **SMALL)
    assert np.array_equal(first.image, second.image)


def test_uniform_sigmas_are_the_distilled_grid():
    assert uniform_sigmas(4).tolist() == [1.0, 0.75, 0.5, 0.25]


def test_uniform_schedule_with_unipc(load_tiny, source_image):
    pipe = load_tiny("a14b")
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5)
    calls = _record_calls(pipe)
    pipe(source_image, PROMPT, sigma_schedule="uniform", refine=False, generator=torch.Generator(), **SMALL)
    shifted = [5 * s / (1 + 4 * s) for s in uniform_sigmas(8)]
    assert pipe.scheduler.sigmas[:-1].tolist() == pytest.approx(shifted, abs=1e-5)
    assert len(calls) == 8 and calls[3][2] < 900 <= calls[2][2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": " "}, "prompt must be a non-empty string"),
        ({"tld_stride": 0}, r"tld_stride must be an integer >= 1 \(1 disables dropout\), got 0"),
        ({"tld_threshold": 0.0}, r"tld_threshold must be a timestep fraction in \(0, 1\], got 0.0"),
        ({"tld_threshold": 1.5}, r"tld_threshold must be a timestep fraction in \(0, 1\], got 1.5"),
        ({"num_frames": 4}, "num_frames must be an integer >= 5, got 4"),
        ({"num_inference_steps": 0}, "num_inference_steps must be an integer >= 1, got 0"),
        ({"refine_strength": 0}, r"refine_strength must be a number in \(0, 1\], got 0"),
        ({"tld_history": "drop"}, "tld_history must be slice or reset, got 'drop'"),
        ({"tld_positions": "x"}, "tld_positions must be contiguous or original, got 'x'"),
        ({"output_type": "latent"}, "output_type must be pil, np, pt, got 'latent'"),
        ({"sigma_schedule": "karras"}, "sigma_schedule must be default or uniform, got 'karras'"),
        ({"guidance_scale": -1}, "guidance_scale must be a number from 0 to 100, got -1"),
        # The tiny transformer has 32 rotary positions per axis: 512 px a side, 125 frames.
        ({"height": 64, "width": 528}, r"528x64 px is too large for this model: at most 512 px a side"),
        ({"height": 64, "width": 96, "refine_frames": 129}, "129 frames are too many for this model: at most 125"),
    ],
)
def test_bad_options_are_refused_before_any_work(load_tiny, source_image, kwargs, message):
    pipe = load_tiny("a14b")
    calls = _record_calls(pipe)
    arguments = {"prompt": PROMPT, **kwargs}
    with pytest.raises(InvalidInputError, match=message):
        pipe(source_image, **arguments)
    assert calls == []


def test_scheduler_specific_options_are_refused(load_tiny, source_image):
    pipe = load_tiny("a14b")
    pipe.scheduler = DDIMScheduler()  # takes no sigmas, predicts noise: neither option applies
    with pytest.raises(InvalidInputError, match="sigma_schedule 'uniform' needs a scheduler that takes sigmas"):
        pipe(source_image, PROMPT, sigma_schedule="uniform")
    with pytest.raises(InvalidInputError, match="refine_strength < 1 needs a flow-matching scheduler"):
        pipe(source_image, PROMPT, refine_strength=0.5)


def test_a_scheduler_whose_history_dropout_does_not_know_is_refused_before_any_step(load_tiny, source_image):
    pipe = load_tiny("a14b")
    pipe.scheduler = DDIMScheduler()
    calls = _record_calls(pipe)
    with pytest.raises(InvalidInputError, match="temporal latent dropout cannot thin the history of DDIMScheduler"):
        pipe(source_image, PROMPT, tld_stride=3)
    assert calls == []


def test_small_images_are_refused(load_tiny):
    with pytest.raises(InvalidInputError, match="image is too small: 32x32 px"):
        load_tiny("a14b")(PIL.Image.new("RGB", (32, 32)), PROMPT)


def test_an_overflowed_video_is_an_error_not_a_black_image(load_tiny, source_image):
    """NaN or infinity in the denoised latents (an overflowing dtype, a guidance far too high) decodes to a black
    frame whose sharpness is NaN: the edit stops with the reason instead of returning it."""
    pipe = load_tiny()
    with torch.no_grad():
        next(pipe.transformer_2.parameters()).fill_(float("inf"))  # the low-noise expert's first weight overflows
    with pytest.raises(NumericalError, match="the edit pass's video overflowed to NaN or infinity"):
        pipe(source_image, PROMPT, refine=False, generator=torch.Generator(), **SMALL)


def test_guidance_is_bounded_before_anything_runs(load_tiny, source_image):
    with pytest.raises(InvalidInputError, match="guidance_scale must be a number from 0 to 100, got 1e"):
        load_tiny()(source_image, PROMPT, guidance_scale=1e23, **SMALL)
