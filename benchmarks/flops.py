"""Count the FLOPs of an edit, stage by stage, on the real architectures built on the meta device (no weights).

    python benchmarks/flops.py                          # the paper's recipe at 480x832, 33 frames
    python benchmarks/flops.py --frames 81 --steps 40   # any settings; --help lists them

Every stage runs the real diffusers / transformers modules (the Wan2.2-I2V-A14B experts, the Wan VAE,
UMT5-XXL) on meta tensors under `torch.utils.flop_counter.FlopCounterMode`, so the counts follow the code, not a
formula. Which steps run on which expert and on how many latent frames comes from the pipeline's own pure
functions (the uniform step grid, the dropout step and kept frames). Times are FLOPs divided by an H100's dense
bf16 peak (989 TFLOP/s) and by 790 TFLOP/s, the rate measured for bf16 matrix work on this kind of card: lower
bounds, since attention and convolutions run below peak.

Peak activation memory is measured the same way: a dispatch mode follows every tensor the call allocates (not the
weights) until its last reference dies, with attention standing in for a fused kernel (flash / memory-efficient),
which never holds the tokens x tokens score matrix that a meta-device decomposition would count.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import weakref
from dataclasses import dataclass
from unittest import mock

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode
from transformers import UMT5Config, UMT5EncoderModel

from architectures import A14B_EXPERT, UMT5_XXL
from ifedit.dropout import dropout_step, kept_frame_indices
from ifedit.options import FAST_SETTINGS
from ifedit.pipeline import refine_start_step, uniform_sigmas

H100_PEAK = 989e12
MEASURED_RATE = 790e12
TEXT_TOKENS = 512


@dataclass(frozen=True)
class Settings:
    """One way to run an edit; `refine_*` None means the same as the edit pass."""

    height: int = 480
    width: int = 832
    frames: int = 33
    steps: int = 8
    guidance: float = 1.0
    tld_stride: int = 3
    tld_threshold: float = 0.9
    boundary: float = 0.9
    shift: float = 5.0
    refine: bool = True
    refine_frames: int | None = None
    refine_steps: int | None = None
    refine_strength: float = 1.0
    decode: str = "all"  # "needed": only the last two kept latent frames, as `decode_frames="needed"`


def measure(module: torch.nn.Module, call) -> float:
    """FLOPs of `call(module)`."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        call(module)
    return counter.get_total_flops()


class PeakActivations(TorchDispatchMode):
    """The most bytes held at once by tensors allocated inside the mode; views share their base's storage."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._holders: dict[int, list[int]] = {}  # storage -> [bytes, tensors alive that use it]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {_storage(leaf) for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._hold(tensor, given)
        return out

    def _hold(self, tensor: torch.Tensor, given: set[int]) -> None:
        key = _storage(tensor)
        if key not in self._holders:
            if key in given:  # a view of a weight or an input: not an activation
                return
            self._holders[key] = [tensor.untyped_storage().nbytes(), 0]
            self.live += self._holders[key][0]
            self.peak = max(self.peak, self.live)
        self._holders[key][1] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        holder = self._holders[key]
        holder[1] -= 1
        if holder[1] == 0:
            self.live -= holder[0]
            del self._holders[key]


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


def _fused_attention(query, key, value, *args, **kwargs):
    """What a fused attention kernel allocates: its output (the per-row softmax statistics are negligible)."""
    return query.new_empty(*query.shape[:-1], value.shape[-1])


def peak_activations(module: torch.nn.Module, call) -> int:
    """Peak activation bytes of `call(module)` for inference."""
    with (
        torch.no_grad(),
        mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", _fused_attention),
        PeakActivations() as tracker,
    ):
        call(module)
    return tracker.peak


@functools.cache
def transformer() -> WanTransformer3DModel:
    with torch.device("meta"):
        return WanTransformer3DModel(**A14B_EXPERT).to(torch.bfloat16)


@functools.cache
def vae() -> AutoencoderKLWan:
    with torch.device("meta"):  # float32, as the pipeline loads it
        return AutoencoderKLWan()


@functools.cache
def text_encoder() -> UMT5EncoderModel:
    with torch.device("meta"):
        return UMT5EncoderModel(UMT5Config(**UMT5_XXL)).to(torch.bfloat16)


def _transformer_call(latent_frames: int, height: int, width: int):
    hidden = torch.empty(1, 36, latent_frames, height // 8, width // 8, device="meta", dtype=torch.bfloat16)
    text = torch.empty(1, TEXT_TOKENS, 4096, device="meta", dtype=torch.bfloat16)
    timestep = torch.empty(1, device="meta")
    return lambda model: model(hidden_states=hidden, timestep=timestep, encoder_hidden_states=text, return_dict=False)


def _encode_call(frames: int, height: int, width: int):
    video = torch.empty(1, 3, frames, height, width, device="meta")
    return lambda model: model.encode(video)


def _decode_call(latent_frames: int, height: int, width: int):
    latents = torch.empty(1, 16, latent_frames, height // 8, width // 8, device="meta")
    return lambda model: model.decode(latents)


def _text_call():
    tokens = torch.zeros(1, TEXT_TOKENS, dtype=torch.long, device="meta")
    return lambda model: model(tokens)


@functools.cache
def transformer_step(latent_frames: int, height: int, width: int) -> float:
    """One expert forward pass (both experts share the architecture)."""
    return measure(transformer(), _transformer_call(latent_frames, height, width))


@functools.cache
def vae_encode(frames: int, height: int, width: int) -> float:
    return measure(vae(), _encode_call(frames, height, width))


@functools.cache
def vae_decode(latent_frames: int, height: int, width: int) -> float:
    return measure(vae(), _decode_call(latent_frames, height, width))


@functools.cache
def text_encoding() -> float:
    return measure(text_encoder(), _text_call())


def activation_peaks(settings: Settings) -> dict[str, int]:
    """Peak activation bytes of each model at the edit's largest shapes (the clip before dropout)."""
    height, width, frames = settings.height, settings.width, settings.frames
    latent_frames = (frames - 1) // 4 + 1
    return {
        "text encoder": peak_activations(text_encoder(), _text_call()),
        "expert step": peak_activations(transformer(), _transformer_call(latent_frames, height, width)),
        "VAE encode": peak_activations(vae(), _encode_call(frames, height, width)),
        "VAE decode": peak_activations(vae(), _decode_call(latent_frames, height, width)),
    }


def timesteps(settings: Settings, steps: int) -> list[float]:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=settings.shift)
    scheduler.set_timesteps(sigmas=uniform_sigmas(steps))
    return scheduler.timesteps.tolist()


def denoise_pass(settings: Settings, frames: int, steps: int, strength: float) -> dict[str, float]:
    """FLOPs of one denoising pass split by expert, with dropout as the pipeline applies it."""
    latent_frames = (frames - 1) // 4 + 1
    schedule = timesteps(settings, steps)[refine_start_step(steps, strength) :]
    drop_at = dropout_step(schedule, settings.tld_threshold * 1000) if settings.tld_stride > 1 else None
    passes = 2 if settings.guidance > 1 else 1
    totals = {"high-noise steps": 0.0, "low-noise steps": 0.0}
    current = latent_frames
    for index, timestep in enumerate(schedule):
        if index == drop_at:
            current = len(kept_frame_indices(latent_frames, settings.tld_stride))
        flops = transformer_step(current, settings.height, settings.width)
        stage = "high-noise steps" if timestep >= settings.boundary * 1000 else "low-noise steps"
        totals[stage] += passes * flops
    totals["frames decoded"] = current if settings.decode == "all" else min(current, 2)
    return totals


def edit_flops(settings: Settings) -> dict[str, float]:
    """FLOPs per stage of one edit."""
    prompts = (2 if settings.refine else 1) * (2 if settings.guidance > 1 else 1)
    stages: dict[str, float] = {"text encoding": prompts * text_encoding()}
    passes = [("edit", settings.frames, settings.steps, 1.0)]
    if settings.refine:
        refine_frames = settings.refine_frames or settings.frames
        passes.append(("refine", refine_frames, settings.refine_steps or settings.steps, settings.refine_strength))
    for name, frames, steps, strength in passes:
        prefix = "" if name == "edit" else "refine "
        encodes = 1 if strength >= 1 else 2  # a partial-strength refinement also encodes the still clip
        stages[prefix + "VAE encode"] = encodes * vae_encode(frames, settings.height, settings.width)
        denoise = denoise_pass(settings, frames, steps, strength)
        decoded = int(denoise.pop("frames decoded"))
        stages.update({prefix + key: value for key, value in denoise.items()})
        stages[prefix + "VAE decode"] = vae_decode(decoded, settings.height, settings.width)
    return stages


def report(name: str, settings: Settings) -> float:
    stages = edit_flops(settings)
    total = sum(stages.values())
    print(f"\n{name}: {settings}")
    print("| stage | TFLOPs | share | s at 989 TFLOP/s | s at 790 TFLOP/s |\n|---|---|---|---|---|")
    for stage, flops in stages.items():
        seconds = f"{flops / H100_PEAK:.2f} | {flops / MEASURED_RATE:.2f}"
        print(f"| {stage} | {flops / 1e12:,.0f} | {flops / total:.1%} | {seconds} |")
    print(f"| **total** | {total / 1e12:,.0f} | 100% | {total / H100_PEAK:.2f} | {total / MEASURED_RATE:.2f} |")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        elif field.type == "str":
            parser.add_argument(flag, choices=["all", "needed"], default=field.default)
        else:
            parser.add_argument(flag, type=float if "float" in field.type else int, default=field.default)
    settings = Settings(**{key.replace("-", "_"): value for key, value in vars(parser.parse_args()).items()})

    paper = report("IF-Edit as asked", settings)
    no_dropout = report(
        "the same with K = 1 (no temporal latent dropout)", dataclasses.replace(settings, tld_stride=1)
    )
    fast = report(
        "the same with --fast (" + ", ".join(f"{name}={value}" for name, value in FAST_SETTINGS.items()) + ")",
        dataclasses.replace(settings, refine_frames=FAST_SETTINGS["refine_frames"],
                            refine_strength=FAST_SETTINGS["refine_strength"], decode=FAST_SETTINGS["decode_frames"]),
    )  # fmt: skip
    plain = report(
        "plain Wan2.2 I2V (81 frames, 40 steps, guidance 3.5, no refinement)",
        dataclasses.replace(settings, frames=81, steps=40, guidance=3.5, tld_stride=1, refine=False),
    )
    print(f"\npeak activation memory at {settings.height}x{settings.width}, {settings.frames} frames (bf16 experts "
          "and text encoder, float32 VAE, fused attention):")  # fmt: skip
    print("| model | GiB |\n|---|---|")
    for model, peak in activation_peaks(settings).items():
        print(f"| {model} | {peak / 2**30:.2f} |")
    print(f"\nIF-Edit / K = 1: {paper / no_dropout:.2f}  (dropout saves {1 - paper / no_dropout:.0%})")
    print(f"IF-Edit / plain Wan2.2 I2V: {paper / plain:.3f}")
    print(f"--fast / IF-Edit as asked: {fast / paper:.2f} (goal: <= 0.5)")
    tokens = (settings.height // 16) * (settings.width // 16) * ((settings.frames - 1) // 4 + 1)
    print(f"tokens per step before dropout: {tokens:,}")


if __name__ == "__main__":
    main()
