"""Watching a real pipeline from outside: forward hooks that record each expert call, and independent references.

The method's tests compare what the experts were given (frames, text, rotary positions) with what the paper's
recipe says they should get, and recompute the pipeline's choices (the sharpest frame) with separate code.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

EXPERTS = ("transformer", "transformer_2")


@dataclass
class ExpertCall:
    """One transformer call: which pass and expert, what went in, the rotary table its blocks used, what came out."""

    stage: str | None
    expert: str
    hidden_states: torch.Tensor
    timestep: torch.Tensor
    text: torch.Tensor
    rope: tuple[torch.Tensor, torch.Tensor]
    output: torch.Tensor

    @property
    def frames(self) -> int:
        return self.hidden_states.shape[2]

    @property
    def t(self) -> float:
        """The step's timestep (TI2V gives one per token, the clean first frame's are 0: the last is the step's)."""
        return self.timestep.flatten()[-1].item()


@contextlib.contextmanager
def recorded_calls(pipe) -> Iterator[list[ExpertCall]]:
    """Record every expert call while the block runs; the hooks are gone afterwards."""
    calls: list[ExpertCall] = []
    handles = []
    for name in EXPERTS:
        model = getattr(pipe, name, None)
        if model is None:
            continue
        rope: list[tuple[torch.Tensor, torch.Tensor]] = []

        def block_hook(module, args, rope=rope):
            # WanTransformer3DModel calls each block as block(hidden, text, timestep_proj, rotary_emb).
            rope.append(tuple(freqs.clone() for freqs in args[3]))

        def model_hook(module, args, kwargs, output, name=name, rope=rope):
            calls.append(
                ExpertCall(
                    stage=pipe.stage,
                    expert=name,
                    hidden_states=kwargs["hidden_states"].clone(),
                    timestep=kwargs["timestep"].clone(),
                    text=kwargs["encoder_hidden_states"].clone(),
                    rope=rope.pop(),
                    output=output[0].clone(),
                )
            )

        handles.append(model.blocks[0].register_forward_pre_hook(block_hook))
        handles.append(model.register_forward_hook(model_hook, with_kwargs=True))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def steps_of(calls: list[ExpertCall]) -> list[list[ExpertCall]]:
    """Calls grouped into denoising steps: consecutive calls of one pass at one timestep (cond, then uncond)."""
    return [list(group) for _, group in itertools.groupby(calls, key=lambda call: (call.stage, call.t))]


def frame_rows(freqs: torch.Tensor, frames: list[int], num_frames: int) -> torch.Tensor:
    """The rows of a rotary table (1, num_frames * tokens, 1, dim) that belong to `frames`, in that order."""
    tokens = freqs.shape[1] // num_frames
    return torch.cat([freqs[:, frame * tokens : (frame + 1) * tokens] for frame in frames], dim=1)


def laplacian_variance_of(pixels: np.ndarray) -> float:
    """Sharpness of an (H, W, 3) 0-255 image in NumPy: rounded BT.601 luma, 4-neighbour Laplacian, variance."""
    gray = np.round(np.asarray(pixels, dtype=np.float64) @ np.array([0.299, 0.587, 0.114]))
    lap = gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:] - 4 * gray[1:-1, 1:-1]
    return float(lap.var())


def to_pixels(frame: np.ndarray) -> np.ndarray:
    """A float frame in [0, 1] (the pipeline's "np" output) as the 0-255 values a saved PNG holds."""
    return np.round(np.clip(frame, 0, 1) * 255)
