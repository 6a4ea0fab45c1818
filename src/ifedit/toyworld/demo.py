"""`ifedit demo`: a few held-out toy-world edits on the CPU, shown as source | edit | target rows, with a record
beside the picture of how each edit was made."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image

from ..editor import Editor, model_record
from ..io import save_image, save_json, staged_outputs
from ..loading import LoadOptions
from ..outputs import contact_sheet, versions
from ..presets import Preset
from ..prompting.template import template_prompt
from .detect import score_edit
from .scenes import EVAL_SEED_START, render_clip, sample_case

DEMO_EVENTS = ("left", "fall", "grow", "recolour", "fade", "appear")
DEMO_SEED = EVAL_SEED_START + 424_242


def run_demo(preset: Preset, output: Path, log: Callable[[str], None] = print, overwrite: bool = False) -> list[bool]:
    """Edit one held-out scene per demo event, write the picture and its record (`output` as .json) together, and
    return which edits met their target."""
    editor = Editor(preset, LoadOptions(device="cpu"))
    editor.pipe.set_progress_bar_config(disable=True)
    rows, successes, scenes = [], [], []
    start = time.perf_counter()
    for index, event in enumerate(DEMO_EVENTS):
        case = sample_case(DEMO_SEED + index, event)
        clip = render_clip(case)
        # The video prompt `ifedit edit` writes offline, with no VLM configured.
        prompt = template_prompt(case.instruction, "instruction")
        edit = editor.edit(PIL.Image.fromarray(clip[0]), case.instruction, preset.recipe, prompt=prompt, seed=index)
        edited = np.asarray(edit.result.image)
        score = score_edit(case, edited, clip[-1])
        successes.append(score.success)
        scenes.append({"seed": DEMO_SEED + index, "event": event, "instruction": case.instruction,
                       "met_target": score.success, "edit": edit.record})  # fmt: skip
        log(f"{case.instruction!r}: {'met the target' if score.success else 'missed the target'}")
        frames = [PIL.Image.fromarray(clip[0]), edit.result.image, PIL.Image.fromarray(clip[-1])]
        labels = ["source", case.instruction, "target"]
        rows.append(contact_sheet(frames, labels, thumb_width=160))
    row_height = max(row.height for row in rows)  # captions of one or two lines: rows of one height
    picture = PIL.Image.new("RGB", (rows[0].width, len(rows) * row_height), "white")
    for position, row in enumerate(rows):
        picture.paste(row, (0, position * row_height))
    seconds = time.perf_counter() - start
    record = {
        "command": "ifedit demo",
        "model": model_record(preset),
        "met_target": sum(successes),
        "edits": len(successes),
        "seconds": round(seconds, 1),
        "scenes": scenes,
        "versions": dict(versions()),
    }
    with staged_outputs({"image": output, "record": output.with_suffix(".json")}, overwrite=overwrite) as staged:
        save_image(picture, staged["image"])
        save_json(record, staged["record"])
    log(f"{sum(successes)}/{len(successes)} edits met their target in {seconds:.1f} s; wrote {output} and its record")
    return successes
