"""Edit held-out toy-world scenes under several IF-Edit settings and print how well each met its targets.

    python benchmarks/toyworld_eval.py                # 110 scenes (10 per event), every ablation setting
    python benchmarks/toyworld_eval.py --scenes 22 --settings copy recipe "K=1"
    python benchmarks/toyworld_eval.py --paired-with "no refinement" --settings "20 steps" "shift 3"   # the sampler

Scenes use seeds from 1,000,000 up, which training never sees. Every number comes with a bootstrap 95% interval
over the scenes (in brackets), and every setting is compared with the paper's recipe (or --paired-with's setting)
on the same scenes (a paired bootstrap of the difference in success, and of the median difference in region
gain). The columns:

- success: the share of edits that met their target, by the toy world's colour detectors (`detect.score_edit`);
- region gain: the median over changing scenes of how much of copying the source's error in the changed region
  the edit removes (`detect.region_error_reduction`, a pixel measure independent of the detectors), the median of
  its difference from the recipe's scene by scene, and the share of those scenes where it removes more than 20%;
- move error: mean distance of moved and fallen shapes from their targets (a lost shape counts 32 px);
- background error: mean 0-255 error outside the changed shape; sharpness: Laplacian variance of the output;
- s/edit on this machine.

"copy" returns the source unchanged, the baseline to beat. "VAE round trip" encodes the whole ground-truth clip and
decodes its last frame: the best any experts could do through this VAE, a ceiling. "refined target" runs the
refinement pass alone on the true target: what refinement does to a perfect edit.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from ifedit.editor import Editor
from ifedit.errors import IFEditError
from ifedit.io import check_output_path, save_json
from ifedit.loading import LoadOptions
from ifedit.options import FAST_SETTINGS
from ifedit.presets import edit_settings, resolve_model
from ifedit.toyworld.evaluate import (
    IMPROVED,
    SceneEdit,
    bootstrap,
    edit_scene,
    measure,
    refined_target,
    vae_round_trips,
)
from ifedit.toyworld.scenes import EVAL_SEED_START, EVENTS, render_clip, sample_case

RECIPE = "recipe"
# name -> (edit-setting overrides, prompt wording); None overrides = copy the source, ROUND_TRIP = the VAE's
# reconstruction of the target. Refinement is named in every setting, since presets may differ on it.
ROUND_TRIP: dict = {}  # compared by identity, never passed to the pipeline
REFINED_TARGET: dict = {}  # likewise: the refinement pass alone, run on the true target (`evaluate.refined_target`)
ON, OFF = {"refine": True}, {"refine": False}
SHORT_REFINE = {"refine_frames": 5, "refine_strength": 0.5}  # two latent frames, re-noised halfway
SETTINGS: dict[str, tuple[dict | None, str]] = {
    "copy": (None, "raw"),
    "VAE round trip": (ROUND_TRIP, "raw"),
    "refined target": (REFINED_TARGET, "raw"),
    RECIPE: (ON, "template"),
    "no refinement": (OFF, "template"),
    "short refinement": ({**ON, **SHORT_REFINE}, "template"),
    "raw instruction": (ON, "raw"),
    "K=1": ({**ON, "tld_stride": 1}, "template"),
    "K=2": ({**ON, "tld_stride": 2}, "template"),
    "K=4": ({**ON, "tld_stride": 4}, "template"),
    "threshold 0.8": ({**ON, "tld_threshold": 0.8}, "template"),
    "threshold 1.0": ({**ON, "tld_threshold": 1.0}, "template"),
    "original positions": ({**ON, "tld_positions": "original"}, "template"),
    "decode needed": ({**ON, "decode_frames": "needed"}, "template"),
    "--fast": ({**ON, **FAST_SETTINGS}, "template"),
    # The preset guides the high-noise expert alone (2; the toy experts learned an unconditional branch with text
    # dropout 0.1). The paper's timed recipe runs Lightning-distilled experts without guidance; base Wan2.2 I2V
    # guides both experts with 3.5.
    "no guidance": ({**ON, "guidance_scale": 1.0, "guidance_scale_2": 1.0}, "template"),
    "guidance 3.5": ({**ON, "guidance_scale": 3.5, "guidance_scale_2": 3.5}, "template"),
    # The `toyworld` preset's sampler (12 steps, noise levels spaced evenly after a shift of 5) against others:
    # run only when named (SAMPLER); the README pairs them with "no refinement", the preset's own settings.
    "20 steps": ({**OFF, "num_inference_steps": 20}, "template"),
    "shift 3": (OFF, "template"),
    "shift 8": (OFF, "template"),
    "default spacing": ({**OFF, "sigma_schedule": "default"}, "template"),
}
SAMPLER = ("20 steps", "shift 3", "shift 8", "default spacing")
TABLE = [name for name in SETTINGS if name not in SAMPLER]  # the README's ablation table, what runs by default
# Settings of the model itself, not of an edit: these rows load the pipeline again with them.
PRESET_CHANGES = {"shift 3": {"flow_shift": 3.0}, "shift 8": {"flow_shift": 8.0}}
DESCRIPTIONS = {
    "copy": "copy the source",
    "VAE round trip": "VAE round trip (ceiling)",
    "refined target": "refinement alone, of the true target (probe)",
    RECIPE: "**the paper's recipe: K=3, threshold 0.9, refinement, template prompt (guidance 2, high-noise)**",
    "no refinement": "no refinement",
    "short refinement": "short refinement (5 frames, strength 0.5)",
    "raw instruction": "raw instruction as the prompt",
    "K=1": "K=1 (no dropout)",
    "original positions": "original positions after dropout",
    "--fast": "`--fast`",
    "no guidance": "no guidance (as the paper's distilled experts)",
    "guidance 3.5": "guidance 3.5 on both experts (base Wan2.2's)",
    "20 steps": "no refinement, 20 steps (not 12)",
    "shift 3": "no refinement, flow shift 3 (not 5)",
    "shift 8": "no refinement, flow shift 8 (not 5)",
    "default spacing": "no refinement, the scheduler's own step spacing",
}


def evaluate(editor: Editor, cases: list, overrides: dict | None, wording: str) -> list[SceneEdit]:
    results = []
    for index, case in enumerate(cases):
        if overrides is None:
            clip = render_clip(case)
            results.append(measure(case, clip[0], clip=clip))
        elif overrides is ROUND_TRIP:
            clip = render_clip(case)
            start = time.perf_counter()
            output = vae_round_trips(editor.pipe.vae, clip[None])[0]
            results.append(measure(case, output, time.perf_counter() - start, clip=clip))
        elif overrides is REFINED_TARGET:
            results.append(refined_target(editor, case, edit_settings(editor.preset, refine=True), seed=index))
        else:
            settings = edit_settings(editor.preset, **overrides)
            results.append(edit_scene(editor, case, settings, wording=wording, seed=index))
    return results


def paired_difference(
    results: list[SceneEdit], reference: list[SceneEdit], measure: str = "success", statistic=np.mean
) -> tuple[float, float, float]:
    """A measure minus the reference's on the same scenes, summed by `statistic`, with a paired bootstrap 95%
    interval (`bootstrap` drops the scenes where the measure is nan, as the region gain is where nothing changes)."""
    difference = np.array([getattr(a, measure) for a in results], float)
    difference -= np.array([getattr(b, measure) for b in reference], float)
    return bootstrap(difference, statistic)


def summarise(
    results: list[SceneEdit], reference: list[SceneEdit] | None, paired_with: str = RECIPE
) -> dict[str, tuple]:
    changing = [r for r in results if r.changing]
    gains = np.array([r.region_gain for r in changing])
    unpaired = (float("nan"),) * 3
    gain_difference = paired_difference(results, reference, "region_gain", np.median) if reference else unpaired
    return {
        "success": bootstrap([r.success for r in results]),
        f"vs {paired_with}": paired_difference(results, reference) if reference else unpaired,
        "region gain (median)": bootstrap(gains, np.median),
        f"gain vs {paired_with}": gain_difference,
        f"improved > {IMPROVED:.0%}": bootstrap(gains > IMPROVED),
        "move error px": bootstrap([r.move_error for r in results]),
        "background error": bootstrap([r.background_error for r in results]),
        "sharpness": bootstrap([r.sharpness for r in results]),
        "s/edit": bootstrap([r.seconds for r in results]),
    }


def by_event(results: list[SceneEdit]) -> dict[str, tuple]:
    return {event: bootstrap([r.success for r in results if r.case.event == event]) for event in EVENTS}


def cell(value: tuple[float, float, float], digits: int = 2) -> str:
    estimate, low, high = value
    if np.isnan(estimate):
        return "-"
    return f"{estimate:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def markdown(rows: dict[str, dict[str, tuple]], first: str) -> str:
    columns = list(next(iter(rows.values())))
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in rows.items():
        digits = {"move error px": 1, "background error": 1, "sharpness": 0}
        cells = [cell(values[column], digits.get(column, 2)) for column in columns]
        lines.append(f"| {DESCRIPTIONS.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toyworld", help="toy world pipeline (preset name or folder)")
    parser.add_argument("--scenes", type=int, default=110, help="held-out scenes, spread evenly over the events")
    parser.add_argument(
        "--seed-start",
        type=int,
        default=EVAL_SEED_START,
        help="seed of the first scene (default: %(default)s; other sets of held-out scenes, such as 1200000, check "
        "that a finding is not a property of one set; seeds below the default are training's)",
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        default=TABLE,
        choices=list(SETTINGS),
        metavar="SETTING",
        help=f"what to run: {', '.join(map(repr, SETTINGS))} (default: all but the sampler's {', '.join(SAMPLER)})",
    )
    parser.add_argument(
        "--paired-with",
        choices=list(SETTINGS),
        metavar="SETTING",
        help=f"the setting every other is compared with scene by scene, run even if --settings leaves it out "
        f"(default: {RECIPE}, where it runs; 'no refinement' is the toyworld preset's own)",
    )
    parser.add_argument(
        "--save",
        metavar="FILE",
        help="also write every scene's result as JSON (a measure a scene has none of, such as the move error of "
        "one that moves nothing, is null)",
    )
    args = parser.parse_args()
    if args.scenes < 1:
        parser.error(f"--scenes must be at least 1, got {args.scenes}")
    if args.seed_start < EVAL_SEED_START:
        start = args.seed_start
        parser.error(f"--seed-start must be at least {EVAL_SEED_START} (lower seeds are training's), got {start}")
    # Checked now, not after the edits, as every output is, in the folder the file will be written to: that of the
    # name given, not of what a link of that name points to (a link is replaced, never written through).
    if args.save:
        try:
            check_output_path(args.save, overwrite=True, suffixes=(".json",))
        except IFEditError as error:
            parser.error(f"--save: {error}")

    cases = [sample_case(args.seed_start + index, EVENTS[index % len(EVENTS)]) for index in range(args.scenes)]
    try:
        preset = resolve_model(args.model)
    except IFEditError as error:
        parser.exit(2, f"{parser.prog}: {error}\n")
    editors: dict[str, Editor] = {}

    def editor_for(name: str) -> Editor:
        changes = PRESET_CHANGES.get(name, {})
        key = repr(sorted(changes.items()))  # rows with the same model settings share one loaded pipeline
        if key not in editors:
            editors[key] = Editor(dataclasses.replace(preset, **changes), LoadOptions(device="cpu"))
            editors[key].pipe.set_progress_bar_config(disable=True)
        return editors[key]

    print(f"{args.scenes} held-out scenes from seed {args.seed_start}, model {preset.name} ({preset.model_id})")
    # The reference first, so the others' lines can say how they compare as they finish.
    paired_with = args.paired_with or (RECIPE if RECIPE in args.settings else None)
    names = [paired_with] if paired_with else []
    names += [name for name in dict.fromkeys(args.settings) if name != paired_with]  # each once
    results: dict[str, list[SceneEdit]] = {}
    for name in names:
        overrides, wording = SETTINGS[name]
        results[name] = evaluate(editor_for(name), cases, overrides, wording)
        line = f"  {name}: success {np.mean([r.success for r in results[name]]):.2f}"
        if paired_with and name != paired_with:
            line += " ({:+.2f} [{:+.2f}, {:+.2f}] vs {})".format(
                *paired_difference(results[name], results[paired_with]), paired_with
            )
        print(line, flush=True)
    reference = results[paired_with] if paired_with else None
    ordered = [name for name in SETTINGS if name in results]
    print()
    summaries = {name: summarise(results[name], reference, paired_with or RECIPE) for name in ordered}
    print(markdown(summaries, "setting"))
    print()
    print(markdown({name: by_event(results[name]) for name in ordered}, "success by event"))
    if args.save:
        keep = ("success", "region_gain", "move_error", "background_error", "sharpness", "seconds")
        rows = {
            name: [
                {"seed": r.case.seed, "event": r.case.event, **{k: getattr(r, k) for k in keep}} for r in results[name]
            ]
            for name in ordered
        }
        # Atomic, through a temporary of its own: a kill leaves no half-written file, two runs never share one.
        save_json(rows, args.save)


if __name__ == "__main__":
    main()
