"""Weights users already have: a Wan2.2-I2V-A14B folder run with the paper's recipe and its LoRAs from files or the
download cache, and experts as single files (Wan's own names, bfloat16/float16, ComfyUI's scaled float8) or GGUF."""

import dataclasses
import json
import pickle
import shutil

import gguf
import huggingface_hub
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from diffusers.quantizers.gguf.utils import GGUFLinear, dequantize_gguf_tensor
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import save_file

from ifedit import IFEditPipeline
from ifedit.cli import main
from ifedit.errors import InvalidInputError, SetupError
from ifedit.loading import LoadOptions, check_placement, choose_placement, expert_files, load_pipeline, model_size
from ifedit.memory import Clip, plan_memory
from ifedit.presets import LIGHTNING_FOLDER, LIGHTNING_SOURCE, LoraWeights, get_preset, resolve_model
from ifedit.tiny import tiny_components, tiny_transformer

CPU = LoadOptions(device="cpu")
SMALL = ["--steps", "2", "--frames", "5", "--height", "64", "--width", "96", "--no-refine", "--seed", "3", "-q"]
Q8_0, Q4_K = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_K

# diffusers' names of Wan's weights, written out independently of diffusers' own conversion table.
WAN_NAMES = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("attn1", "self_attn"),
    ("attn2", "cross_attn"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "o"),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    ("norm2", "norm3"),  # the cross-attention norm: norm3 in Wan's blocks, norm2 in diffusers'
    ("proj_out", "head.head"),
]


def wan_name(name: str) -> str:
    """A diffusers name of a WanTransformer3DModel weight as Wan's own checkpoints (and ComfyUI's) spell it."""
    if name == "scale_shift_table":
        return "head.modulation"
    name = "." + name.replace("scale_shift_table", "modulation") + "."
    for ours, theirs in WAN_NAMES:
        name = name.replace(f".{ours}.", f".{theirs}.")
    return name.strip(".")


def _state(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _weights(model) -> dict[str, torch.Tensor]:
    """A loaded expert's weights as plain tensors, GGUF ones dequantised as diffusers computes with them."""
    return {name: dequantize_gguf_tensor(tensor).float() for name, tensor in model.state_dict().items()}


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path, monkeypatch):
    """No test sees LoRAs the machine's own download cache may hold."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    """Two LoRA files for the tiny experts, named as the Lightning ones are."""
    folder = tmp_path_factory.mktemp("lightning")
    for seed, name in ((5, "high_noise_model.safetensors"), (6, "low_noise_model.safetensors")):
        transformer = tiny_transformer("a14b", seed=seed)
        transformer.add_adapter(
            LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k"], init_lora_weights=False)
        )
        IFEditPipeline.save_lora_weights(
            folder, transformer_lora_layers=get_peft_model_state_dict(transformer), weight_name=name
        )
    return folder


def _query(pipe, expert: str) -> torch.Tensor:
    return getattr(pipe, expert).blocks[0].attn1.to_q.weight.detach().clone()


def _edit(source, output, model, *extra) -> int:
    return main(["edit", str(source), "the square slides right", "-o", str(output), "--model", model, *SMALL, *extra])


@pytest.fixture
def source(tmp_path, source_image):
    path = tmp_path / "source.png"
    source_image.save(path)
    return path


# The paper's recipe on a local folder of Wan2.2-I2V-A14B's layout.


def test_a_folder_laid_out_as_wan22_i2v_a14b_gets_the_papers_recipe(tiny_dirs):
    # The layout, not the size: the tiny folder runs as the published A14B does (test_loading pins the numbers).
    preset = resolve_model(tiny_dirs["a14b"])
    local = {"name": "paper (local folder)", "model_id": tiny_dirs["a14b"], "gpu_memory_gb": 0.0, "notes": ""}
    assert preset == dataclasses.replace(get_preset("paper"), description=preset.description, **local)
    assert (preset.scheduler, preset.flow_shift, preset.lora_distilled, len(preset.loras)) == ("euler", 5.0, True, 2)


def _relaid(tmp_path, tiny_dirs, file: str, **changes) -> str:
    folder = tmp_path / "model"
    shutil.copytree(tiny_dirs["a14b"], folder)
    config = json.loads((folder / file).read_text())
    config.update(changes)
    (folder / file).write_text(json.dumps(config))
    return str(folder)


@pytest.mark.parametrize(
    ("file", "changes"),
    [
        ("transformer/config.json", {"in_channels": 16}),  # text-to-video: no image condition
        ("model_index.json", {"transformer_2": [None, None], "boundary_ratio": None}),  # one expert
        ("model_index.json", {"expand_timesteps": True}),  # TI2V's per-token timesteps
        ("model_index.json", {"image_encoder": ["transformers", "CLIPVisionModel"]}),  # Wan2.1's CLIP
    ],
)
def test_folders_of_other_layouts_keep_their_own_scheduler_and_no_lora(tmp_path, tiny_dirs, file, changes):
    preset = resolve_model(_relaid(tmp_path, tiny_dirs, file, **changes))
    assert (preset.name, preset.scheduler, preset.loras, preset.lora_distilled) == ("custom", None, (), False)


def test_the_recipe_stops_before_loading_when_its_loras_are_missing(tmp_path, tiny_dirs, source, capsys):
    folder = tmp_path / "a14b-without-weights"  # loading it would fail: the LoRA check must come first
    shutil.copytree(tiny_dirs["a14b"], folder)
    for weights in folder.rglob("*.safetensors"):
        weights.write_bytes(b"not weights")
    output = tmp_path / "o.png"
    assert _edit(source, output, str(folder)) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not weights" not in err and "could not load" not in err
    files = f"{LIGHTNING_FOLDER}/high_noise_model.safetensors and {LIGHTNING_FOLDER}/low_noise_model.safetensors"
    assert err.startswith(f"ifedit: error: paper (local folder) needs the LoRAs {files} of {LIGHTNING_SOURCE}, ")
    assert "--lora-high FILE --lora-low FILE" in err and f"`hf download {LIGHTNING_SOURCE} {LIGHTNING_FOLDER}/" in err
    assert err.endswith("or pass --no-lora (its few steps without the distillation LoRAs give little but noise)")
    assert not output.exists()


def test_no_lora_runs_the_recipe_with_a_warning_and_the_record_says_so(tmp_path, tiny_dirs, source, capsys):
    output = tmp_path / "o.png"
    command = ["edit", str(source), "x", "-o", str(output), "--model", tiny_dirs["a14b"], "--no-lora", "-q"]
    assert main([*command, "--frames", "5", "--height", "64", "--width", "96", "--no-refine"]) == 0
    record = json.loads(output.with_suffix(".json").read_text())
    settings, model = record["settings"], record["model"]
    recipe = [settings[name] for name in ("num_inference_steps", "guidance_scale", "sigma_schedule", "tld_stride")]
    assert recipe == [8, 1.0, "uniform", 3]
    assert (model["preset"], model["model_id"], model["loras"]) == ("paper (local folder)", tiny_dirs["a14b"], [])
    assert (model["scheduler_class"], model["scheduler_shift"]) == ("FlowMatchEulerDiscreteScheduler", 5.0)
    assert model["without_recipe_loras"] is True and model["expert_files"] == {}
    assert "without its LoRAs (--no-lora)" in capsys.readouterr().err


def test_lora_files_on_the_command_line_are_fused_and_change_the_edit(tmp_path, tiny_dirs, source, lora_files):
    plain, with_loras = tmp_path / "plain.png", tmp_path / "loras.png"
    assert _edit(source, plain, tiny_dirs["a14b"], "--no-lora") == 0
    given = ["--lora-source", str(lora_files), "--lora-high", "high_noise_model.safetensors", "--lora-low",
             "low_noise_model.safetensors"]  # fmt: skip
    assert _edit(source, with_loras, tiny_dirs["a14b"], *given) == 0
    model = json.loads(with_loras.with_suffix(".json").read_text())["model"]
    assert [(lora["source"], lora["weight_name"], lora["target"]) for lora in model["loras"]] == [
        (str(lora_files), "high_noise_model.safetensors", "transformer"),
        (str(lora_files), "low_noise_model.safetensors", "transformer_2"),
    ]
    assert model["without_recipe_loras"] is False
    assert not np.array_equal(np.asarray(PIL.Image.open(plain)), np.asarray(PIL.Image.open(with_loras)))


def test_lora_paths_given_without_a_source_folder_are_those_files(tiny_dirs, lora_files):
    # --lora-high/--lora-low with a path and no --lora-source: the recipe's Hub source stays beside the path.
    recipe = resolve_model(tiny_dirs["a14b"])
    given = tuple(dataclasses.replace(lora, weight_name=str(lora_files / lora.weight_name)) for lora in recipe.loras)
    pipe = load_pipeline(recipe.with_loras(given), CPU)
    base = load_pipeline(recipe.with_loras(()), CPU)
    for expert in ("transformer", "transformer_2"):
        assert not torch.equal(_query(pipe, expert), _query(base, expert))


def test_pickled_weights_are_never_loaded(tmp_path, tiny_dirs, source, capsys):
    # A pickle runs code as it loads; this one would leave a file behind if it ever were.
    planted = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(planted), "w"))

    pickled = tmp_path / "lora.bin"
    pickled.write_bytes(pickle.dumps(Payload()))
    no_recipe = ("--no-refine", "--frames", "5", "--steps", "2", "--prompt-enhancer", "template")
    code = _edit(source, tmp_path / "o.png", tiny_dirs["a14b"], "--lora-high", str(pickled), *no_recipe)
    assert code == 2
    assert "a LoRA is a .safetensors file" in capsys.readouterr().err

    folder = tmp_path / "pickled-expert"
    shutil.copytree(tiny_dirs["a14b"], folder)
    for weights in (folder / "transformer_2").glob("*.safetensors"):
        weights.unlink()
    (folder / "transformer_2" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(SetupError, match=r"could not load the pipeline in .*from .safetensors files only"):
        load_pipeline(resolve_model(str(folder)).with_loras(()), CPU)
    assert not planted.exists()


def _cache_lightning(cache, lora_files) -> None:
    """Put the LoRA files where `hf download lightx2v/Wan2.2-Lightning` leaves them."""
    repo = cache / ("models--" + LIGHTNING_SOURCE.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40) / LIGHTNING_FOLDER
    snapshot.mkdir(parents=True)
    for name in ("high_noise_model.safetensors", "low_noise_model.safetensors"):
        shutil.copy(lora_files / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)


def test_loras_in_the_download_cache_are_found_without_the_network(tmp_path, tiny_dirs, lora_files, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a lookup that tried the network would fail
    _cache_lightning(tmp_path / "hub", lora_files)
    pipe = load_pipeline(resolve_model(tiny_dirs["a14b"]), CPU)
    base = load_pipeline(resolve_model(tiny_dirs["a14b"]).with_loras(()), CPU)
    for expert in ("transformer", "transformer_2"):
        assert not torch.equal(_query(pipe, expert), _query(base, expert))
    assert not pipe.weights_record["without_recipe_loras"]
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == 5.0


# Experts as single files.


@pytest.fixture(scope="module")
def experts():
    """Two experts unlike the folder's own (other seeds), so a file that is not read leaves the folder's weights."""
    return {"transformer": tiny_transformer("a14b", seed=11), "transformer_2": tiny_transformer("a14b", seed=12)}


def _write(path, state: dict[str, torch.Tensor], names=wan_name) -> str:
    save_file({names(name): tensor.contiguous() for name, tensor in state.items()}, path)
    return str(path)


def _load_with(folder: str, transformer: str, transformer_2: str | None = None, **options):
    preset = resolve_model(folder).with_loras(())
    return load_pipeline(preset, LoadOptions(device="cpu", transformer=transformer, transformer_2=transformer_2,
                                             **options))  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_wan_native_single_files_load_to_the_same_weights_in_the_right_expert(tmp_path, tiny_dirs, experts, dtype):
    files = {name: _write(tmp_path / f"{name}.safetensors", {k: v.to(dtype) for k, v in _state(model).items()})
             for name, model in experts.items()}  # fmt: skip
    pipe = _load_with(tiny_dirs["a14b"], files["transformer"], files["transformer_2"])
    for name, model in experts.items():
        loaded = getattr(pipe, name).state_dict()
        for key, original in _state(model).items():
            assert torch.equal(loaded[key], original.to(dtype).float()), (name, key)
    assert pipe.weights_record["expert_files"] == {
        name: {"file": files[name], "storage": str(dtype).removeprefix("torch.")} for name in experts
    }


def test_comfyui_prefixed_and_diffusers_named_files_load_alike(tmp_path, tiny_dirs, experts):
    state = _state(experts["transformer"])
    prefixed = _write(tmp_path / "comfy.safetensors", state, lambda name: "model.diffusion_model." + wan_name(name))
    diffusers_named = _write(tmp_path / "diffusers.safetensors", state, lambda name: name)
    for file in (prefixed, diffusers_named):
        loaded = _load_with(tiny_dirs["a14b"], file).transformer.state_dict()
        assert all(torch.equal(loaded[key], value) for key, value in state.items())


def _float8_scaled(state: dict[str, torch.Tensor], layout: str) -> tuple[dict[str, torch.Tensor], dict]:
    """ComfyUI's scaled float8 file of `state` (its legacy or its newer layout) and the weights it stands for."""
    file, expected = {}, {}
    if layout == "scale_weight":
        file["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    for name, tensor in state.items():
        native = wan_name(name)
        if tensor.dim() != 2:
            file[native] = tensor.to(torch.bfloat16)
            expected[name] = tensor.to(torch.bfloat16).float()
            continue
        scale = (tensor.abs().max() / 448).reshape(1)
        weight = (tensor / scale).to(torch.float8_e4m3fn)
        stem = native.removesuffix(".weight")
        file[native] = weight
        if layout == "scale_weight":
            file[stem + ".scale_weight"], file[stem + ".scale_input"] = scale, torch.ones(1)
        else:
            file[stem + ".weight_scale"] = scale.reshape(())
            file[stem + ".comfy_quant"] = torch.tensor(list(b'{"format": "float8_e4m3fn"}'), dtype=torch.uint8)
        expected[name] = weight.float() * scale
    return file, expected


@pytest.mark.parametrize("layout", ["scale_weight", "weight_scale"])
def test_scaled_float8_files_load_to_their_dequantised_weights(tmp_path, tiny_dirs, experts, layout):
    file, expected = _float8_scaled(_state(experts["transformer_2"]), layout)
    save_file(file, tmp_path / "fp8.safetensors")
    pipe = _load_with(tiny_dirs["a14b"], _write(tmp_path / "high.safetensors", _state(experts["transformer"])),
                      str(tmp_path / "fp8.safetensors"))  # fmt: skip
    loaded = pipe.transformer_2.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in expected.items())
    assert not torch.equal(
        loaded["blocks.0.attn1.to_q.weight"], _state(experts["transformer_2"])["blocks.0.attn1.to_q.weight"]
    )
    assert pipe.weights_record["expert_files"]["transformer_2"]["storage"] == "float8_e4m3fn, scaled"
    pipe.set_progress_bar_config(disable=True)
    result = pipe(PIL.Image.new("RGB", (96, 64)), "x", height=64, width=96, num_frames=5, num_inference_steps=2)
    assert np.isfinite(np.asarray(result.image, dtype=float)).all()


def test_expert_files_that_do_not_fit_the_model_are_one_line_errors(tmp_path, tiny_dirs, experts):
    state = _state(experts["transformer"])
    wider = tiny_transformer("ti2v")  # 48 channels in, where the A14B's expert takes 36
    _write(tmp_path / "ti2v.safetensors", _state(wider))
    _write(tmp_path / "short.safetensors", {k: v for k, v in state.items() if not k.startswith("blocks.1.")})
    _write(tmp_path / "extra.safetensors", {**state, "blocks.0.self_attn.extra.weight": torch.zeros(2)})
    (tmp_path / "notes.txt").write_text("x")
    cases = [
        (
            "ti2v.safetensors",
            SetupError,
            r"ti2v.safetensors does not hold an expert of this model: patch_embedding"
            r"\.weight is \[24, 48, 1, 2, 2\] in the file, \[24, 36, 1, 2, 2\] in the",
        ),
        ("short.safetensors", SetupError, r"it lacks blocks\.1\.scale_shift_table and 26 more$"),
        ("extra.safetensors", SetupError, r"it has blocks\.0\.attn1\.extra\.weight, which the model has not$"),
        ("notes.txt", InvalidInputError, r"^--transformer .*notes.txt: an expert checkpoint is a \.safetensors or"),
        ("missing.gguf", InvalidInputError, r"^--transformer .*missing.gguf: no such file$"),
        ("loop.safetensors", InvalidInputError, r"^--transformer .*loop.safetensors: a link to nothing"),
        ("folder.safetensors", InvalidInputError, r"^--transformer .*folder.safetensors: not a regular file$"),
    ]
    (tmp_path / "loop.safetensors").symlink_to("loop.safetensors")
    (tmp_path / "folder.safetensors").mkdir()
    for name, error, message in cases:
        with pytest.raises(error, match=message):
            check_placement(resolve_model(tiny_dirs["a14b"]).with_loras(()),
                            LoadOptions(device="cpu", transformer=str(tmp_path / name)))  # fmt: skip
    one_expert = resolve_model(tiny_dirs["ti2v"])
    with pytest.raises(InvalidInputError, match=r"--transformer-2 .*: model .*ti2v has no transformer_2"):
        check_placement(one_expert, LoadOptions(device="cpu", transformer_2=str(tmp_path / "extra.safetensors")))
    with pytest.raises(InvalidInputError, match="debug-tiny is built in memory"):
        check_placement(
            get_preset("debug-tiny"), LoadOptions(device="cpu", transformer=str(tmp_path / "extra.safetensors"))
        )


def _safetensors_with_header(header: bytes, length: int | None = None) -> bytes:
    return (len(header) if length is None else length).to_bytes(8, "little") + header


def test_damaged_expert_files_are_one_line_errors(tmp_path, tiny_dirs):
    tensor = '{"w": {"dtype": "F32", "shape": %s, "data_offsets": %s}}'
    gguf_counts = b"GGUF" + (3).to_bytes(4, "little") + (2**62).to_bytes(8, "little") * 2  # v3, 2^62 tensors
    damaged = {
        "empty.safetensors": b"",
        "huge_header.safetensors": _safetensors_with_header(b"{}", length=2**62),
        "nested.safetensors": _safetensors_with_header(b"[" * 100_000 + b"]" * 100_000),
        "huge_shape.safetensors": _safetensors_with_header(
            (tensor % ("[1099511627776, 1099511627776]", "[0, 4]")).encode()
        ),
        "far_offset.safetensors": _safetensors_with_header(
            (tensor % ("[1]", "[1152921504606846976, 1152921504606846980]")).encode()
        ),
        "counts.gguf": gguf_counts,
        "truncated.gguf": gguf_counts[:10],
    }
    preset = resolve_model(tiny_dirs["a14b"]).with_loras(())
    for name, content in damaged.items():
        (tmp_path / name).write_bytes(content)
        kind = "GGUF" if name.endswith(".gguf") else "safetensors"
        with pytest.raises(SetupError, match=f"^cannot read .*{name} as a {kind} file: ") as caught:
            check_placement(preset, LoadOptions(device="cpu", transformer=str(tmp_path / name)))
        assert "\n" not in str(caught.value), name


def test_other_quantised_formats_are_refused_by_name(tmp_path, tiny_dirs, experts):
    file, _ = _float8_scaled(_state(experts["transformer"]), "weight_scale")
    file["blocks.0.self_attn.q.comfy_quant"] = torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)
    save_file(file, tmp_path / "fp4.safetensors")
    with pytest.raises(
        SetupError, match="fp4.safetensors stores weights as nvfp4; expert files can be float8 or GGUF"
    ):
        _load_with(tiny_dirs["a14b"], str(tmp_path / "fp4.safetensors"))


# GGUF experts.

WIDE = dict(num_attention_heads=2, attention_head_dim=128, ffn_dim=256)  # rows of 256: whole Q4_K blocks


@pytest.fixture(scope="module")
def wide_folder(tmp_path_factory):
    """A two-expert folder whose Linear layers take 256 inputs, as K-quants need (the A14B's take 5120 or 13824)."""
    components = tiny_components("a14b")
    for seed, name in ((0, "transformer"), (1, "transformer_2")):
        torch.manual_seed(seed)
        config = {**dict(components[name].config), **WIDE}
        components[name] = WanTransformer3DModel.from_config(config).eval()
    folder = tmp_path_factory.mktemp("wide") / "a14b"
    IFEditPipeline(**components).save_pretrained(folder)
    return str(folder)


def _q4_k_blocks(rows: int, columns: int, generator: np.random.Generator) -> np.ndarray:
    """Random Q4_K blocks: per 256 weights a float16 scale and minimum, 12 bytes of 6-bit sub-block scales and 128
    bytes of 4-bit values. gguf-py reads K-quants but cannot write them."""
    blocks = generator.integers(0, 256, size=(rows, columns // 256, 144), dtype=np.uint8)
    blocks[..., 0:2] = np.frombuffer(np.float16(2e-4).tobytes(), np.uint8)
    blocks[..., 2:4] = np.frombuffer(np.float16(1e-4).tobytes(), np.uint8)
    return blocks.reshape(rows, -1)


def _write_gguf(path, model, quant) -> dict[str, torch.Tensor]:
    """`model` as a GGUF file in Wan's names: Linear weights of 256-wide rows quantised (Q8_0 from the weights,
    Q4_K as random blocks), the rest in float32, the 5-D patch embedding as ComfyUI-GGUF stores it; returns the
    weights it stands for, dequantised by gguf-py."""
    writer = gguf.GGUFWriter(str(path), arch="wan")
    generator, expected = np.random.default_rng(0), {}
    linear = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    for name, tensor in _state(model).items():
        native, array = wan_name(name), tensor.numpy()
        if name in linear and tensor.shape[1] % 256 == 0:
            blocks = gguf.quants.quantize(array, Q8_0) if quant == Q8_0 else _q4_k_blocks(*tensor.shape, generator)
            writer.add_tensor(native, blocks, raw_dtype=quant)
            expected[name] = torch.from_numpy(gguf.quants.dequantize(blocks, quant))
        elif tensor.dim() == 5:
            writer.add_tensor(native, array.astype(np.float16).reshape(*tensor.shape[:2], -1))
            writer.add_array("comfy.gguf.orig_shape." + native, list(tensor.shape))
            expected[name] = tensor.half().float()
        else:
            writer.add_tensor(native, array)
            expected[name] = tensor
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


@pytest.mark.parametrize("quant", [Q8_0, Q4_K], ids=["Q8_0", "Q4_K"])
def test_gguf_experts_load_quantised_to_their_dequantised_weights(tmp_path, wide_folder, quant):
    base = load_pipeline(resolve_model(wide_folder).with_loras(()), CPU)
    expected = {
        name: _write_gguf(tmp_path / f"{name}.gguf", getattr(base, name), quant)
        for name in ("transformer", "transformer_2")
    }
    pipe = _load_with(wide_folder, str(tmp_path / "transformer.gguf"), str(tmp_path / "transformer_2.gguf"))
    for name in ("transformer", "transformer_2"):
        expert = getattr(pipe, name)
        assert (
            isinstance(expert.blocks[0].attn1.to_q, GGUFLinear)
            and expert.blocks[0].attn1.to_q.weight.quant_type == quant
        )
        loaded = _weights(expert)
        for key, value in expected[name].items():
            # diffusers dequantises in float16: within its rounding of the largest weight
            torch.testing.assert_close(loaded[key], value.float(), rtol=0, atol=float(value.abs().max()) * 2**-9)
    assert pipe.weights_record["expert_files"]["transformer"]["storage"] == f"GGUF {quant.name}"
    # The quantised experts compute as plain ones holding the same dequantised weights would.
    plain = {}
    for name in ("transformer", "transformer_2"):
        plain[name] = _write(tmp_path / f"{name}.safetensors", _weights(getattr(pipe, name)), lambda key: key)
    reference = _load_with(wide_folder, plain["transformer"], plain["transformer_2"])
    kwargs = dict(height=64, width=96, num_frames=5, num_inference_steps=2, output_type="np", refine=False)
    ours = pipe(
        PIL.Image.new("RGB", (96, 64), (90, 20, 200)), "x", generator=torch.Generator().manual_seed(0), **kwargs
    )
    theirs = reference(
        PIL.Image.new("RGB", (96, 64), (90, 20, 200)), "x", generator=torch.Generator().manual_seed(0), **kwargs
    )
    np.testing.assert_allclose(ours.image, theirs.image, atol=1e-4)


def test_a_gguf_expert_takes_a_lora_beside_its_blocks(tmp_path, wide_folder):
    base = load_pipeline(resolve_model(wide_folder).with_loras(()), CPU)
    for name in ("transformer", "transformer_2"):
        _write_gguf(tmp_path / f"{name}.gguf", getattr(base, name), Q8_0)
    expert = WanTransformer3DModel.from_config(base.transformer.config)
    expert.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"], init_lora_weights=False))
    IFEditPipeline.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(expert),
                                     weight_name="high.safetensors")  # fmt: skip
    lora = LoraWeights(str(tmp_path), "high.safetensors", "transformer", scale=0.5)
    preset = resolve_model(wide_folder).with_loras((lora,))
    options = LoadOptions(device="cpu", transformer=str(tmp_path / "transformer.gguf"),
                          transformer_2=str(tmp_path / "transformer_2.gguf"))  # fmt: skip
    pipe = load_pipeline(preset, options)
    plain = load_pipeline(resolve_model(wide_folder).with_loras(()), options)
    assert isinstance(pipe.transformer.blocks[0].attn1.to_q.base_layer, GGUFLinear)  # unfused, the blocks kept
    x = torch.randn(1, 3, 256)
    delta = pipe.transformer.blocks[0].attn1.to_q(x) - plain.transformer.blocks[0].attn1.to_q(x)
    layer = pipe.transformer.blocks[0].attn1.to_q
    adapter = next(iter(layer.lora_A))
    expected = 0.5 * layer.lora_B[adapter](layer.lora_A[adapter](x))
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-6)


def test_gguf_experts_make_the_gguf_tier_real_sized_from_their_files(tmp_path, wide_folder):
    base = load_pipeline(resolve_model(wide_folder).with_loras(()), CPU)
    for name in ("transformer", "transformer_2"):
        _write_gguf(tmp_path / f"{name}.gguf", getattr(base, name), Q4_K)
    preset = resolve_model(wide_folder).with_loras(())
    options = LoadOptions(device="cpu", transformer=str(tmp_path / "transformer.gguf"),
                          transformer_2=str(tmp_path / "transformer_2.gguf"))  # fmt: skip
    size = model_size(preset, expert_files(preset, options))
    reader = gguf.GGUFReader(tmp_path / "transformer.gguf")
    assert size.experts[0].gguf_bytes == sum(int(tensor.n_bytes) for tensor in reader.tensors)
    assert size.experts[0].params == sum(v.numel() for v in base.transformer.state_dict().values())
    plan = plan_memory(size, Clip(33, 480, 832), gpu_free_gb=80)
    assert plan.chosen == "gguf" and plan.gguf_experts
    assert "the experts are GGUF files, which only the gguf tier places" in plan.tier("resident").note
    placement = choose_placement(LoadOptions(), size, Clip(33, 480, 832), "cuda", 2, 80, None)
    assert (placement.tier, placement.offload, placement.storage_dtype) == ("gguf", "model", None)
    given = dict(device="cpu", transformer=options.transformer, transformer_2=options.transformer_2)
    with pytest.raises(InvalidInputError, match="^--memory resident keeps the experts in --dtype; GGUF experts take"):
        check_placement(preset, LoadOptions(memory="resident", **given))
    with pytest.raises(InvalidInputError, match="^--storage-dtype stores experts in 8 bits; GGUF experts are quan"):
        check_placement(preset, LoadOptions(storage_dtype="float8_e4m3fn", **given))


def test_one_gguf_expert_of_two_is_refused(tmp_path, wide_folder):
    base = load_pipeline(resolve_model(wide_folder).with_loras(()), CPU)
    _write_gguf(tmp_path / "high.gguf", base.transformer, Q8_0)
    with pytest.raises(InvalidInputError, match="this model has 2 experts and GGUF files were given for 1"):
        check_placement(
            resolve_model(wide_folder).with_loras(()),
            LoadOptions(device="cpu", transformer=str(tmp_path / "high.gguf")),
        )
