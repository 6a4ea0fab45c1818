"""Build a ready IFEditPipeline from a preset name, a local directory or a Hub id: dtype, device, offload, LoRA."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanTransformer3DModel

from . import hub
from .checkpoints import (
    ExpertFile,
    ExpertLayout,
    cached_hub_file,
    check_expert_file,
    expert_layout,
    load_expert,
    local_loras,
    read_expert_header,
)
from .errors import InvalidInputError, SetupError
from .io import read_model_json
from .memory import (
    FLOAT8,
    GIB,
    LOADABLE_TIERS,
    MEMORY_CHOICES,
    TIER_SPECS,
    TIERS,
    VAE_ON_GPU,
    Clip,
    ModelSize,
    Plan,
    activations,
    clip_for,
    device_peak,
    folder_size,
    gpu_peak,
    host_peak,
    known_size,
    leaner_tier,
    plan_memory,
    size_from_parts,
    weights_of,
)
from .pipeline import IFEditPipeline
from .presets import LoraWeights, Preset, has_component
from .sizes import fit_size
from .speed import check_fp8_compute, check_vae_dtype, fp8_compute, resolve_attention_backend, set_vae
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
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")  # weights as pickles, which run code as they load
# Phrases of diffusers' and huggingface_hub's messages that speak of their own arguments or of a traceback the
# command line never shows: such a message gives way to its cause's.
LIBRARY_PHRASES = ("stacktrace above", "local_files_only")


@dataclass(frozen=True)
class LoadOptions:
    """How to place a model: `auto` picks CUDA, then MPS, then the CPU, and bfloat16 except on the CPU."""

    device: str = "auto"
    dtype: str = "auto"
    # "auto": the fastest placement predicted to fit (memory.py), or a tier of memory.TIERS. The three
    # options after it replace the plan's choice when given; None leaves it to the plan.
    memory: str = "auto"
    offload: Offload | None = None
    vae_tiling: bool | None = None
    local_files_only: bool = False
    # Speed and memory options for the experts; none changes the recipe, some change the numbers slightly.
    attention_backend: str | None = None  # diffusers' attention dispatcher: "native", "flash", "sage", ...
    compile: bool = False  # torch.compile the repeated transformer blocks (regional compilation)
    first_block_cache: float | None = None  # skip a step's remaining blocks when the first block's change is below
    storage_dtype: str | None = None  # one of STORAGE_DTYPES: layerwise casting
    fp8_compute: bool = False  # the experts' block linears in float8 (torchao; CUDA compute capability >= 8.9)
    vae_dtype: str = "float32"  # one of speed.VAE_DTYPES: the VAE's weights, encode and decode
    vae_channels_last: bool = False  # the VAE's convolution weights in channels-last order
    # Expert checkpoints as single files (checkpoints.py), replacing the model's own experts.
    transformer: str | None = None
    transformer_2: str | None = None
    # The clip the memory plan is sized for; None: the preset's frames and area, at the photo's aspect (width,
    # height) where it is known.
    plan_frames: int | None = None
    plan_height: int | None = None
    plan_width: int | None = None
    plan_image_size: tuple[int, int] | None = None


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


def check_placement(preset: Preset, options: LoadOptions, ahead: bool = True) -> tuple[torch.device, torch.dtype]:
    """The device and dtype `options` ask for, refused up front (before any prompt stage or loading) when the preset
    cannot run there: no GPU for a GPU model, options that contradict each other, expert or LoRA files missing or
    unfit; and, `ahead` of a caller's other work (a prompt stage), what loading finds in its own order: a model too
    large for this machine's free memory, then one the Hub cannot give (not for a model loaded elsewhere, nor by
    `load_pipeline`, which plans itself)."""
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    if preset.gpu_memory_gb and device.type == "cpu" and options.device == "auto":
        raise SetupError(
            f"model {preset.name!r} needs a CUDA GPU (about {preset.gpu_memory_gb:.0f} GB, less with --offload "
            "model) and none was found; try --model toyworld for real edits on a CPU (or --model debug-tiny to check "
            "the install), or pass --device cpu to run it on the CPU anyway (hours per edit)"
        )
    if preset.model_id and Path(preset.model_id).is_absolute() and not Path(preset.model_id).is_dir():
        raise SetupError(
            f"the {preset.name} weights are not installed at {preset.model_id}; train them with "
            f"`ifedit toyworld train --out DIR` and pass --model DIR"
        )
    if options.memory not in MEMORY_CHOICES:
        raise InvalidInputError(f"unknown memory plan {options.memory!r}; use {', '.join(MEMORY_CHOICES)}")
    if options.offload is not None and options.offload not in OFFLOAD_CHOICES:
        raise InvalidInputError(f"unknown offload {options.offload!r}; use {', '.join(OFFLOAD_CHOICES)}")
    if options.offload not in (None, "none") and device.type == "cpu":
        raise InvalidInputError(f"--offload {options.offload} (offload={options.offload!r}) moves weights to an "
                               "accelerator; it needs a GPU device")  # fmt: skip
    if options.memory not in ("auto", "resident") and device.type == "cpu":
        raise InvalidInputError(f"--memory {options.memory} (memory={options.memory!r}) moves weights to an "
                               "accelerator; it needs a GPU device")  # fmt: skip
    if options.storage_dtype is not None and options.storage_dtype not in STORAGE_DTYPES:
        raise InvalidInputError(f"unknown storage dtype {options.storage_dtype!r}; use {', '.join(STORAGE_DTYPES)}")
    if options.first_block_cache is not None and not options.first_block_cache > 0:
        raise InvalidInputError(f"first-block cache threshold must be > 0, got {options.first_block_cache}")
    if options.attention_backend is not None and options.attention_backend not in ("auto", *attention_backends()):
        raise InvalidInputError(f"unknown attention backend {options.attention_backend!r}; use auto or one of "
                                f"{', '.join(attention_backends())}")  # fmt: skip
    check_vae_dtype(options.vae_dtype)
    if options.fp8_compute and options.storage_dtype:
        raise InvalidInputError("--fp8-compute keeps the experts' weights in float8 already; drop --storage-dtype")
    if options.fp8_compute:
        check_fp8_compute(device)
    options = _cache_when_offline(preset, options)
    experts = expert_files(preset, options)
    _check_experts(options, experts)
    local_loras(preset, offline=_offline(preset, options))  # a missing LoRA stops here, before anything loads
    if not ahead:
        return device, dtype
    # Said now rather than after the prompt stage (a local VLM: minutes) has run for nothing: a model this machine
    # cannot hold (where its size is known without its files), then one missing from the download cache.
    size = model_size(preset, experts) if options.memory == "auto" else None
    if size is not None:
        plan_placement(preset, options, device, dtype, size)
    hub_id = preset.model_id if preset.model_id and not hub.is_folder(preset.model_id) else None
    if options.local_files_only and hub_id and not hub.is_downloaded(hub_id, "model_index.json"):
        raise SetupError(_download_advice(hub_id, FileNotFoundError("not downloaded"), True))
    return device, dtype


def check_photo_fits(preset: Preset, image_size: tuple[int, int], settings) -> None:
    """Refuse a photo too narrow for the model's area (`sizes.fit_size`) before any model, a prompt VLM's or the
    video model's, is loaded; the pipeline would refuse it only when called. Sides given are the user's choice."""
    if settings.height is not None or settings.width is not None:
        return
    size = model_size(preset)
    if size is not None:
        fit_size(image_size, None, None, settings.max_area, size.size_multiple)


def _cache_when_offline(preset: Preset, options: LoadOptions) -> LoadOptions:
    """The options with weights named by Hub id taken from the download cache alone when the Hub cannot be
    reached (`hub.cache_only`): a missing one then fails at once instead of after minutes of retries."""
    if options.local_files_only or not preset.model_id or not hub.cache_only(preset.model_id):
        return options
    return dataclasses.replace(options, local_files_only=True)


def _check_experts(options: LoadOptions, files: dict[str, tuple[ExpertFile, ExpertLayout]]) -> None:
    """GGUF experts are placed by the gguf memory tier alone: refuse the options that would store them otherwise."""
    gguf = any(file.is_gguf for file, _ in files.values())
    if options.memory == "gguf" and not gguf:
        raise InvalidInputError("--memory gguf places GGUF experts: pass them with --transformer/--transformer-2")
    if gguf and options.memory not in ("auto", "gguf"):
        raise InvalidInputError(f"--memory {options.memory} keeps the experts in --dtype; GGUF experts take "
                                "--memory gguf (or auto)")  # fmt: skip
    if gguf and options.storage_dtype:
        raise InvalidInputError("--storage-dtype stores experts in 8 bits; GGUF experts are quantised already")


def expert_files(preset: Preset, options: LoadOptions) -> dict[str, tuple[ExpertFile, ExpertLayout]]:
    """The expert files `options` name, read from their headers and checked against the experts of the preset's
    model they replace, before any weight loads."""
    pairs = zip(EXPERTS, (options.transformer, options.transformer_2), strict=True)
    given = {name: path for name, path in pairs if path}
    if not given:
        return {}
    flags = {name: "--" + name.replace("_", "-") for name in given}
    paths = {name: check_expert_file(path, flags[name]) for name, path in given.items()}
    if preset.model_id is None:
        raise InvalidInputError(f"{', '.join(flags.values())} replace experts of a model in a folder or on the Hub; "
                                f"{preset.name} is built in memory")  # fmt: skip
    index = _config(IFEditPipeline, preset.model_id, None, options.local_files_only)
    in_model = [name for name in EXPERTS if (index.get(name) or [None])[0]]
    files = {}
    for name, path in paths.items():
        if name not in in_model:
            raise InvalidInputError(f"{flags[name]} {path}: model {preset.model_id} has no {name}")
        layout = expert_layout(_config(WanTransformer3DModel, preset.model_id, name, options.local_files_only))
        files[name] = (read_expert_header(path, layout), layout)
    gguf = [name for name, (file, _) in files.items() if file.is_gguf]
    if gguf and len(gguf) < len(in_model):
        raise InvalidInputError(f"this model has {len(in_model)} experts and GGUF files were given for "
                                f"{len(gguf)}: the gguf memory tier places GGUF experts only, so pass both "
                                "--transformer and --transformer-2 as .gguf")  # fmt: skip
    return files


def _config(cls, model_id: str, subfolder: str | None, local_files_only: bool) -> dict[str, Any]:
    """A config of the model (its model_index.json, or a component's config.json) without loading weights."""
    try:
        return dict(cls.load_config(os.path.expanduser(model_id), subfolder=subfolder,
                                    local_files_only=local_files_only))  # fmt: skip
    except (OSError, ValueError) as error:
        if Path(model_id).expanduser().is_dir():
            where = f"{model_id}/{subfolder}" if subfolder else model_id
            raise SetupError(f"cannot read the config in {where}: {_reason(error)}") from None
        raise SetupError(_download_advice(model_id, error, local_files_only)) from None


def _offline(preset: Preset, options: LoadOptions) -> bool:
    """Whether LoRAs named by Hub id come from the download cache only: under --offline, and for a model in a
    local folder, whose user may well have no network."""
    return options.local_files_only or bool(preset.model_id and Path(preset.model_id).expanduser().is_dir())


def attention_backends() -> tuple[str, ...]:
    """The names diffusers' attention dispatcher accepts (whether each one's kernels are installed is checked when
    it is set)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return tuple(backend.value for backend in AttentionBackendName)


def load_pipeline(
    preset: Preset, options: LoadOptions | None = None, retry: tuple[MemoryPlan, str] | None = None
) -> IFEditPipeline:
    """Load (or build) the preset's model, apply its scheduler and LoRAs, and place it as `options` ask: by default
    the fastest memory plan predicted to fit (checked against the free host memory before loading), one tier leaner
    if it runs out of GPU memory all the same. `retry` is (the placement that ran out of memory, the tier to use
    instead). The placement is kept as `pipe.memory_plan`, and which weights and scheduler ran as
    `pipe.weights_record`."""
    options = options or LoadOptions()
    device, dtype = check_placement(preset, options, ahead=False)  # planned below, a retry's leaner tier too
    options = _cache_when_offline(preset, options)
    preset = local_loras(preset, offline=_offline(preset, options))
    experts = expert_files(preset, options)
    mode = None
    if retry is not None:
        _warn_retry(*retry)
        options, mode = dataclasses.replace(options, memory=retry[1]), "retry"
    size = model_size(preset, experts)
    placement = None if size is None else plan_placement(preset, options, device, dtype, size, mode)
    logger.info("loading %s (%s) on %s", preset.name, preset.model_id or "built in memory", device)
    if preset.model_id is None:
        pipe = IFEditPipeline(**tiny_components("a14b"))
    else:
        loaded = {name: _load_expert(preset, name, *experts[name], dtype, options) for name in experts}
        pipe = _from_pretrained(preset.model_id, dtype, options.local_files_only, loaded)
    _set_scheduler(pipe, preset)
    for lora in preset.loras:
        # GGUF blocks cannot take a LoRA's product: on a GGUF expert the LoRA runs beside the weights instead.
        quantised = lora.target in experts and experts[lora.target][0].is_gguf
        _load_lora(pipe, lora, options.local_files_only, fuse=not quantised)
    if preset.lora_distilled and not preset.loras:
        logger.warning("running the %s recipe without its LoRAs (--no-lora): its few steps at guidance 1 were "
                       "distilled into them and give little but noise without; raise --steps and --guidance",
                       preset.name)  # fmt: skip
    pipe.weights_record = weights_record(pipe, preset, experts)
    if placement is None:  # a model only sized once its files are here
        size = _with_expert_files(pipeline_size(pipe), experts)
        placement = plan_placement(preset, options, device, dtype, size, mode)
    try:
        apply_placement(pipe, placement, device, dtype, options)
    except torch.OutOfMemoryError:
        tier = retry_tier(placement)
    else:
        return _placed(pipe, placement, device, dtype, options)
    # Out of the handler, so the failed placement's memory is free again. Only "resident" allocates while placing,
    # so moving back to the CPU undoes it.
    pipe.to("cpu")
    free_accelerator_memory()
    _warn_retry(placement, tier)
    placement = plan_placement(preset, dataclasses.replace(options, memory=tier), device, dtype, size, "retry")
    try:
        apply_placement(pipe, placement, device, dtype, options)
    except torch.OutOfMemoryError:
        raise out_of_memory(placement) from None
    return _placed(pipe, placement, device, dtype, options)


def apply_placement(
    pipe: IFEditPipeline, placement: MemoryPlan, device: torch.device, dtype: torch.dtype, options: LoadOptions
) -> None:
    """VAE tiling, expert storage and offload as `placement` says, for a pipeline whose weights are on the CPU."""
    if placement.vae_tiling:
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()
    stored = dataclasses.replace(options, storage_dtype=placement.storage_dtype)
    for name in EXPERTS:  # before placement: group offloading moves the 8-bit weights, not the full ones
        if getattr(pipe, name) is not None:
            store_expert(getattr(pipe, name), stored, dtype)
    set_vae(pipe.vae, options.vae_dtype, options.vae_channels_last)
    _place(pipe, device, placement.offload)


def _placed(
    pipe: IFEditPipeline, placement: MemoryPlan, device: torch.device, dtype: torch.dtype, options: LoadOptions
) -> IFEditPipeline:
    """Speed options on a placed pipeline (`auto` attention resolved for `device` and the compute `dtype`), and
    the record of how it was placed."""
    backend = resolve_attention_backend(options.attention_backend, device, dtype)
    options = dataclasses.replace(options, attention_backend=backend)
    for name in EXPERTS:
        if getattr(pipe, name) is not None:
            if options.fp8_compute:  # before compilation, which then traces the float8 layers
                fp8_compute(getattr(pipe, name))
            speed_up_expert(getattr(pipe, name), options)
    pipe.memory_plan = dataclasses.replace(placement, attention_backend=backend, vae_dtype=options.vae_dtype,
                                           vae_channels_last=options.vae_channels_last,
                                           fp8_compute=options.fp8_compute)  # fmt: skip
    if placement.device == "cuda":
        logger.info("memory plan: %s", placement.describe())
    return pipe


@dataclass(frozen=True)
class MemoryPlan:
    """How a pipeline's weights were placed and why: the tier, what it came to, and the predicted peaks."""

    tier: str  # a memory.TIERS name; "resident" off CUDA
    mode: str  # "auto", "asked" (--memory TIER) or "retry" (one tier leaner after running out of memory)
    offload: str
    storage_dtype: str | None
    vae_tiling: bool
    device: str  # the device type
    clip: Clip | None
    gpu_gb: float | None  # predicted peaks in GiB (no GPU figure off CUDA)
    host_gb: float | None
    free_gpu_gb: float | None
    free_host_gb: float | None
    overridden: tuple[str, ...] = ()  # the options that replaced the tier's choices
    plan: Plan | None = None  # every tier's prediction, on CUDA
    # The speed options as they ran: the attention backend `auto` resolved to, the VAE's dtype and layout.
    attention_backend: str | None = None
    vae_dtype: str = "float32"
    vae_channels_last: bool = False
    fp8_compute: bool = False

    def placement(self) -> str:
        """What was done, e.g. "model offload, VAE tiling"."""
        what = TIER_SPECS[self.tier].description if self.device == "cuda" else f"everything on {self.device}"
        if self.vae_tiling:
            what += ", VAE tiling"
        if self.overridden:
            what += f" (changed by {', '.join(self.overridden)})"
        return what

    def describe(self) -> str:
        """The placement and its predicted peaks, as the log says it."""
        peaks = [f"{self.gpu_gb:.1f} GiB GPU"] if self.gpu_gb is not None else []
        peaks += [f"{self.host_gb:.1f} GiB host"] if self.host_gb is not None else []
        return self.placement() + (f", predicted peak {' / '.join(peaks)}" if peaks else "")

    def record(self) -> dict[str, Any]:
        """What an edit's JSON record keeps."""
        rounded = {
            key: None if value is None else round(value, 2)
            for key, value in (
                ("predicted_gpu_gb", self.gpu_gb),
                ("predicted_host_gb", self.host_gb),
                ("free_gpu_gb", self.free_gpu_gb),
                ("free_host_gb", self.free_host_gb),
            )
        }
        clip = None if self.clip is None else {"frames": self.clip.frames, "height": self.clip.height,
                                                "width": self.clip.width}  # fmt: skip
        return {
            "tier": self.tier,
            "mode": self.mode,
            "description": self.describe(),
            "offload": self.offload,
            "storage_dtype": self.storage_dtype,
            "vae_tiling": self.vae_tiling,
            "planned_clip": clip,
            **rounded,
            "overridden_by": list(self.overridden),
        }


def plan_placement(
    preset: Preset,
    options: LoadOptions,
    device: torch.device,
    dtype: torch.dtype,
    size: ModelSize,
    mode: str | None = None,
) -> MemoryPlan:
    """Read the free GPU (CUDA only) and host memory and choose the placement for `size`."""
    photo = {"image_size": options.plan_image_size} if options.plan_image_size else {}
    clip = clip_for(preset, size, options.plan_frames, options.plan_height, options.plan_width, **photo)
    free_gpu = torch.cuda.mem_get_info(device)[0] / GIB if device.type == "cuda" else None
    return choose_placement(options, size, clip, device.type, _bytes(dtype), free_gpu, available_host_gb(), mode)


def choose_placement(
    options: LoadOptions,
    size: ModelSize,
    clip: Clip,
    device_type: str,
    dtype_bytes: int,
    free_gpu_gb: float | None,
    free_host_gb: float | None,
    mode: str | None = None,
) -> MemoryPlan:
    """The placement `options` ask for, given the free memory: the plan's choice under --memory auto (a one-line
    error when nothing fits), the asked tier otherwise (a warning when it is predicted not to fit), and the
    --offload, --storage-dtype and --vae-tiling given on top."""
    mode = mode or ("auto" if options.memory == "auto" else "asked")
    if device_type != "cuda":  # one memory holds everything: only the host's room is checked
        host = device_peak(size, clip, dtype_bytes)
        if free_host_gb is not None and host > free_host_gb:
            message = (
                f"this model needs about {host:.0f} GiB of memory on {device_type} and {free_host_gb:.0f} GiB are free"
            )
            if mode == "auto":
                raise SetupError(f"{message}; pass --memory resident to try anyway")
            logger.warning("%s", message)
        offload = options.offload or "none"
        tiling = bool(options.vae_tiling)
        return MemoryPlan("resident", mode, offload, options.storage_dtype, tiling, device_type, clip, None, host,
                          None, free_host_gb)  # fmt: skip
    plan = plan_memory(size, clip, free_gpu_gb, free_host_gb, dtype_bytes=dtype_bytes)
    if options.memory == "auto":
        if plan.chosen is None:
            raise SetupError(_nothing_fits(plan))
        tier = plan.tier(plan.chosen)
    else:
        tier = plan.tier(options.memory)
        if not tier.fits:
            logger.warning("--memory %s is predicted not to fit: %s", tier.name, tier.note)
    spec = tier.spec
    storage = FLOAT8 if spec.experts == "float8" else None
    given = {"--offload": options.offload, "--storage-dtype": options.storage_dtype}
    given["--vae-tiling"] = options.vae_tiling
    overridden = tuple(flag for flag, value in given.items() if value is not None)
    offload = options.offload or spec.offload
    storage = options.storage_dtype if options.storage_dtype is not None else storage
    tiling = options.vae_tiling if options.vae_tiling is not None else tier.vae_tiling
    gpu, host = tier.gpu_gb, tier.host_gb
    if overridden:  # a combination of its own: predict it
        experts = spec.experts if spec.experts == "gguf" else "float8" if storage else "dtype"
        acts = activations(size, clip, dtype_bytes, VAE_ON_GPU)
        gpu = gpu_peak(size, acts, offload, experts, dtype_bytes, tiling) / GIB
        host = host_peak(size, offload, experts, dtype_bytes) / GIB
    return MemoryPlan(tier.name, mode, offload, storage, tiling, "cuda", clip, gpu, host, free_gpu_gb, free_host_gb,
                      overridden, plan)  # fmt: skip


def _nothing_fits(plan: Plan) -> str:
    placeable = [tier for tier in plan.tiers if (tier.name == "gguf") == plan.gguf_experts]
    leanest = min(placeable, key=lambda tier: (tier.gpu_gb, tier.host_gb))
    host = "" if plan.host_free_gb is None else f" and {plan.host_free_gb:.1f} GiB host"
    return (
        f"no memory plan fits: the leanest, {leanest.describe()}, needs {leanest.gpu_gb:.1f} GiB GPU and "
        f"{leanest.host_gb:.1f} GiB host memory, and {plan.gpu_free_gb:.1f} GiB GPU{host} are free (see `ifedit "
        f"plan`); pass --memory {leanest.name} to try anyway"
    )


def retry_tier(placement: MemoryPlan) -> str:
    """The tier to retry with after running out of GPU memory: the next leaner one that fits, under --memory auto
    with no option replacing its choices; otherwise the one-line error that names the option to try."""
    if placement.mode == "auto" and not placement.overridden and placement.plan is not None:
        tier = leaner_tier(placement.plan, placement.tier)
        if tier is not None:
            return tier
    raise out_of_memory(placement) from None


def out_of_memory(placement: MemoryPlan) -> SetupError:
    """The error for running out of GPU memory with `placement`, naming what to try next."""
    later = [tier for tier in LOADABLE_TIERS if TIERS.index(tier) > TIERS.index(placement.tier)]
    later = [] if placement.tier == "gguf" else later  # no other tier places GGUF experts
    on_gpu = placement.device == "cuda"  # else one memory holds everything
    predicted, free = placement.gpu_gb, placement.free_gpu_gb
    if not on_gpu:
        predicted, free = placement.host_gb, placement.free_host_gb
    numbers = [] if predicted is None else [f"predicted {predicted:.1f} GiB"]
    numbers += [] if free is None else [f"{free:.1f} GiB free"]
    said = f" ({', '.join(numbers)})" if numbers else ""
    smaller = "fewer --frames or a smaller --height and --width"
    if not on_gpu:
        return SetupError(f"ran out of memory with {placement.placement()}{said}; try {smaller}")
    advice = f"try --memory {later[0]}" if later else f"try {smaller}"
    if not placement.vae_tiling:
        advice += " or --vae-tiling"
    return SetupError(f"ran out of GPU memory with {placement.placement()}{said}; {advice}")


def _warn_retry(failed: MemoryPlan, tier: str) -> None:
    logger.warning("ran out of GPU memory with %s; trying %s", failed.describe(), TIER_SPECS[tier].description)


def free_accelerator_memory() -> None:
    """Return the memory of dropped tensors to the device, so a leaner placement can use it."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def model_size(preset: Preset, experts: dict[str, tuple[ExpertFile, ExpertLayout]] | None = None) -> ModelSize | None:
    """The preset's model size before loading its weights: built in, published, read from its folder or from the
    Hub's download cache, with `experts` (expert_files) sized from their files; None when only loading it will
    tell."""
    if preset.model_id is None:
        return pipeline_size(IFEditPipeline(**tiny_components("a14b")))
    try:
        size = known_size(preset.model_id)
        if size is None and not Path(preset.model_id).expanduser().is_dir():
            cached = cached_hub_file(preset.model_id, "model_index.json")
            size = None if cached is None else folder_size(cached.parent)
    except SetupError:
        return None  # loading it says what is wrong with its files
    return None if size is None else _with_expert_files(size, experts or {})


def _with_expert_files(size: ModelSize, experts: dict[str, tuple[ExpertFile, ExpertLayout]]) -> ModelSize:
    """`size` with the experts given as files sized from them (a GGUF expert by the bytes its file holds)."""
    weights = list(size.experts)
    for index, name in enumerate(EXPERTS[: len(weights)]):
        if name in experts:
            file = experts[name][0]
            weights[index] = dataclasses.replace(
                weights_of(file.counts()), gguf_bytes=file.stored_bytes() if file.is_gguf else 0
            )
    return dataclasses.replace(size, experts=tuple(weights))


def weights_record(pipe: IFEditPipeline, preset: Preset, experts: dict[str, tuple[ExpertFile, ExpertLayout]]):
    """What an edit's record keeps of the loaded weights beyond the preset: the scheduler that ran and its shift,
    the experts read from files, and whether a recipe made for LoRAs ran without them."""
    config = pipe.scheduler.config
    shift = config.get("flow_shift") if config.get("use_flow_sigmas") else config.get("shift")
    return {
        "scheduler_class": type(pipe.scheduler).__name__,
        "scheduler_shift": shift,
        "expert_files": {name: file.record() for name, (file, _) in experts.items()},
        "without_recipe_loras": preset.lora_distilled and not preset.loras,
    }


def pipeline_size(pipe: IFEditPipeline) -> ModelSize:
    """The size of a built or loaded pipeline, from its modules."""
    parts = {}
    for name in ("transformer", "transformer_2", "text_encoder", "vae", "image_encoder"):
        module = getattr(pipe, name, None)
        if module is not None:
            config = module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
            parts[name] = (config, {key: value.numel() for key, value in module.named_parameters()})
    return size_from_parts(parts, bool(pipe.config.expand_timesteps))


def available_host_gb() -> float | None:
    """Host memory this process can still take, in GiB: the kernel's MemAvailable, or less under a container's
    limit; None where neither can be read."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            return None
    try:  # cgroup v2: a container may hold far less than the machine has free
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            room = int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = room if available is None else min(available, room)
    except (OSError, ValueError):
        pass
    return None if available is None else available / GIB


def _bytes(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


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


def _from_pretrained(
    model_id: str, dtype: torch.dtype, local_files_only: bool, components: dict[str, Any]
) -> IFEditPipeline:
    """The pipeline in a folder or on the Hub; `components` already loaded are taken as they are (and not read or
    downloaded)."""
    dtypes = {"default": dtype, **dict.fromkeys(FLOAT32_COMPONENTS, torch.float32)}
    is_local = Path(model_id).expanduser().is_dir()
    if is_local:  # diffusers' words for an index of the wrong shape name neither the file nor the problem
        try:
            index = read_model_json(Path(model_id).expanduser() / "model_index.json", "a pipeline's index")
            modules, _ = IFEditPipeline._get_signature_keys(IFEditPipeline)
            for name in modules:
                has_component(index, name)  # checked for its ValueError: an entry that is not [library, class]
        except ValueError as error:  # InvalidInputError among them
            raise SetupError(f"could not load the pipeline in {model_id}: {error}") from None
    try:
        pipe = IFEditPipeline.from_pretrained(
            os.path.expanduser(model_id),
            dtype=dtypes,
            local_files_only=local_files_only,
            use_safetensors=True,  # never a pickle (.bin, .pt): loading one can run its code
            **components,
        )
        _check_complete(pipe, model_id)
        return pipe
    except (OSError, ValueError) as error:
        if is_local:
            pickled = any(path.suffix in PICKLE_SUFFIXES for path in Path(model_id).expanduser().rglob("*"))
            why = " (weights are read from .safetensors files only: a pickle can run code)" if pickled else ""
            raise SetupError(f"could not load the pipeline in {model_id}: {_reason(error)}{why}") from None
        raise SetupError(_download_advice(model_id, error, local_files_only)) from None
    except (KeyError, TypeError, AttributeError, RecursionError) as error:
        # What diffusers raises for a config of the wrong shape (an entry missing, a list where it reads an object),
        # in a folder or a damaged download alike.
        if isinstance(error, KeyError):
            reason = f"a config lacks the entry {error}"
        elif isinstance(error, RecursionError):
            reason = "a config is nested too deeply to read"
        else:
            reason = _first_line(error)
        raise SetupError(f"could not load the pipeline in {model_id}: {reason}") from None


def _check_complete(pipe: IFEditPipeline, model_id: str) -> None:
    """Refuse a pipeline whose weight files lack tensors its config has: diffusers leaves those without data (on the
    meta device), and placing the model then fails deep inside torch."""
    for name, module in pipe.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        missing = [key for key, tensor in (*module.named_parameters(), *module.named_buffers()) if tensor.is_meta]
        if missing:
            raise SetupError(
                f"could not load the pipeline in {model_id}: the {name} weights lack {len(missing)} of its tensors "
                f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); the file is incomplete or another "
                "model's"
            )


def _load_expert(
    preset: Preset, name: str, file: ExpertFile, layout: ExpertLayout, dtype: torch.dtype, options: LoadOptions
) -> WanTransformer3DModel:
    try:
        return load_expert(file, layout, os.path.expanduser(preset.model_id), name, dtype, options.local_files_only)
    except (OSError, ValueError, RuntimeError) as error:
        raise SetupError(f"could not load the expert in {file.path}: {_reason(error)}") from None


def _set_scheduler(pipe: IFEditPipeline, preset: Preset) -> None:
    """Swap in the preset's sampler with its flow shift; a model without a preset keeps what it ships."""
    if preset.scheduler == "euler":
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=preset.flow_shift)
    elif preset.scheduler == "unipc":
        pipe.scheduler = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=preset.flow_shift
        )


def _load_lora(pipe: IFEditPipeline, lora: LoraWeights, local_files_only: bool, fuse: bool = True) -> None:
    """Load one LoRA into its expert and fuse it at its scale, so inference pays nothing for it; unfused, it stays
    an adapter at its scale."""
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
            raise SetupError(f"could not load LoRA {lora.source}/{lora.weight_name}: {_reason(error)}") from None
        raise SetupError(_download_advice(lora.source, error, local_files_only, "--lora-source")) from None
    if fuse:
        pipe.fuse_lora(components=[lora.target], lora_scale=lora.scale, adapter_names=[adapter])
        pipe.unload_lora_weights()
    else:
        getattr(pipe, lora.target).set_adapters([adapter], weights=[lora.scale])


def _place(pipe: IFEditPipeline, device: torch.device, offload: Offload) -> None:
    if offload == "none":
        pipe.to(device)
    elif offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:  # "group": layers stream to the GPU on a side stream while the previous ones compute
        pipe.enable_group_offload(onload_device=device, offload_type="leaf_level", use_stream=True)


def _download_advice(source: str, error: Exception, local_files_only: bool, flag: str = "--model") -> str:
    """One line for weights that could not be had from the Hub: what to pass (the downloaded folder goes to
    `flag`), not what the libraries said about their own arguments."""
    unreachable = hub.known_unreachable()
    if unreachable:
        return (
            f"could not get {source}: it is not in this machine's Hugging Face cache, and the Hub cannot be reached "
            f"({unreachable}); run `hf download {source}` where there is a network and pass the downloaded folder "
            f"with {flag}"
        )
    if local_files_only or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "true", "yes"):
        return (
            f"could not get {source}: it is not in this machine's Hugging Face cache, and --offline (or "
            f"HF_HUB_OFFLINE) keeps ifedit from downloading it; run `hf download {source}` where there is a "
            f"network and pass the downloaded folder with {flag}, or drop --offline"
        )
    return (
        f"could not get {source} from the Hugging Face Hub ({_reason(error)}); check the id and the connection: the "
        f"first run downloads the weights, or run `hf download {source}` on a machine with a network and pass the "
        f"downloaded folder with {flag}"
    )


def _reason(error: BaseException) -> str:
    """An error's first line, or its cause's where the error's own words are about library internals."""
    while error is not None:
        text = _first_line(error)
        if not any(phrase in text.lower() for phrase in LIBRARY_PHRASES):
            return text
        error = error.__cause__ or error.__context__
    return "not found"


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
