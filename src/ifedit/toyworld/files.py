"""A toy-world scene as files: what an outside script needs to run and check an edit."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import PIL.Image

from ..errors import InvalidInputError, SetupError
from ..io import check_output_path, check_writable, save_image, save_json, staged_outputs
from .scenes import render_clip, sample_case

SAMPLE_FILES = ("source.png", "target.png", "instruction.txt", "case.json")


def write_sample(seed: int, out: Path, event: str | None = None, overwrite: bool = False) -> list[Path]:
    """Write the scene's first frame, its ground-truth last frame, the instruction and the full case, together:
    a failure or an interruption leaves none of them (and, with `overwrite`, the previous ones in place)."""
    if seed < 0:
        raise InvalidInputError(f"seed must be >= 0, got {seed}")
    if out.is_symlink() and not out.exists():
        raise InvalidInputError(f"--out {out} is a link to nothing; name a folder")
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out} is a file; name a folder")
    if not out.exists() and not out.parent.is_dir():
        what = "is a file" if out.parent.exists() else "does not exist"
        raise InvalidInputError(f"folder for --out {what}: {out.parent}")
    paths = {name: out / name for name in SAMPLE_FILES}
    if out.is_dir():  # the checks every output gets (a new folder holds nothing to clash with)
        for path in paths.values():
            check_output_path(path, overwrite, suffixes=(path.suffix,))
    else:
        check_writable(out.parent)
    case = sample_case(seed, event)
    clip = render_clip(case)
    created = not out.exists()
    try:
        out.mkdir(exist_ok=True)
    except OSError as error:
        raise SetupError(f"cannot create {out}: {error.strerror or error}") from None
    try:
        with staged_outputs(paths, overwrite=overwrite) as staged:
            save_image(PIL.Image.fromarray(clip[0]), staged["source.png"])
            save_image(PIL.Image.fromarray(clip[-1]), staged["target.png"])
            staged["instruction.txt"].write_text(case.instruction + "\n", encoding="utf-8")
            save_json(dataclasses.asdict(case), staged["case.json"])
    except BaseException:
        if created:  # nor the folder made for them
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    return list(paths.values())
