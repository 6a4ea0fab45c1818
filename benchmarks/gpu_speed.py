"""Time IF-Edit at the paper's real sizes on one GPU and print JSON: seconds per stage and per edit, peak memory.

    python benchmarks/gpu_speed.py                      # random bf16 weights at Wan2.2-I2V-A14B's real sizes
    python benchmarks/gpu_speed.py --weights DIR        # a downloaded Wan2.2-I2V-A14B-Diffusers folder instead
    python benchmarks/gpu_speed.py --tiny               # the same code on tiny models, on any machine, in seconds
    python benchmarks/gpu_speed.py --attention-backend _flash_3 --compile --storage-dtype float8_e4m3fn

Random weights make the video meaningless but cost exactly what real ones do, so speed and memory are honest.
Runs the paper's recipe (480 x 832, 33 frames, 8 steps, guidance 1, refinement on) with K = 3, K = 1 and K = 3
with `--fast` after a warm-up edit, and fits in about 8 minutes on an H100 (two 14B experts and UMT5-XXL need
about 70 GB). The speed options of `ifedit edit` apply to the experts when given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

# Measured on an 80 GB H100: with the bf16 experts, UMT5-XXL and the float32 VAE all on the card, the VAE's encode
# asked for 0.9 GiB while 3 GiB sat reserved but fragmented. Set before torch first touches CUDA.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import PIL.Image
import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

from architectures import A14B_EXPERT, UMT5_XXL
from ifedit import IFEditPipeline
from ifedit.loading import STORAGE_DTYPES, LoadOptions, speed_up_expert, store_expert
from ifedit.options import FAST_SETTINGS
from ifedit.tiny import tiny_components


def random_weights(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Allocate a meta-built module on `device` in `dtype` and fill it with small random weights, without a CPU
    copy. The cast happens on the meta device, where it is free: allocating in float32 first would need twice the
    memory (two 14B experts alone are 114 GB in float32)."""
    module = module.to(dtype)
    # Keep in float32 what `from_pretrained(torch_dtype=...)` keeps in float32 (Wan: norms, time embedder, RoPE).
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    for name, child in module.named_modules():
        if any(part in keep for part in name.split(".")):
            child.float()
    module = module.to_empty(device=device)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, 0.02)
    return module.eval()


def random_expert(device: torch.device) -> WanTransformer3DModel:
    with torch.device("meta"):
        expert = WanTransformer3DModel(**A14B_EXPERT)
    expert = random_weights(expert, device, torch.bfloat16)
    # RoPE tables are computed, not learned: rebuild them rather than leave them uninitialised.
    expert.rope = WanRotaryPosEmbed(128, A14B_EXPERT["patch_size"], A14B_EXPERT["rope_max_seq_len"]).to(device)
    return expert


def real_size_pipeline(device: torch.device, vae_dtype: torch.dtype) -> IFEditPipeline:
    with torch.device("meta"):
        text_encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL))
        vae = AutoencoderKLWan()
    return IFEditPipeline(
        tokenizer=ByT5Tokenizer(),  # ids fit UMT5's vocabulary; the text is irrelevant with random weights
        text_encoder=random_weights(text_encoder, device, torch.bfloat16),
        vae=random_weights(vae, device, vae_dtype),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
        transformer=random_expert(device),
        transformer_2=random_expert(device),
        boundary_ratio=0.9,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="a Wan2.2-I2V-A14B diffusers folder (default: random weights)")
    parser.add_argument("--tiny", action="store_true", help="tiny random models: check the script anywhere")
    parser.add_argument("--attention-backend", help="diffusers attention backend for the experts")
    parser.add_argument("--compile", action="store_true", help="torch.compile the experts' blocks")
    parser.add_argument("--first-block-cache", type=float, metavar="THRESHOLD", help="first-block cache threshold")
    parser.add_argument("--storage-dtype", choices=list(STORAGE_DTYPES), help="8-bit storage of the experts")
    parser.add_argument(
        "--vae-dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="the VAE's precision (default: %(default)s, as diffusers' Wan examples load it)",
    )
    args = parser.parse_args()
    options = LoadOptions(attention_backend=args.attention_backend, compile=args.compile,
                          first_block_cache=args.first_block_cache, storage_dtype=args.storage_dtype)  # fmt: skip

    vae_dtype = getattr(torch, args.vae_dtype)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if args.tiny:
        pipe = IFEditPipeline(**tiny_components("a14b"))
        size = {"height": 64, "width": 96}
    elif args.weights:
        pipe = IFEditPipeline.from_pretrained(args.weights, torch_dtype=torch.bfloat16)
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
        pipe.vae.to(vae_dtype)
        pipe.to(device)
        size = {"height": 480, "width": 832}
    else:
        pipe = real_size_pipeline(device, vae_dtype)
        size = {"height": 480, "width": 832}
    for expert in (pipe.transformer, pipe.transformer_2):
        store_expert(expert, options, expert.dtype)
        speed_up_expert(expert, options)
    pipe.set_progress_bar_config(disable=True)
    image = PIL.Image.new("RGB", (size["width"], size["height"]), (120, 140, 160))
    recipe = dict(num_frames=33, num_inference_steps=8, guidance_scale=1.0, sigma_schedule="uniform", **size)

    def edit(stride: int, **extra) -> dict:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        result = pipe(image, "a cat stands up", tld_stride=stride, generator=torch.Generator().manual_seed(0),
                      **{**recipe, **extra})  # fmt: skip
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        return {"seconds": seconds, "peak_gib": peak, "stages": result.timings, "kept": result.kept_latent_frames}

    edit(3)  # warm-up: kernels, allocator, caches
    runs = {"K=3": edit(3), "K=1": edit(1), "K=3 --fast": edit(3, **FAST_SETTINGS)}
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "weights": args.weights or ("tiny random" if args.tiny else "random bf16 at real size"),
        "recipe": recipe,
        "speed_options": {key: value for key, value in vars(args).items() if key not in ("weights", "tiny")},
        "runs": runs,
        "speedup_K3_over_K1": runs["K=1"]["seconds"] / runs["K=3"]["seconds"],
        "speedup_fast_over_K3": runs["K=3"]["seconds"] / runs["K=3 --fast"]["seconds"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
