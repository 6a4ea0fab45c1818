"""Temporal latent dropout's maths, without a model: kept frames, the cut step, tensor and scheduler slicing."""

import diffusers
import pytest
import torch
from diffusers import (
    EulerAncestralDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
    WanTransformer3DModel,
)

from ifedit.dropout import (
    SCHEDULER_HISTORY,
    dropout_step,
    kept_frame_indices,
    original_positions,
    reset_scheduler_history,
    scheduler_history,
    slice_frames,
    slice_scheduler_history,
)
from ifedit.errors import InvalidInputError


@pytest.mark.parametrize(
    ("num_frames", "stride", "expected"),
    [
        (9, 3, [0, 3, 6, 8]),
        (9, 1, list(range(9))),
        (9, 2, [0, 2, 4, 6, 8]),
        (9, 4, [0, 4, 8]),
        (21, 3, [0, 3, 6, 9, 12, 15, 18, 20]),
        (21, 4, [0, 4, 8, 12, 16, 20]),
        (2, 3, [0, 1]),
        (1, 3, [0]),
        (10, 10, [0, 9]),
    ],
)
def test_kept_frames_are_every_kth_plus_the_last(num_frames, stride, expected):
    assert kept_frame_indices(num_frames, stride) == expected


def test_kept_frames_rejects_bad_arguments():
    with pytest.raises(ValueError, match="stride must be at least 1"):
        kept_frame_indices(9, 0)
    with pytest.raises(ValueError, match="num_frames must be at least 1"):
        kept_frame_indices(0, 3)


def test_dropout_happens_at_the_first_step_below_the_threshold():
    timesteps = [1000.0, 972.2, 937.5, 892.9, 833.3, 750.0, 625.0, 416.7]
    assert dropout_step(timesteps, 900) == 3
    assert dropout_step(timesteps, 1000.1) == 0
    assert dropout_step(timesteps, 937.5) == 3  # strictly below: 937.5 itself still runs on all frames
    assert dropout_step(timesteps, 100) is None
    assert dropout_step(torch.tensor(timesteps), 900) == 3


def test_slice_frames_keeps_indices_and_passes_broadcast_tensors():
    video = torch.arange(2 * 3 * 9 * 2 * 2, dtype=torch.float32).view(2, 3, 9, 2, 2)
    kept = [0, 3, 6, 8]
    sliced = slice_frames(video, kept, 9)
    assert sliced.shape == (2, 3, 4, 2, 2)
    for position, frame in enumerate(kept):
        assert torch.equal(sliced[:, :, position], video[:, :, frame])
    broadcast = torch.ones(1, 1, 1, 2, 2)
    assert slice_frames(broadcast, kept, 9) is broadcast
    with pytest.raises(ValueError, match="expected 9 or 1 frames"):
        slice_frames(torch.ones(1, 1, 5, 2, 2), kept, 9)


def _stepped_unipc(num_frames: int, steps_done: int) -> tuple[UniPCMultistepScheduler, torch.Tensor]:
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    scheduler.set_timesteps(8)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, num_frames, 2, 2, generator=generator)
    for t in scheduler.timesteps[:steps_done]:
        sample = scheduler.step(torch.randn(sample.shape, generator=generator), t, sample).prev_sample
    return scheduler, sample


def test_unipc_history_is_sliced_like_the_latent():
    scheduler, sample = _stepped_unipc(9, 3)
    before_outputs = [output.clone() for output in scheduler.model_outputs]
    before_last = scheduler.last_sample.clone()
    kept = [0, 3, 6, 8]
    touched = slice_scheduler_history(scheduler, kept, 9)
    assert set(touched) == {"model_outputs", "last_sample"}
    for before, after in zip(before_outputs, scheduler.model_outputs, strict=True):
        assert torch.equal(after, before[:, :, kept])
    assert torch.equal(scheduler.last_sample, before_last[:, :, kept])


def test_sliced_unipc_run_equals_running_the_kept_frames_throughout():
    """The scheduler treats frames independently, so a run cut mid-way must match one that only ever had them."""
    kept = [0, 3, 6, 8]
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(1, 4, 9, 2, 2, generator=generator)
    noises = [torch.randn(1, 4, 9, 2, 2, generator=generator) for _ in range(8)]

    def scheduler():
        s = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
        s.set_timesteps(8)
        return s

    cut, sample = scheduler(), start
    reference, reference_sample = scheduler(), start[:, :, kept]
    for step, t in enumerate(cut.timesteps):
        if step == 3:
            sample = sample[:, :, kept]
            slice_scheduler_history(cut, kept, 9)
        noise = noises[step] if step < 3 else noises[step][:, :, kept]
        sample = cut.step(noise, t, sample).prev_sample
        reference_sample = reference.step(noises[step][:, :, kept], t, reference_sample).prev_sample
    assert torch.isfinite(sample).all()
    torch.testing.assert_close(sample, reference_sample, rtol=0, atol=1e-6)


def test_reset_history_makes_the_next_step_first_order():
    scheduler, sample = _stepped_unipc(9, 3)
    reset_scheduler_history(scheduler)
    assert scheduler.lower_order_nums == 0
    assert scheduler.last_sample is None
    assert all(output is None for output in scheduler.model_outputs)
    sample = sample[:, :, [0, 3, 6, 8]]
    t = scheduler.timesteps[3]
    scheduler.step(torch.randn(sample.shape), t, sample)
    assert scheduler.this_order == 1


def _stepped(name: str, steps_done: int) -> tuple[object, torch.Tensor]:
    """A scheduler of class `name` (flow-matching where it can be) a few steps into a 9-frame video."""
    cls = getattr(diffusers, name)
    config = cls().config
    flow = {"use_flow_sigmas": True, "flow_shift": 5.0, "prediction_type": "flow_prediction"}
    scheduler = cls(**{key: value for key, value in flow.items() if key in config})
    scheduler.set_timesteps(8)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 9, 2, 2, generator=generator)
    for t in scheduler.timesteps[:steps_done]:
        sample = scheduler.step(torch.randn(sample.shape, generator=generator), t, sample).prev_sample
    return scheduler, sample


def _frame_indexed_state(scheduler) -> set[str]:
    """Every attribute holding a 9-frame tensor, alone or in a list: what dropout would leave at the old length."""

    def video(value) -> bool:
        return isinstance(value, torch.Tensor) and value.ndim == 5 and value.shape[2] == 9

    return {
        name
        for name, value in vars(scheduler).items()
        if video(value) or (isinstance(value, list) and any(video(item) for item in value))
    }


@pytest.mark.parametrize("name", list(SCHEDULER_HISTORY))
def test_each_known_schedulers_listed_history_is_all_the_frame_state_it_keeps(name):
    """Fails when the installed diffusers keeps more (or other) frame-indexed state than SCHEDULER_HISTORY lists."""
    scheduler, sample = _stepped(name, 3)
    assert _frame_indexed_state(scheduler) <= set(scheduler_history(scheduler))
    kept = [0, 3, 6, 8]
    slice_scheduler_history(scheduler, kept, 9)
    assert not _frame_indexed_state(scheduler)  # nothing left at 9 frames
    thinned = scheduler.step(torch.randn(1, 4, len(kept), 2, 2), scheduler.timesteps[3], sample[:, :, kept])
    assert thinned.prev_sample.shape == (1, 4, len(kept), 2, 2)
    again, sample = _stepped(name, 3)
    reset_scheduler_history(again)
    assert not _frame_indexed_state(again)
    again.step(torch.randn(1, 4, len(kept), 2, 2), again.timesteps[3], sample[:, :, kept])


def test_an_unknown_scheduler_is_refused_by_name_rather_than_left_at_the_old_length():
    scheduler = EulerAncestralDiscreteScheduler()
    message = "temporal latent dropout cannot thin the history of EulerAncestralDiscreteScheduler: use one of"
    with pytest.raises(InvalidInputError, match=message):
        slice_scheduler_history(scheduler, [0, 3], 5)
    with pytest.raises(InvalidInputError, match=message):
        reset_scheduler_history(scheduler)


def test_a_subclass_of_a_known_scheduler_has_its_bases_history():
    class Tuned(UniPCMultistepScheduler):
        pass

    assert scheduler_history(Tuned()) == ("model_outputs", "last_sample")


def test_euler_has_no_history_to_slice():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    scheduler.set_timesteps(8)
    sample = torch.randn(1, 4, 9, 2, 2)
    scheduler.step(torch.randn_like(sample), scheduler.timesteps[0], sample)
    assert slice_scheduler_history(scheduler, [0, 3, 6, 8], 9) == []
    reset_scheduler_history(scheduler)  # a no-op, not an error


def test_original_positions_give_kept_frames_their_full_clip_rope_rows():
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=8, freq_dim=16, ffn_dim=8, num_layers=1, rope_max_seq_len=32,
    )  # fmt: skip
    kept, total = [0, 3, 6, 8], 9
    full_cos, full_sin = transformer.rope(torch.zeros(1, 4, total, 4, 6))
    tokens = 2 * 3
    contiguous_cos, _ = transformer.rope(torch.zeros(1, 4, len(kept), 4, 6))
    with original_positions([transformer, None], kept, total):
        cos, sin = transformer.rope(torch.zeros(1, 4, len(kept), 4, 6))
        unchanged_cos, _ = transformer.rope(torch.zeros(1, 4, total, 4, 6))  # other sizes pass through
    for position, frame in enumerate(kept):
        rows = slice(position * tokens, (position + 1) * tokens)
        assert torch.equal(cos[:, rows], full_cos[:, frame * tokens : (frame + 1) * tokens])
        assert torch.equal(sin[:, rows], full_sin[:, frame * tokens : (frame + 1) * tokens])
    assert not torch.equal(cos, contiguous_cos)
    assert torch.equal(unchanged_cos, full_cos)
    after_cos, _ = transformer.rope(torch.zeros(1, 4, len(kept), 4, 6))
    assert torch.equal(after_cos, contiguous_cos)  # the hook is gone after the block
