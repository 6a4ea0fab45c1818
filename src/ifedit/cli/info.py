"""`ifedit info`: versions, the accelerators PyTorch sees, and the model presets."""

from __future__ import annotations

import argparse
import os

from ..presets import DEFAULT_PRESET, PRESETS
from .options import quiet_libraries


def register(commands) -> None:
    info = commands.add_parser(
        "info",
        help="show versions, devices and model presets",
        description="Show package versions, the accelerators PyTorch sees, and the model presets.",
    )
    info.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    import torch

    from ..outputs import versions

    print("versions:")
    for package, version in versions().items():
        print(f"  {package:<13} {version or 'not installed'}")
    print("devices:")
    print("  cpu")
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        name = torch.cuda.get_device_name(index)
        print(f"  cuda:{index}  {name}, {total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free)")
    if torch.backends.mps.is_available():
        print("  mps")
    print(f"presets (--model NAME; default {DEFAULT_PRESET}):")
    for preset in PRESETS.values():
        memory = f"GPU {preset.gpu_memory_gb:.0f} GB" if preset.gpu_memory_gb else "CPU ok"
        print(f"  {preset.name:<16} {memory:<10} {preset.description}")
        if preset.model_id:
            print(f"  {'':<16} {'':<10} weights: {preset.model_id}")
        if preset.notes:
            print(f"  {'':<16} {'':<10} {preset.notes}")
    print(f"Hugging Face cache: {os.environ.get('HF_HOME', '~/.cache/huggingface')}")
    return 0
