"""How far along its move a toy-world shape is when the edit is read at an earlier point of the clip.

    python benchmarks/edit_position.py                        # the move events of the 110 evaluation scenes
    python benchmarks/edit_position.py --positions 0.5 1.0

For every moving event (left, right, up, down, fall) among the held-out evaluation scenes (seeds from 1,000,000,
10 per event as in toyworld_eval.py), the source is edited with `edit_position` at each position, the toy world's
preset settings and the offline template prompt, with one seed per scene. The shape's displacement from where it
started, projected on the move the instruction asks for, is reported as a fraction of that move (1: all the way,
0: not at all; a lost shape counts 0), with the mean and a bootstrap 95% interval over scenes.
"""

from __future__ import annotations

import argparse

import numpy as np
import PIL.Image
import torch

from ifedit.editor import Editor
from ifedit.loading import LoadOptions
from ifedit.presets import edit_settings, resolve_model
from ifedit.prompting.template import template_prompt
from ifedit.toyworld.detect import MOVING_EVENTS, detect
from ifedit.toyworld.evaluate import bootstrap
from ifedit.toyworld.scenes import EVAL_SEED_START, EVENTS, render_clip, sample_case


def move_fraction(case, output: np.ndarray) -> float:
    """The shape's displacement in `output` along the requested move, as a fraction of that move."""
    start = np.array([case.moved.x, case.moved.y])
    wanted = np.array([case.end.x, case.end.y]) - start
    found = detect(output, case.end.colour)
    if not found.found:
        return 0.0
    return float((np.array([found.x, found.y]) - start) @ wanted / (wanted @ wanted))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toyworld", help="toy world pipeline (preset name or folder)")
    parser.add_argument("--scenes", type=int, default=110, help="evaluation scenes, spread evenly over the events")
    parser.add_argument("--positions", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    args = parser.parse_args()

    cases = [sample_case(EVAL_SEED_START + index, EVENTS[index % len(EVENTS)]) for index in range(args.scenes)]
    moves = [(index, case) for index, case in enumerate(cases) if case.event in MOVING_EVENTS]
    preset = resolve_model(args.model)
    editor = Editor(preset, LoadOptions(device="cpu"))
    editor.pipe.set_progress_bar_config(disable=True)
    print(f"{len(moves)} moving scenes of {args.scenes}, model {preset.name}")
    rows = []
    for position in args.positions:
        settings = edit_settings(preset, edit_position=position)
        fractions, used = [], None
        for index, case in moves:
            source = PIL.Image.fromarray(render_clip(case)[0])
            prompt = template_prompt(case.instruction, "instruction")
            edit = editor.edit(source, case.instruction, settings, prompt=prompt, seed=index)
            fractions.append(move_fraction(case, np.asarray(edit.result.image)))
            used = edit.result.edit_position_used
        mean, low, high = bootstrap(fractions)
        rows.append((position, used, mean, low, high))
        print(f"  position {position}: {np.mean(fractions):.2f} of the move", flush=True)
    print()
    print("| edit position | latent frame used | share of the move (mean) | 95% interval |")
    print("|---|---|---|---|")
    for position, used, mean, low, high in rows:
        print(f"| {position:g} | {used:.3g} | {mean:.2f} | {low:.2f} to {high:.2f} |")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
