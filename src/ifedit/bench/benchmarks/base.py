"""What every benchmark provides: its cases from a user's copy, where its outputs go, how they are scored, and the
paper's numbers for it. Each benchmark is one subclass in a module of its own."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import PIL.Image

from ...errors import SetupError
from ..cases import EditCase
from ..published import Published

if TYPE_CHECKING:
    import torch

    from ..layout import RunFolder
    from ..scoring import ScoreOptions


@dataclass
class OwnScores:
    """What a benchmark's own metrics add to a run's scores: what each metric is, per-case values, and notes."""

    metrics: dict[str, str] = field(default_factory=dict)
    cases: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OfficialRun:
    """What a benchmark's official scorer gets: the user's checkout of its repository, the run, the benchmark's
    data, a work folder, the finished cases, the judge model, and `launch(script, *arguments, cwd, judge=True)`."""

    repo: Path
    folder: RunFolder
    data: Path
    work: Path
    cases: Sequence[EditCase]
    judge: str
    launch: Callable[..., None]


class Benchmark:
    """One benchmark: `load` reads its cases, `output_parts` names an output as its scorer looks for it, `own_metrics`
    and `official` score a run, `published` holds the paper's numbers."""

    name: ClassVar[str]
    title: ClassVar[str]
    # Where the JSON listing the cases sits inside a copy of the benchmark (the first that exists is read).
    listings: ClassVar[tuple[str, ...]] = ()
    # The repository whose scorer `official` runs from the user's checkout; None: only our own metrics score it.
    repository: ClassVar[str | None] = None
    published: ClassVar[tuple[Published, ...]] = ()

    def load(self, root: Path) -> list[EditCase]:
        """Every case of the user's copy at `root`, in the benchmark's own order; InvalidInputError names what is
        wrong with it."""
        raise NotImplementedError

    def output_parts(self, case: EditCase) -> tuple[str, ...]:
        """The folders and file stem under `images/` where the scorer expects this case's output (each part is
        checked by the layout before any file is written)."""
        return (case.id,)

    def own_metrics(
        self,
        cases: Sequence[EditCase],
        edited: Callable[[EditCase], PIL.Image.Image],
        options: ScoreOptions,
        device: torch.device,
    ) -> OwnScores:
        """Metrics we compute ourselves (`edited` reads a case's edit from the run); none by default."""
        return OwnScores()

    def official(self, run: OfficialRun) -> dict[str, Any]:
        """Run the official scorer and collect its numbers (`comparable`: those on the paper's scale)."""
        raise NotImplementedError

    def listing(self, root: Path) -> Path:
        """The JSON listing the cases: `root` itself when it is a file, else the first known place under it."""
        if root.is_file():
            return root
        candidates = [root / name for name in self.listings]
        return next((path for path in candidates if path.is_file()), candidates[0])


def official_script(repo: Path, *candidates: str) -> Path:
    """The first of `candidates` in a scorer's checkout, or a one-line error saying what the checkout lacks."""
    for candidate in candidates:
        if (repo / candidate).is_file():
            return repo / candidate
    raise SetupError(f"--scorer-repo {repo} has no {candidates[0]}; is it a checkout of the benchmark's repository?")


def number(text: str) -> float | None:
    """A number from a scorer's CSV, None where it wrote none."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None
