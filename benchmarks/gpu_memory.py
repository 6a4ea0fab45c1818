"""Check the memory planner on a GPU and print JSON: per memory cap, the tier `--memory auto` takes, the predicted
and measured peak GPU and host memory, and the seconds of one edit of the paper's recipe.

    python benchmarks/gpu_memory.py               # random weights at Wan2.2-I2V-A14B's real sizes, caps 80..16 GiB
    python benchmarks/gpu_memory.py --caps 24 16  # some caps only
    python benchmarks/gpu_memory.py --tiny        # the same code on the CPU with a tiny model: a dry run, seconds

Per cap, `torch.cuda.set_per_process_memory_fraction` makes the allocator refuse more than the cap, the planner is
given the cap as the free GPU memory (and this machine's free host memory), the pipeline is placed as
`load_pipeline` places it (`apply_placement`), and an edit that runs out of memory is retried one tier leaner, as
`ifedit edit` does. Measured GPU peak: torch's max_memory_allocated (what the planner predicts), with the reserved
peak beside it; host peak: the process's VmHWM, reset per cap. The weights are built once on the CPU (64 GiB of host
memory) and rebuilt after a tier that changes them (8-bit storage, group offload). Needs a GPU with more memory
than the largest cap and about 110 GiB of host memory for group offload's pinned copies. The random weights come
from gpu_speed.py, and with them its PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from pathlib import Path

import PIL.Image
import torch

from gpu_speed import real_size_pipeline
from ifedit import IFEditPipeline
from ifedit.errors import SetupError
from ifedit.loading import (
    LoadOptions,
    MemoryPlan,
    apply_placement,
    available_host_gb,
    choose_placement,
    free_accelerator_memory,
    pipeline_size,
    retry_tier,
)
from ifedit.memory import GIB, clip_for
from ifedit.presets import get_preset
from ifedit.tiny import tiny_components

CAPS = (80, 48, 32, 24, 16)


def host_peak_gb() -> float | None:
    """The process's peak resident memory since the last reset (Linux)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) * 1024 / GIB for line in lines if line.startswith("VmHWM:")), None)


def reset_host_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


class Bench:
    """One pipeline, re-placed per cap; rebuilt when a placement changed its weights or cannot be undone."""

    def __init__(self, tiny: bool):
        self.tiny = tiny
        self.device = torch.device("cpu" if tiny else "cuda")
        self.dtype = torch.float32 if tiny else torch.bfloat16
        self.preset = get_preset("debug-tiny" if tiny else "paper")
        self.pipe = self.build()
        self.size = pipeline_size(self.pipe)
        height, width = (64, 96) if tiny else (480, 832)
        self.kwargs = {**self.preset.recipe.as_kwargs(), "height": height, "width": width}
        if tiny:  # the shortest edit through the same code
            self.kwargs.update(num_frames=5, num_inference_steps=1, refine=False, max_sequence_length=16)
        self.clip = clip_for(self.preset, self.size, self.kwargs["num_frames"], height, width)
        self.image = PIL.Image.new("RGB", (width, height), (120, 140, 160))
        self.dirty = False  # the weights are no longer as built
        self.warm = tiny  # a GPU warms up once, outside the timings

    def build(self) -> IFEditPipeline:
        if self.tiny:
            pipe = IFEditPipeline(**tiny_components("a14b"))
        else:
            pipe = real_size_pipeline(torch.device("cpu"), torch.float32)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def place(self, placement: MemoryPlan) -> None:
        if self.dirty:
            self.pipe = None
            free_accelerator_memory()
            self.pipe = self.build()
        else:
            self.pipe.remove_all_hooks()
            self.pipe.to("cpu")
            free_accelerator_memory()
        if self.tiny:  # offloading needs an accelerator: the dry run keeps the rest of the placement
            placement = dataclasses.replace(placement, offload="none")
        apply_placement(self.pipe, placement, self.device, self.dtype, LoadOptions())
        self.dirty = placement.storage_dtype is not None or placement.offload == "group"

    def edit(self) -> float:
        start = time.perf_counter()
        self.pipe(self.image, "a cat stands up", generator=torch.Generator().manual_seed(0), **self.kwargs)
        return time.perf_counter() - start

    def run(self, cap: float) -> dict:
        """One edit under `cap` GiB, placed by the planner; one leaner retry on running out of memory."""
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory / GIB
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), self.device)
        placement = choose_placement(LoadOptions(), self.size, self.clip, "cuda", 2, cap, available_host_gb())
        result = {"cap_gb": cap, "tier": placement.tier, "first_tier": placement.tier}
        for attempt in range(2):
            self.place(placement)
            reset_host_peak()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            try:
                if not self.warm:  # kernels, cuDNN's algorithm choice and the allocator
                    self.edit()
                    self.warm = True
                seconds = self.edit()
            except torch.OutOfMemoryError:
                result["out_of_memory"] = [*result.get("out_of_memory", []), placement.tier]
                if attempt:
                    break
                try:
                    tier = retry_tier(placement)
                except SetupError as error:
                    result["error"] = str(error)
                    break
                placement = choose_placement(dataclasses.replace(LoadOptions(), memory=tier), self.size, self.clip,
                                             "cuda", 2, cap, available_host_gb(), mode="retry")  # fmt: skip
                continue
            on_gpu = self.device.type == "cuda"
            measured = torch.cuda.max_memory_allocated(self.device) / GIB if on_gpu else None
            reserved = torch.cuda.max_memory_reserved(self.device) / GIB if on_gpu else None
            result.update(
                tier=placement.tier,
                placement=placement.placement(),
                predicted_gpu_gb=placement.gpu_gb,
                measured_gpu_gb=measured,
                reserved_gpu_gb=reserved,
                predicted_host_gb=placement.host_gb,
                measured_host_gb=host_peak_gb(),
                seconds=seconds,
            )
            break
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU: check the script anywhere")
    parser.add_argument("--caps", type=float, nargs="+", default=CAPS, metavar="GB", help="GiB caps, largest first")
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (or --tiny)")
    bench = Bench(args.tiny)
    runs = [bench.run(cap) for cap in args.caps]
    device = torch.cuda.get_device_name() if bench.device.type == "cuda" else "cpu"
    clip = dataclasses.asdict(bench.clip)
    runs = [
        {key: round(value, 2) if isinstance(value, float) else value for key, value in run.items()} for run in runs
    ]
    print(json.dumps({"device": device, "model": bench.preset.name, "clip": clip, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
