"""Score a run: our metrics where a benchmark has no official scorer, the benchmark's own scorer where it has one."""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import PIL.Image

from ..errors import InvalidInputError, SetupError
from ..io import load_image, save_json
from ..loading import resolve_device
from .benchmarks import Benchmark, OfficialRun, get_benchmark
from .cases import EditCase, name_problem
from .layout import RunFolder, case_from_record, output_half
from .metrics import sharpness
from .published import JUDGE_MODEL

logger = logging.getLogger("ifedit")

SCORES = "scores.json"
LAUNCHER = Path(__file__).with_name("judge_launcher.py")


@dataclass(frozen=True)
class ScoreOptions:
    """Where the metric weights, the official scorer and its judge are."""

    clip: str | None = None
    lpips_alexnet: str | None = None
    lpips_heads: str | None = None
    device: str = "auto"
    scorer_repo: str | None = None
    scorer_python: str = sys.executable
    judge_base_url: str | None = None
    judge_model: str | None = None
    judge_api_key: str | None = field(default=None, repr=False)


def finished_cases(folder: RunFolder, benchmark: str) -> list[EditCase]:
    """The finished cases of a run, rebuilt from their records alone; a damaged record, or a file no case could
    have written (a killed run's hidden temporary), is a case not finished, which `bench run` redoes."""
    found = []
    for path in sorted((folder.root / "records").glob("*.json")):
        if name_problem(path.stem) is not None:
            continue
        case = case_from_record(folder.read_record(path.stem), benchmark, path.stem)
        if case is not None and folder.finished(case):
            found.append(case)
    return found


def score_run(root: Path, options: ScoreOptions) -> Path:
    """Write `root/scores.json`: per-case metrics, their per-category and overall means, and official scores."""
    folder = RunFolder(root)
    manifest = folder.read_manifest() if folder.root.is_dir() else None
    if manifest is None:
        raise InvalidInputError(f"{folder.root} is not a run folder (no {folder.manifest_path.name}); see bench run")
    benchmark = get_benchmark(manifest["benchmark"])
    cases = finished_cases(folder, manifest["benchmark"])
    if not cases:
        raise InvalidInputError(f"{folder.root} has no finished cases to score")
    device = resolve_device(options.device)
    notes: list[str] = []
    metrics: dict[str, Any] = {"sharpness": "variance of the Laplacian, grayscale 0-255 (of the edit itself)"}
    per_case: dict[str, dict[str, Any]] = {}
    for case in cases:
        per_case[case.id] = {"category": case.category, "sharpness": sharpness(_edited(folder, case))}
    own = benchmark.own_metrics(cases, lambda case: _edited(folder, case), options, device)
    metrics.update(own.metrics)
    notes += own.notes
    for case_id, values in own.cases.items():
        per_case[case_id].update(values)
    official = None
    if benchmark.repository is not None and options.scorer_repo:
        official = run_official(benchmark, folder, manifest, cases, options)
    elif benchmark.repository is not None:
        notes.append(
            f"the judge score needs --scorer-repo DIR: your checkout of {benchmark.repository}, with the judge "
            "set by --judge-base-url (or $IFEDIT_JUDGE_BASE_URL), --judge-model and $IFEDIT_JUDGE_API_KEY"
        )
    for note in notes:
        logger.warning("%s", note)
    categories, overall = summarise(per_case)
    scores = {
        "benchmark": benchmark.name,
        "scored": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cases_scored": len(per_case),
        "metrics": metrics,
        "overall": overall,
        "categories": categories,
        "official": official,
        "notes": notes,
        "cases": per_case,
    }
    path = folder.root / SCORES
    save_json(scores, path)
    return path


def _edited(folder: RunFolder, case: EditCase) -> PIL.Image.Image:
    return output_half(case, load_image(folder.output(case)))


def summarise(per_case: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Means of every numeric metric per category and over all cases."""
    by_category: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    overall: dict[str, list[float]] = defaultdict(list)
    for scores in per_case.values():
        for name, value in scores.items():
            if isinstance(value, (int, float)):
                by_category[scores["category"]][name].append(value)
                overall[name].append(value)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    categories = {category: {name: mean(v) for name, v in found.items()} for category, found in by_category.items()}
    return categories, {name: mean(values) for name, values in overall.items()}


def run_official(
    benchmark: Benchmark, folder: RunFolder, manifest, cases: list[EditCase], options: ScoreOptions
) -> dict[str, Any]:
    """Run the benchmark's own scorer from the user's checkout with the user's judge, and collect its numbers."""
    repo = Path(options.scorer_repo).expanduser()
    if not repo.is_dir():
        raise SetupError(f"--scorer-repo {repo} is not a folder; clone {benchmark.repository} there")
    base_url = options.judge_base_url or os.environ.get("IFEDIT_JUDGE_BASE_URL")
    if not base_url:
        raise SetupError(
            "the judge needs an endpoint: --judge-base-url URL or $IFEDIT_JUDGE_BASE_URL (OpenAI-compatible)"
        )
    # Always named: left to them, the scorers ask for different models (ImgEdit gpt-4o, ByteMorph its deployment).
    model = options.judge_model or os.environ.get("IFEDIT_JUDGE_MODEL") or JUDGE_MODEL
    env = {**os.environ, "IFEDIT_JUDGE_BASE_URL": base_url, "IFEDIT_JUDGE_MODEL": model}
    key = options.judge_api_key or os.environ.get("IFEDIT_JUDGE_API_KEY")
    if key:
        env["IFEDIT_JUDGE_API_KEY"] = key
    work = folder.root / "official"
    work.mkdir(exist_ok=True)
    launch = functools.partial(_launch, options, env)
    results = benchmark.official(OfficialRun(repo, folder, Path(manifest["data"]), work, cases, model, launch))
    return {
        "scorer": benchmark.repository,
        "scorer_version": _revision(repo),
        "judge": {"base_url": base_url, "model": model},
        **results,
    }


def _launch(options: ScoreOptions, env: dict[str, str], script: Path, *arguments: str, cwd: Path, judge: bool = True):
    """Run one official script (through the judge launcher when it calls the judge), failing with one line."""
    python = os.path.expanduser(options.scorer_python)
    command = [python, *([str(LAUNCHER)] if judge else []), str(script), *map(str, arguments)]
    logger.info("running %s", " ".join(command))
    try:
        completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    except OSError as error:
        raise SetupError(f"--scorer-python {python} cannot run: {error.strerror or error}") from None
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise SetupError(f"official scorer {script.name} failed (exit {completed.returncode}): {last}")


def _revision(repo: Path) -> str:
    try:
        completed = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    return completed.stdout.strip() or "unknown"
