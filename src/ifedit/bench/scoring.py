"""Score a run: our metrics where a benchmark has no official scorer, the benchmark's own scorer where it has one."""

from __future__ import annotations

import csv
import json
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
import torch

from ..errors import InvalidInputError, SetupError
from ..io import load_image, save_json
from ..loading import resolve_device
from .cases import EditCase, find_listing, imgedit_image_root, read_json, safe_id
from .layout import RunFolder, output_half
from .metrics import ALEXNET_HINT, HEADS_HINT, LPIPS, CLIPScorer, sharpness, to_tensor
from .published import JUDGE_MODEL

logger = logging.getLogger("ifedit")

SCORES = "scores.json"
REPOSITORIES = {
    "bytemorph": "https://github.com/Boese0601/ByteMorph",
    "risebench": "https://github.com/PhoenixZ810/RISEBench",
    "imgedit": "https://github.com/PKU-YuanGroup/ImgEdit",
}
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


def finished_cases(folder: RunFolder) -> list[EditCase]:
    """The finished cases of a run, rebuilt from their records alone."""
    found = []
    for path in sorted((folder.root / "records").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        info = record["case"]
        case = EditCase(
            info["benchmark"], info["id"], info["key"], info["text"], info["input_kind"], info["category"],
            Path(info["source"]), Path(info["reference"]) if info["reference"] else None, info["reference_text"],
            info["side_by_side"],
        )  # fmt: skip
        if folder.finished(case):
            found.append(case)
    return found


def score_run(root: Path, options: ScoreOptions) -> Path:
    """Write `root/scores.json`: per-case metrics, their per-category and overall means, and official scores."""
    folder = RunFolder(root)
    manifest = folder.read_manifest() if folder.root.is_dir() else None
    if manifest is None:
        raise InvalidInputError(f"{folder.root} is not a run folder (no {folder.manifest_path.name}); see bench run")
    benchmark = manifest["benchmark"]
    cases = finished_cases(folder)
    if not cases:
        raise InvalidInputError(f"{folder.root} has no finished cases to score")
    device = resolve_device(options.device)
    notes: list[str] = []
    metrics: dict[str, Any] = {"sharpness": "variance of the Laplacian, grayscale 0-255 (of the edit itself)"}
    per_case: dict[str, dict[str, Any]] = {}
    for case in cases:
        per_case[case.id] = {"category": case.category, "sharpness": sharpness(_edited(folder, case))}
    official = None
    if benchmark == "tedbench":
        _tedbench_metrics(folder, cases, per_case, metrics, notes, options, device)
    elif options.scorer_repo:
        official = run_official(benchmark, folder, manifest, cases, options)
    else:
        notes.append(
            f"the judge score needs --scorer-repo DIR: your checkout of {REPOSITORIES[benchmark]}, with the judge "
            "set by --judge-base-url (or $IFEDIT_JUDGE_BASE_URL), --judge-model and $IFEDIT_JUDGE_API_KEY"
        )
    for note in notes:
        logger.warning("%s", note)
    categories, overall = summarise(per_case)
    scores = {
        "benchmark": benchmark,
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


def _tedbench_metrics(folder, cases, per_case, metrics, notes, options: ScoreOptions, device) -> None:
    """LPIPS to the source (AlexNet), CLIP-I to the source and CLIP-T to the target caption, as the papers report."""
    lpips = None
    if options.lpips_alexnet or options.lpips_heads:
        lpips = LPIPS.from_files(options.lpips_alexnet, options.lpips_heads).to(device)
        metrics["lpips"] = "LPIPS v0.1, AlexNet, output vs source resized to the output's size"
    else:
        notes.append(f"LPIPS needs --lpips-alexnet FILE ({ALEXNET_HINT}) and --lpips-heads FILE ({HEADS_HINT})")
    clip = None
    if options.clip:
        clip = CLIPScorer(options.clip, device)
        metrics["clip_i"] = f"cosine of CLIP image embeddings, output vs source; backbone {options.clip}"
        metrics["clip_t"] = f"cosine of CLIP image and text embeddings, output vs target text; backbone {options.clip}"
        metrics["clip_backbone"] = options.clip
    else:
        notes.append("CLIP-I and CLIP-T need --clip MODEL: a folder or Hub id of a transformers CLIPModel")
    if lpips is None and clip is None:
        return
    for case in cases:
        edited, source = _edited(folder, case), case.load_source()
        scores = per_case[case.id]
        if lpips is not None:
            resized = source.resize(edited.size, PIL.Image.Resampling.BICUBIC)
            with torch.no_grad():
                scores["lpips"] = float(lpips(to_tensor(edited).to(device), to_tensor(resized).to(device))[0])
        if clip is not None:
            scores["clip_i"] = clip.clip_i(edited, source)
            scores["clip_t"] = clip.clip_t(edited, case.text)


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


def run_official(benchmark, folder: RunFolder, manifest, cases, options: ScoreOptions) -> dict[str, Any]:
    """Run the benchmark's own scorer from the user's checkout with the user's judge, and collect its numbers."""
    repo = Path(options.scorer_repo).expanduser()
    if not repo.is_dir():
        raise SetupError(f"--scorer-repo {repo} is not a folder; clone {REPOSITORIES[benchmark]} there")
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
    data = Path(manifest["data"])
    scorer = {"risebench": _risebench, "imgedit": _imgedit, "bytemorph": _bytemorph}[benchmark]
    results = scorer(repo, folder, data, work, cases, model, lambda *a, **k: _launch(options, env, *a, **k))
    return {
        "scorer": REPOSITORIES[benchmark],
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


def _script(repo: Path, *candidates: str) -> Path:
    for candidate in candidates:
        if (repo / candidate).is_file():
            return repo / candidate
    raise SetupError(f"--scorer-repo {repo} has no {candidates[0]}; is it a checkout of the benchmark's repository?")


def _revision(repo: Path) -> str:
    try:
        completed = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    return completed.stdout.strip() or "unknown"


# RISEBench's rows per category, by the names of the published table.
RISEBENCH_ROWS = {"Overall": "overall", "Temporal": "temporal_reasoning", "Causal": "causal_reasoning",
                  "Spatial": "spatial_reasoning", "Logical": "logical_reasoning"}  # fmt: skip


def _risebench(repo, folder: RunFolder, data: Path, work: Path, cases, judge: str, launch) -> dict[str, Any]:
    """gpt_eval.py over the finished cases. Its answers are cached per judge model (`--prefix`), so scoring again
    with another judge asks that judge instead of reusing the first one's answers."""
    script = _script(repo, "gpt_eval.py")
    listing = find_listing("risebench", data)
    keys = {case.key for case in cases}
    entries = [entry for entry in read_json(listing, "RISEBench list") if str(entry["index"]) in keys]
    subset = work / "data_total.json"
    save_json(entries, subset)
    prefix = safe_id(judge)
    launch(script, "--data", subset.resolve(), "--output", folder.root.resolve(), "--input", listing.parent.resolve(),
           "--model", "ifedit", "--prefix", prefix, cwd=repo)  # fmt: skip
    with open(folder.root / f"{prefix}_ifedit_judge.csv", newline="", encoding="utf-8") as handle:
        rows = {row["-"]: row for row in csv.DictReader(handle)}
    # Its Accuracy is a fraction (cases judged 5 on every criterion); the paper prints it as a percentage.
    accuracy = {name: _number(rows[row]["Accuracy"]) for row, name in RISEBENCH_ROWS.items() if row in rows}
    return {
        "comparable": {name: 100 * value for name, value in accuracy.items() if value is not None},
        "comparable_unit": "accuracy %: the official Accuracy (0-1) x 100, as the paper reports it",
        "numbers": {
            name: {
                "score_1_to_5": _number(row["Score-Origin"]),
                "score_percent": _number(row["Score-Percentage"]),
                "accuracy_0_to_1": _number(row["Accuracy"]),
            }
            for name, row in rows.items()
        },
    }


def _imgedit(repo, folder: RunFolder, data: Path, work: Path, cases, judge: str, launch) -> dict[str, Any]:
    """basic_bench.py (the judge), then the repository's own averaging steps; overall is the mean over types."""
    basic = repo / "Benchmark" / "Basic"
    listing = find_listing("imgedit", data)
    everything = read_json(listing, "ImgEdit-Bench list (basic_edit.json)")
    keys = {case.key for case in cases}
    entries = {key: entry for key, entry in everything.items() if key in keys}
    subset = work / "basic_edit.json"
    save_json(entries, subset)
    image_root = imgedit_image_root(listing.parent, everything)
    images = (folder.root / "images").resolve()
    launch(_script(basic, "basic_bench.py"), "--result_img_folder", images, "--edit_json", subset.resolve(),
           "--origin_img_root", image_root.resolve(), "--num_processes", "4", "--prompts_json",
           basic / "prompts.json", cwd=basic)  # fmt: skip
    average, types = work / "average_score.json", work / "typescore.json"
    launch(_script(basic, "step1_get_avgscore.py"), "--result_json", images / "result.json", "--average_score_json",
           average.resolve(), cwd=basic, judge=False)  # fmt: skip
    launch(_script(basic, "step2_typescore.py"), "--average_score_json", average.resolve(), "--typescore_json",
           types.resolve(), "--basic_edit", subset.resolve(), cwd=basic, judge=False)  # fmt: skip
    per_type = json.loads(types.read_text(encoding="utf-8"))
    overall = sum(per_type.values()) / len(per_type) if per_type else None
    return {
        "comparable": {"overall": overall} if overall is not None else {},
        "comparable_unit": "mean judge score, 1-5",
        "numbers": {"types": per_type, "overall": overall},
    }


def _bytemorph(repo, folder: RunFolder, data: Path, work: Path, cases, judge: str, launch) -> dict[str, Any]:
    """The GPT judge of ByteMorph-Eval (0-100 per edit type), after copying each case's JSON beside its output."""
    evaluation = next((repo / name for name in ("ByteMorph-Eval", "SeedMorph-Eval") if (repo / name).is_dir()), repo)
    images = (folder.root / "images").resolve()
    # The script averages every score file it finds and appends to its error log: start both afresh.
    error_log = work / "error_log.txt"
    for stale in [*work.glob("*/*.score.json"), *work.glob("*_avg_score.json"), error_log]:
        stale.unlink(missing_ok=True)
    launch(_script(evaluation, "utils/copy_json.py"), "--src_json_root", data.resolve(), "--tgt_json_root", images,
           cwd=evaluation, judge=False)  # fmt: skip
    launch(_script(evaluation, "gpt_eval.py"), "--src_root", images, "--output_root", work.resolve(), cwd=evaluation)
    averages = {
        path.name.removesuffix("_avg_score.json"): json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(work.glob("*_avg_score.json"))
    }
    if not averages:
        reason = f"its errors are in {error_log}" if error_log.is_file() else "it logged no error"
        raise SetupError(f"ByteMorph's gpt_eval.py scored no case ({reason})")
    return {"numbers": averages}


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None
