"""The memory planner: model sizes from the published configs, the activation formulas against the meta-device count,
the plan for each card size, `ifedit plan`, and the GPU memory benchmark's dry run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

from ifedit.cli import EXIT_INPUT, main
from ifedit.loading import LoadOptions, load_pipeline, pipeline_size
from ifedit.memory import (
    FULL_PRECISION_NAMES,
    GIB,
    KNOWN_SIZES,
    TIERS,
    Clip,
    activations,
    clip_for,
    folder_size,
    leaner_tier,
    plan_memory,
    weights_of,
)
from ifedit.presets import custom_preset, get_preset

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from architectures import A14B_EXPERT, UMT5_XXL  # noqa: E402

A14B = "Wan-AI/Wan2.2-I2V-A14B-Diffusers"
# The published configs of the other two models (their diffusers folders' config.json, the keys that differ).
TI2V_EXPERT = {**A14B_EXPERT, "num_attention_heads": 24, "in_channels": 48, "out_channels": 48, "ffn_dim": 14336,
               "num_layers": 30}  # fmt: skip
WAN21_EXPERT = {**A14B_EXPERT, "image_dim": 1280, "added_kv_proj_dim": 5120}
WAN22_VAE = dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
                 patch_size=2, scale_factor_spatial=16, latents_mean=[0.0] * 48, latents_std=[1.0] * 48)  # fmt: skip
CLIP_VIT_H = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                  image_size=224, patch_size=14, projection_dim=1024)  # fmt: skip


def _part(module: torch.nn.Module) -> tuple[dict, dict[str, int]]:
    config = module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
    return config, {name: parameter.numel() for name, parameter in module.named_parameters()}


def test_known_sizes_are_the_published_configs_counted_on_the_meta_device():
    from ifedit.memory import size_from_parts

    with torch.device("meta"):
        text = _part(UMT5EncoderModel(UMT5Config(**UMT5_XXL)))
        wan21_vae = _part(AutoencoderKLWan())
        a14b = _part(WanTransformer3DModel(**A14B_EXPERT))
        models = {
            A14B: ({"transformer": a14b, "transformer_2": a14b, "text_encoder": text, "vae": wan21_vae}, False),
            "Wan-AI/Wan2.2-TI2V-5B-Diffusers": (
                {"transformer": _part(WanTransformer3DModel(**TI2V_EXPERT)), "text_encoder": text,
                 "vae": _part(AutoencoderKLWan(**WAN22_VAE))},
                True,
            ),
            "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers": (
                {"transformer": _part(WanTransformer3DModel(**WAN21_EXPERT)), "text_encoder": text, "vae": wan21_vae,
                 "image_encoder": _part(CLIPVisionModel(CLIPVisionConfig(**CLIP_VIT_H)))},
                False,
            ),
        }  # fmt: skip
    for model_id, (parts, per_token_timesteps) in models.items():
        assert size_from_parts(parts, per_token_timesteps) == KNOWN_SIZES[model_id], model_id
    size = KNOWN_SIZES[A14B]
    # The numbers a reader checks by hand: 2 x 14.29 B, UMT5-XXL 5.68 B, the VAE 127 M.
    assert [round(expert.params / 1e9, 2) for expert in size.experts] == [14.29, 14.29]
    assert round(size.text_encoder.params / 1e9, 2) == 5.68 and round(size.vae.params / 1e6) == 127


def test_full_precision_names_are_what_diffusers_leaves_unquantised():
    # A new skip pattern in diffusers would make the 8-bit tier's prediction too small.
    assert set(WanTransformer3DModel._skip_layerwise_casting_patterns) <= set(FULL_PRECISION_NAMES)


def test_weights_of_sums_layers_and_full_precision_tensors():
    tensors = {"blocks.0.ffn.net.0.proj.weight": 60, "blocks.0.ffn.net.0.proj.bias": 6, "blocks.0.norm2.weight": 3,
               "condition_embedder.time_proj.weight": 40, "scale_shift_table": 2}  # fmt: skip
    weights = weights_of(tensors)
    assert (weights.params, weights.full_precision, weights.largest_layer) == (111, 45, 66)


def test_a14b_weights_in_bfloat16_are_the_hand_calculation():
    plan = plan_memory(KNOWN_SIZES[A14B], Clip(33, 480, 832), gpu_free_gb=80)
    expert, text, vae = 14_288_901_184 * 2 / GIB, 5_680_910_336 * 2 / GIB, 126_892_531 * 4 / GIB
    assert plan.weights_gb == {"experts": [round(expert, 2)] * 2, "text_encoder": round(text, 2),
                               "vae": round(vae, 2), "image_encoder": 0.0}  # fmt: skip
    # 480 x 832 px, 33 frames: 9 latent frames of 30 x 52 tokens; the expert step keeps 2 FFN-wide and 5.7
    # model-wide bfloat16 tensors a token.
    assert plan.activations_gb["expert"] == round(9 * 30 * 52 * 2 * (2 * 13824 + 5.7 * 5120) / GIB, 2) == 1.49
    decode = plan.activations_gb["decode"]
    assert plan.tier("model").gpu_gb == pytest.approx(expert + vae + plan.activations_gb["expert"], abs=0.01)
    assert plan.tier("resident").vae_tiling  # untiled, everything would need the weights + the decode:
    assert 2 * expert + text + vae + decode == pytest.approx(76.8, abs=0.1)  # what an H100 measured
    assert plan.tier("model").host_gb == pytest.approx(2 * expert + text + vae + 3, abs=0.01)


@pytest.mark.parametrize(
    ("gpu", "host", "chosen", "tiling"),
    [
        (80, None, "resident", True),
        (48, None, "model", False),
        (32, None, "model", False),
        (24, None, "fp8-model", False),
        (16, None, "group", False),
        (12, None, "group", True),
        (16, 96, "sequential", False),  # group offload's pinned copies would not fit the host
        (24, 64, None, False),  # the bfloat16 weights alone are 64.3 GiB of host memory
    ],
)
def test_the_paper_recipe_takes_the_fastest_tier_that_fits(gpu, host, chosen, tiling):
    size = KNOWN_SIZES[A14B]
    plan = plan_memory(size, clip_for(get_preset("paper"), size), gpu, host)
    assert plan.chosen == chosen
    if chosen:
        assert plan.tier(chosen).vae_tiling == tiling
        faster = TIERS[: TIERS.index(chosen)]
        assert not any(plan.tier(name).fits for name in faster)


def test_gguf_never_fits_without_gguf_weights():
    size = KNOWN_SIZES[A14B]
    clip = clip_for(get_preset("paper"), size)
    assert not plan_memory(size, clip, 40).tier("gguf").fits
    assert "needs GGUF expert weights" in plan_memory(size, clip, 40).tier("gguf").note
    assert plan_memory(size, clip, 40, gguf_weights=True).tier("gguf").fits


def test_tiers_get_leaner_and_longer_clips_need_more():
    size = KNOWN_SIZES[A14B]
    plan = plan_memory(size, Clip(33, 480, 832), gpu_free_gb=1)  # nothing fits: every tier at its leanest
    gpu = [plan.tier(name).gpu_gb for name in ("resident", "model", "fp8-model", "group")]
    assert gpu == sorted(gpu, reverse=True) and plan.tier("sequential").gpu_gb <= plan.tier("group").gpu_gb
    long = plan_memory(size, Clip(81, 480, 832), gpu_free_gb=1)
    assert long.activations_gb["expert"] > 2 * plan.activations_gb["expert"]
    assert long.tier("model").gpu_gb > plan.tier("model").gpu_gb


def test_leaner_tier_after_running_out_skips_what_does_not_fit():
    size = KNOWN_SIZES[A14B]
    plan = plan_memory(size, clip_for(get_preset("paper"), size), 48, 110)
    assert leaner_tier(plan, "model") == "fp8-model"
    assert leaner_tier(plan, "group") == "sequential"  # gguf needs weights ifedit cannot load
    assert leaner_tier(plan, "sequential") is None
    squeezed = plan_memory(size, clip_for(get_preset("paper"), size), 48, 90)  # group's pinned copies do not fit
    assert leaner_tier(squeezed, "fp8-model") == "sequential"


def test_activation_formulas_follow_the_meta_device_count(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import flops

    size = KNOWN_SIZES[A14B]
    clip = Clip(frames=9, height=256, width=448)
    counted = activations(size, clip, dtype_bytes=2)
    vae = flops.vae()
    latents = torch.empty(1, 16, 3, 32, 56, device="meta")
    video = torch.empty(1, 3, 9, 256, 448, device="meta")
    input_clip = 12 * 9 * 256 * 448  # the pipeline allocates it; the count does not see it
    assert counted.decode == pytest.approx(flops.peak_activations(vae, lambda model: model.decode(latents)), rel=0.05)
    encoded = flops.peak_activations(vae, lambda model: model.encode(video)) + input_clip
    assert counted.encode == pytest.approx(encoded, rel=0.05)
    step = flops.peak_activations(flops.transformer(), flops._transformer_call(3, 256, 448))
    assert counted.expert == pytest.approx(step, rel=0.12)  # 1,344 tokens: the small fixed part shows


def test_a_saved_folder_is_sized_from_its_headers_as_the_loaded_modules_are(tiny_dirs):
    for variant in ("a14b", "ti2v", "wan21"):
        size = folder_size(Path(tiny_dirs[variant]))
        loaded = pipeline_size(load_pipeline(custom_preset(tiny_dirs[variant]), LoadOptions(device="cpu")))
        assert size == loaded, variant
    assert folder_size(Path(tiny_dirs["ti2v"])).per_token_timesteps
    assert folder_size(Path(tiny_dirs["wan21"])).image_encoder.params > 0


def test_plan_command_prints_every_tier_and_the_choice(capsys):
    assert main(["plan", "--model", "paper", "--gpu-memory", "24"]) == 0
    out = capsys.readouterr().out
    assert "chosen: fp8-model (8-bit experts with model offload)" in out
    for tier in TIERS:
        assert f"\n{tier} " in out
    assert main(["plan", "--model", "paper", "--gpu-memory", "16", "--host-memory", "64", "--frames", "81",
                 "--height", "480", "--width", "832", "--json"]) == 0  # fmt: skip
    plan = json.loads(capsys.readouterr().out)
    assert plan["chosen"] is None and plan["frames"] == 81 and plan["model"] == "paper"
    assert [tier["name"] for tier in plan["tiers"]] == list(TIERS)
    assert all({"name", "gpu_gb", "host_gb", "fits"} <= tier.keys() for tier in plan["tiers"])


@pytest.mark.parametrize("model", ["toyworld", "debug-tiny"])
def test_plan_command_fits_the_small_models_anywhere(model, capsys):
    assert main(["plan", "--model", model, "--gpu-memory", "2", "--host-memory", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["chosen"] == "resident"


def test_a_plan_without_a_photo_sizes_the_clip_the_model_usually_edits(capsys):
    sizes = {}
    for model in ("paper", "toyworld"):
        assert main(["plan", "--model", model, "--gpu-memory", "24", "--json"]) == 0
        plan = json.loads(capsys.readouterr().out)
        sizes[model] = (plan["height"], plan["width"])
    assert sizes == {"paper": (480, 832), "toyworld": (64, 64)}  # the toy world's scenes, not 48 x 88


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gpu-memory", "-3"], "--gpu-memory must be a positive number of GiB, got -3"),
        (["--gpu-memory", "24", "--host-memory", "0"], "--host-memory must be a positive number of GiB, got 0"),
        (["--gpu-memory", "24", "--frames", "0"], "frames must be at least 5, got 0"),
        (["--gpu-memory", "24", "--height", "8"], "height must be at least 16 px for this model, got 8"),
    ],
)
def test_plan_command_refuses_bad_values_in_one_line(argv, message, capsys):
    assert main(["plan", *argv]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_plan_command_refuses_a_memory_that_is_not_a_number(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["plan", "--gpu-memory", "nan"])
    assert exit.value.code == EXIT_INPUT
    err = capsys.readouterr().err
    assert "--gpu-memory: expected a finite number, got 'nan'" in err and err.count("\n") == 1


def test_gpu_memory_benchmark_dry_run_on_a_tiny_model():
    completed = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_memory.py"), "--tiny"],
                               capture_output=True, text=True, timeout=120)  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert [run["cap_gb"] for run in report["runs"]] == [80, 48, 32, 24, 16]
    for run in report["runs"]:
        assert run["tier"] == "resident" and run["seconds"] > 0 and run["predicted_gpu_gb"] < 1
        assert run["measured_gpu_gb"] is None  # no GPU in a dry run
