"""Plant deliberate bugs in a copy of the method's source and check that the tests catch every one.

    python tools/mutants.py            # every mutation; exit 1 if any survives, goes stale or errs, 2 if the
                                       # unmutated copy already fails the named tests
    python tools/mutants.py --list     # their names
    python tools/mutants.py NAME ...   # only these

src/, tests/ and pyproject.toml are copied to a temporary folder once; each mutation replaces one exact text in
the copy, runs the tests it names there (PYTHONPATH pointing at the copy's src) and puts the text back. The
working tree is never touched. A mutation whose text is no longer in the source is "stale": update it with the code.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 900  # per mutation; the slowest named test set takes well under a minute


@dataclass(frozen=True)
class Mutation:
    """One deliberate bug: in `file` (under src/ifedit), `old` (found exactly once) becomes `new`."""

    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


METHOD = "tests/test_method_mutations.py::"
PIPELINE = "tests/test_pipeline.py::"
DROPOUT = "tests/test_dropout.py::"
SHARPNESS = "tests/test_sharpness.py::"
SIZES = "tests/test_sizes.py::"
TOYWORLD = "tests/test_toyworld_quality.py::test_the_preset_edits_with_both_experts_dropout_and_the_sharpest_frame"
# The toy world's relative quality tests alone, without the structural test beside them: bugs they must catch by
# what the edits look like.
QUALITY_TESTS = (
    "test_edits_remove_more_of_the_changed_regions_error_than_copying_the_source",
    "test_edits_beat_the_same_pipeline_with_its_experts_swapped",
    "test_the_output_is_sharper_than_the_blurriest_candidate_frame",
    "test_edits_keep_the_background_nearly_as_well_as_the_vae_round_trip",
)
QUALITY = tuple(f"tests/test_toyworld_quality.py::{name}" for name in QUALITY_TESTS)

MUTATIONS: tuple[Mutation, ...] = (
    # The expert switch (SPEC step 2).
    Mutation(
        "experts swapped",
        "pipeline.py",
        'return "transformer" if boundary is None or timestep >= boundary else "transformer_2"',
        'return "transformer_2" if boundary is not None and timestep >= boundary else "transformer"',
        (TOYWORLD, METHOD + "test_the_step_at_the_boundary_is_high_noise_and_the_cut_is_strictly_below"),
    ),
    Mutation(
        "boundary comparison flipped (> for >=)",
        "pipeline.py",
        "timestep >= boundary else",
        "timestep > boundary else",
        (METHOD + "test_the_step_at_the_boundary_is_high_noise_and_the_cut_is_strictly_below",),
    ),
    Mutation(
        "boundary left as a fraction (low-noise expert never runs)",
        "pipeline.py",
        "return self.config.boundary_ratio * self.scheduler.config.num_train_timesteps",
        "return self.config.boundary_ratio",
        (PIPELINE + "test_experts_switch_at_the_boundary_and_the_low_noise_expert_sees_the_dropped_clip",),
    ),
    Mutation(
        "guidance scales swapped between the experts",
        "pipeline.py",
        'guidance = settings.guidance_scale if expert == "transformer" else settings.guidance_scale_2',
        'guidance = settings.guidance_scale_2 if expert == "transformer" else settings.guidance_scale',
        (METHOD + "test_multistep_history_is_thinned_with_the_kept_frames",),
    ),
    Mutation(
        "unconditional call given the prompt",
        "pipeline.py",
        "timestep,\n                        negative_prompt_embeds,",
        "timestep,\n                        prompt_embeds,",
        (METHOD + "test_guidance_pairs_each_prompt_with_its_call_and_thins_the_condition_alike",),
    ),
    # Temporal latent dropout (SPEC step 3).
    Mutation(
        "cut never happening (threshold not scaled to timesteps)",
        "pipeline.py",
        "drop_at = dropout_step(timesteps, settings.tld_threshold * self.scheduler.config.num_train_timesteps)",
        "drop_at = dropout_step(timesteps, settings.tld_threshold)",
        (TOYWORLD, METHOD + "test_the_step_at_the_boundary_is_high_noise_and_the_cut_is_strictly_below"),
    ),
    Mutation(
        "cut at or below the threshold (<= for <)",
        "dropout.py",
        "if float(timestep) < threshold_timestep:",
        "if float(timestep) <= threshold_timestep:",
        (METHOD + "test_the_step_at_the_boundary_is_high_noise_and_the_cut_is_strictly_below",),
    ),
    Mutation(
        "last latent frame not kept",
        "dropout.py",
        "{*range(0, num_frames, stride), num_frames - 1, *also}",
        "{*range(0, num_frames, stride), *also}",
        (DROPOUT + "test_kept_frames_are_every_kth_plus_the_last",),
    ),
    Mutation(
        "every K-th frame counted from 1 (source frame dropped)",
        "dropout.py",
        "{*range(0, num_frames, stride),",
        "{*range(1, num_frames, stride),",
        (DROPOUT + "test_kept_frames_are_every_kth_plus_the_last",),
    ),
    Mutation(
        "scheduler history thinned with frames 0..len(kept)",
        "pipeline.py",
        "slice_scheduler_history(self.scheduler, kept, num_latent_frames)",
        "slice_scheduler_history(self.scheduler, list(range(len(kept))), num_latent_frames)",
        (METHOD + "test_multistep_history_is_thinned_with_the_kept_frames",),
    ),
    Mutation(
        "I2V condition thinned with frames 0..len(kept)",
        "pipeline.py",
        "condition = slice_frames(condition, kept, num_latent_frames)",
        "condition = slice_frames(condition, list(range(len(kept))), num_latent_frames)",
        (METHOD + "test_guidance_pairs_each_prompt_with_its_call_and_thins_the_condition_alike",),
    ),
    Mutation(
        "reset history keeps the solver's order",
        "dropout.py",
        "scheduler.lower_order_nums = 0",
        "pass",
        (DROPOUT + "test_reset_history_makes_the_next_step_first_order",),
    ),
    Mutation(
        "original positions hooked on transformer_2 only",
        "pipeline.py",
        "experts = (self.transformer, self.transformer_2)",
        "experts = (self.transformer_2,)",
        (METHOD + "test_original_positions_reach_every_expert_that_runs_on_the_thinned_clip",),
    ),
    Mutation(
        "original positions are the first rows (contiguous after all)",
        "dropout.py",
        "per_frame[:, index.to(freqs.device)]",
        "per_frame[:, : len(index)]",
        (METHOD + "test_original_positions_change_only_the_steps_after_the_cut",),
    ),
    # Frame choice (SPEC step 4).
    Mutation(
        "blurriest frame chosen (sharpest is argmin)",
        "sharpness.py",
        "return max(scores, key=lambda index: (scores[index], index))",
        "return min(scores, key=lambda index: (scores[index], -index))",
        (TOYWORLD, SHARPNESS + "test_sharpest_picks_the_unblurred_frame_wherever_it_sits"),
    ),
    Mutation(
        "blurriest frame chosen in the pipeline",
        "pipeline.py",
        "selected=sharpest(scores)",
        "selected=min(scores, key=scores.get)",
        (METHOD + "test_the_sharpest_of_the_last_latent_frames_pixels_is_chosen",),
    ),
    Mutation(
        "ties go to the earlier frame",
        "sharpness.py",
        "key=lambda index: (scores[index], index))",
        "key=lambda index: (scores[index], -index))",
        (SHARPNESS + "test_sharpest_prefers_the_later_frame_on_a_tie",),
    ),
    Mutation(
        "luma weights in BGR order",
        "sharpness.py",
        "_LUMA = torch.tensor([0.299, 0.587, 0.114])",
        "_LUMA = torch.tensor([0.114, 0.587, 0.299])",
        (SHARPNESS + "test_score_matches_an_independent_computation",),
    ),
    Mutation(
        "frames scored without 8-bit quantisation",
        "sharpness.py",
        "pixels = (frames.detach().float().clamp(0, 1) * 255).round()",
        "pixels = frames.detach().float().clamp(0, 1) * 255",
        (METHOD + "test_the_sharpest_of_the_last_latent_frames_pixels_is_chosen",),
    ),
    Mutation(
        "candidates start one frame early",
        "sharpness.py",
        "first = (latent_frame - 1) * temporal_scale + 1",
        "first = (latent_frame - 1) * temporal_scale",
        (METHOD + "test_the_sharpest_of_the_last_latent_frames_pixels_is_chosen",),
    ),
    Mutation(
        "needed decode numbered without its offset",
        "pipeline.py",
        "offset = skipped * self.vae_scale_factor_temporal",
        "offset = skipped",
        (METHOD + "test_decoding_only_the_needed_frames_scores_the_last_latent_frame",),
    ),
    # Refinement (SPEC step 5).
    Mutation(
        "refinement conditioned on the edit prompt",
        "pipeline.py",
        "_row(embeds, 1),",
        "_row(embeds, 0),",
        (METHOD + "test_refinement_is_conditioned_on_the_still_video_prompt",),
    ),
    Mutation(
        "partial-strength start mixes noise and still clip the wrong way round",
        "pipeline.py",
        "latents = sigma * latents + (1 - sigma) * self._encode_still(image, run.num_frames)",
        "latents = (1 - sigma) * latents + sigma * self._encode_still(image, run.num_frames)",
        (METHOD + "test_partial_strength_refinement_starts_from_the_renoised_still_clip",),
    ),
    Mutation(
        "refinement strength counted from the wrong end",
        "pipeline.py",
        "int(round(num_inference_steps * (1 - strength)))",
        "int(round(num_inference_steps * strength))",
        (METHOD + "test_partial_strength_refinement_starts_from_the_renoised_still_clip",),
    ),
    Mutation(
        "refinement starts from the frame before the chosen one",
        "pipeline.py",
        "chosen = clip.frame(clip.selected)",
        "chosen = clip.frame(clip.selected - 1)",
        (PIPELINE + "test_refinement_starts_from_the_selected_frame",),
    ),
    Mutation(
        "edit frame returned instead of the refined one",
        "pipeline.py",
        "image=self._postprocess(final.frame(final.selected).unsqueeze(2), output_type)[0]",
        "image=self._postprocess(clip.frame(clip.selected).unsqueeze(2), output_type)[0]",
        (PIPELINE + "test_refinement_starts_from_the_selected_frame",),
    ),
    # Output geometry.
    Mutation(
        "sides floored instead of rounded",
        "sizes.py",
        "return max(multiple, math.floor(value / multiple + 0.5) * multiple)",
        "return max(multiple, math.floor(value / multiple) * multiple)",
        (SIZES + "test_default_size_keeps_aspect_at_the_area", SIZES + "test_given_sides_are_rounded_with_a_warning"),
    ),
    Mutation(
        "aspect ratio inverted",
        "sizes.py",
        "aspect = image_height / image_width",
        "aspect = image_width / image_height",
        (SIZES + "test_default_size_keeps_aspect_at_the_area",),
    ),
    Mutation(
        "frames rounded up to 4n+1",
        "sizes.py",
        "math.floor((num_frames - 1) / temporal_scale + 0.5)",
        "math.ceil((num_frames - 1) / temporal_scale)",
        (SIZES + "test_frames_round_to_4n_plus_1",),
    ),
    Mutation(
        "longest side limit checked on the shorter side",
        "sizes.py",
        "if largest_side is not None and max(height, width) > largest_side:",
        "if largest_side is not None and min(height, width) > largest_side:",
        (METHOD + "test_only_the_longest_side_needs_to_pass_the_models_limit_to_shrink_the_default_area",),
    ),
    # Prompting (SPEC step 1).
    Mutation(
        "template's camera rule inverted",
        "prompting/template.py",
        "camera = _MOVING_CAMERA if asks_for_camera_change(text) else _STATIC_CAMERA",
        "camera = _STATIC_CAMERA if asks_for_camera_change(text) else _MOVING_CAMERA",
        ("tests/test_prompting_template.py::test_camera_moves_only_when_asked",),
    ),
    Mutation(
        "template treats instructions as target descriptions",
        "prompting/template.py",
        'if kind == "instruction":',
        'if kind == "target":',
        ("tests/test_prompting_template.py::test_template_wording",),
    ),
    Mutation(
        "VLM told the instruction rules whatever the input kind",
        "prompting/instructions.py",
        "{_SECTIONS[kind]}",
        "{_SECTIONS['instruction']}",
        ("tests/test_prompting_base.py::test_messages_follow_the_input_kind",),
    ),
    Mutation(
        "prompt cache keyed on the image size only",
        "prompting/cache.py",
        "digest.update(image.tobytes())",
        'digest.update(b"")',
        ("tests/test_prompting_cache.py::test_image_digest_is_about_pixels",),
    ),
    # The same kinds of bug, judged by the toy world's edits alone (tests/test_toyworld_quality.py).
    Mutation(
        "experts swapped, judged by the edits",
        "pipeline.py",
        'return "transformer" if boundary is None or timestep >= boundary else "transformer_2"',
        'return "transformer_2" if boundary is not None and timestep >= boundary else "transformer"',
        QUALITY,
    ),
    Mutation(
        "blurriest frame chosen, judged by the edits",
        "pipeline.py",
        "selected=sharpest(scores)",
        "selected=min(scores, key=scores.get)",
        QUALITY,
    ),
    Mutation(
        "source frame returned instead of the edit, judged by the edits",
        "pipeline.py",
        "image=self._postprocess(final.frame(final.selected).unsqueeze(2), output_type)[0]",
        "image=self._postprocess(clip.frame(0).unsqueeze(2), output_type)[0]",
        QUALITY,
    ),
    Mutation(
        "low-noise expert never runs, judged by the edits",
        "pipeline.py",
        "return self.config.boundary_ratio * self.scheduler.config.num_train_timesteps",
        "return self.config.boundary_ratio",
        QUALITY,
    ),
    Mutation(
        "I2V condition thinned with frames 0..len(kept), judged by the edits",
        "pipeline.py",
        "condition = slice_frames(condition, kept, num_latent_frames)",
        "condition = slice_frames(condition, list(range(len(kept))), num_latent_frames)",
        QUALITY,
    ),
)


@dataclass(frozen=True)
class Outcome:
    mutation: Mutation
    status: str  # killed, survived, stale, error, timeout
    detail: str
    seconds: float


def snapshot(destination: Path) -> Path:
    """Copy what the tests need (src, tests, pyproject.toml) to `destination`; return the copy's package folder."""
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache")
    for folder in ("src", "tests"):
        shutil.copytree(ROOT / folder, destination / folder, ignore=skip)
    shutil.copy2(ROOT / "pyproject.toml", destination / "pyproject.toml")
    return destination / "src" / "ifedit"


def environment(tree: Path) -> dict[str, str]:
    """Imports resolve to the copy, never to the editable install of the working tree; no bytecode is cached."""
    return dict(os.environ, PYTHONPATH=str(tree / "src"), PYTHONDONTWRITEBYTECODE="1")


def check_import(tree: Path) -> None:
    """Stop unless the copy's interpreter imports ifedit from the copy."""
    found = subprocess.run(
        [sys.executable, "-c", "import ifedit; print(ifedit.__file__)"],
        cwd=tree, env=environment(tree), capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not Path(found).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"mutants: the copy imports ifedit from {found}, not from {tree / 'src'}")


def run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[str, str]:
    """Run `tests` in the copy: ("passed" | "failed" | "error" | "timeout", a short account)."""
    report = tree / "junit.xml"
    report.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *tests]
    try:
        done = subprocess.run(command, cwd=tree, env=environment(tree), capture_output=True, text=True,
                              timeout=TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "timeout", f"over {TIMEOUT_S} s"
    if done.returncode not in (0, 1) or not report.is_file():
        return "error", f"pytest exit {done.returncode}: " + " | ".join(done.stdout.strip().splitlines()[-3:])
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    account = f"{failed}/{suite.get('tests')} tests failed"
    names = [case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None
             or case.find("error") is not None]  # fmt: skip
    if names:
        account += ": " + ", ".join(names)
    return ("failed" if done.returncode == 1 else "passed"), account


def try_mutation(package: Path, mutation: Mutation) -> Outcome:
    start = time.perf_counter()
    path = package / mutation.file
    source = path.read_text(encoding="utf-8")
    count = source.count(mutation.old)
    if count != 1:
        where = "not found" if count == 0 else f"found {count} times"
        return Outcome(mutation, "stale", f"text {where} in src/ifedit/{mutation.file}", 0.0)
    path.write_text(source.replace(mutation.old, mutation.new), encoding="utf-8")
    try:
        result, account = run_tests(package.parent.parent, mutation.tests)
    finally:
        path.write_text(source, encoding="utf-8")
    status = {"failed": "killed", "passed": "survived"}.get(result, result)
    return Outcome(mutation, status, account, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("names", nargs="*", help="run only the mutations with these names (default: all)")
    parser.add_argument("--list", action="store_true", help="print the mutations' names and exit")
    args = parser.parse_args(argv)
    if args.list:
        for mutation in MUTATIONS:
            print(f"{mutation.name}  [{mutation.file}]")
        return 0
    unknown = set(args.names) - {mutation.name for mutation in MUTATIONS}
    if unknown:
        parser.error(f"unknown mutation(s): {', '.join(sorted(unknown))}; see --list")
    chosen = [mutation for mutation in MUTATIONS if not args.names or mutation.name in args.names]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ifedit-mutants-") as folder:
        tree = Path(folder)
        package = snapshot(tree)
        check_import(tree)
        # Unmutated, every named test must pass, or a "killed" would mean nothing.
        baseline = tuple(dict.fromkeys(test for mutation in chosen for test in mutation.tests))
        result, account = run_tests(tree, baseline)
        if result != "passed":
            print(f"mutants: the unmutated copy does not pass the named tests ({result}: {account})", file=sys.stderr)
            return 2
        print(f"baseline: {len(baseline)} test selections pass ({time.perf_counter() - start:.0f} s)", flush=True)
        outcomes = []
        for mutation in chosen:
            outcome = try_mutation(package, mutation)
            outcomes.append(outcome)
            print(f"{outcome.status:8}  {outcome.seconds:6.1f} s  {mutation.name}  ({outcome.detail})", flush=True)
    width = max(len(outcome.mutation.name) for outcome in outcomes)
    print(f"\n{'mutation':{width}}  {'file':25}  result    seconds")
    for outcome in outcomes:
        mutation = outcome.mutation
        print(f"{mutation.name:{width}}  {mutation.file:25}  {outcome.status:8}  {outcome.seconds:7.1f}")
    bad = [outcome for outcome in outcomes if outcome.status != "killed"]
    print(f"\n{len(outcomes) - len(bad)}/{len(outcomes)} killed in {time.perf_counter() - start:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
