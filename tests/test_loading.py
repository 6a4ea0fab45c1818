"""From a --model string to a placed pipeline: presets, local folders, Hub ids, dtypes, schedulers, LoRAs."""

import dataclasses
import json
import shutil
from pathlib import Path

import huggingface_hub
import PIL.Image
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from peft import LoraConfig, get_peft_model_state_dict

from ifedit import IFEditPipeline, loading
from ifedit.editor import Editor
from ifedit.errors import InvalidInputError, SetupError
from ifedit.loading import (
    LoadOptions,
    available_host_gb,
    check_placement,
    choose_placement,
    load_pipeline,
    resolve_device,
    resolve_dtype,
    retry_tier,
)
from ifedit.memory import KNOWN_SIZES, Clip, folder_size
from ifedit.options import EditSettings
from ifedit.presets import PRESETS, LoraWeights, custom_preset, get_preset, resolve_model
from ifedit.tiny import tiny_transformer

CPU = LoadOptions(device="cpu")


def test_paper_preset_holds_the_recipe():
    paper = get_preset("paper")
    recipe = paper.recipe
    assert (recipe.num_inference_steps, recipe.guidance_scale, recipe.num_frames, paper.flow_shift) == (8, 1.0, 33, 5)
    assert (recipe.tld_stride, recipe.max_area, paper.scheduler, recipe.sigma_schedule) == (
        3,
        480 * 832,
        "euler",
        "uniform",
    )
    assert [(lora.weight_name, lora.target) for lora in paper.loras] == [
        ("high_noise_model.safetensors", "transformer"),
        ("low_noise_model.safetensors", "transformer_2"),
    ]
    assert paper.model_id == "Wan-AI/Wan2.2-I2V-A14B-Diffusers"
    kwargs = recipe.as_kwargs()
    assert kwargs["num_inference_steps"] == 8 and kwargs["tld_stride"] == 3 and kwargs["sigma_schedule"] == "uniform"


def test_resolve_model(tmp_path, tiny_dirs, monkeypatch):
    assert resolve_model("paper").name == "paper"
    assert resolve_model("Wan-AI/Wan2.2-TI2V-5B-Diffusers").name == "wan2.2-ti2v-5b"
    assert resolve_model("Wan-AI/Wan2.2-I2V-A14B-Diffusers").name == "wan2.2-i2v-a14b"  # the LoRA-free preset
    someone = resolve_model("someone/their-wan-finetune")
    assert (someone.name, someone.model_id, someone.loras, someone.scheduler) == (
        "custom", "someone/their-wan-finetune", (), None,
    )  # fmt: skip
    local = resolve_model(tiny_dirs["a14b"])
    assert local.model_id == tiny_dirs["a14b"] and local.gpu_memory_gb == 0
    with pytest.raises(InvalidInputError, match="has no model_index.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(InvalidInputError, match="unknown model 'wan'.*give a preset"):
        resolve_model("wan")
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="is a file, not a pipeline folder"):  # not a Hub id to download
        resolve_model(str(tmp_path / "weights.safetensors"))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "loop").symlink_to("loop")  # "models/loop" would otherwise read as a Hub id
    (tmp_path / "models" / "gone").symlink_to(tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path)
    for link in ("models/loop", "models/gone"):  # relative, they would read as Hub ids
        with pytest.raises(InvalidInputError, match="is a link that leads to no folder"):
            resolve_model(link)
    with pytest.raises(InvalidInputError, match="unknown preset 'fast'; choose one of paper"):
        get_preset("fast")


def test_a_folders_layout_is_read_as_diffusers_reads_its_index_and_configs(tmp_path, tiny_dirs):
    """A repeated key keeps its last value and an entry [null] means no module, as in diffusers: neither may turn
    the paper's layout into a custom model with other defaults (no LoRAs, no refinement) without a word."""
    folder = tmp_path / "a14b"
    shutil.copytree(tiny_dirs["a14b"], folder)
    config = folder / "vae" / "config.json"
    text = config.read_text()
    config.write_text(text.replace("{", '{"z_dim": 3,', 1))  # the file's own z_dim comes later and counts
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "image_encoder": [None]}))
    assert resolve_model(str(folder)).name == "paper (local folder)"
    assert folder_size(folder) == folder_size(Path(tiny_dirs["a14b"]))
    (folder / "model_index.json").write_text(json.dumps({**index, "image_encoder": [None, "CLIPVisionModel"]}))
    assert resolve_model(str(folder)).name == "paper (local folder)", "no library: diffusers loads no module"


def test_debug_tiny_builds_in_memory_and_edits():
    pipe = load_pipeline(get_preset("debug-tiny"), CPU)
    assert isinstance(pipe, IFEditPipeline) and pipe.transformer_2 is not None
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == 5.0
    pipe.set_progress_bar_config(disable=True)
    image = PIL.Image.new("RGB", (96, 64), (10, 200, 30))
    result = pipe(
        image, "anything", generator=torch.Generator().manual_seed(0), **get_preset("debug-tiny").recipe.as_kwargs()
    )
    assert result.image.size == (96, 64)


def test_presets_pick_their_scheduler(tiny_dirs):
    preset = dataclasses.replace(custom_preset(tiny_dirs["a14b"]), scheduler="unipc", flow_shift=3.0)
    pipe = load_pipeline(preset, CPU)
    assert isinstance(pipe.scheduler, UniPCMultistepScheduler)
    assert pipe.scheduler.config.flow_shift == 3.0 and pipe.scheduler.config.use_flow_sigmas
    kept = load_pipeline(custom_preset(tiny_dirs["a14b"]), CPU)  # no preset: the folder's own scheduler
    assert isinstance(kept.scheduler, FlowMatchEulerDiscreteScheduler)


def test_dtype_and_device_choices(tiny_dirs):
    pipe = load_pipeline(custom_preset(tiny_dirs["wan21"]), LoadOptions(device="cpu", dtype="bfloat16"))
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16
    assert pipe.vae.dtype == torch.float32 and pipe.image_encoder.dtype == torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(InvalidInputError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", torch.device("cpu"))
    with pytest.raises(InvalidInputError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(
        InvalidInputError, match=r"--offload model \(offload='model'\) moves weights to an accelerator"
    ):
        load_pipeline(custom_preset(tiny_dirs["a14b"]), LoadOptions(device="cpu", offload="model"))


def test_vae_tiling_option(tiny_dirs):
    pipe = load_pipeline(custom_preset(tiny_dirs["a14b"]), LoadOptions(device="cpu", vae_tiling=True))
    assert pipe.vae.use_tiling


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where there is no GPU")
def test_large_presets_say_what_to_do_without_a_gpu():
    with pytest.raises(SetupError, match="needs a CUDA GPU .*--model toyworld for real edits on a CPU .*--model "
                       "debug-tiny.*--device cpu"):  # fmt: skip
        load_pipeline(get_preset("paper"), LoadOptions())


@pytest.mark.parametrize("local_files_only", [True, False])
def test_missing_download_says_how_to_get_the_weights_not_what_the_libraries_said(monkeypatch, local_files_only):
    # diffusers' and huggingface_hub's own words here speak of `local_files_only` or of "the stacktrace above".
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    preset = resolve_model("nobody-here/no-such-wan-model")
    with pytest.raises(SetupError) as error:
        load_pipeline(preset, LoadOptions(device="cpu", local_files_only=local_files_only))
    message = str(error.value)
    assert message.startswith("could not get nobody-here/no-such-wan-model: it is not in this machine's Hugging Face")
    assert "run `hf download nobody-here/no-such-wan-model`" in message and "drop --offline" in message
    assert "stacktrace" not in message and "local_files_only" not in message and "\n" not in message


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """Two LoRA files for the tiny experts, saved the way published Wan LoRAs are."""
    folder = tmp_path_factory.mktemp("lora")
    for seed, name in ((5, "high.safetensors"), (6, "low.safetensors")):
        transformer = tiny_transformer("a14b", seed=seed)
        config = LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k"], init_lora_weights=False)
        transformer.add_adapter(config)
        IFEditPipeline.save_lora_weights(
            folder, transformer_lora_layers=get_peft_model_state_dict(transformer), weight_name=name
        )
    return str(folder)


def _query_weight(pipe, expert):
    return getattr(pipe, expert).blocks[0].attn1.to_q.weight.detach().clone()


def test_loras_are_fused_into_their_expert_at_their_scale(tiny_dirs, lora_dir):
    base = load_pipeline(custom_preset(tiny_dirs["a14b"]), CPU)
    loras = (
        LoraWeights(lora_dir, "high.safetensors", "transformer", scale=1.0),
        LoraWeights(lora_dir, "low.safetensors", "transformer_2", scale=0.5),
    )
    full = load_pipeline(custom_preset(tiny_dirs["a14b"]).with_loras(loras), CPU)
    half = load_pipeline(custom_preset(tiny_dirs["a14b"]).with_loras(loras[:1]), CPU)
    for expert in ("transformer", "transformer_2"):
        assert not torch.equal(_query_weight(full, expert), _query_weight(base, expert))
        assert type(getattr(full, expert).blocks[0].attn1.to_q) is torch.nn.Linear  # fused, adapter layers gone
    # Only the named expert changes; the scale multiplies the LoRA's delta.
    assert torch.equal(_query_weight(half, "transformer_2"), _query_weight(base, "transformer_2"))
    delta_high = _query_weight(full, "transformer") - _query_weight(base, "transformer")
    double = load_pipeline(
        custom_preset(tiny_dirs["a14b"]).with_loras((dataclasses.replace(loras[0], scale=2.0),)), CPU
    )
    torch.testing.assert_close(
        _query_weight(double, "transformer") - _query_weight(base, "transformer"), 2 * delta_high
    )


def test_lora_errors_name_the_problem(tiny_dirs, lora_dir):
    one_expert = custom_preset(tiny_dirs["ti2v"]).with_loras(
        (LoraWeights(lora_dir, "low.safetensors", "transformer_2"),)
    )
    with pytest.raises(SetupError, match="targets transformer_2, which this model does not have"):
        load_pipeline(one_expert, CPU)
    missing = custom_preset(tiny_dirs["a14b"]).with_loras((LoraWeights(lora_dir, "nope.safetensors", "transformer"),))
    with pytest.raises(SetupError, match="could not load LoRA .*nope.safetensors"):
        load_pipeline(missing, CPU)


def test_every_preset_has_a_complete_recipe():
    for preset in PRESETS.values():
        recipe = preset.recipe
        assert recipe.num_inference_steps >= 1 and (recipe.num_frames - 1) % 4 == 0
        assert preset.fps > 0 and recipe.max_area > 0


@pytest.mark.parametrize(
    ("variant", "class_name", "drop"),
    [
        ("ti2v", "WanPipeline", ("image_encoder", "image_processor")),  # how TI2V-5B is published
        ("a14b", "WanImageToVideoPipeline", ()),  # how Wan2.2-I2V-A14B is published
        ("wan21", "WanImageToVideoPipeline", ("transformer_2", "boundary_ratio", "expand_timesteps")),
    ],
)
def test_folders_published_for_diffusers_pipelines_load(tmp_path, tiny_dirs, variant, class_name, drop):
    folder = tmp_path / variant
    shutil.copytree(tiny_dirs[variant], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = class_name
    for key in drop:
        index.pop(key)
    (folder / "model_index.json").write_text(json.dumps(index))
    pipe = load_pipeline(resolve_model(str(folder)).with_loras(()), CPU)  # the A14B's recipe without its LoRAs
    assert isinstance(pipe, IFEditPipeline)
    assert pipe.config.expand_timesteps == (variant == "ti2v")
    assert (pipe.transformer_2 is not None) == (variant == "a14b")
    assert (pipe.image_encoder is not None) == (variant == "wan21")
    pipe.set_progress_bar_config(disable=True)
    result = pipe(PIL.Image.new("RGB", (96, 64)), "x", height=64, width=96, num_frames=5, num_inference_steps=2)
    assert result.image.size == (96, 64)


A14B_SIZE = KNOWN_SIZES["Wan-AI/Wan2.2-I2V-A14B-Diffusers"]
RECIPE = Clip(33, 480, 832)


def _choose(gpu: float, host: float | None = None, **options):
    return choose_placement(LoadOptions(**options), A14B_SIZE, RECIPE, "cuda", 2, gpu, host)


def test_auto_placement_takes_the_plan_and_given_options_replace_its_choices():
    placement = _choose(24)
    assert (placement.tier, placement.mode, placement.offload, placement.storage_dtype) == (
        "fp8-model", "auto", "model", "float8_e4m3fn",
    )  # fmt: skip
    assert placement.gpu_gb == placement.plan.tier("fp8-model").gpu_gb and not placement.overridden
    assert placement.describe().startswith("8-bit experts with model offload, predicted peak 20.2 GiB GPU / 67.3")
    forced = _choose(24, offload="sequential", vae_tiling=True)
    assert (forced.tier, forced.offload, forced.storage_dtype, forced.vae_tiling) == (
        "fp8-model", "sequential", "float8_e4m3fn", True,
    )  # fmt: skip
    assert forced.overridden == ("--offload", "--vae-tiling") and forced.gpu_gb < placement.gpu_gb  # predicted anew
    assert _choose(80).vae_tiling and not _choose(80, vae_tiling=False).vae_tiling


def test_nothing_fitting_is_one_line_naming_the_leanest_plan():
    leanest = r"the leanest, sequential offload, needs 13\.0 GiB GPU and 67\.3 GiB host memory, and 24\.0 GiB GPU "
    with pytest.raises(SetupError, match=rf"^no memory plan fits: {leanest}and 64\.0 GiB host are free .*pass "
                       "--memory sequential to try anyway$"):  # fmt: skip
        _choose(24, host=64)


def test_an_asked_tier_predicted_not_to_fit_is_loaded_with_a_warning(caplog):
    placement = _choose(24, memory="model")
    assert (placement.tier, placement.mode, placement.offload) == ("model", "asked", "model")
    assert "--memory model is predicted not to fit: needs 28.6 of 22.1 GiB usable GPU memory" in caplog.text


def test_after_running_out_of_memory_auto_retries_one_tier_leaner_and_asked_tiers_name_the_option():
    assert retry_tier(_choose(48)) == "fp8-model"
    assert retry_tier(_choose(48, host=90)) == "fp8-model"
    with pytest.raises(SetupError, match=r"ran out of GPU memory with model offload \(predicted 28\.6 GiB, 48\.0 "
                       r"GiB free\); try --memory fp8-model or --vae-tiling$"):  # fmt: skip
        retry_tier(_choose(48, memory="model"))
    with pytest.raises(SetupError, match=r"changed by --offload.*try --memory fp8-model"):
        retry_tier(_choose(48, offload="model"))
    with pytest.raises(SetupError, match="with sequential offload, VAE tiling .*try fewer --frames or a smaller"):
        retry_tier(_choose(12, memory="sequential"))


def test_memory_tiers_that_offload_need_a_gpu_device():
    with pytest.raises(
        InvalidInputError, match=r"--memory group \(memory='group'\) moves weights to an accelerator; it needs a GPU"
    ):
        check_placement(get_preset("debug-tiny"), LoadOptions(device="cpu", memory="group"))
    with pytest.raises(InvalidInputError, match="^unknown memory plan 'fp4'; use auto, resident, model, fp8-model, "
                       "group, gguf, sequential$"):  # fmt: skip
        check_placement(get_preset("debug-tiny"), LoadOptions(device="cpu", memory="fp4"))


@pytest.mark.skipif((available_host_gb() or 0) > 100, reason="checks a machine with less memory than the model")
def test_a_model_larger_than_this_machines_memory_is_refused_before_loading(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the check comes first: nothing is downloaded
    too_large = r"needs about 1\d\d GiB of memory on cpu and \d+ GiB are free; pass --memory resident to try anyway"
    with pytest.raises(SetupError, match=too_large):
        load_pipeline(get_preset("paper").with_loras(()), LoadOptions(device="cpu"))  # LoRAs are checked before
    with pytest.raises(SetupError, match=too_large):  # ahead of a prompt stage too, before the missing download
        check_placement(get_preset("paper").with_loras(()), LoadOptions(device="cpu"))


def test_a_retry_loads_the_tier_it_was_given_though_a_fresh_plan_would_refuse(tiny_dirs, monkeypatch):
    # After running out of memory the free memory has shrunk: a fresh --memory auto plan refuses (before anything
    # loads, for every command), while the retry takes its leaner tier with a warning, as retries always have.
    preset = custom_preset(tiny_dirs["a14b"])
    failed = load_pipeline(preset, CPU).memory_plan
    monkeypatch.setattr(loading, "available_host_gb", lambda: 0.001)
    for refused in (lambda: check_placement(preset, CPU), lambda: load_pipeline(preset, CPU)):
        with pytest.raises(SetupError, match="of memory on cpu and 0 GiB are free; pass --memory resident"):
            refused()
    assert load_pipeline(preset, CPU, retry=(failed, "resident")).memory_plan.mode == "retry"


def test_the_placement_is_recorded_with_the_edit(tiny_dirs):
    editor = Editor(custom_preset(tiny_dirs["a14b"]), LoadOptions(device="cpu", vae_tiling=True))
    editor.pipe.set_progress_bar_config(disable=True)
    settings = EditSettings(num_frames=5, num_inference_steps=2, height=64, width=96)
    edit = editor.edit(PIL.Image.new("RGB", (96, 64)), "x", settings, seed=0)
    memory = edit.record["memory_plan"]
    assert (memory["tier"], memory["mode"], memory["offload"], memory["vae_tiling"]) == ("resident", "auto", "none",
                                                                                        True)  # fmt: skip
    assert memory["predicted_gpu_gb"] is None and 0 < memory["predicted_host_gb"] < 10
    assert edit.record["placement"]["offload"] == "none" and edit.record["placement"]["vae_tiling"] is True


def _out_of_memory(pipe, step, timestep, tensors):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("memory", ["auto", "resident"])
def test_running_out_of_memory_in_an_edit_is_one_line_and_the_editor_still_edits(tiny_dirs, memory):
    editor = Editor(custom_preset(tiny_dirs["a14b"]), LoadOptions(device="cpu", memory=memory))
    editor.pipe.set_progress_bar_config(disable=True)
    image = PIL.Image.new("RGB", (96, 64))
    settings = EditSettings(num_frames=5, num_inference_steps=2, refine=False, height=64, width=96)
    # One memory holds everything on the CPU: there is no leaner placement to retry with.
    numbers = r"\(predicted 3\.\d GiB, \d+\.\d GiB free\)"
    with pytest.raises(SetupError, match=rf"^ran out of memory with everything on cpu {numbers}; try fewer --frames "
                       "or a smaller --height and --width$"):  # fmt: skip
        editor.edit(image, "x", settings, seed=0, callback=_out_of_memory)
    assert editor.edit(image, "x", settings, seed=0).result.image.size == (96, 64)
