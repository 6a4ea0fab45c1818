"""The speed options on tiny real models: each one runs through dropout and refinement and changes what it says."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from ifedit.errors import InvalidInputError, SetupError
from ifedit.loading import LoadOptions, check_placement, load_pipeline
from ifedit.presets import custom_preset
from ifedit.speed import available_attention_backends, choose_attention_backend

PROMPT = "the square slides to the right"
# 17 frames are 5 latent frames; dropout with K = 3 keeps [0, 3, 4] (9 pixel frames), which "needed" decoding thins.
SETTINGS = {"height": 64, "width": 96, "num_frames": 17, "num_inference_steps": 6, "output_type": "np"}
IMAGE = PIL.Image.new("RGB", (96, 64), (40, 90, 160))


def _edit(pipe, image, **overrides):
    return pipe(image, PROMPT, generator=torch.Generator().manual_seed(5), **{**SETTINGS, **overrides})


def _load(tiny_dirs, **options):
    pipe = load_pipeline(custom_preset(tiny_dirs["a14b"]), LoadOptions(device="cpu", **options))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def baseline(tiny_dirs):
    return IMAGE, _edit(_load(tiny_dirs), IMAGE, return_frames=True)


def _count_block_calls(pipe) -> list[int]:
    """How often each expert's last block computed (forward hooks on its feed-forward layer, which a cached step
    skips; the block itself is still called)."""
    counts = [0, 0]
    for index, expert in enumerate((pipe.transformer, pipe.transformer_2)):
        expert.blocks[-1].ffn.register_forward_hook(
            lambda *_, index=index: counts.__setitem__(index, counts[index] + 1)
        )
    return counts


def test_bad_speed_options_are_refused_with_what_is_allowed(tiny_dirs):
    preset = custom_preset(tiny_dirs["a14b"])
    with pytest.raises(InvalidInputError, match="unknown attention backend 'fast'; use auto or one of .*native"):
        check_placement(preset, LoadOptions(device="cpu", attention_backend="fast"))
    with pytest.raises(InvalidInputError, match="unknown storage dtype 'int4'; use float8_e4m3fn, float8_e5m2"):
        check_placement(preset, LoadOptions(device="cpu", storage_dtype="int4"))
    with pytest.raises(InvalidInputError, match="first-block cache threshold must be > 0, got 0"):
        check_placement(preset, LoadOptions(device="cpu", first_block_cache=0))
    with pytest.raises(InvalidInputError, match="decode_frames must be all or needed, got 'some'"):
        _load(tiny_dirs)(IMAGE, PROMPT, decode_frames="some")


def test_native_attention_backend_gives_the_same_edit(tiny_dirs, baseline):
    image, expected = baseline
    result = _edit(_load(tiny_dirs, attention_backend="native"), image)
    assert np.abs(result.image - expected.image).max() < 1e-5


def test_first_block_cache_skips_steps_across_the_dropout_cut_and_both_passes(tiny_dirs, baseline):
    image, expected = baseline
    strict = _load(tiny_dirs, first_block_cache=1e-12)  # nothing is ever that close: every step computes
    strict_calls = _count_block_calls(strict)
    assert np.abs(_edit(strict, image).image - expected.image).max() < 1e-5

    loose = _load(tiny_dirs, first_block_cache=1e9)  # everything is: only each pass's first step per expert computes
    loose_calls = _count_block_calls(loose)
    result = _edit(loose, image)  # the cache is reset at the cut, so the thinner latent does not meet stale state
    assert result.kept_latent_frames == [0, 3, 4] and result.refine_kept_latent_frames == [0, 3, 4]
    assert sum(loose_calls) < sum(strict_calls)
    assert loose_calls[0] >= 2 and loose_calls[1] >= 2, "each expert computes at least once per pass"
    assert np.abs(result.image - expected.image).max() > 1e-3


def test_float8_storage_keeps_weights_in_8_bits_and_the_edit_close(tiny_dirs, baseline):
    image, expected = baseline
    pipe = _load(tiny_dirs, storage_dtype="float8_e4m3fn")
    for expert in (pipe.transformer, pipe.transformer_2):
        assert expert.blocks[0].ffn.net[2].weight.dtype == torch.float8_e4m3fn
    result = _edit(pipe, image)
    difference = np.abs(result.image - expected.image)
    assert 0 < difference.mean() < 0.1


def test_needed_decoding_decodes_two_latent_frames_and_numbers_frames_as_the_whole_clip(tiny_dirs, baseline):
    image, expected = baseline
    pipe = _load(tiny_dirs)
    decoded = []
    decode = pipe.vae.decode  # decoding is not `forward`, so a wrapper observes it instead of a hook
    pipe.vae.decode = lambda latents, **kwargs: decoded.append(latents.shape[2]) or decode(latents, **kwargs)
    result = _edit(pipe, image, decode_frames="needed")
    assert decoded == [2, 2], "the edit and the refinement each decode their last two kept latent frames"
    assert sorted(result.sharpness) == sorted(expected.sharpness) == [5, 6, 7, 8]
    assert result.selected_index in result.sharpness and result.refine_selected_index in result.refine_sharpness
    assert result.image.shape == expected.image.shape

    decoded.clear()
    full = _edit(pipe, image, decode_frames="needed", return_frames=True)  # asking for the clip decodes it all
    assert decoded == [3, 3] and np.abs(full.image - expected.image).max() < 1e-5


def test_compiled_blocks_give_the_same_edit(tiny_dirs, baseline):
    image, expected = baseline
    pipe = _load(tiny_dirs, compile=True)
    assert all(block._compiled_call_impl is not None for block in pipe.transformer.blocks)
    result = _edit(pipe, image)
    assert np.abs(result.image - expected.image).max() < 1e-4


def test_auto_attention_picks_the_fastest_available_backend():
    assert choose_attention_backend({"native", "_native_cudnn", "flash", "sage", "_flash_3"}) == "_flash_3"
    assert choose_attention_backend({"native", "_native_cudnn", "sage", "flash"}) == "flash"
    assert choose_attention_backend({"native", "_native_cudnn", "sage"}) == "sage"
    assert choose_attention_backend({"native", "_native_cudnn"}) == "_native_cudnn"
    assert choose_attention_backend({"native", "xformers"}) == "native"
    assert choose_attention_backend(set()) == "native"
    assert available_attention_backends(torch.device("cpu"), torch.bfloat16) == {"native"}


def test_auto_attention_on_a_cpu_runs_native_and_records_it(tiny_dirs, baseline, caplog):
    image, expected = baseline
    with caplog.at_level("INFO", logger="ifedit"):
        pipe = _load(tiny_dirs, attention_backend="auto")
    assert pipe.memory_plan.attention_backend == "native"
    assert "attention backend auto: native" in caplog.text
    processor = pipe.transformer.blocks[0].attn1.processor
    assert processor._attention_backend == "native"
    assert np.abs(_edit(pipe, image).image - expected.image).max() < 1e-5


def test_bfloat16_vae_in_channels_last_stays_close_to_float32(tiny_dirs, baseline):
    image, expected = baseline
    pipe = _load(tiny_dirs, vae_dtype="bfloat16", vae_channels_last=True)
    assert pipe.vae.dtype == torch.bfloat16
    convolution = next(p for p in pipe.vae.parameters() if p.dim() == 5)
    assert convolution.is_contiguous(memory_format=torch.channels_last_3d)
    assert (pipe.memory_plan.vae_dtype, pipe.memory_plan.vae_channels_last) == ("bfloat16", True)
    difference = np.abs(_edit(pipe, image).image - expected.image)
    # Measured on the tiny model: mean 0.0013, max 0.090 of the [0, 1] range (the VAE runs four times an edit).
    assert 0 < difference.mean() < 0.005 and difference.max() < 0.2


def test_fp8_compute_without_a_new_enough_gpu_stops_before_loading(tiny_dirs):
    preset = custom_preset(tiny_dirs["a14b"])
    if not torch.cuda.is_available():
        with pytest.raises(SetupError, match="--fp8-compute needs a CUDA GPU of compute capability 8.9 or higher"):
            check_placement(preset, LoadOptions(device="cpu", fp8_compute=True))
    with pytest.raises(InvalidInputError, match="--fp8-compute keeps the experts' weights in float8 already"):
        check_placement(preset, LoadOptions(device="cpu", fp8_compute=True, storage_dtype="float8_e4m3fn"))
    with pytest.raises(InvalidInputError, match="unknown VAE dtype 'float64'; use float32, bfloat16, float16"):
        check_placement(preset, LoadOptions(device="cpu", vae_dtype="float64"))


def test_gpu_speed_sweep_runs_on_tiny_models_and_compares_each_option_with_the_reference():
    script = Path(__file__).parent.parent / "benchmarks" / "gpu_speed.py"
    only = ["reference", "compile", "VAE bfloat16"]
    completed = subprocess.run([sys.executable, str(script), "--tiny", "--sweep", "--profile", "--only", *only],
                               capture_output=True, text=True, timeout=300)  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    settings = report["settings"]
    assert list(settings) == only
    assert settings["reference"]["fidelity"] == {"latent_relative_error": 0.0, "psnr_db": None}
    compiled = settings["compile"]
    assert compiled["graphs_compiled_in_warm_up"] >= 1 and compiled["recompilations_between_timed_edits"] == 0
    assert compiled["compile_seconds"] > 0 and compiled["fidelity"]["latent_relative_error"] < 1e-4
    assert 30 < settings["VAE bfloat16"]["fidelity"]["psnr_db"] < 100
    stages = settings["reference"]["profile"]["stages"]
    assert stages["denoise"]["cpu_ms"] > 0 and stages["refine_decode"]["cpu_ms"] > 0
    if not torch.cuda.is_available():
        assert "compute capability 8.9" in report["skipped"]["fp8 compute"]
