"""Build a ready IFEditPipeline from a preset name, a local directory or a Hub id: dtype, device, offload, LoRA."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from .errors import InvalidInputError, SetupError
from .pipeline import IFEditPipeline
from .presets import LoraWeights, Preset
from .tiny import tiny_components

logger = logging.getLogger("ifedit")

Offload = Literal["none", "model", "sequential", "group"]
OFFLOAD_CHOICES: tuple[str, ...] = ("none", "model", "sequential", "group")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Wan's VAE and CLIP image encoder lose detail in half precision; diffusers' examples keep them in float32.
FLOAT32_COMPONENTS = ("vae", "image_encoder")
# Weights kept in 8 bits between uses and cast up layer by layer to the compute dtype (half the experts' memory).
STORAGE_DTYPES = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
EXPERTS = ("transformer", "transformer_2")


@dataclass(frozen=True)
class LoadOptions:
    """How to place a model: `auto` picks CUDA, then MPS, then the CPU, and bfloat16 except on the CPU."""

    device: str = "auto"
    dtype: str = "auto"
    offload: Offload = "none"
    vae_tiling: bool = False
    local_files_only: bool = False
    # Speed and memory options for the experts; none changes the recipe, some change the numbers slightly.
    attention_backend: str | None = None  # diffusers' attention dispatcher: "native", "flash", "sage", ...
    compile: bool = False  # torch.compile the repeated transformer blocks (regional compilation)
    first_block_cache: float | None = None  # skip a step's remaining blocks when the first block's change is below
    storage_dtype: str | None = None  # one of STORAGE_DTYPES: layerwise casting


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InvalidInputError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SetupError(f"device {device} was asked for but PyTorch sees no CUDA GPU")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise SetupError(f"device {device} was asked for but PyTorch sees no Apple GPU (MPS)")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise InvalidInputError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_placement(preset: Preset, options: LoadOptions) -> tuple[torch.device, torch.dtype]:
    """The device and dtype `options` ask for, refused up front when the preset cannot run there."""
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    if preset.gpu_memory_gb and device.type == "cpu" and options.device == "auto":
        raise SetupError(
            f"model {preset.name!r} needs a CUDA GPU (about {preset.gpu_memory_gb:.0f} GB, less with --offload "
            "model) and none was found; try --model debug-tiny to check the install on a CPU, or pass "
            "--device cpu to run it on the CPU anyway (hours per edit)"
        )
    if preset.model_id and Path(preset.model_id).is_absolute() and not Path(preset.model_id).is_dir():
        raise SetupError(
            f"the {preset.name} weights are not installed at {preset.model_id}; train them with "
            f"`ifedit toyworld train --out DIR` and pass --model DIR"
        )
    if options.offload not in OFFLOAD_CHOICES:
        raise InvalidInputError(f"unknown offload {options.offload!r}; use {', '.join(OFFLOAD_CHOICES)}")
    if options.offload != "none" and device.type == "cpu":
        raise InvalidInputError(f"--offload {options.offload} moves weights to an accelerator; it needs a GPU device")
    if options.storage_dtype is not None and options.storage_dtype not in STORAGE_DTYPES:
        raise InvalidInputError(f"unknown storage dtype {options.storage_dtype!r}; use {', '.join(STORAGE_DTYPES)}")
    if options.first_block_cache is not None and not options.first_block_cache > 0:
        raise InvalidInputError(f"first-block cache threshold must be > 0, got {options.first_block_cache}")
    if options.attention_backend is not None and options.attention_backend not in attention_backends():
        raise InvalidInputError(
            f"unknown attention backend {options.attention_backend!r}; use one of {', '.join(attention_backends())}"
        )
    return device, dtype


def attention_backends() -> tuple[str, ...]:
    """The names diffusers' attention dispatcher accepts (whether each one's kernels are installed is checked when
    it is set)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return tuple(backend.value for backend in AttentionBackendName)


def load_pipeline(preset: Preset, options: LoadOptions | None = None) -> IFEditPipeline:
    """Load (or build) the preset's model, apply its scheduler and LoRAs, and place it as `options` ask."""
    options = options or LoadOptions()
    device, dtype = check_placement(preset, options)
    logger.info("loading %s (%s) on %s", preset.name, preset.model_id or "built in memory", device)
    if preset.model_id is None:
        pipe = IFEditPipeline(**tiny_components("a14b"))

    else:
        pipe = _from_pretrained(preset.model_id, dtype, options.local_files_only)
    _set_scheduler(pipe, preset)
    for lora in preset.loras:
        _load_lora(pipe, lora, options.local_files_only)
    if options.vae_tiling:
        pipe.vae.enable_tiling()
    experts = [getattr(pipe, name) for name in EXPERTS if getattr(pipe, name) is not None]
    for expert in experts:  # before placement: group offloading moves the 8-bit weights, not the full ones
        store_expert(expert, options, dtype)
    _place(pipe, device, options.offload)
    for expert in experts:
        speed_up_expert(expert, options)
    return pipe


def store_expert(expert, options: LoadOptions, compute_dtype: torch.dtype) -> None:
    """Keep one expert's weights in `options.storage_dtype`, cast to `compute_dtype` layer by layer, if asked."""
    if options.storage_dtype:
        expert.enable_layerwise_casting(
            storage_dtype=STORAGE_DTYPES[options.storage_dtype], compute_dtype=compute_dtype
        )


def speed_up_expert(expert, options: LoadOptions) -> None:
    """Attention backend, first-block cache and compilation of one expert, as `options` ask."""
    if options.attention_backend:
        try:
            expert.set_attention_backend(options.attention_backend)
        except (ImportError, RuntimeError, ValueError) as error:
            raise SetupError(f"attention backend {options.attention_backend!r}: {_first_line(error)}") from None
    if options.first_block_cache:
        from diffusers import FirstBlockCacheConfig

        expert.enable_cache(FirstBlockCacheConfig(threshold=options.first_block_cache))
    if options.compile:
        # Dropout changes the number of frames mid-edit: dynamic shapes avoid recompiling at every cut.
        expert.compile_repeated_blocks(dynamic=True)


def _from_pretrained(model_id: str, dtype: torch.dtype, local_files_only: bool) -> IFEditPipeline:
    dtypes = {"default": dtype, **dict.fromkeys(FLOAT32_COMPONENTS, torch.float32)}
    is_local = Path(model_id).expanduser().is_dir()
    try:
        return IFEditPipeline.from_pretrained(
            os.path.expanduser(model_id), dtype=dtypes, local_files_only=local_files_only
        )
    except (OSError, ValueError) as error:
        if is_local:
            raise SetupError(f"could not load the pipeline in {model_id}: {_first_line(error)}") from None
        raise SetupError(_download_advice(model_id, error)) from None


def _set_scheduler(pipe: IFEditPipeline, preset: Preset) -> None:
    """Swap in the preset's sampler with its flow shift; a model without a preset keeps what it ships."""
    if preset.scheduler == "euler":
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=preset.flow_shift)
    elif preset.scheduler == "unipc":
        pipe.scheduler = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=preset.flow_shift
        )


def _load_lora(pipe: IFEditPipeline, lora: LoraWeights, local_files_only: bool) -> None:
    """Load one LoRA into its expert and fuse it at its scale, so inference pays nothing for it."""
    if getattr(pipe, lora.target) is None:
        raise SetupError(f"LoRA {lora.weight_name} targets {lora.target}, which this model does not have")
    adapter = f"{lora.target}_{Path(lora.weight_name).stem}"
    try:
        pipe.load_lora_weights(
            lora.source,
            weight_name=lora.weight_name,
            subfolder=lora.subfolder,
            adapter_name=adapter,
            load_into_transformer_2=lora.target == "transformer_2",
            local_files_only=local_files_only,
        )
    except (OSError, ValueError) as error:
        if Path(lora.source).expanduser().exists():
            raise SetupError(f"could not load LoRA {lora.source}/{lora.weight_name}: {_first_line(error)}") from None
        raise SetupError(_download_advice(lora.source, error)) from None
    pipe.fuse_lora(components=[lora.target], lora_scale=lora.scale, adapter_names=[adapter])
    pipe.unload_lora_weights()


def _place(pipe: IFEditPipeline, device: torch.device, offload: Offload) -> None:
    if offload == "none":
        pipe.to(device)
    elif offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:  # "group": layers stream to the GPU on a side stream while the previous ones compute
        pipe.enable_group_offload(onload_device=device, offload_type="leaf_level", use_stream=True)


def _download_advice(source: str, error: Exception) -> str:
    return (
        f"could not get {source} from the Hugging Face Hub ({_first_line(error)}); the first run downloads the "
        f"weights, so connect to the internet, or run `hf download {source}` on a machine that is and pass "
        "the downloaded folder with --model"
    )


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
