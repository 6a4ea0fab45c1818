"""A toy-world scene as files: what an outside script needs to run and check an edit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import PIL.Image

from ..errors import InvalidInputError
from ..io import atomic_path, save_image, save_json
from .scenes import render_clip, sample_case

SAMPLE_FILES = ("source.png", "target.png", "instruction.txt", "case.json")


def write_sample(seed: int, out: Path, event: str | None = None, overwrite: bool = False) -> list[Path]:
    """Write the scene's first frame, its ground-truth last frame, the instruction and the full case."""
    if seed < 0:
        raise InvalidInputError(f"seed must be >= 0, got {seed}")
    if not out.parent.is_dir():
        raise InvalidInputError(f"folder for --out does not exist: {out.parent}")
    paths = [out / name for name in SAMPLE_FILES]
    existing = [path for path in paths if path.exists()]
    if existing and not overwrite:
        raise InvalidInputError(f"output exists: {existing[0]} (pass --overwrite to replace it)")
    out.mkdir(exist_ok=True)
    case = sample_case(seed, event)
    clip = render_clip(case)
    source, target, instruction, record = paths
    save_image(PIL.Image.fromarray(clip[0]), source)
    save_image(PIL.Image.fromarray(clip[-1]), target)
    with atomic_path(instruction) as temporary:
        temporary.write_text(case.instruction + "\n", encoding="utf-8")
    save_json(dataclasses.asdict(case), record)
    return paths
