"""Speed options that depend on the machine: the attention backend `auto` picks, the VAE's precision and memory
layout, and float8 compute for the experts' linear layers."""

from __future__ import annotations

import logging
from collections.abc import Collection

import torch

from .errors import InvalidInputError, SetupError

logger = logging.getLogger("ifedit")

# Fastest first, for bf16 on a data-centre GPU: FlashAttention 3 (Hopper only), FlashAttention 2, SageAttention,
# PyTorch's cuDNN kernel, then PyTorch's own dispatch, which runs everywhere.
ATTENTION_PREFERENCE = ("_flash_3", "flash", "sage", "_native_cudnn", "native")
VAE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Hardware float8 matrix multiplies start with Ada and Hopper.
FP8_CAPABILITY = (8, 9)


def choose_attention_backend(available: Collection[str]) -> str:
    """The fastest backend of ATTENTION_PREFERENCE among `available`; native when none of the others is."""
    return next((name for name in ATTENTION_PREFERENCE if name in available), "native")


def available_attention_backends(device: torch.device, dtype: torch.dtype) -> set[str]:
    """Which backends of ATTENTION_PREFERENCE can run the experts here: the kernels diffusers found installed, on
    a CUDA GPU new enough for them, in the half precision they all need."""
    available = {"native"}
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return available
    from diffusers.models import attention_dispatch as dispatch

    capability = torch.cuda.get_device_capability(device)
    if capability >= (8, 0):  # Ampere and later: what FlashAttention 2, SageAttention and cuDNN's kernel need
        available |= {"_native_cudnn"} if torch.backends.cudnn.is_available() else set()
        available |= {"flash"} if dispatch._CAN_USE_FLASH_ATTN else set()
        available |= {"sage"} if dispatch._CAN_USE_SAGE_ATTN else set()
    if capability[0] == 9 and dispatch._CAN_USE_FLASH_ATTN_3:  # FlashAttention 3 is built for Hopper alone
        available.add("_flash_3")
    return available


def resolve_attention_backend(name: str | None, device: torch.device, dtype: torch.dtype) -> str | None:
    """`name` as given, or for `auto` the fastest backend available on `device` in `dtype`, logged."""
    if name != "auto":
        return name
    available = available_attention_backends(device, dtype)
    chosen = choose_attention_backend(available)
    logger.info("attention backend auto: %s (available: %s)", chosen, ", ".join(sorted(available)))
    return chosen


def check_vae_dtype(name: str) -> torch.dtype:
    if name not in VAE_DTYPES:
        raise InvalidInputError(f"unknown VAE dtype {name!r}; use {', '.join(VAE_DTYPES)}")
    return VAE_DTYPES[name]


def set_vae(vae: torch.nn.Module, dtype: str, channels_last: bool) -> None:
    """Put the VAE's weights (and so its encode and decode, which follow `vae.dtype`) in `dtype`, and its
    convolution weights in channels-last order, which cuDNN's fastest 3D kernels want."""
    # Module's own `to`: diffusers' warns of float32-only modules, and Wan's VAE lists none.
    torch.nn.Module.to(vae, check_vae_dtype(dtype))
    if not channels_last:
        return
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    with torch.no_grad():
        for parameter in vae.parameters():
            if parameter.dim() in formats:
                parameter.data = parameter.data.contiguous(memory_format=formats[parameter.dim()])


def check_fp8_compute(device: torch.device) -> None:
    """Refuse float8 compute before loading where it cannot run: it needs torchao and a CUDA GPU of compute
    capability 8.9 or higher."""
    have = "no CUDA GPU"
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability >= FP8_CAPABILITY:
            have = None
        else:
            have = f"{torch.cuda.get_device_name(device)} (compute capability {capability[0]}.{capability[1]})"
    if have is not None:
        raise SetupError(f"--fp8-compute needs a CUDA GPU of compute capability 8.9 or higher (Ada, Hopper, "
                         f"Blackwell); this machine has {have}")  # fmt: skip
    try:
        import torchao.quantization  # noqa: F401
    except ImportError as error:
        raise SetupError(f"--fp8-compute needs torchao (pip install torchao): {error}") from None


def fp8_compute(expert: torch.nn.Module) -> None:
    """Run the linear layers of an expert's blocks in float8: weights quantised once, activations at each call,
    both with one scale per row (torchao's dynamic float8). Embeddings and the output head stay in --dtype."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    def in_blocks(module: torch.nn.Module, name: str) -> bool:
        return isinstance(module, torch.nn.Linear) and name.startswith("blocks.")

    quantize_(expert, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=in_blocks)
