"""Probe what limits the toy VAE's sharpness: train its decoder further, or afresh at another width, on the shipped
(frozen) encoder, and print the held-out round trip as it goes.

    python tools/decoder_probe.py --loss laplacian --steps 1000          # the shipped decoder, a sharper loss
    python tools/decoder_probe.py --fresh --width 32 --steps 1400        # a new, wider decoder from scratch
    python tools/decoder_probe.py --memorise 8 --steps 600               # can it draw sharp edges at all?

The encoder stays the shipped one, so the latents the experts learned from do not change: a decoder this finds
better could replace the shipped one without retraining the experts. Every `--every` steps (and at the last) it
prints the loss and the VAE round trip of `--scenes` held-out scenes (success, Laplacian sharpness, background
error), as `benchmarks/toyworld_eval.py`'s "VAE round trip" row measures it. With `--save DIR` the decoder is saved
as a VAE folder at the end. `--memorise N` trains on N fixed training clips only and measures the round trip on
those same clips: a capacity probe (if the decoder cannot draw them sharply even then, more training will not help;
if it can, it is held back by what it has seen, not by its size).

Losses: "edge" is the shipped decoder stages' (`train.edge_loss`); "laplacian" adds the L1 of the Laplacian's
difference, the quantity the sharpness measure squares; "l1-gradients" drops the squared error and doubles the
weight of the pixel differences.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan

from ifedit.presets import TOYWORLD_WEIGHTS
from ifedit.toyworld.evaluate import measure, sharpness, vae_round_trips
from ifedit.toyworld.run_folder import save_whole
from ifedit.toyworld.scenes import EVAL_SEED_START, EVENTS, render_clip, sample_case
from ifedit.toyworld.train import (
    DIT_SEED_START,
    decoder_only,
    decoder_step,
    edge_loss,
    edge_weight,
    frame_weight,
    pipeline_view,
)

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def laplacian(video: torch.Tensor) -> torch.Tensor:
    """The 4-neighbour Laplacian of every frame and channel of a (B, C, T, H, W) video, (B, C, T, H-2, W-2)."""
    b, c, t, h, w = video.shape
    frames = video.permute(0, 2, 1, 3, 4).reshape(b * t * c, 1, h, w)
    return torch.nn.functional.conv2d(frames, LAPLACIAN).reshape(b, t, c, h - 2, w - 2).permute(0, 2, 1, 3, 4)


def laplacian_loss(reconstruction: torch.Tensor, clips: torch.Tensor) -> torch.Tensor:
    weight = (edge_weight(clips) * frame_weight(clips))[..., 1:-1, 1:-1]
    difference = (laplacian(reconstruction) - laplacian(clips)).abs()
    return edge_loss(reconstruction, clips) + (difference * weight).mean()


def l1_gradient_loss(reconstruction: torch.Tensor, clips: torch.Tensor) -> torch.Tensor:
    weight = edge_weight(clips) * frame_weight(clips)
    loss = ((reconstruction - clips).abs() * weight).mean()
    for axis in (-1, -2):
        difference = reconstruction.diff(dim=axis) - clips.diff(dim=axis)
        loss = loss + 2 * (difference.abs() * weight.narrow(axis, 1, weight.shape[axis] - 1)).mean()
    return loss


MEASURES = ("success", "sharpness", "background_error")
LOSSES = {"edge": edge_loss, "laplacian": laplacian_loss, "l1-gradients": l1_gradient_loss}


def probe_vae(fresh: bool, width: int) -> AutoencoderKLWan:
    """The shipped VAE, or one whose decoder (`width` channels at full resolution) is new, on the shipped encoder."""
    shipped = AutoencoderKLWan.from_pretrained(TOYWORLD_WEIGHTS / "vae")
    if not fresh:
        return shipped
    config = {key: value for key, value in shipped.config.items() if not key.startswith("_")}
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**{**config, "decoder_base_dim": width})
    state = vae.state_dict()
    state.update({k: v for k, v in shipped.state_dict().items() if k.startswith(("encoder.", "quant_conv."))})
    vae.load_state_dict(state)
    return vae


def round_trip(vae: AutoencoderKLWan, cases: list, clips: np.ndarray) -> tuple[float, float, float]:
    """The round trip of `clips`' last frames: mean success, sharpness and background error against `cases`."""
    vae.eval()
    outputs = vae_round_trips(vae, clips)
    scores = [measure(case, output, clip=clip) for case, output, clip in zip(cases, outputs, clips, strict=True)]
    vae.train()
    return tuple(float(np.mean([getattr(s, name) for s in scores])) for name in MEASURES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fresh", action="store_true", help="a new decoder instead of the shipped one")
    parser.add_argument("--width", type=int, default=16, help="the fresh decoder's full-resolution channels")
    parser.add_argument("--loss", choices=list(LOSSES), default="edge")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=None, help="peak rate (default: 1e-4, or 5e-4 with --fresh)")
    parser.add_argument("--every", type=int, default=100, help="steps between round-trip measurements")
    parser.add_argument("--scenes", type=int, default=110, help="held-out scenes the round trip is measured on")
    parser.add_argument("--memorise", type=int, metavar="N", help="learn from and measure on N fixed training clips")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--save", metavar="DIR", help="save the probed VAE here at the end")
    args = parser.parse_args()
    counts = (args.steps, args.every, args.scenes, args.width, 1 if args.memorise is None else args.memorise)
    if min(counts) < 1:
        parser.error("--steps, --every, --scenes, --width and --memorise must be at least 1")
    if args.lr is not None and not args.lr > 0:
        parser.error(f"--lr must be above 0, got {args.lr}")
    if args.save and os.path.lexists(args.save):  # a link too, even one pointing nowhere
        parser.error(f"--save: {args.save} exists; name a new folder")
    lr = args.lr if args.lr is not None else (5e-4 if args.fresh else 1e-4)

    vae = probe_vae(args.fresh, args.width)
    rng = np.random.default_rng(args.seed)
    fixed = [int(seed) for seed in rng.integers(0, DIT_SEED_START, size=args.memorise)] if args.memorise else None
    if fixed:
        cases = [sample_case(seed) for seed in fixed]
    else:
        cases = [sample_case(EVAL_SEED_START + index, EVENTS[index % len(EVENTS)]) for index in range(args.scenes)]
    clips = np.stack([render_clip(case) for case in cases])
    trained = decoder_only(vae)
    print(f"decoder of {sum(p.numel() for p in vae.decoder.parameters()):,} parameters, loss {args.loss}, lr {lr}")
    target_sharpness = np.mean([sharpness(clip[-1]) for clip in clips])
    print(f"{len(clips)} clips; their last frames' sharpness {target_sharpness:.1f}")
    print("step | loss | s/step | round-trip success | sharpness | background error")
    if not args.fresh:
        print("0 | - | - | {:.3f} | {:.1f} | {:.2f}".format(*round_trip(vae, cases, clips)), flush=True)
    optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)
    # A fresh decoder warms up as the shipped joint stage does; a trained one decays from the start.
    schedule = (
        torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=args.steps, pct_start=0.05)
        if args.fresh
        else torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    )
    loss_of = LOSSES[args.loss]
    losses: list[float] = []
    start = time.perf_counter()
    vae.train()
    for step in range(args.steps):
        drawn = rng.choice(fixed, size=4) if fixed else rng.integers(0, DIT_SEED_START, size=4)
        seeds = [int(seed) for seed in drawn]
        losses.append(decoder_step(vae, seeds, pipeline_view, loss_of, rng, optimizer, trained))
        schedule.step()
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            seconds = (time.perf_counter() - start) / (step + 1)
            measured = round_trip(vae, cases, clips)
            print(f"{step + 1} | {np.mean(losses[-args.every :]):.4f} | {seconds:.2f} | " + "{:.3f} | {:.1f} | {:.2f}"
                  .format(*measured), flush=True)  # fmt: skip
    if args.save:
        save_whole(vae.eval().save_pretrained, Path(args.save))  # a kill leaves no half-saved folder
        print(f"saved to {args.save}")


if __name__ == "__main__":
    main()
