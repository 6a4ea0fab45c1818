"""Time IF-Edit at the paper's real sizes on one GPU and print JSON: seconds per stage and per edit, peak memory.

    python benchmarks/gpu_speed.py                      # random bf16 weights at Wan2.2-I2V-A14B's real sizes
    python benchmarks/gpu_speed.py --weights DIR        # a downloaded Wan2.2-I2V-A14B-Diffusers folder instead
    python benchmarks/gpu_speed.py --tiny               # the same code on tiny models, on any machine, in seconds
    python benchmarks/gpu_speed.py --attention-backend auto --compile --fp8-compute --vae-dtype bfloat16
    python benchmarks/gpu_speed.py --sweep [--profile]  # each speed option alone and all together, with fidelity

Random weights make the video meaningless but cost exactly what real ones do, so speed and memory are honest.
Runs the paper's recipe (480 x 832, 33 frames, 8 steps, guidance 1, refinement on) with K = 3, K = 1 and K = 3
with `--fast` after a warm-up edit, and fits in about 8 minutes on an H100 (two 14B experts and UMT5-XXL need
about 70 GB). The speed options of `ifedit edit` apply when given.

`--sweep` rebuilds the pipeline with the same random weights for each speed option alone and for all of them
together, times one K = 3 edit after a warm-up edit (the warm-up, which holds compilation, is reported apart),
counts recompilations between the timed edits, and compares each edit with the reference (bf16 experts, float32
VAE, no option) on the same inputs: the relative error of the final latents and the PSNR of the decoded frames.
`--profile` adds one profiled edit per setting and summarises torch.profiler's times by the pipeline's stages.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import time

# Measured on an 80 GB H100: with the bf16 experts, UMT5-XXL and the float32 VAE all on the card, the VAE's encode
# asked for 0.9 GiB while 3 GiB sat reserved but fragmented. Set before torch first touches CUDA.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

import ifedit.pipeline as pipeline_module
from architectures import A14B_EXPERT, UMT5_XXL
from ifedit import IFEditPipeline
from ifedit.errors import SetupError
from ifedit.loading import STORAGE_DTYPES, LoadOptions, speed_up_expert, store_expert
from ifedit.options import FAST_SETTINGS
from ifedit.speed import VAE_DTYPES, check_fp8_compute, fp8_compute, resolve_attention_backend, set_vae
from ifedit.tiny import tiny_components

SEED = 0
# The sweep: each option alone, then all together (float8 compute where the GPU has it, else float8 storage).
SWEEP = {
    "reference": {},
    "attention auto": {"attention_backend": "auto"},
    "compile": {"compile": True},
    "first-block cache 0.05": {"first_block_cache": 0.05},
    "float8 storage": {"storage_dtype": "float8_e4m3fn"},
    "fp8 compute": {"fp8_compute": True},
    "VAE bfloat16": {"vae_dtype": "bfloat16"},
    "VAE channels-last": {"vae_channels_last": True},
}
ALL_TOGETHER = {"attention_backend": "auto", "compile": True, "first_block_cache": 0.05, "vae_dtype": "bfloat16",
                "vae_channels_last": True}  # fmt: skip


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


def real_size_pipeline(device: torch.device) -> IFEditPipeline:
    with torch.device("meta"):
        text_encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL))
        vae = AutoencoderKLWan()
    return IFEditPipeline(
        tokenizer=ByT5Tokenizer(),  # ids fit UMT5's vocabulary; the text is irrelevant with random weights
        text_encoder=random_weights(text_encoder, device, torch.bfloat16),
        vae=random_weights(vae, device, torch.float32),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
        transformer=random_expert(device),
        transformer_2=random_expert(device),
        boundary_ratio=0.9,
    )


def build_pipeline(args: argparse.Namespace, device: torch.device) -> IFEditPipeline:
    """The pipeline to time, with the same weights at every call (seeded): bf16 experts (float32 on --tiny, whose
    text encoder is float32) and a float32 VAE."""
    torch.manual_seed(SEED)
    if args.tiny:
        pipe = IFEditPipeline(**tiny_components("a14b", seed=SEED))
    elif args.weights:
        pipe = IFEditPipeline.from_pretrained(args.weights, torch_dtype=torch.bfloat16)
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
        pipe.vae.to(torch.float32)
        pipe.to(device)
    else:
        pipe = real_size_pipeline(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def experts(pipe: IFEditPipeline) -> list[torch.nn.Module]:
    return [expert for expert in (pipe.transformer, pipe.transformer_2) if expert is not None]


def apply_options(pipe: IFEditPipeline, options: LoadOptions, device: torch.device) -> str | None:
    """The speed options on a built pipeline, in the order `ifedit edit` applies them; the attention backend run."""
    dtype = pipe.transformer.dtype
    backend = resolve_attention_backend(options.attention_backend, device, dtype)
    resolved = dataclasses.replace(options, attention_backend=backend)
    for expert in experts(pipe):
        store_expert(expert, resolved, dtype)
        if resolved.fp8_compute:
            fp8_compute(expert)
        speed_up_expert(expert, resolved)
    set_vae(pipe.vae, resolved.vae_dtype, resolved.vae_channels_last)
    return backend


def graphs_compiled() -> int:
    """Graphs torch.compile has compiled so far in this process: a rise between edits is a recompilation."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def run_edit(pipe: IFEditPipeline, device: torch.device, recipe: dict, stride: int, **extra) -> dict:
    """One timed edit: seconds, peak memory, the pipeline's stage times, the final latents and the decoded frames."""
    latents = []

    def keep_latents(_pipe, _step, _timestep, tensors):
        latents.append(tensors["latents"])
        return {}

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = pipe(PIL.Image.new("RGB", (recipe["width"], recipe["height"]), (120, 140, 160)), "a cat stands up",
                  tld_stride=stride, generator=torch.Generator().manual_seed(SEED), output_type="np",
                  callback_on_step_end=keep_latents, callback_on_step_end_tensor_inputs=["latents"],
                  **{**recipe, **extra})  # fmt: skip
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"seconds": seconds, "peak_gib": peak, "stages": result.timings, "kept": result.kept_latent_frames,
            "latents": latents[-1].float().cpu(), "image": np.asarray(result.image)}  # fmt: skip


def summary(run: dict) -> dict:
    return {key: value for key, value in run.items() if key not in ("latents", "image")}


def fidelity(run: dict, reference: dict) -> dict:
    """How far an edit is from the reference edit: relative error of the final latents, PSNR of the chosen frame
    (decoded in [0, 1]; None when identical)."""
    latents, expected = run["latents"], reference["latents"]
    relative = float((latents - expected).norm() / expected.norm())
    mse = float(np.mean((run["image"].astype(np.float64) - reference["image"].astype(np.float64)) ** 2))
    return {"latent_relative_error": relative, "psnr_db": None if mse == 0 else 10 * math.log10(1 / mse)}


@contextlib.contextmanager
def stages_marked_for_the_profiler():
    """Mark each of the pipeline's timed stages as a torch.profiler range, so its summary can be read by stage."""
    original = pipeline_module._StageTimer.__call__

    @contextlib.contextmanager
    def marked(self, name):
        with torch.profiler.record_function(f"stage:{name}"), original(self, name):
            yield

    pipeline_module._StageTimer.__call__ = marked
    try:
        yield
    finally:
        pipeline_module._StageTimer.__call__ = original


def profile_edit(pipe: IFEditPipeline, device: torch.device, recipe: dict) -> dict:
    """One profiled K = 3 edit: each stage's CPU and device milliseconds and its five costliest operators."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with stages_marked_for_the_profiler(), torch.profiler.profile(activities=activities) as profiler:
        run_edit(pipe, device, recipe, 3)
    stages = {}
    for event in profiler.key_averages():
        if event.key.startswith("stage:"):
            stages[event.key.removeprefix("stage:")] = {
                "cpu_ms": event.cpu_time_total / 1e3,
                "device_ms": getattr(event, "device_time_total", 0.0) / 1e3,
            }
    by_self_time = sorted(
        (event for event in profiler.key_averages() if not event.key.startswith("stage:")),
        key=lambda event: getattr(event, "self_device_time_total", 0.0) or event.self_cpu_time_total,
        reverse=True,
    )
    top = [
        {
            "op": event.key,
            "self_cpu_ms": event.self_cpu_time_total / 1e3,
            "self_device_ms": getattr(event, "self_device_time_total", 0.0) / 1e3,
        }  # fmt: skip
        for event in by_self_time[:10]
    ]
    return {"stages": stages, "top_ops": top}


def measure(args: argparse.Namespace, device: torch.device, options: LoadOptions, recipe: dict, runs: dict) -> dict:
    """Build the pipeline with `options`, warm it up (compilation happens here), then time the edits of `runs`."""
    pipe = build_pipeline(args, device)
    backend = apply_options(pipe, options, device)
    before_warm_up = graphs_compiled()
    warm_up = run_edit(pipe, device, recipe, 3)
    compiled = graphs_compiled()
    timed = {name: run_edit(pipe, device, recipe, stride, **extra) for name, (stride, extra) in runs.items()}
    result = {
        "attention_backend": backend,
        "warm_up_seconds": warm_up["seconds"],  # holds compilation when --compile is on
        "graphs_compiled_in_warm_up": compiled - before_warm_up,
        "recompilations_between_timed_edits": graphs_compiled() - compiled,
        "runs": timed,
    }
    if options.compile:
        result["compile_seconds"] = warm_up["seconds"] - timed[next(iter(timed))]["seconds"]
    if args.profile:
        result["profile"] = profile_edit(pipe, device, recipe)
    del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def sweep(args: argparse.Namespace, device: torch.device, recipe: dict) -> dict:
    """Each speed option alone and all together, timed and compared with the reference on the same inputs."""
    settings = {name: changes for name, changes in SWEEP.items() if not args.only or name in args.only}
    settings["reference"] = {}
    together = dict(ALL_TOGETHER)
    skipped = {}
    try:
        check_fp8_compute(device)
        together["fp8_compute"] = True
    except SetupError as error:
        skipped["fp8 compute"] = str(error)
        settings.pop("fp8 compute", None)
        together["storage_dtype"] = "float8_e4m3fn"
    if not args.only or "all together" in args.only:
        settings["all together"] = together
    results = {}
    for name in ["reference", *(name for name in settings if name != "reference")]:
        options = LoadOptions(**settings[name])
        measured = measure(args, device, options, recipe, {"K=3": (3, {})})
        measured["options"] = settings[name]
        results[name] = measured
    reference = results["reference"]["runs"]["K=3"]
    for measured in results.values():
        run = measured["runs"]["K=3"]
        measured["fidelity"] = fidelity(run, reference)
        measured["speedup_over_reference"] = reference["seconds"] / run["seconds"]
        measured["runs"] = {name: summary(run) for name, run in measured["runs"].items()}
    return {"settings": results, "skipped": skipped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="a Wan2.2-I2V-A14B diffusers folder (default: random weights)")
    parser.add_argument("--tiny", action="store_true", help="tiny random models on the CPU: check the script anywhere")
    parser.add_argument("--attention-backend", help="diffusers attention backend for the experts, or auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the experts' blocks")
    parser.add_argument("--first-block-cache", type=float, metavar="THRESHOLD", help="first-block cache threshold")
    parser.add_argument("--storage-dtype", choices=list(STORAGE_DTYPES), help="8-bit storage of the experts")
    parser.add_argument("--fp8-compute", action="store_true", help="float8 linear layers (GPU capability 8.9+)")
    parser.add_argument("--vae-dtype", choices=list(VAE_DTYPES), default="float32", help="the VAE's precision")
    parser.add_argument("--vae-channels-last", action="store_true", help="the VAE's convolutions in channels-last")
    parser.add_argument("--sweep", action="store_true", help="each speed option alone and all together")
    parser.add_argument("--only", nargs="+", choices=[*SWEEP, "all together"], help="the sweep's settings to run")
    parser.add_argument("--profile", action="store_true", help="add a torch.profiler summary by stage")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    size = {"height": 64, "width": 96} if args.tiny else {"height": 480, "width": 832}
    recipe = dict(num_frames=33, num_inference_steps=8, guidance_scale=1.0, sigma_schedule="uniform", **size)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__},
        "weights": args.weights or ("tiny random" if args.tiny else "random bf16 at real size"),
        "recipe": recipe,
    }
    if args.sweep:
        report.update(sweep(args, device, recipe))
    else:
        options = LoadOptions(attention_backend=args.attention_backend, compile=args.compile,
                              first_block_cache=args.first_block_cache, storage_dtype=args.storage_dtype,
                              fp8_compute=args.fp8_compute, vae_dtype=args.vae_dtype,
                              vae_channels_last=args.vae_channels_last)  # fmt: skip
        if options.fp8_compute:
            check_fp8_compute(device)
        measured = measure(args, device, options, recipe, {"K=3": (3, {}), "K=1": (1, {}),
                                                           "K=3 --fast": (3, FAST_SETTINGS)})  # fmt: skip
        runs = {name: summary(run) for name, run in measured.pop("runs").items()}
        report["speed_options"] = {key: value for key, value in vars(args).items()
                                   if key not in ("weights", "tiny", "sweep", "only", "profile")}  # fmt: skip
        report.update(measured, runs=runs)
        report["speedup_K3_over_K1"] = runs["K=1"]["seconds"] / runs["K=3"]["seconds"]
        report["speedup_fast_over_K3"] = runs["K=3"]["seconds"] / runs["K=3 --fast"]["seconds"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
