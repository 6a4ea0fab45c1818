"""The benchmarks, one module each (`base.Benchmark`): adding one is a module here and a line in BENCHMARKS."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ...errors import InvalidInputError
from ...io import shown
from ..cases import EditCase
from .base import Benchmark, OfficialRun, OwnScores
from .bytemorph import ByteMorph
from .imgedit import ImgEdit
from .risebench import RISEBench
from .tedbench import TEdBench

BENCHMARKS: dict[str, Benchmark] = {
    benchmark.name: benchmark for benchmark in (TEdBench(), ByteMorph(), RISEBench(), ImgEdit())
}

__all__ = ["BENCHMARKS", "Benchmark", "OfficialRun", "OwnScores", "get_benchmark", "load_cases"]


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called `name`, or a one-line error listing the names there are."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise InvalidInputError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}") from None


def load_cases(benchmark: str, data: str | Path, allow_outside_data: bool = False) -> list[EditCase]:
    """All cases of `benchmark` from the user's copy at `data`, in the benchmark's own order.

    Every image a case names must lie inside the data folder after links are followed, unless `allow_outside_data`:
    a downloaded listing must not be able to send any file of this machine to a prompt server or a report."""
    loader = get_benchmark(benchmark)
    root = Path(data).expanduser()
    if not root.exists():
        raise InvalidInputError(f"{benchmark} data not found: {root}")
    cases = loader.load(root)
    if not cases:
        raise InvalidInputError(f"{benchmark} data at {root} has no cases")
    seen: set[str] = set()
    for case in cases:
        if case.id in seen:
            raise InvalidInputError(f"{benchmark} data at {root} has two cases named {case.id!r}")
        seen.add(case.id)
    if not allow_outside_data:
        _check_inside(cases, (root if root.is_dir() else root.parent).resolve())
    return cases


def _check_inside(cases: Iterable[EditCase], folder: Path) -> None:
    for case in cases:
        for path in (case.source, case.reference):
            if path is not None and not path.resolve().is_relative_to(folder):
                raise InvalidInputError(
                    f"{case.benchmark} case {shown(case.key)}: its image {path} lies outside the data folder "
                    f"{folder} (links followed); pass --allow-outside-data to use images from anywhere"
                )
