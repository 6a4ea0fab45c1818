"""A run's report: a Markdown table and an HTML page with thumbnails, beside the paper's published numbers."""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

import PIL.Image

from ..errors import InvalidInputError
from ..io import atomic_path, load_image, read_json, save_image
from .benchmarks import get_benchmark
from .layout import RunFolder, output_relpath
from .scoring import SCORES, finished_cases

THUMBNAIL = 160
logger = logging.getLogger("ifedit")


def write_report(root: Path) -> list[Path]:
    """Write `root/report.md` and `root/report.html` (thumbnails in `root/report/`); return their paths."""
    folder = RunFolder(root)
    manifest = folder.read_manifest() if folder.root.is_dir() else None
    if manifest is None:
        raise InvalidInputError(f"{folder.root} is not a run folder (no {folder.manifest_path.name}); see bench run")
    scores_path = folder.root / SCORES
    if scores_path.is_file():
        scores = read_json(scores_path, f"scores of the run ({SCORES})", dict)
    else:
        scores = {}
        logger.warning(
            "no scores yet: run `ifedit bench score %s` first for metrics; the report lists the outputs", root
        )
    per_case = scores.get("cases", {})
    benchmark = manifest["benchmark"]
    cases = finished_cases(folder, benchmark)
    metrics = sorted({name for values in per_case.values() for name, v in values.items() if _is_number(v)})
    title = f"ifedit on {benchmark}: {manifest['model']['preset']}"  # a preset's name, not a folder of weights
    summary = _summary_rows(scores, metrics)
    published = [(p.method, p.metric, _format(p.value), p.note) for p in get_benchmark(benchmark).published]
    official = scores.get("official") or {}
    for metric, value in official.get("comparable", {}).items():
        note = f"{official['comparable_unit']}; judge {official['judge']['model']}"
        published.append(("this run", metric, _format(value), note))
    comparable = ", and this run on the same scale" if official.get("comparable") else ""
    published_title = f"Published (arXiv 2511.19435){comparable}"
    failures = folder.failures()

    markdown = [f"# {title}", "", _run_line(manifest, len(cases), failures), ""]
    if not scores:
        markdown += ["## Scores", "", f"No scores yet: run `ifedit bench score {root}`.", ""]
    else:
        markdown += ["## Scores", "", *_markdown_table(["", *metrics], summary), ""]
    if scores.get("official"):
        markdown += ["## Official scorer", "", "```json", json.dumps(scores["official"], indent=2), "```", ""]
    markdown += [f"## {published_title}", "", *_markdown_table(["method", "metric", "value", "note"], published), ""]
    markdown += [*(f"- {note}" for note in scores.get("notes", [])), ""]
    rows = [[case.id, case.category, f"[output]({output_relpath(case)})",
             *(_format(per_case.get(case.id, {}).get(name)) for name in metrics)] for case in cases]  # fmt: skip
    markdown += ["## Cases", "", *_markdown_table(["case", "category", "output", *metrics], rows), ""]
    markdown_path = folder.root / "report.md"
    with atomic_path(markdown_path) as temporary:
        temporary.write_text("\n".join(markdown), encoding="utf-8")

    thumbs = folder.root / "report"
    thumbs.mkdir(exist_ok=True)
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(_run_line(manifest, len(cases), failures))}</p>"]
    body += ["<h2>Scores</h2>", _html_table(["", *metrics], summary)]
    if scores.get("official"):
        body += ["<h2>Official scorer</h2>", f"<pre>{html.escape(json.dumps(scores['official'], indent=2))}</pre>"]
    body += [f"<h2>{html.escape(published_title)}</h2>", _html_table(["method", "metric", "value", "note"], published)]
    body += [f"<p>{html.escape(note)}</p>" for note in scores.get("notes", [])]
    case_rows = []
    for case in cases:
        pictures = {"source": case.load_source(), "output": load_image(folder.output(case))}
        reference = case.load_reference()
        if reference is not None:
            pictures["reference"] = reference
        cells = [_thumbnail(thumbs, case.id, name, picture) for name, picture in pictures.items()]
        values = per_case.get(case.id, {})
        text = f"<b>{html.escape(case.id)}</b><br>{html.escape(case.category)}<br>{html.escape(case.text)}"
        case_rows.append([text, " ".join(cells), *(_format(values.get(name)) for name in metrics)])
    body += ["<h2>Cases</h2>", _html_table(["case", "source | output | reference", *metrics], case_rows, raw=True)]
    page = (
        "<!doctype html><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px 8px;vertical-align:top}img{margin-right:4px}</style>" + "\n".join(body)
    )
    html_path = folder.root / "report.html"
    with atomic_path(html_path) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return [markdown_path, html_path]


def _run_line(manifest: dict[str, Any], finished: int, failures: dict[str, str]) -> str:
    settings = manifest["settings"]
    return (
        f"{finished} of {manifest.get('cases', '?')} cases finished, {len(failures)} failed; seed {manifest['seed']}; "
        f"{settings['num_inference_steps']} steps, {settings['num_frames']} frames, K = {settings['tld_stride']}, "
        f"refinement {'on' if settings['refine'] else 'off'}; status {manifest.get('status', '?')}"
    )


def _summary_rows(scores: dict[str, Any], metrics: list[str]) -> list[list[str]]:
    rows = [["overall", *(_format(scores.get("overall", {}).get(name)) for name in metrics)]]
    for category, values in sorted(scores.get("categories", {}).items()):
        rows.append([category, *(_format(values.get(name)) for name in metrics)])
    return rows


def _thumbnail(folder: Path, case_id: str, name: str, picture: PIL.Image.Image) -> str:
    path = folder / f"{case_id}_{name}.jpg"
    small = picture.copy()
    small.thumbnail((THUMBNAIL, THUMBNAIL))
    save_image(small, path)
    return f"<img src='report/{html.escape(path.name)}' title='{name}' alt='{name}'>"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _format(value: Any) -> str:
    if value is None:
        return "–"
    if _is_number(value):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3f}"
    return str(value)


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    escape = lambda cell: str(cell).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows]


def _html_table(header: list[str], rows: list[list[str]], raw: bool = False) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell if raw else html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"
