"""Measure what the toy-world quality tests compare, with bootstrap 95% intervals, to set their margins.

    python tools/quality_margins.py                    # the shipped toyworld model, about a minute
    python tools/quality_margins.py --model my_toyworld

Runs the 22 scenes `tests/test_toyworld_quality.py` edits, as it edits them (`evaluate.quality_runs`), and prints
each statistic of `evaluate.quality_statistics` with its interval over the scenes, beside the same measures of the
wrong pipelines made from outside (experts swapped, the blurriest candidate kept). A test's threshold belongs below
the shipped pipeline's interval and above what the wrong pipelines reach; the tests say which numbers they used.
"""

from __future__ import annotations

import argparse

import numpy as np

from ifedit.editor import Editor
from ifedit.errors import IFEditError
from ifedit.loading import LoadOptions
from ifedit.presets import edit_settings, resolve_model
from ifedit.toyworld.evaluate import bootstrap, measure, quality_runs, quality_statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toyworld", help="toy world pipeline (preset name or folder)")
    args = parser.parse_args()
    try:
        preset = resolve_model(args.model)
    except IFEditError as error:
        parser.exit(2, f"{parser.prog}: {error}\n")
    editor = Editor(preset, LoadOptions(device="cpu"))
    editor.pipe.set_progress_bar_config(disable=True)
    runs = quality_runs(editor, edit_settings(editor.preset))
    print(f"{len(runs.shipped)} scenes, model {editor.preset.name} ({editor.preset.model_id})\n")
    print("| statistic | summed as | shipped [95% interval] |")
    print("|---|---|---|")
    for name, (values, how) in quality_statistics(runs).items():
        value, low, high = bootstrap(values, np.median if how == "median" else np.mean)
        print(f"| {name} | {how} | {value:.3f} [{low:.3f}, {high:.3f}] |")
    blurriest = [measure(edit.case, edit.blurriest) for edit in runs.shipped]
    print("\n| pipeline | region gain, median [95%] | success on changing scenes |")
    print("|---|---|---|")
    for name, edits in (("shipped", runs.shipped), ("experts swapped", runs.swapped), ("blurriest kept", blurriest)):
        changing = [edit for edit in edits if edit.changing]
        value, low, high = bootstrap([edit.region_gain for edit in changing], np.median)
        success = np.mean([edit.success for edit in changing])
        print(f"| {name} | {value:.3f} [{low:.3f}, {high:.3f}] | {success:.2f} |")


if __name__ == "__main__":
    main()
