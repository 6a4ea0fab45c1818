"""Train the toy world's model from one command with fixed seeds: the VAE, then both experts and the text encoder.

Stage 1 fits the causal VAE to clips; stage 2 caches the latents of a fixed set of training clips and fits the two
experts with flow matching, each on its side of the noise boundary, as Wan2.2 splits them. The result is saved as
a diffusers pipeline folder that `IFEditPipeline.from_pretrained` loads. Training seeds stay below
`EVAL_SEED_START`, so evaluation scenes are never seen.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan

from ..dropout import kept_frame_indices, slice_frames
from ..errors import InvalidInputError
from ..pipeline import DEFAULT_REFINE_PROMPT, IFEditPipeline
from ..prompting.template import template_prompt
from .config import TrainConfig
from .model import (
    BOUNDARY_RATIO,
    build_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_transformer,
    build_vae,
    vocabulary,
)
from .run_folder import claimed, finish, save_vae, save_whole, saved_vae_record
from .scenes import (
    COLOURS,
    EVAL_SEED_START,
    EVENTS,
    HORIZONTAL,
    NUM_FRAMES,
    VERTICAL,
    places,
    render_clip,
    sample_case,
)

logger = logging.getLogger("ifedit")

# Whole clips: a VAE trained on 9-frame windows (two 4-frame chunks) was measured to drift on the later chunks of
# 17-frame clips, whose last frames are exactly the ones IF-Edit reads the edit from.
VAE_CLIP_FRAMES = NUM_FRAMES
DIT_SEED_START = 500_000
# Text embeddings are padded to this many positions, as the pipeline pads them to its `max_sequence_length`
# (Wan: 512; the toyworld preset: 128, which makes the experts' text side four times cheaper to train).
TEXT_SEQUENCE = 128
# Temporal latent dropout strides the model learns to continue after (the pipeline's K = 2, 3 and 4).
THINNED_STRIDES = (2, 3, 4)
# Measured: with equal weights frame 0 was the worst-reconstructed frame of a clip (L1 0.074 vs 0.045-0.070).
FIRST_FRAME_WEIGHT = 4.0
# Extra weight of the expert loss where the clip changes. The changing shape covers a few percent of a clip, the
# rest is a copy of the first frame, and with a plain loss the trained experts ignored the text: the same output
# for "move ... left" and "... right" (transformer outputs 1% apart, 4,500 steps).
CHANGE_WEIGHT = 8.0
# A pixel counts as changed when it differs from frame 0 by more than this, in [-1, 1] units (about 13 of 255).
CHANGE_THRESHOLD = 0.1


def clips_tensor(seeds: list[int], frames: int, offsets: list[int] | None = None) -> torch.Tensor:
    """Rendered clips as a (B, 3, T, H, W) tensor in [-1, 1]; `offsets` pick a window of a 17-frame clip."""
    clips = []
    for index, seed in enumerate(seeds):
        clip = render_clip(sample_case(seed))
        start = offsets[index] if offsets else 0
        clips.append(clip[start : start + frames])
    array = np.stack(clips).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 4, 1, 2, 3).contiguous()


def train_vae(config: TrainConfig, log: Callable[[str], None]) -> tuple[AutoencoderKLWan, list[float]]:
    """Stage 1: reconstruct training clips (L1 + MSE weighted towards shapes, a whisper of KL)."""
    vae = build_vae(config.seed).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.vae_lr, total_steps=config.vae_steps, pct_start=0.05
    )
    rng = np.random.default_rng(config.seed)
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(config.vae_steps):
        seeds = [int(seed) for seed in rng.integers(0, DIT_SEED_START, size=config.vae_batch)]
        offsets = [int(offset) for offset in rng.integers(0, NUM_FRAMES - VAE_CLIP_FRAMES + 1, size=config.vae_batch)]
        clips = clips_tensor(seeds, VAE_CLIP_FRAMES, offsets)
        posterior = vae.encode(clips).latent_dist
        # Decode the posterior mean: the pipeline only ever uses it, and sampling from a fresh encoder's wide
        # posterior teaches the decoder to ignore its input and paint the average background.
        latents, clips = decoder_view(posterior.mode(), clips, rng, vae.config.scale_factor_temporal)
        loss = reconstruction_loss(vae.decode(latents).sample, clips) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        _log_progress(log, "vae", step, config.vae_steps, losses, start, config.log_every)
    return vae.eval(), losses


def train_decoder(
    vae: AutoencoderKLWan,
    config: TrainConfig,
    log: Callable[[str], None],
    stage: str = "decoder",
) -> list[float]:
    """Stages 1b-1e: the decoder alone, on the frozen encoder's latents, so the latents the experts learn from do not
    change.

    - "decoder" (1b): jointly trained, the toy VAE put shapes in the right places but in washed-out or shifted
      colours (red drifting to orange); with the latents fixed the decoder can spend its capacity on colour.
    - "decoder windows" (1c): the views the pipeline decodes (`pipeline_view`), so that decoding only the last
      latent frames (`decode_frames="needed"`) works too.
    - "decoder edges" (1d): the same views with `edge_loss`. After 1b-1c the decoder drew every shape 1.2-2 times
      too large (`object_weight` makes a missing shape pixel cost 11 times a shape-coloured background pixel, so a
      blurry decoder gains by spilling colour outwards), and the VAE round trip met 45% of the held-out targets.
    - "decoder polish" (1e): the edge stage again, at a third of its rate and on other clips. The edge stage's
      loss was still falling when its cosine schedule ended: a trial of 800 more steps took the round trip from
      72% to 80% of the held-out targets."""
    if stage not in DECODER_STAGES:
        raise ValueError(f"unknown decoder stage {stage!r}; choose one of {', '.join(DECODER_STAGES)}")
    spec = DECODER_STAGES[stage]
    trained = decoder_only(vae)
    steps, lr = getattr(config, spec.steps_field), getattr(config, spec.lr_field)
    optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    rng = np.random.default_rng(config.seed + spec.seed_offset)
    losses: list[float] = []
    start = time.perf_counter()
    vae.train()
    for step in range(steps):
        seeds = [int(seed) for seed in rng.integers(0, DIT_SEED_START, size=config.vae_batch)]
        losses.append(decoder_step(vae, seeds, spec.view, spec.loss, rng, optimizer, trained))
        schedule.step()
        _log_progress(log, stage, step, steps, losses, start, config.log_every)
    vae.eval()
    return losses


def decoder_only(vae: AutoencoderKLWan) -> list[torch.nn.Parameter]:
    """Freeze the VAE but its decoder (and the convolution before it); return the parameters left to train."""
    for parameter in vae.parameters():
        parameter.requires_grad_(False)
    trained = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for parameter in trained:
        parameter.requires_grad_(True)
    return trained


def decoder_step(
    vae: AutoencoderKLWan,
    seeds: list[int],
    view: Callable,
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    rng: np.random.Generator,
    optimizer: torch.optim.Optimizer,
    trained: list[torch.nn.Parameter],
) -> float:
    """One optimiser step of the decoder on the clips of `seeds`: encoded by the frozen encoder, cut to `view`
    (`decoder_view`, `pipeline_view`), decoded and scored by `loss_of`. Returns the loss."""
    clips = clips_tensor(seeds, VAE_CLIP_FRAMES)
    with torch.no_grad():
        latents = vae.encode(clips).latent_dist.mode()
    latents, clips = view(latents, clips, rng, vae.config.scale_factor_temporal)
    loss = loss_of(vae.decode(latents).sample, clips)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trained, 1.0)
    optimizer.step()
    return loss.item()


def decoder_view(
    latents: torch.Tensor, clips: torch.Tensor, rng: np.random.Generator, temporal: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Half the time, the latents thinned as temporal latent dropout thins them, with the frames they stand for.

    After dropout the pipeline decodes the kept latent frames as one short clip, so the causal decoder meets jumps
    in time it never saw: measured on a VAE trained on whole clips only, the last frame's error doubled (L1 6 to
    13 of 255). Latent frame 0 stands for frame 0 and latent frame j for frames 4j-3 .. 4j."""
    if rng.random() < 0.5:
        return latents, clips
    kept = kept_frame_indices(latents.shape[2], int(rng.choice(THINNED_STRIDES)))
    return latents[:, :, kept], clips[:, :, paired_frames(kept, temporal)]


def pipeline_view(
    latents: torch.Tensor, clips: torch.Tensor, rng: np.random.Generator, temporal: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every view of a clip the pipeline decodes: 40% `decoder_view` (whole or thinned from frame 0), 30% the
    last two latent frames (what `decode_frames="needed"` decodes), 30% a window from a random latent frame on.

    A window that starts at latent frame j > 0 decodes j as a first frame, into one frame (`paired_frames`).
    Measured before this stage: decoding the last two latent frames alone gave a
    background error of 30 of 255 (4.7 for the whole clip)."""
    draw = rng.random()
    if draw < 0.4:
        return decoder_view(latents, clips, rng, temporal)
    count = latents.shape[2]
    first = count - 2 if draw < 0.7 else int(rng.integers(1, count - 1))
    kept = list(range(first, count))
    return latents[:, :, kept], clips[:, :, paired_frames(kept, temporal)]


def paired_frames(kept: list[int], temporal: int = 4) -> list[int]:
    """The video frames that decoding the latent frames `kept` as one clip stands for: the first decodes alone into
    one frame, the last of those it covers (frame 0 for latent frame 0, 4j for j > 0); each later one, j, into the
    four frames 4j-3 .. 4j."""
    later = [frame for j in kept[1:] for frame in range(temporal * j - temporal + 1, temporal * j + 1)]
    return [temporal * kept[0], *later]


def _log_progress(log, stage: str, step: int, total: int, losses: list[float], start: float, every: int) -> None:
    """Every `every` steps and at the last: the stage's mean loss over those steps and its seconds per step."""
    if (step + 1) % every == 0 or step + 1 == total:
        seconds = (time.perf_counter() - start) / (step + 1)
        log(f"{stage} step {step + 1}/{total} loss {np.mean(losses[-every:]):.4f} ({seconds:.2f} s/step)")


def reconstruction_loss(reconstruction: torch.Tensor, clips: torch.Tensor) -> torch.Tensor:
    """L1 + MSE, weighted towards shapes and the first frame."""
    error = (reconstruction - clips).abs() + (reconstruction - clips) ** 2
    return (error * object_weight(clips) * frame_weight(clips)).mean()


def edge_loss(reconstruction: torch.Tensor, clips: torch.Tensor) -> torch.Tensor:
    """L1 + MSE and the L1 of the horizontal and vertical pixel differences, weighted by `edge_weight`: a shape's
    border costs the same on both sides, so spilling colour outwards no longer pays, and the difference term asks
    for edges as steep as the target's."""
    weight = edge_weight(clips) * frame_weight(clips)
    error = (reconstruction - clips).abs() + (reconstruction - clips) ** 2
    loss = (error * weight).mean()
    for axis in (-1, -2):
        difference = reconstruction.diff(dim=axis) - clips.diff(dim=axis)
        loss = loss + (difference.abs() * weight.narrow(axis, 1, weight.shape[axis] - 1)).mean()
    return loss


def edge_weight(clips: torch.Tensor, weight: float = 10.0, reach: int = 3) -> torch.Tensor:
    """`object_weight` grown by `reach` pixels: the background just around a shape weighs as much as the shape."""
    size = 2 * reach + 1
    grown = F.max_pool3d(shape_pixels(clips), kernel_size=(1, size, size), stride=1, padding=(0, reach, reach))
    return 1.0 + weight * grown


def object_weight(clips: torch.Tensor, weight: float = 10.0) -> torch.Tensor:
    """Per-pixel loss weights: shapes are saturated and backgrounds muted, and shapes cover a few percent of a
    frame, so without extra weight a reconstruction loss is satisfied by the background alone."""
    return 1.0 + weight * shape_pixels(clips)


def shape_pixels(clips: torch.Tensor) -> torch.Tensor:
    """1 where a pixel is saturated (a shape's colour), else 0, as (B, 1, T, H, W)."""
    saturation = clips.amax(dim=1, keepdim=True) - clips.amin(dim=1, keepdim=True)
    return (saturation > 0.6).float()


def frame_weight(clips: torch.Tensor, first: float = FIRST_FRAME_WEIGHT) -> torch.Tensor:
    """Per-frame loss weights, (1, 1, T, 1, 1): frame 0 is encoded alone into its own latent frame and is all the
    I2V condition carries, so its reconstruction error costs more."""
    weight = torch.ones(1, 1, clips.shape[2], 1, 1)
    weight[:, :, 0] = first
    return weight


class DecoderStage(NamedTuple):
    """One decoder-only stage of `train_decoder`."""

    steps_field: str  # TrainConfig's field for its number of steps
    lr_field: str  # and for its learning rate
    seed_offset: int  # its random seed, from the training seed
    view: Callable  # what it decodes: (latents, clips, rng, temporal) -> (latents, clips)
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    record: str  # its loss curve's key in training.json


# The decoder-only stages, in the order training runs them.
DECODER_STAGES = {
    "decoder": DecoderStage("decoder_steps", "decoder_lr", 2, decoder_view, reconstruction_loss, "decoder_losses"),
    "decoder windows": DecoderStage(
        "window_steps", "window_lr", 3, pipeline_view, reconstruction_loss, "window_losses"
    ),
    "decoder edges": DecoderStage("edge_steps", "edge_lr", 4, pipeline_view, edge_loss, "edge_losses"),
    "decoder polish": DecoderStage("polish_steps", "polish_lr", 5, pipeline_view, edge_loss, "polish_losses"),
}


@torch.no_grad()
def set_latent_statistics(vae: AutoencoderKLWan, seeds: list[int]) -> None:
    """Store per-channel latent mean and std in the VAE's config, which the pipeline normalises with."""
    latents = torch.cat([vae.encode(clips_tensor(seeds[i : i + 16], NUM_FRAMES)).latent_dist.mode()
                         for i in range(0, len(seeds), 16)])  # fmt: skip
    mean = latents.mean(dim=(0, 2, 3, 4))
    std = latents.std(dim=(0, 2, 3, 4))
    vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())


def changed_regions(clips: torch.Tensor, temporal: int = 4, spatial: int = 4) -> torch.Tensor:
    """Where each latent position's pixels differ from frame 0, as a (B, 1, latent T, H/s, W/s) 0/1 float mask.

    Latent frame 0 stands for frame 0 (never changed) and latent frame j for frames 4j-3 .. 4j; a position counts
    as changed when any of its pixels in any of those frames does, grown by one latent pixel so the edges of a
    moving shape count too."""
    moved = ((clips - clips[:, :, :1]).abs().amax(dim=1, keepdim=True) > CHANGE_THRESHOLD).float()
    first = F.max_pool3d(moved[:, :, :1], kernel_size=(1, spatial, spatial))
    later = F.max_pool3d(moved[:, :, 1:], kernel_size=(temporal, spatial, spatial))
    mask = torch.cat([first, later], dim=2)
    return F.max_pool3d(mask, kernel_size=(1, 3, 3), stride=1, padding=(0, 1, 1))


def change_weight(changed: torch.Tensor) -> torch.Tensor:
    """Per-position loss weights from a `changed_regions` mask."""
    return 1.0 + CHANGE_WEIGHT * changed


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean squared error with per-position weights (broadcast over channels), normalised by the weights."""
    weight = weight.expand_as(target)
    return ((prediction - target) ** 2 * weight).sum() / weight.sum()


@torch.no_grad()
def encode_dataset(pipe: IFEditPipeline, seeds: list[int], log: Callable[[str], None]) -> dict[str, torch.Tensor]:
    """Normalised clean latents, I2V conditions and changed regions of the training clips, computed once."""
    clean, conditions, changed = [], [], []
    vae = pipe.vae
    mean, inverse_std = pipe._latent_stats(torch.zeros(1))
    start = time.perf_counter()
    for index in range(0, len(seeds), 16):
        clips = clips_tensor(seeds[index : index + 16], NUM_FRAMES)
        clean.append((vae.encode(clips).latent_dist.mode() - mean) * inverse_std)
        conditions.append(i2v_condition(pipe, clips[:, :, 0], NUM_FRAMES))
        changed.append(changed_regions(clips, pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial))
        if (index // 16) % 50 == 0:
            log(f"encoded {index + len(clips)}/{len(seeds)} training clips ({time.perf_counter() - start:.0f} s)")
    return {"latents": torch.cat(clean), "conditions": torch.cat(conditions), "changed": torch.cat(changed)}


@torch.no_grad()
def i2v_condition(pipe: IFEditPipeline, first_frames: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The I2V condition for a batch of first frames, as `WanImageToVideoPipeline.prepare_latents` builds it for
    one: a 4-channel mask marking latent frame 0 as given, and the latent of [first frame, black frames...]."""
    batch, _, height, width = first_frames.shape
    video = torch.cat([first_frames.unsqueeze(2), first_frames.new_zeros(batch, 3, num_frames - 1, height, width)], 2)
    mean, inverse_std = pipe._latent_stats(video)
    latent = (pipe.vae.encode(video).latent_dist.mode() - mean) * inverse_std
    mask = torch.zeros(batch, pipe.vae_scale_factor_temporal, *latent.shape[2:])
    mask[:, :, 0] = 1
    return torch.cat([mask, latent], dim=1)


def sample_text(case, rng: np.random.Generator, dropout: float) -> str:
    """One wording of the case: mostly its instruction as given, sometimes its caption or either through the offline
    template, or empty (for CFG). Measured on move clips: with the long template wordings as common as the raw
    instruction, 600 expert steps left the direction unread (loss with "left" and "right" swapped unchanged); with
    raw instructions alone the swapped direction cost 13% more."""
    draw = rng.random()
    if draw < dropout:
        return ""
    if case.event == "still" and rng.random() < 0.5:
        return DEFAULT_REFINE_PROMPT
    choice = rng.random()
    if choice < 0.6:
        return case.instruction
    if choice < 0.7:
        return case.caption
    if choice < 0.9:
        return template_prompt(case.instruction, "instruction")
    return template_prompt(case.caption, "target")


def text_labels(case) -> list[int]:
    """What an instruction tells: the event, the shape's colour before and after, and the third of the frame it
    ends in (vertically, horizontally)."""
    vertical, horizontal = places(case.end)
    colours = list(COLOURS)
    return [EVENTS.index(case.event), colours.index(case.moved.colour), colours.index(case.end.colour),
            VERTICAL.index(vertical), HORIZONTAL.index(horizontal)]  # fmt: skip


def pretrain_text_encoder(
    pipe: IFEditPipeline, cases: list, config: TrainConfig, log: Callable[[str], None]
) -> list[float]:
    """Stage 2a: teach the text encoder to name an instruction's event, colours and place from every token, then
    freeze it. Learnt together with the experts from scratch, the encoder never carried the direction of a move to
    them (expert loss on move clips the same with "left" and "right" swapped, 2,000 steps); pretrained this way, the
    swapped direction cost the high-noise expert 78% more after 1,800 steps. Every token has to know, because the
    experts' cross-attention starts out spread evenly over all 128 text positions."""
    encoder = pipe.text_encoder.train()
    sizes = [len(EVENTS), len(COLOURS), len(COLOURS), len(VERTICAL), len(HORIZONTAL)]
    heads = torch.nn.Linear(encoder.config.d_model, sum(sizes))
    optimizer = torch.optim.AdamW([*encoder.parameters(), *heads.parameters()], lr=config.text_lr)
    rng = np.random.default_rng(config.seed + 3)
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(config.text_steps):
        batch = [cases[index] for index in rng.integers(0, len(cases), size=config.text_batch)]
        texts = [case.instruction if rng.random() < 0.6 else template_prompt(case.instruction, "instruction")
                 for case in batch]  # fmt: skip
        tokens = tokenize(pipe.tokenizer, texts)
        logits = heads(encoder(tokens.input_ids, tokens.attention_mask).last_hidden_state).split(sizes, dim=-1)
        labels = torch.tensor([text_labels(case) for case in batch])
        real = tokens.attention_mask.float()
        loss = sum(
            (F.cross_entropy(logit.transpose(1, 2), labels[:, [k]].expand_as(real), reduction="none") * real).sum()
            / real.sum()
            for k, logit in enumerate(logits)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        _log_progress(log, "text encoder", step, config.text_steps, losses, start, config.log_every)
    encoder.eval()
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    return losses


def tokenize(tokenizer, texts: list[str]):
    """Token ids and attention mask as the pipeline makes them: real tokens, then padding up to TEXT_SEQUENCE."""
    return tokenizer(texts, padding="max_length", max_length=TEXT_SEQUENCE, truncation=True,
                     add_special_tokens=True, return_attention_mask=True, return_tensors="pt")  # fmt: skip


def encode_text(pipe: IFEditPipeline, texts: list[str]) -> torch.Tensor:
    """Text embeddings exactly as the pipeline builds them: real tokens, then zeros up to TEXT_SEQUENCE."""
    tokens = tokenize(pipe.tokenizer, texts)
    hidden = pipe.text_encoder(tokens.input_ids, tokens.attention_mask).last_hidden_state
    return hidden * tokens.attention_mask.unsqueeze(-1)


def train_experts(
    pipe: IFEditPipeline,
    data: dict[str, torch.Tensor],
    cases: list,
    config: TrainConfig,
    log: Callable[[str], None],
    snapshot: Path | None = None,
    stage: str = "experts",
) -> list[float]:
    """Stage 2: flow matching; the high-noise expert learns sigma >= boundary, the low-noise one the rest.

    Stage "experts" trains from initialisation; "experts polish" (optional, `TrainConfig.expert_polish_steps`)
    continues from its averaged weights on other clips at a lower rate with a fresh average (its steps, rate and
    clips: `EXPERT_STAGES`), as the decoder's polish does, since the experts' loss was still falling when the first
    stage's schedule ended. Measured from the shipped experts (3,000 steps, 4,000 clips, 5e-4): the loss went from
    0.159 to 0.153 and success on two sets of 110 held-out scenes rose by 0.02 and 0.04 only, so it is off.

    Half of the low-noise expert's clips are thinned as temporal latent dropout thins them (one stride per step):
    dropout happens at the boundary, so after it the low-noise expert only ever sees thinned clips, and one trained
    on whole clips alone was measured to leave blobs and smeared shapes on them (last-frame error 26-32 at K = 3
    against 7-10 at K = 1)."""
    spec = expert_stage(stage)
    experts = {"transformer": pipe.transformer, "transformer_2": pipe.transformer_2}
    # A pretrained text encoder comes frozen; one still trainable learns with the experts.
    trained = dict(experts)
    if any(parameter.requires_grad for parameter in pipe.text_encoder.parameters()):
        trained["text_encoder"] = pipe.text_encoder
    for module in trained.values():
        module.train()
    averages = {name: copy.deepcopy(module).eval() for name, module in trained.items()}
    parameters = [parameter for module in trained.values() for parameter in module.parameters()]
    steps, lr = getattr(config, spec.steps_field), getattr(config, spec.lr_field)
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.03)
    rng = np.random.default_rng(config.seed + spec.seed_offset)
    generator = torch.Generator().manual_seed(config.seed + spec.seed_offset)
    half = config.dit_batch // 2
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        picks = rng.integers(0, len(cases), size=config.dit_batch)
        clean, condition = data["latents"][picks], data["conditions"][picks]
        weight = change_weight(data["changed"][picks])
        texts = [sample_text(cases[pick], rng, config.text_dropout) for pick in picks]
        embeds = encode_text(pipe, texts)
        # Half the batch for each expert, noise levels uniform on its side of the boundary.
        uniform = torch.rand(config.dit_batch, generator=generator)
        sigma = torch.cat([BOUNDARY_RATIO + (1 - BOUNDARY_RATIO) * uniform[:half], BOUNDARY_RATIO * uniform[half:]])
        noise = torch.randn(clean.shape, generator=generator)
        noisy = (1 - sigma.view(-1, 1, 1, 1, 1)) * clean + sigma.view(-1, 1, 1, 1, 1) * noise
        target = noise - clean
        # The high-noise expert takes the first half of the batch; the low-noise expert the second, a half of it
        # as whole clips and a half thinned with one stride; weights make the two experts count equally.
        split = half + config.dit_batch // 4
        kept = kept_frame_indices(clean.shape[2], int(rng.choice(THINNED_STRIDES)))
        parts = (
            ("transformer", slice(0, half), None, 1.0),
            ("transformer_2", slice(half, split), None, 0.5),
            ("transformer_2", slice(split, None), kept, 0.5),
        )
        loss = 0.0
        for name, part, frames, share in parts:
            inputs, wanted, weights = torch.cat([noisy[part], condition[part]], dim=1), target[part], weight[part]
            if frames is not None:
                inputs = slice_frames(inputs, frames, clean.shape[2])
                wanted = slice_frames(wanted, frames, clean.shape[2])
                weights = slice_frames(weights, frames, clean.shape[2])
            prediction = experts[name](
                hidden_states=inputs,
                timestep=sigma[part] * 1000,
                encoder_hidden_states=embeds[part],
                return_dict=False,
            )[0]
            loss = loss + share * weighted_mse(prediction, wanted, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        _update_average(averages, trained, config.ema_decay)
        losses.append(loss.item() / 2)
        _log_progress(log, stage, step, steps, losses, start, config.log_every)
        if snapshot and config.snapshot_every and (step + 1) % config.snapshot_every == 0:
            _save_averaged(pipe, averages, snapshot)
            log(f"saved the averaged weights of step {step + 1} to {snapshot}")
    _save_averaged(pipe, averages, None)
    return losses


class ExpertStage(NamedTuple):
    """One stage of `train_experts`."""

    steps_field: str  # TrainConfig's field for its number of steps
    lr_field: str  # and for its peak learning rate
    clips_field: str  # and for the number of clips it learns from (each stage its own, following the last's)
    seed_offset: int  # its random seed, from the training seed
    record: str  # its loss curve's key in training.json


# The expert stages, in the order training runs them.
EXPERT_STAGES = {
    "experts": ExpertStage("dit_steps", "dit_lr", "clips", 1, "expert_losses"),
    "experts polish": ExpertStage(
        "expert_polish_steps", "expert_polish_lr", "expert_polish_clips", 6, "expert_polish_losses"
    ),
}


def expert_stage(stage: str) -> ExpertStage:
    if stage not in EXPERT_STAGES:
        raise ValueError(f"unknown expert stage {stage!r}; choose one of {', '.join(EXPERT_STAGES)}")
    return EXPERT_STAGES[stage]


def expert_stage_seeds(config: TrainConfig, stage: str) -> list[int]:
    """The seeds of the clips an expert stage learns from: the stages' clips follow each other from DIT_SEED_START,
    all below EVAL_SEED_START."""
    spec, names = expert_stage(stage), list(EXPERT_STAGES)
    earlier = names[: names.index(stage)]
    start = DIT_SEED_START + sum(getattr(config, EXPERT_STAGES[name].clips_field) for name in earlier)
    seeds = list(range(start, start + getattr(config, spec.clips_field)))
    assert not seeds or seeds[-1] < EVAL_SEED_START
    return seeds


def _save_averaged(pipe: IFEditPipeline, averages: dict, folder: Path | None) -> None:
    """Put the averaged weights into a copy of the pipeline and save it to `folder`, or, with no folder, into the
    pipeline itself (the end of training)."""
    target = pipe if folder is None else copy.deepcopy(pipe)
    for name, average in averages.items():
        getattr(target, name).load_state_dict(average.state_dict())
        getattr(target, name).eval()
    if folder is not None:
        save_whole(target.save_pretrained, folder)  # a run being tried from the snapshot never opens half of one


@torch.no_grad()
def _update_average(averages: dict, modules: dict, decay: float) -> None:
    for name, module in modules.items():
        for average, current in zip(averages[name].parameters(), module.parameters(), strict=True):
            average.lerp_(current, 1 - decay)


def trained_vae(out: Path, config: TrainConfig, log: Callable[[str], None]) -> tuple[AutoencoderKLWan, dict]:
    """The VAE and its stages' loss curves: those an unfinished run saved in `out` with the same settings, else
    trained now and saved there (`run_folder.save_vae`)."""
    losses = saved_vae_record(out, config.vae_settings())
    if losses is not None:
        log(f"reusing the trained VAE in {out / 'vae'}")
        try:
            return AutoencoderKLWan.from_pretrained(out / "vae", use_safetensors=True).eval(), losses
        except (OSError, ValueError) as error:
            raise InvalidInputError(
                f"the VAE saved in {out / 'vae'} cannot be read ({type(error).__name__}); remove {out / 'vae'} to "
                "train it again"
            ) from None
    vae, joint_losses = train_vae(config, log)
    losses = {"vae_losses": joint_losses}
    for stage, spec in DECODER_STAGES.items():
        losses[spec.record] = train_decoder(vae, config, log, stage)
    set_latent_statistics(vae, list(range(config.stats_clips)))
    save_vae(out, vae.save_pretrained, config.vae_settings(), losses)
    return vae, losses


def train(out: Path, config: TrainConfig | None = None, log: Callable[[str], None] = print) -> Path:
    """Both stages; writes a pipeline folder to `out` with `training.json` (config and loss curves) beside it.

    One run at a time may write into `out`, which must be new, empty or an unfinished run's (`run_folder`); an
    unfinished run's VAE, once saved whole, is reused."""
    config = config or TrainConfig()
    out = Path(out)
    with claimed(out):
        return _train(out, config, log)


def _train(out: Path, config: TrainConfig, log: Callable[[str], None]) -> Path:
    torch.manual_seed(config.seed)
    vae, vae_losses = trained_vae(out, config, log)
    for parameter in vae.parameters():
        parameter.requires_grad_(False)

    tokenizer = build_tokenizer(vocabulary())
    pipe = IFEditPipeline(
        tokenizer=tokenizer,
        text_encoder=build_text_encoder(len(tokenizer), config.seed),
        vae=vae,
        scheduler=build_scheduler(),
        transformer=build_transformer(config.seed),
        transformer_2=build_transformer(config.seed + 1),
        boundary_ratio=BOUNDARY_RATIO,
    )
    # The text encoder learns the first expert stage's instructions.
    first_cases = [sample_case(seed) for seed in expert_stage_seeds(config, "experts")]
    text_losses = pretrain_text_encoder(pipe, first_cases, config, log) if config.text_steps else []
    expert_losses = {}
    for stage, spec in EXPERT_STAGES.items():
        if not getattr(config, spec.steps_field):
            expert_losses[spec.record] = []
            continue
        seeds = expert_stage_seeds(config, stage)
        cases = [sample_case(seed) for seed in seeds]
        data = encode_dataset(pipe, seeds, log)
        expert_losses[spec.record] = train_experts(pipe, data, cases, config, log, out / "snapshot", stage)
        del data
    record = {"config": asdict(config), **vae_losses, "text_losses": text_losses, **expert_losses}
    finish(out, pipe.save_pretrained, record)
    log(f"saved the toy world's pipeline to {out}")
    return out
