"""Temporal latent dropout (SPEC step 3): once the motion is laid out, keep every K-th latent frame and the last.

Everything indexed by latent frame must be thinned with the same indices at the same step: the noisy latent, the
I2V condition (mask + image latent), the TI2V first-frame mask, and a multistep scheduler's stored history.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch

from .errors import InvalidInputError


def kept_frame_indices(num_frames: int, stride: int, also: Sequence[int] = ()) -> list[int]:
    """Latent frames that survive dropout: {0, K, 2K, ...} plus always the last one, F - 1, and any in `also`
    (the frame an edit position asks for, so it is denoised rather than dropped)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    if any(not 0 <= index < num_frames for index in also):
        raise ValueError(f"frames to keep must lie in [0, {num_frames}), got {list(also)}")
    return sorted({*range(0, num_frames, stride), num_frames - 1, *also})


def position_latent_frame(num_frames: int, position: float) -> int:
    """The latent frame nearest to `position` along a clip of `num_frames` latent frames (0: the source, 1: the
    last frame), halves rounded up so 0.5 of an even span lands on the later frame."""
    return math.floor(position * (num_frames - 1) + 0.5)


def clip_frame_index(frame: int, kept: Sequence[int] | None, temporal_scale: int) -> int:
    """A pixel frame of a decoded (possibly thinned) clip, numbered as in the whole clip before dropout.

    Latent frame 0 decodes to pixel frame 0 and latent frame j >= 1 to pixel frames (j-1)T+1 ... jT, so a thinned
    clip's frames sit where their latent frame was in the whole clip."""
    if frame == 0 or kept is None:
        return frame
    latent, within = divmod(frame - 1, temporal_scale)
    return (kept[latent + 1] - 1) * temporal_scale + 1 + within


def dropout_step(timesteps: Sequence[float] | torch.Tensor, threshold_timestep: float) -> int | None:
    """Index of the first step whose timestep falls below the threshold, or None if no step does."""
    for index, timestep in enumerate(timesteps):
        if float(timestep) < threshold_timestep:
            return index
    return None


def slice_frames(tensor: torch.Tensor, kept: Sequence[int], num_frames: int, dim: int = 2) -> torch.Tensor:
    """Keep `kept` along the frame axis; a tensor that broadcasts over frames (size 1 there) passes unchanged."""
    if tensor.shape[dim] == num_frames:
        return tensor.index_select(dim, torch.as_tensor(list(kept), device=tensor.device))
    if tensor.shape[dim] == 1:
        return tensor
    raise ValueError(f"expected {num_frames} or 1 frames on dim {dim}, got shape {tuple(tensor.shape)}")


# The frame-indexed state each scheduler keeps between steps (read from diffusers; tests/test_dropout.py fails when an
# installed version keeps more): lists of past model outputs and single tensors. Subclasses inherit their base's.
SCHEDULER_HISTORY: dict[str, tuple[str, ...]] = {
    "FlowMatchEulerDiscreteScheduler": (),
    "FlowMatchLCMScheduler": (),
    "UniPCMultistepScheduler": ("model_outputs", "last_sample"),
    "DPMSolverMultistepScheduler": ("model_outputs",),
    "DEISMultistepScheduler": ("model_outputs",),
}


def scheduler_history(scheduler) -> tuple[str, ...]:
    """The attributes of `scheduler` that hold frame-indexed history; InvalidInputError for a scheduler not listed in
    SCHEDULER_HISTORY, whose state dropout could leave at the old length (a crash or a wrong step later)."""
    for cls in type(scheduler).__mro__:
        if cls.__name__ in SCHEDULER_HISTORY:
            return SCHEDULER_HISTORY[cls.__name__]
    raise InvalidInputError(
        f"temporal latent dropout cannot thin the history of {type(scheduler).__name__}: use one of "
        f"{', '.join(SCHEDULER_HISTORY)}, or tld_stride 1 (no dropout)"
    )


def slice_scheduler_history(scheduler, kept: Sequence[int], num_frames: int) -> list[str]:
    """Thin the scheduler's stored history (`scheduler_history`) in place; return the attributes that held some."""
    touched = []
    for name in scheduler_history(scheduler):
        value = getattr(scheduler, name)
        if isinstance(value, torch.Tensor):
            setattr(scheduler, name, slice_frames(value, kept, num_frames))
            touched.append(name)
        elif isinstance(value, list) and any(item is not None for item in value):
            thinned = [None if item is None else slice_frames(item, kept, num_frames) for item in value]
            setattr(scheduler, name, thinned)
            touched.append(name)
    return touched


def reset_scheduler_history(scheduler) -> None:
    """Forget a multistep scheduler's history so its next step is first order (the alternative to slicing)."""
    for name in scheduler_history(scheduler):
        value = getattr(scheduler, name)
        setattr(scheduler, name, [None] * len(value) if isinstance(value, list) else None)
    if hasattr(scheduler, "lower_order_nums"):
        scheduler.lower_order_nums = 0


@contextlib.contextmanager
def original_positions(transformers: Sequence[torch.nn.Module], kept: Sequence[int], num_frames: int) -> Iterator:
    """Give the kept frames the temporal RoPE positions they had before dropout instead of contiguous ones.

    diffusers' Wan RoPE is computed from the (shorter) latent grid, which renumbers the kept frames 0, 1, 2, ...;
    this hooks each transformer's `rope` to compute the full grid and pick the kept frames' rows.
    """
    index = torch.as_tensor(list(kept))

    def hook(module, args, output):
        hidden_states = args[0]
        batch, channels, frames, height, width = hidden_states.shape
        if frames // module.patch_size[0] != len(kept):
            return output
        full = module.forward(
            torch.empty(batch, channels, num_frames * module.patch_size[0], height, width, device="meta")
        )
        return tuple(_pick_frames(freqs, index, num_frames) for freqs in full)

    handles = [model.rope.register_forward_hook(hook) for model in transformers if model is not None]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _pick_frames(freqs: torch.Tensor, index: torch.Tensor, num_frames: int) -> torch.Tensor:
    # freqs: (1, frames * tokens_per_frame, 1, dim), frame-major.
    per_frame = freqs.view(freqs.shape[0], num_frames, -1, *freqs.shape[2:])
    return per_frame[:, index.to(freqs.device)].reshape(freqs.shape[0], -1, *freqs.shape[2:])
