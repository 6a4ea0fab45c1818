"""Time IF-Edit on the CPU with Wan2.2-I2V-A14B's architecture scaled down, next to what its FLOPs predict.

    python benchmarks/cpu_speed.py                 # 2 interleaved rounds, about 7 minutes on 2 cores
    python benchmarks/cpu_speed.py --rounds 1

Random weights, real code: the same IFEditPipeline and diffusers' WanImageToVideoPipeline on the same components.
Each round runs every setting once, interleaved, so a busy machine slows all of them alike; the table gives the
median. FLOPs come from one run of each setting under `torch.utils.flop_counter`, so a speedup can be set against
the one the FLOPs predict. "Outside" is the time an edit spends outside the transformer, the VAE and the text
encoder: the pipeline's own overhead.
"""

from __future__ import annotations

import argparse
import statistics
import time

import PIL.Image
import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanTransformer3DModel
from torch.utils.flop_counter import FlopCounterMode
from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

from ifedit import IFEditPipeline
from ifedit.options import FAST_SETTINGS

HEIGHT, WIDTH, FRAMES, STEPS = 192, 320, 33, 8


def components(seed: int = 0) -> dict:
    """A14B's layout (two experts, 36 input channels, qk RMS norm, 4x8x8 VAE) at a tenth of its width, the VAE
    thinner still: on a CPU Wan's VAE runs far below the transformer's speed, and at real size on a GPU the
    transformer is 95% of an edit (benchmarks/flops.py)."""
    torch.manual_seed(seed)
    expert = dict(
        patch_size=(1, 2, 2), num_attention_heads=8, attention_head_dim=64, in_channels=36, out_channels=16,
        text_dim=256, freq_dim=256, ffn_dim=1536, num_layers=8, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
    )  # fmt: skip
    tokenizer = ByT5Tokenizer()
    return {
        "tokenizer": tokenizer,
        "text_encoder": UMT5EncoderModel(
            UMT5Config(vocab_size=tokenizer.vocab_size, d_model=256, d_kv=32, d_ff=512, num_layers=2, num_heads=8)
        ).eval(),
        "vae": AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1).eval(),
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=5.0),
        "transformer": WanTransformer3DModel(**expert).eval(),
        "transformer_2": WanTransformer3DModel(**expert).eval(),
        "boundary_ratio": 0.9,
    }


class ModelClock:
    """Seconds spent inside the given modules' forward calls (hooks, so the pipelines run unchanged)."""

    def __init__(self, modules):
        self.seconds = 0.0
        self.started: list[float] = []
        for module in modules:
            module.register_forward_pre_hook(lambda *_: self.started.append(time.perf_counter()))
            module.register_forward_hook(lambda *_: self._stop())

    def _stop(self) -> None:
        self.seconds += time.perf_counter() - self.started.pop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    parts = components()
    ours, reference = IFEditPipeline(**parts), WanImageToVideoPipeline(**parts)
    for pipe in (ours, reference):
        pipe.set_progress_bar_config(disable=True)
    models = [parts["transformer"], parts["transformer_2"], parts["text_encoder"], parts["vae"].encoder,
              parts["vae"].decoder]  # fmt: skip
    clock = ModelClock(models)
    image = PIL.Image.new("RGB", (WIDTH, HEIGHT), (120, 140, 160))
    common = dict(height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=STEPS, guidance_scale=1.0)

    settings = {
        "IF-Edit K=3": lambda: ours(image, "a cat stands up", tld_stride=3, **common),
        "IF-Edit K=1": lambda: ours(image, "a cat stands up", tld_stride=1, **common),
        "IF-Edit K=3, no refine": lambda: ours(image, "a cat stands up", tld_stride=3, refine=False, **common),
        "IF-Edit K=3, fast": lambda: ours(image, "a cat stands up", tld_stride=3, **FAST_SETTINGS, **common),
        "IF-Edit K=1, no refine": lambda: ours(image, "a cat stands up", tld_stride=1, refine=False, **common),
        "diffusers WanImageToVideoPipeline": lambda: reference(image=image, prompt="a cat stands up", **common),
    }
    flops = {}
    for name, run in settings.items():
        with FlopCounterMode(display=False) as counter:
            run()
        flops[name] = counter.get_total_flops()

    times: dict[str, list[float]] = {name: [] for name in settings}
    outside: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, run in settings.items():
            torch.manual_seed(0)
            clock.seconds = 0.0
            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
            times[name].append(seconds)
            outside[name].append((seconds - clock.seconds) / seconds)

    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{HEIGHT}x{WIDTH}, {FRAMES} frames, {STEPS} steps, {torch.get_num_threads()} threads, {args.rounds} rounds")
    print("| setting | s per edit (median) | GFLOPs | outside the models |\n|---|---|---|---|")
    for name in settings:
        print(f"| {name} | {median[name]:.2f} | {flops[name] / 1e9:,.0f} | {statistics.median(outside[name]):.1%} |")

    def speedup(slow: str, fast: str) -> None:
        measured, predicted = median[slow] / median[fast], flops[slow] / flops[fast]
        print(f"{fast} vs {slow}: {measured:.2f}x measured, {predicted:.2f}x by FLOPs ({measured / predicted:.0%})")

    speedup("IF-Edit K=1", "IF-Edit K=3")
    speedup("IF-Edit K=1, no refine", "IF-Edit K=3, no refine")
    speedup("IF-Edit K=3", "IF-Edit K=3, no refine")
    speedup("IF-Edit K=3", "IF-Edit K=3, fast")
    ratio = median["IF-Edit K=1, no refine"] / median["diffusers WanImageToVideoPipeline"]
    print(f"IF-Edit with dropout and refinement off / diffusers: {ratio:.3f} (goal: <= 1.02)")


if __name__ == "__main__":
    main()
