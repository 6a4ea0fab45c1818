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
from .cases import EditCase, find_listing
from .layout import RunFolder, output_half
from .metrics import ALEXNET_HINT, HEADS_HINT, LPIPS, CLIPScorer, sharpness, to_tensor

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
    device = _device(options.device)
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


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
    env = {**os.environ, "IFEDIT_JUDGE_BASE_URL": base_url}
    if options.judge_model or os.environ.get("IFEDIT_JUDGE_MODEL"):
        env["IFEDIT_JUDGE_MODEL"] = options.judge_model or os.environ["IFEDIT_JUDGE_MODEL"]
    key = options.judge_api_key or os.environ.get("IFEDIT_JUDGE_API_KEY")
    if key:
        env["IFEDIT_JUDGE_API_KEY"] = key
    work = folder.root / "official"
    work.mkdir(exist_ok=True)
    data = Path(manifest["data"])
    scorer = {"risebench": _risebench, "imgedit": _imgedit, "bytemorph": _bytemorph}[benchmark]
    numbers = scorer(repo, folder, data, work, cases, lambda *a, **k: _launch(options, env, *a, **k))
    return {
        "scorer": REPOSITORIES[benchmark],
        "scorer_version": _revision(repo),
        "judge": {"base_url": base_url, "model": env.get("IFEDIT_JUDGE_MODEL", "the scorer's default")},
        "numbers": numbers,
    }


def _launch(options: ScoreOptions, env: dict[str, str], script: Path, *arguments: str, cwd: Path, judge: bool = True):
    """Run one official script (through the judge launcher when it calls the judge), failing with one line."""
    command = [options.scorer_python, *([str(LAUNCHER)] if judge else []), str(script), *map(str, arguments)]
    logger.info("running %s", " ".join(command))
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
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


def _risebench(repo, folder: RunFolder, data: Path, work: Path, cases, launch) -> dict[str, Any]:
    """gpt_eval.py over the finished cases; its CSV has score, percentage and accuracy per task."""
    script = _script(repo, "gpt_eval.py")
    listing = find_listing("risebench", data)
    keys = {case.key for case in cases}
    entries = [entry for entry in json.loads(listing.read_text(encoding="utf-8")) if str(entry["index"]) in keys]
    subset = work / "data_total.json"
    save_json(entries, subset)
    launch(script, "--data", subset.resolve(), "--output", folder.root.resolve(), "--input", listing.parent.resolve(),
           "--model", "ifedit", cwd=repo)  # fmt: skip
    with open(folder.root / "ifedit_judge.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {row["-"]: {k: _number(v) for k, v in row.items() if k != "-"} for row in rows}


def _imgedit(repo, folder: RunFolder, data: Path, work: Path, cases, launch) -> dict[str, Any]:
    """basic_bench.py (the judge), then the repository's own averaging steps; overall is the mean over types."""
    basic = repo / "Benchmark" / "Basic"
    listing = find_listing("imgedit", data)
    keys = {case.key for case in cases}
    entries = {key: entry for key, entry in json.loads(listing.read_text(encoding="utf-8")).items() if key in keys}
    subset = work / "basic_edit.json"
    save_json(entries, subset)
    image_root = Path(os.path.commonpath([str(case.source) for case in cases]))
    first = next(iter(entries.values()))["id"]
    while not (image_root / first).is_file() and image_root != image_root.parent:
        image_root = image_root.parent
    images = (folder.root / "images").resolve()
    launch(_script(basic, "basic_bench.py"), "--result_img_folder", images, "--edit_json", subset.resolve(),
           "--origin_img_root", image_root, "--num_processes", "4", "--prompts_json", basic / "prompts.json",
           cwd=basic)  # fmt: skip
    average, types = work / "average_score.json", work / "typescore.json"
    launch(_script(basic, "step1_get_avgscore.py"), "--result_json", images / "result.json", "--average_score_json",
           average.resolve(), cwd=basic, judge=False)  # fmt: skip
    launch(_script(basic, "step2_typescore.py"), "--average_score_json", average.resolve(), "--typescore_json",
           types.resolve(), "--basic_edit", subset.resolve(), cwd=basic, judge=False)  # fmt: skip
    per_type = json.loads(types.read_text(encoding="utf-8"))
    return {"types": per_type, "overall": sum(per_type.values()) / len(per_type) if per_type else None}


def _bytemorph(repo, folder: RunFolder, data: Path, work: Path, cases, launch) -> dict[str, Any]:
    """The GPT judge of ByteMorph-Eval (0-100 per edit type), after copying each case's JSON beside its output."""
    evaluation = next((repo / name for name in ("ByteMorph-Eval", "SeedMorph-Eval") if (repo / name).is_dir()), repo)
    images = (folder.root / "images").resolve()
    launch(_script(evaluation, "utils/copy_json.py"), "--src_json_root", data.resolve(), "--tgt_json_root", images,
           cwd=evaluation, judge=False)  # fmt: skip
    launch(_script(evaluation, "gpt_eval.py"), "--src_root", images, "--output_root", work.resolve(), cwd=evaluation)
    return {
        path.name.removesuffix("_avg_score.json"): json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(work.glob("*_avg_score.json"))
    }


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None
