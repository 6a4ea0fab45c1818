"""Run a benchmark: the prompt stage for every pending case first, then the edit stage, resumable at any point.

The edit stage is the same function in one process and on a Ray worker (`CaseEditor.run`), with a seed derived from the
run's seed and the case id, so where a case runs does not change its output.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import PIL.Image
from tqdm.auto import tqdm

from .. import __version__
from ..editor import model_record
from ..errors import InvalidInputError
from ..io import validate_image
from ..loading import LoadOptions
from ..options import EditSettings
from ..presets import Preset
from ..prompting import PromptOptions
from .benchmarks import load_cases
from .cases import EditCase
from .layout import RunFolder, case_record, check_distinct, compose_output, describe_error

logger = logging.getLogger("ifedit")


@dataclass(frozen=True)
class RunPlan:
    """Everything a benchmark run needs, checked before any model loads."""

    benchmark: str
    data: Path
    out: Path
    preset: Preset
    load_options: LoadOptions
    settings: EditSettings
    prompts: PromptOptions = PromptOptions()
    seed: int = 0
    limit: int | None = None
    categories: tuple[str, ...] = ()
    argv: tuple[str, ...] = ()
    allow_outside_data: bool = False


@dataclass
class Task:
    """One case ready for the edit stage. Its source is decoded when the case is edited, one case at a time; a task
    sent to a Ray worker carries the pixels (`source`), so a worker needs no shared disk."""

    case: EditCase
    source: PIL.Image.Image | None
    prompt: str
    provenance: dict[str, Any]
    seed: int

    def pixels(self) -> PIL.Image.Image:
        return self.source if self.source is not None else self.case.load_source()


@dataclass
class Outcome:
    """A finished case (`picture` and `record`) or a failed one (`error`)."""

    case: EditCase
    picture: PIL.Image.Image | None = None
    record: dict[str, Any] | None = None
    error: str | None = None
    details: str = ""


@dataclass
class Summary:
    total: int
    skipped: int
    finished: int
    failed: dict[str, str]
    folder: Path


def case_seed(seed: int, case_id: str) -> int:
    """A case's own seed: fixed by the run's seed and the case id, whatever order or worker the case runs in."""
    digest = hashlib.sha256(f"{seed}:{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**31


def select_cases(cases: Sequence[EditCase], categories: Sequence[str], limit: int | None) -> list[EditCase]:
    """The cases of the requested categories, the first `limit` of them."""
    if categories:
        known = sorted({case.category for case in cases})
        unknown = [name for name in categories if name not in known]
        if unknown:
            raise InvalidInputError(f"unknown --categories {', '.join(unknown)}; this data has {', '.join(known)}")
        cases = [case for case in cases if case.category in categories]
    if limit is not None:
        if limit < 1:
            raise InvalidInputError(f"--limit must be at least 1, got {limit}")
        cases = cases[:limit]
    return list(cases)


def fingerprint(plan: RunPlan) -> dict[str, Any]:
    """What must match for a rerun to continue a run instead of mixing two runs' outputs."""
    options = plan.load_options
    return {
        "benchmark": plan.benchmark,
        "data": str(plan.data.resolve()),
        "model": model_record(plan.preset),
        # The load options that change the numbers; offload, tiling and the device only move the work around.
        "load_options": {
            "dtype": options.dtype,
            "storage_dtype": options.storage_dtype,
            "first_block_cache": options.first_block_cache,
            "attention_backend": options.attention_backend,
            "compile": options.compile,
        },
        "settings": plan.settings.as_kwargs(),
        "seed": plan.seed,
        "prompt_enhancement": plan.prompts.recorded(),
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def start(plan: RunPlan, folder: RunFolder, cases: Sequence[EditCase]) -> dict[str, Any]:
    """Check a claimed folder holds no other run, and write the manifest of this one."""
    identity = fingerprint(plan)
    previous = folder.read_manifest()
    if previous is not None:
        changed = [name for name, value in identity.items() if _plain(previous.get(name)) != _plain(value)]
        if changed:
            raise InvalidInputError(
                f"{folder.root} holds a run with different {changed[0].replace('_', ' ')}; "
                "continue it with the same options or choose another --out"
            )
    manifest = {
        "ifedit": __version__,
        **identity,
        "layout": "images/ as the benchmark's scorer reads them; records/{id}.json per finished case",
        "started": (previous or {}).get("started", _now()),
        "argv": list(plan.argv),
        "status": "running",
        "cases": len(cases),
        "updated": _now(),
    }
    folder.write_manifest(manifest)
    return manifest


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples become lists), so a manifest read back compares equal to a fresh one."""
    return json.loads(json.dumps(value, default=str))


def record_failure(folder: RunFolder, case: EditCase, error: str, details: str = "") -> None:
    logger.warning("case %s failed: %s", case.id, error)
    folder.write_failure(case, error, details)


def attempt(cases: Iterable[EditCase], folder: RunFolder, step: Callable[[EditCase], Any]) -> Iterator[tuple]:
    """(case, step(case)) for each case; a case whose step fails in any way is recorded as failed and left out, so a
    damaged or hostile file stops only its own case."""
    for case in cases:
        try:
            result = step(case)
        except Exception as error:  # noqa: BLE001 - one bad case must not end a run of hundreds
            record_failure(folder, case, *describe_error(error))
            continue
        yield case, result


def prompt_stage(cases: Sequence[EditCase], plan: RunPlan, folder: RunFolder) -> list[Task]:
    """Video prompts for every pending case before any video model loads (a local VLM is then released).

    Every source's header is checked first, without decoding; then each source is decoded alone and kept only at
    the size the VLM sees, so memory does not grow with the sizes the sources declare."""
    from ..prompting import enhance_many
    from ..prompting.base import check_text, vlm_view

    def view(case: EditCase) -> PIL.Image.Image:
        check_text(case.text)
        return validate_image(vlm_view(case.load_source()), f"source of case {case.id}")

    readable = [case for case, _ in attempt(cases, folder, EditCase.check_source)]
    views = list(attempt(readable, folder, view))
    if not views:
        return []
    results = enhance_many(
        [(image, case.text, case.kind) for case, image in views],
        **plan.prompts.kwargs(),
        device=None if plan.load_options.device == "auto" else plan.load_options.device,
    )
    return [
        Task(case, None, result.prompt, result.to_record(), case_seed(plan.seed, case.id))
        for (case, _), result in zip(views, results, strict=True)
    ]


class CaseEditor:
    """What a process (or a Ray actor) holds for the edit stage: one loaded model and the run's settings."""

    def __init__(self, preset: Preset, options: LoadOptions, settings: EditSettings, threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        from ..editor import Editor

        self.editor = Editor(preset, options)
        self.editor.pipe.set_progress_bar_config(disable=True)
        self.settings = settings

    def run(self, task: Task) -> Outcome:
        """Edit one case; any error of the case becomes a failed outcome so the run goes on."""
        case = task.case
        try:
            source = task.pixels()
            edit = self.editor.edit(
                source,
                case.text,
                self.settings,
                prompt=task.prompt,
                prompt_provenance=task.provenance,
                seed=task.seed,
                source=str(case.source),
            )
        except Exception as error:  # noqa: BLE001 - one bad case must not end a run of hundreds
            return Outcome(case, None, None, *describe_error(error))
        record = {**edit.record, "case": case_record(case)}
        return Outcome(case, compose_output(case, source, edit.result.image), record)


def local_outcomes(tasks: Sequence[Task], plan: RunPlan) -> Iterator[Outcome]:
    """The edit stage in this process: one model, loaded once."""
    editor = CaseEditor(plan.preset, plan.load_options, plan.settings)
    for task in tasks:
        yield editor.run(task)


def run(
    plan: RunPlan,
    ray_address: str | None = None,
    use_ray: bool = False,
    workers: int | None = None,
    progress_bar: bool = True,
) -> Summary:
    """Run (or continue) a benchmark into `plan.out`; finished cases are skipped, failed and partial ones redone."""
    cases = load_cases(plan.benchmark, plan.data, plan.allow_outside_data)
    check_distinct(cases)
    cases = select_cases(cases, plan.categories, plan.limit)
    folder = RunFolder(plan.out)
    with folder.claimed():
        folder.check_paths(cases)
        manifest = start(plan, folder, cases)
        pending = [case for case in cases if not folder.finished(case)]
        skipped = len(cases) - len(pending)
        if skipped:
            logger.info("%d of %d cases already finished in %s", skipped, len(cases), folder.root)
        finished = 0
        status = "interrupted"
        try:
            tasks = prompt_stage(pending, plan, folder)
            if use_ray:
                from .distributed import ray_outcomes

                outcomes = ray_outcomes(tasks, plan, ray_address, workers)
            else:
                outcomes = local_outcomes(tasks, plan) if tasks else iter(())
            progress = tqdm(
                total=len(tasks),
                desc=f"{plan.benchmark} edits",
                unit="edit",
                disable=not (tasks and progress_bar),
                file=sys.stderr,
                dynamic_ncols=True,
            )
            with progress:
                for outcome in outcomes:
                    if outcome.error is None:
                        folder.write_case(outcome.case, outcome.picture, {**outcome.record, "argv": list(plan.argv)})
                        finished += 1
                    else:
                        record_failure(folder, outcome.case, outcome.error, outcome.details)
                    progress.update(1)
            status = "complete"
        finally:
            ids = {case.id for case in cases}
            failed = {case_id: error for case_id, error in folder.failures().items() if case_id in ids}
            done = sum(folder.finished(case) for case in cases)
            manifest.update(status=status if not failed else f"{status} with failures", finished=done,
                            failed=len(failed), updated=_now())  # fmt: skip
            folder.write_manifest(manifest)
        return Summary(len(cases), skipped, finished, failed, folder.root)
