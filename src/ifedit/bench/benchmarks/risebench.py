"""RISEBench: reasoning-informed edits in four categories, judged by its own scorer (gpt_eval.py)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ...errors import InvalidInputError
from ...io import read_json, save_json, shown
from ..cases import EditCase, existing_image, listing_field, name_field, safe_id
from ..published import Published
from .base import Benchmark, OfficialRun, number, official_script

CATEGORIES = ("temporal_reasoning", "causal_reasoning", "spatial_reasoning", "logical_reasoning")
# The scorer's rows per category, by the names of the published table.
ROWS = {"Overall": "overall", "Temporal": "temporal_reasoning", "Causal": "causal_reasoning",
        "Spatial": "spatial_reasoning", "Logical": "logical_reasoning"}  # fmt: skip


class RISEBench(Benchmark):
    name = "risebench"
    title = "RISEBench"
    listings = ("data/data_total.json", "data_total.json")
    repository = "https://github.com/PhoenixZ810/RISEBench"
    published = (
        Published("IF-Edit", "temporal_reasoning", 5.8, "accuracy %, GPT-4.1 judge, scorer before April 2026"),
        Published("IF-Edit", "causal_reasoning", 21.1, "accuracy %, GPT-4.1 judge"),
        Published("IF-Edit", "spatial_reasoning", 12.0, "accuracy %, GPT-4.1 judge"),
        Published("IF-Edit", "logical_reasoning", 4.7, "accuracy %, GPT-4.1 judge"),
        Published("IF-Edit", "overall", 11.1, "accuracy %, GPT-4.1 judge"),
        Published("Nano Banana", "overall", 32.8, "accuracy %"),
        Published("GPT-Image-1", "overall", 28.9, "accuracy %"),
        Published("Qwen-Image-Edit", "overall", 8.9, "accuracy %"),
        Published("Step1X-Edit", "overall", 1.9, "accuracy %"),
    )

    def load(self, root: Path) -> list[EditCase]:
        """`data/data_total.json` (index, category, instruction, image, reference...), images relative to `data/`."""
        listing = self.listing(root)
        entries = read_json(listing, "RISEBench list (data/data_total.json)", list)
        cases = []
        for position, entry in enumerate(entries):
            where = f"{listing} entry {position}"
            index, category = name_field(entry, "index", where), listing_field(entry, "category", where)
            if category not in CATEGORIES:
                raise InvalidInputError(
                    f"{where}: category must be one of {', '.join(CATEGORIES)}, got {shown(category)}"
                )
            source = existing_image(listing.parent / listing_field(entry, "image", where), where)
            reference_image = listing_field(entry, "reference_img", where, required=False)
            reference_text = listing_field(entry, "reference", where, required=False) or listing_field(
                entry, "reference_txt", where, required=False
            )
            reference = existing_image(listing.parent / reference_image, where) if reference_image else None
            instruction = listing_field(entry, "instruction", where)
            cases.append(
                EditCase(
                    self.name,
                    safe_id(index),
                    index,
                    instruction,
                    "instruction",
                    category,
                    source,
                    reference,
                    reference_text,
                )  # fmt: skip
            )
        return cases

    def output_parts(self, case: EditCase) -> tuple[str, ...]:
        return (case.category, case.key)

    def official(self, run: OfficialRun) -> dict[str, Any]:
        """gpt_eval.py over the finished cases. Its answers are cached per judge model (`--prefix`), so scoring again
        with another judge asks that judge instead of reusing the first one's answers."""
        script = official_script(run.repo, "gpt_eval.py")
        listing = self.listing(run.data)
        keys = {case.key for case in run.cases}
        entries = [entry for entry in read_json(listing, "RISEBench list") if str(entry["index"]) in keys]
        subset = run.work / "data_total.json"
        save_json(entries, subset)
        prefix = safe_id(run.judge)
        run.launch(script, "--data", subset.resolve(), "--output", run.folder.root.resolve(), "--input",
                   listing.parent.resolve(), "--model", "ifedit", "--prefix", prefix, cwd=run.repo)  # fmt: skip
        with open(run.folder.root / f"{prefix}_ifedit_judge.csv", newline="", encoding="utf-8") as handle:
            rows = {row["-"]: row for row in csv.DictReader(handle)}
        # Its Accuracy is a fraction (cases judged 5 on every criterion); the paper prints it as a percentage.
        accuracy = {name: number(rows[row]["Accuracy"]) for row, name in ROWS.items() if row in rows}
        return {
            "comparable": {name: 100 * value for name, value in accuracy.items() if value is not None},
            "comparable_unit": "accuracy %: the official Accuracy (0-1) x 100, as the paper reports it",
            "numbers": {
                name: {
                    "score_1_to_5": number(row["Score-Origin"]),
                    "score_percent": number(row["Score-Percentage"]),
                    "accuracy_0_to_1": number(row["Accuracy"]),
                }
                for name, row in rows.items()
            },
        }
