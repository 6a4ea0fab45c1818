"""GPU and host memory of an edit, and the fastest placement of a model that fits (`ifedit plan`, `--memory auto`).

Every size is in GiB (2**30 bytes), the unit GPU memory is sold in: a "24 GB" card has 24 GiB.

Weights are parameters x bytes: the experts and the text encoder in --dtype (bfloat16: 2 bytes), the VAE and the
CLIP image encoder in float32 (4). Stored in 8 bits an expert takes 1 byte a parameter, and as GGUF 5 bits (a 4-bit
K-quant with its scales and a few tensors kept wider), except the layers diffusers keeps in --dtype (patch and
condition embedders, norms, modulation tables: 0.24 B of the A14B's 14.29 B); experts loaded from GGUF files
(--transformer FILE.gguf) take what their file's tensors take. Wan2.2-I2V-A14B in bfloat16: experts
2 x 14.289 B x 2 bytes = 2 x 26.62, UMT5-XXL 5.681 B x 2 = 10.58, VAE 0.127 B x 4 = 0.47, in all 64.29 GiB.

Activations at the edit's largest clip (F frames of H x W px; one prompt or two with refinement, twice that with
guidance), counted with benchmarks/flops.py's tracker on the meta device and fitted within a few per cent:
    latent frames L = (F - 1) / 4 + 1, tokens N = L x (H / 16) x (W / 16)          (TI2V-5B: H / 32, W / 32)
    expert step   N x 2 bytes x (2 ffn + 5.7 width)    the FFN's hidden layer and its GELU, ~5.7 model-wide tensors;
                  + N x 38 bytes x width with one timestep a token (TI2V)
    text encoder  prompts x heads x tokens^2 x 6 bytes  the float32 attention scores and part of their softmax
    VAE encode    H W e + clip,    e = 14,100 bytes a pixel (Wan2.1 VAE; 7,400 for Wan2.2's)   clip = 12 F H W
    VAE decode    H W d + 2 clip,  d = 19,100 (21,500)             the decoded clip and its concatenated copy
    tiled         encode 256^2 e + clip, decode max(256^2 d + 1.5 clip, 4.7 clip)   (256 px tiles)
On a GPU the VAE terms are multiplied by 1.69: an H100 running the recipe with everything on the card peaked at
76.8 GiB, 12.5 above the weights, where the count gives 7.40 (cuDNN's convolution workspace, allocator rounding).
The A14B at 480 x 832 and 33 frames: N = 14,040, expert step 1.49, text 0.19, VAE encode 9.11 (tiled 1.70),
decode 12.50 (tiled 2.34).

Peak GPU memory by offload mode, the largest of four stages (text encoding, VAE encode, an expert step, VAE decode):
    none        all weights + the largest activation
    model       max(text encoder + image encoder + VAE + encode, an expert + VAE + step, VAE + decode):
                diffusers keeps the text encoder on the GPU until an expert runs, the VAE until the next VAE call
    group       the stage's activations + its two largest layers (the one computing and the one arriving)
    sequential  the stage's activations + its largest layer
8-bit or GGUF experts add one layer cast up to --dtype while it computes. The A14B with model offload:
max(10.58 + 0.47 + 9.11, 26.62 + 0.47 + 1.49, 0.47 + 12.50) = 28.6 GiB.
Peak host memory: every weight as loaded (8-bit storage casts after loading, so it saves no host memory) plus 3 GiB
for Python, PyTorch and the CUDA libraries; group offload pins a copy of every weight, which PyTorch's pinned-memory
allocator rounds up to a power of two, 1.5x on average.
A tier fits when its GPU peak is at most 92% of the free GPU memory and its host peak at most 90% of the free host
memory; the plan is the fastest tier that fits, with VAE tiling when only tiling makes it fit.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidInputError, SetupError
from .io import read_model_json
from .presets import Preset, has_component
from .sizes import fit_size

MAX_SAFETENSORS_HEADER = 100 * 2**20  # the limit the safetensors library itself sets

GIB = 2**30
TIERS: tuple[str, ...] = ("resident", "model", "fp8-model", "group", "gguf", "sequential")  # fastest first
LOADABLE_TIERS: tuple[str, ...] = tuple(tier for tier in TIERS if tier != "gguf")
MEMORY_CHOICES: tuple[str, ...] = ("auto", *TIERS)  # gguf only for GGUF experts
FLOAT8 = "float8_e4m3fn"

GPU_HEADROOM = 0.92  # of the free GPU memory: the CUDA context's workspaces, fragmentation, error
HOST_HEADROOM = 0.9
HOST_PROCESS = 3 * GIB  # Python, PyTorch and the CUDA libraries
PINNED_COPY = 1.5  # group offload's pinned weights, rounded up to powers of two
GGUF_BITS = 5.0
VAE_ON_GPU = 1.69  # measured over counted VAE activations (see the module docstring)
# Fitted to the tracker's counts (module docstring): per token, in units of the compute dtype or bytes.
FFN_TENSORS = 2
WIDTH_TENSORS = 5.7
TIMESTEP_BYTES = 38  # per token and model channel, when every token has its own timestep (TI2V)
TEXT_SCORE_BYTES = 6  # per head x token x token
TILE = 256  # diffusers' Wan VAE tiles, px a side
DECODE_CLIPS, TILED_DECODE_CLIPS, TILED_DECODE_BLEND = 2, 1.5, 4.7
# Names of expert parameters that diffusers' layerwise casting leaves in the compute dtype: its skip patterns for
# WanTransformer3DModel, and tables outside any Linear or Conv layer.
FULL_PRECISION_NAMES = ("patch_embedding", "condition_embedder", "norm", "scale_shift_table")


@dataclass(frozen=True)
class TierSpec:
    """How a tier places the weights: diffusers' offload mode and how the experts are stored."""

    offload: str
    experts: str  # "dtype", "float8" or "gguf"
    description: str


TIER_SPECS: dict[str, TierSpec] = {
    "resident": TierSpec("none", "dtype", "everything on the GPU"),
    "model": TierSpec("model", "dtype", "model offload"),
    "fp8-model": TierSpec("model", "float8", "8-bit experts with model offload"),
    "group": TierSpec("group", "dtype", "group offload"),
    "gguf": TierSpec("model", "gguf", "GGUF experts with model offload"),
    "sequential": TierSpec("sequential", "dtype", "sequential offload"),
}


@dataclass(frozen=True)
class Weights:
    """One model's parameters as memory sees them."""

    params: int = 0
    full_precision: int = 0  # kept in --dtype under 8-bit storage (experts only)
    largest_layer: int = 0  # parameters of its largest layer: what a streaming offload holds at once
    gguf_bytes: int = 0  # an expert loaded from a GGUF file: what its tensors take there (0: none)


@dataclass(frozen=True)
class VaeReference:
    """Bytes a pixel of one chunk's float32 working set of a VAE whose channel widths were counted."""

    decode: int
    encode: int
    decoder_dim: int
    encoder_dim: int


WAN21_VAE = VaeReference(decode=19_100, encode=14_100, decoder_dim=96, encoder_dim=96)
WAN22_VAE = VaeReference(decode=21_500, encode=7_400, decoder_dim=256, encoder_dim=160)  # residual, patch 2


@dataclass(frozen=True)
class ModelSize:
    """What the memory model needs of a pipeline: its weights and the shapes that size its activations."""

    experts: tuple[Weights, ...]
    text_encoder: Weights
    vae: Weights
    image_encoder: Weights
    expert_width: int
    expert_ffn: int
    patch: int  # latent pixels a token side
    per_token_timesteps: bool
    text_heads: int
    vae_spatial: int
    vae_temporal: int
    vae_decode_pixel: int  # bytes, see VaeReference
    vae_encode_pixel: int

    @property
    def size_multiple(self) -> int:
        return self.vae_spatial * self.patch


def weights_of(tensors: dict[str, int]) -> Weights:
    """A model's Weights from its tensors' names and element counts (a state dict's or a safetensors header's)."""
    layers: dict[str, int] = {}
    for name, count in tensors.items():
        layer = name.rsplit(".", 1)[0]
        layers[layer] = layers.get(layer, 0) + count
    full = sum(count for name, count in tensors.items() if any(part in name for part in FULL_PRECISION_NAMES))
    return Weights(sum(tensors.values()), full, max(layers.values(), default=0))


def size_from_parts(parts: dict[str, tuple[dict[str, Any], dict[str, int]]], per_token_timesteps: bool) -> ModelSize:
    """A ModelSize from each component's config and tensor counts (`parts[name] = (config, tensors)`)."""
    expert_config = parts["transformer"][0]
    text_config = parts["text_encoder"][0]
    vae_config = parts["vae"][0]
    reference = WAN22_VAE if vae_config.get("is_residual") else WAN21_VAE
    encoder_dim = vae_config.get("base_dim", 96)
    decoder_dim = vae_config.get("decoder_base_dim") or encoder_dim
    weights = {name: weights_of(tensors) for name, (_, tensors) in parts.items()}
    return ModelSize(
        experts=tuple(weights[name] for name in ("transformer", "transformer_2") if name in weights),
        text_encoder=weights["text_encoder"],
        vae=weights["vae"],
        image_encoder=weights.get("image_encoder", Weights()),
        expert_width=expert_config["num_attention_heads"] * expert_config["attention_head_dim"],
        expert_ffn=expert_config["ffn_dim"],
        patch=expert_config["patch_size"][1],
        per_token_timesteps=per_token_timesteps,
        text_heads=text_config.get("num_heads") or text_config["num_attention_heads"],
        vae_spatial=vae_config.get("scale_factor_spatial") or 8,
        vae_temporal=vae_config.get("scale_factor_temporal") or 4,
        vae_decode_pixel=round(reference.decode * decoder_dim / reference.decoder_dim),
        vae_encode_pixel=round(reference.encode * encoder_dim / reference.encoder_dim),
    )


# Counted on the meta device from the published configs (tests/test_memory.py rebuilds them and compares).
_UMT5_XXL = Weights(params=5_680_910_336, full_precision=200_704, largest_layer=1_050_148_864)
_WAN21_VAE = Weights(params=126_892_531, full_precision=14_400, largest_layer=3_981_696)
_A14B_EXPERT = Weights(params=14_288_901_184, full_precision=235_258_880, largest_layer=157_317_120)
_WAN_14B_SHAPES = dict(expert_width=5120, expert_ffn=13824, patch=2, text_heads=64, vae_temporal=4)
KNOWN_SIZES: dict[str, ModelSize] = {
    "Wan-AI/Wan2.2-I2V-A14B-Diffusers": ModelSize(
        experts=(_A14B_EXPERT, _A14B_EXPERT),
        text_encoder=_UMT5_XXL,
        vae=_WAN21_VAE,
        image_encoder=Weights(),
        per_token_timesteps=False,
        vae_spatial=8,
        vae_decode_pixel=WAN21_VAE.decode,
        vae_encode_pixel=WAN21_VAE.encode,
        **_WAN_14B_SHAPES,
    ),
    "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers": ModelSize(
        experts=(Weights(params=16_394_878_784, full_precision=243_674_880, largest_layer=157_317_120),),
        text_encoder=_UMT5_XXL,
        vae=_WAN21_VAE,
        image_encoder=Weights(params=630_766_080, full_precision=921_600, largest_layer=6_558_720),
        per_token_timesteps=False,
        vae_spatial=8,
        vae_decode_pixel=WAN21_VAE.decode,
        vae_encode_pixel=WAN21_VAE.encode,
        **_WAN_14B_SHAPES,
    ),
    "Wan-AI/Wan2.2-TI2V-5B-Diffusers": ModelSize(
        experts=(Weights(params=4_999_787_712, full_precision=90_602_496, largest_layer=56_641_536),),
        text_encoder=_UMT5_XXL,
        vae=Weights(params=704_688_668, full_precision=33_440, largest_layer=28_312_576),
        image_encoder=Weights(),
        expert_width=3072,
        expert_ffn=14336,
        patch=2,
        per_token_timesteps=True,
        text_heads=64,
        vae_spatial=16,
        vae_temporal=4,
        vae_decode_pixel=WAN22_VAE.decode,
        vae_encode_pixel=WAN22_VAE.encode,
    ),
}


@dataclass(frozen=True)
class Clip:
    """The largest clip an edit runs: what activations scale with."""

    frames: int
    height: int
    width: int
    prompts: int = 2  # prompts encoded at once: the edit's and the refinement's, each twice with guidance
    text_tokens: int = 512


def clip_for(
    preset: Preset,
    size: ModelSize,
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    image_size: tuple[int, int] | None = None,
) -> Clip:
    """The clip an edit with `preset` runs: frames up to 4n + 1 and sides up to the model's multiple, quietly (the
    pipeline, which rounds to the nearest, says so itself); sides not given follow the preset's area at the photo's
    aspect (`image_size`, width by height; the preset's usual photo where it is not known yet)."""
    image_size = preset.usual_photo if image_size is None else image_size
    recipe = preset.recipe
    frames = recipe.num_frames if frames is None else frames
    frames = -(-max(frames - 1, 0) // size.vae_temporal) * size.vae_temporal + 1
    multiple = size.size_multiple
    height, width = (None if side is None else max(1, -(-side // multiple)) * multiple for side in (height, width))
    height, width = fit_size(image_size, height, width, recipe.max_area, multiple)
    guided = max(recipe.guidance_scale, recipe.guidance_scale_2 or 0) > 1
    prompts = (2 if recipe.refine else 1) * (2 if guided else 1)
    return Clip(frames, height, width, prompts, recipe.max_sequence_length)


@dataclass(frozen=True)
class Activations:
    """Bytes each stage of an edit holds beyond the weights, untiled and with VAE tiling."""

    text: float
    expert: float
    encode: float
    decode: float
    encode_tiled: float
    decode_tiled: float


def tokens(size: ModelSize, clip: Clip) -> int:
    latent_frames = (clip.frames - 1) // size.vae_temporal + 1
    return latent_frames * (clip.height // size.size_multiple) * (clip.width // size.size_multiple)


def activations(size: ModelSize, clip: Clip, dtype_bytes: int, vae_factor: float = 1.0) -> Activations:
    """The formulas of the module docstring; `vae_factor` scales the VAE's counts to what a GPU holds."""
    count = tokens(size, clip)
    expert = count * dtype_bytes * (FFN_TENSORS * size.expert_ffn + WIDTH_TENSORS * size.expert_width)
    if size.per_token_timesteps:
        expert += count * TIMESTEP_BYTES * size.expert_width
    text = clip.prompts * size.text_heads * clip.text_tokens**2 * TEXT_SCORE_BYTES
    pixels = clip.height * clip.width
    video = 12 * clip.frames * pixels  # three float32 channels
    encode = pixels * size.vae_encode_pixel + video
    decode = pixels * size.vae_decode_pixel + DECODE_CLIPS * video
    if max(clip.height, clip.width) > TILE:  # diffusers tiles only clips larger than one tile
        encode_tiled = TILE**2 * size.vae_encode_pixel + video
        decode_tiled = max(TILE**2 * size.vae_decode_pixel + TILED_DECODE_CLIPS * video, TILED_DECODE_BLEND * video)
    else:
        encode_tiled, decode_tiled = encode, decode
    return Activations(
        text=text,
        expert=expert,
        encode=vae_factor * encode,
        decode=vae_factor * decode,
        encode_tiled=vae_factor * encode_tiled,
        decode_tiled=vae_factor * decode_tiled,
    )


def expert_bytes(expert: Weights, storage: str, dtype_bytes: int) -> float:
    """An expert's weights stored as `storage` ("dtype", "float8" or "gguf")."""
    if storage == "dtype":
        return expert.params * dtype_bytes
    if storage == "gguf" and expert.gguf_bytes:
        return expert.gguf_bytes
    per_param = 1 if storage == "float8" else GGUF_BITS / 8
    return (expert.params - expert.full_precision) * per_param + expert.full_precision * dtype_bytes


def gpu_peak(size: ModelSize, acts: Activations, offload: str, storage: str, dtype_bytes: int, tiling: bool) -> float:
    """Peak GPU bytes of an edit placed with `offload` and experts stored as `storage` (module docstring)."""
    experts = [expert_bytes(expert, storage, dtype_bytes) for expert in size.experts]
    text = size.text_encoder.params * dtype_bytes
    vae = size.vae.params * 4
    image = size.image_encoder.params * 4
    encode = acts.encode_tiled if tiling else acts.encode
    decode = acts.decode_tiled if tiling else acts.decode
    largest_expert_layer = max(expert.largest_layer for expert in size.experts) * dtype_bytes
    step = acts.expert + (largest_expert_layer if storage != "dtype" else 0)
    if offload == "none":
        return sum(experts) + text + vae + image + max(acts.text, encode, step, decode)
    if offload == "model":
        return max(text + acts.text, text + image + vae + encode, max(experts) + vae + step, vae + decode)
    held = 2 if offload == "group" else 1
    return max(
        held * size.text_encoder.largest_layer * dtype_bytes + acts.text,
        vae + encode,
        held * largest_expert_layer + step,
        vae + decode,
    )


def host_peak(size: ModelSize, offload: str, storage: str, dtype_bytes: int) -> float:
    """Peak host bytes: the weights as loaded, or group offload's pinned copies, and the process."""
    others = size.text_encoder.params * dtype_bytes + (size.vae.params + size.image_encoder.params) * 4
    loaded_as = "gguf" if storage == "gguf" else "dtype"
    loaded = sum(expert_bytes(expert, loaded_as, dtype_bytes) for expert in size.experts) + others
    if offload == "group":
        placed = sum(expert_bytes(expert, storage, dtype_bytes) for expert in size.experts) + others
        loaded = max(loaded, PINNED_COPY * placed)
    return loaded + HOST_PROCESS


@dataclass(frozen=True)
class TierEstimate:
    """One tier's predicted peaks and whether it fits."""

    name: str
    gpu_gb: float
    host_gb: float
    fits: bool
    vae_tiling: bool
    note: str = ""

    @property
    def spec(self) -> TierSpec:
        return TIER_SPECS[self.name]

    def describe(self) -> str:
        return self.spec.description + (", VAE tiling" if self.vae_tiling else "")


@dataclass(frozen=True)
class Plan:
    """Every tier's predicted peaks on a GPU with `gpu_free_gb` free, and the fastest that fits (None: none)."""

    clip: Clip
    gpu_free_gb: float
    host_free_gb: float | None
    dtype_bytes: int
    weights_gb: dict[str, Any]
    activations_gb: dict[str, float]
    tiers: tuple[TierEstimate, ...]
    chosen: str | None
    gguf_experts: bool = False

    def tier(self, name: str) -> TierEstimate:
        return next(tier for tier in self.tiers if tier.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "tiers": [
                {
                    "name": tier.name,
                    "gpu_gb": round(tier.gpu_gb, 2),
                    "host_gb": round(tier.host_gb, 2),
                    "fits": tier.fits,
                    "vae_tiling": tier.vae_tiling,
                    "description": tier.spec.description,
                    "note": tier.note,
                }
                for tier in self.tiers
            ],
            "frames": self.clip.frames,
            "height": self.clip.height,
            "width": self.clip.width,
            "gpu_memory_gb": self.gpu_free_gb,
            "host_memory_gb": self.host_free_gb,
            "dtype_bytes": self.dtype_bytes,
            "weights_gb": self.weights_gb,
            "activations_gb": self.activations_gb,
            "gguf_experts": self.gguf_experts,
        }


def plan_memory(
    size: ModelSize,
    clip: Clip,
    gpu_free_gb: float,
    host_free_gb: float | None = None,
    *,
    dtype_bytes: int = 2,
    gguf_weights: bool | None = None,
) -> Plan:
    """Predict every tier's peaks for `clip` and choose the fastest that fits; `host_free_gb` None: not checked.
    `gguf_weights`: whether the experts are GGUF files (None: whether `size` says so), which only the gguf tier
    places and no other tier can."""
    gguf_weights = gguf_experts(size) if gguf_weights is None else gguf_weights
    acts = activations(size, clip, dtype_bytes, VAE_ON_GPU)
    gpu_budget = GPU_HEADROOM * gpu_free_gb * GIB
    host_budget = None if host_free_gb is None else HOST_HEADROOM * host_free_gb * GIB
    tiers = []
    for name in TIERS:
        spec = TIER_SPECS[name]
        untiled, tiled = (gpu_peak(size, acts, spec.offload, spec.experts, dtype_bytes, on) for on in (False, True))
        tiling = untiled > gpu_budget and tiled < untiled
        gpu = tiled if tiling else untiled
        host = host_peak(size, spec.offload, spec.experts, dtype_bytes)
        problems = []
        if gpu > gpu_budget:
            problems.append(f"needs {gpu / GIB:.1f} of {gpu_budget / GIB:.1f} GiB usable GPU memory")
        if host_budget is not None and host > host_budget:
            problems.append(f"needs {host / GIB:.1f} of {host_budget / GIB:.1f} GiB usable host memory")
        if name == "gguf" and not gguf_weights:
            problems.append("needs GGUF expert weights (--transformer and --transformer-2 FILE.gguf)")
        if name != "gguf" and gguf_weights:
            problems.append("the experts are GGUF files, which only the gguf tier places")
        tiers.append(TierEstimate(name, gpu / GIB, host / GIB, not problems, tiling, "; ".join(problems)))
    weights_gb = {
        "experts": [round(expert_bytes(expert, "dtype", dtype_bytes) / GIB, 2) for expert in size.experts],
        "text_encoder": round(size.text_encoder.params * dtype_bytes / GIB, 2),
        "vae": round(size.vae.params * 4 / GIB, 2),
        "image_encoder": round(size.image_encoder.params * 4 / GIB, 2),
    }
    activations_gb = {name: round(value / GIB, 2) for name, value in vars(acts).items()}
    chosen = next((tier.name for tier in tiers if tier.fits), None)
    return Plan(clip, gpu_free_gb, host_free_gb, dtype_bytes, weights_gb, activations_gb, tuple(tiers), chosen,
                gguf_weights)  # fmt: skip


def gguf_experts(size: ModelSize) -> bool:
    """Whether any expert of `size` was sized from a GGUF file."""
    return any(expert.gguf_bytes for expert in size.experts)


def leaner_tier(plan: Plan, tier: str) -> str | None:
    """The tier to retry with after running out of GPU memory with `tier`: the next leaner one that fits."""
    later = TIERS[TIERS.index(tier) + 1 :]
    return next((estimate.name for estimate in plan.tiers if estimate.name in later and estimate.fits), None)


def device_peak(size: ModelSize, clip: Clip, dtype_bytes: int) -> float:
    """Host bytes of an edit with everything in one memory (the CPU, or Apple's unified memory): GiB."""
    acts = activations(size, clip, dtype_bytes)
    weights = host_peak(size, "none", "gguf" if gguf_experts(size) else "dtype", dtype_bytes)
    return (weights + max(acts.text, acts.expert, acts.encode, acts.decode)) / GIB


def format_plan(plan: Plan, model: str) -> str:
    """The plan as `ifedit plan` prints it: one line per tier, then the choice."""
    clip = plan.clip
    host = "not checked" if plan.host_free_gb is None else f"{plan.host_free_gb:g} GiB"
    weights = plan.weights_gb
    experts = " + ".join(f"{value:.2f}" for value in weights["experts"])
    acts = plan.activations_gb
    lines = [
        f"{model}: {clip.height} x {clip.width} px, {clip.frames} frames; GPU {plan.gpu_free_gb:g} GiB, host {host}",
        f"weights: experts {experts}, text encoder {weights['text_encoder']:.2f}, VAE {weights['vae']:.2f}"
        + (f", image encoder {weights['image_encoder']:.2f}" if weights["image_encoder"] else "")
        + " GiB",
        f"activations: expert step {acts['expert']:.2f}, text {acts['text']:.2f}, VAE encode {acts['encode']:.2f} "
        f"(tiled {acts['encode_tiled']:.2f}), VAE decode {acts['decode']:.2f} (tiled {acts['decode_tiled']:.2f}) GiB",
        f"{'tier':<11} {'GPU GiB':>8} {'host GiB':>9}  fits  placement",
    ]
    for tier in plan.tiers:
        fits = "yes" if tier.fits else "no"
        note = f" ({tier.note})" if tier.note else ""
        lines.append(f"{tier.name:<11} {tier.gpu_gb:>8.1f} {tier.host_gb:>9.1f}  {fits:<4}  {tier.describe()}{note}")
    if plan.chosen is None:
        lines.append("chosen: none fits")
    else:
        lines.append(f"chosen: {plan.chosen} ({plan.tier(plan.chosen).describe()})")
    return "\n".join(lines)


def known_size(model_id: str | None) -> ModelSize | None:
    """A model's size without loading anything: published, or read from a local pipeline folder (None otherwise)."""
    if model_id is None:
        return None
    if model_id in KNOWN_SIZES:
        return KNOWN_SIZES[model_id]
    folder = Path(model_id).expanduser()
    return folder_size(folder) if folder.is_dir() else None


def folder_size(folder: Path) -> ModelSize | None:
    """The size of a saved diffusers pipeline from its configs and safetensors headers, reading no weight (None
    when its weights are not in safetensors files)."""
    try:
        return _folder_size(folder)
    except InvalidInputError as error:
        raise SetupError(f"cannot read the model sizes in {folder}: {error}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError, struct.error) as error:
        raise SetupError(f"cannot read the model sizes in {folder}: {type(error).__name__}: {error}") from None


def _folder_size(folder: Path) -> ModelSize | None:
    index = read_model_json(folder / "model_index.json", "a pipeline's index")
    parts = {}
    for name in ("transformer", "transformer_2", "text_encoder", "vae", "image_encoder"):
        if not has_component(index, name):
            continue
        config = read_model_json(folder / name / "config.json", f"the {name}'s config")
        tensors = {}
        for path in _weight_files(folder / name):
            tensors.update(safetensors_counts(path))
        if not tensors:
            return None
        parts[name] = (config, tensors)
    if not {"transformer", "text_encoder", "vae"} <= parts.keys():
        raise SetupError(f"{folder} is not a Wan pipeline: it needs a transformer, a text encoder and a VAE")
    return size_from_parts(parts, bool(index.get("expand_timesteps")))


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files from_pretrained reads: a sharded index's, else the unsuffixed ones (no fp16 variants)."""
    for index in folder.glob("*.safetensors.index.json"):
        shards = sorted(set(read_model_json(index, "a sharded weights index")["weight_map"].values()))
        return [folder / shard for shard in shards]
    return sorted(path for path in folder.glob("*.safetensors") if "." not in path.stem)


def safetensors_counts(path: Path) -> dict[str, int]:
    """Element count of every tensor in a safetensors file, from its header alone."""
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        if length > MAX_SAFETENSORS_HEADER:
            raise ValueError(f"{path.name} claims a header of {length} bytes, over the format's limit")
        header = json.loads(file.read(length))
    if not isinstance(header, dict):
        raise ValueError(f"{path.name}'s header is not a JSON object")
    return {name: math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}
