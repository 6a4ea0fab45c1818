"""ByteMorph-Bench: non-rigid motion edits, each pair one [source | target] picture, judged by ByteMorph-Eval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import InvalidInputError, SetupError
from ...io import IMAGE_SUFFIXES, read_json
from ..cases import EditCase, listing_field, safe_id, safe_name, visible
from ..published import Published
from .base import Benchmark, OfficialRun, official_script

ANY_JSON_SCORE = (dict, list, int, float)  # gpt_eval.py's averages: a number or a table of them


class ByteMorph(Benchmark):
    name = "bytemorph"
    title = "ByteMorph-Bench"
    repository = "https://github.com/Boese0601/ByteMorph"
    published = (
        Published("IF-Edit", "camera zoom", 67.89, "Claude-3.7 judge, 0-100"),
        Published("IF-Edit", "human motion", 67.04, "Claude-3.7 judge, 0-100"),
        Published("IF-Edit", "interaction", 69.05, "Claude-3.7 judge, 0-100"),
    )

    def load(self, root: Path) -> list[EditCase]:
        """The ground-truth folder the official evaluation reads: `{edit_type}/{name}.png` as [source | target] with
        `{name}.json` holding the edit instruction (`edit`) and the captions (`input`, `output`). Hidden entries
        (.git, .cache) are no edit types or pictures."""
        if not root.is_dir():
            raise InvalidInputError(f"ByteMorph-Bench data must be a folder of edit-type folders, got a file: {root}")
        folders = sorted(path for path in visible(root) if path.is_dir())
        if not folders:
            raise InvalidInputError(
                f"ByteMorph-Bench folder {root} has no edit-type folders ({{edit_type}}/{{name}}.png)"
            )
        cases = []
        for folder in folders:
            edit_type = safe_name(folder.name, f"ByteMorph-Bench edit-type folder in {root}:")
            for picture in sorted(path for path in visible(folder) if path.suffix.lower() in IMAGE_SUFFIXES):
                name = safe_name(picture.stem, f"ByteMorph-Bench picture in {folder}:")
                record = picture.with_suffix(".json")
                where = str(record)
                entry = read_json(record, f"ByteMorph-Bench record for {picture.name}", dict)
                instruction = listing_field(entry, "edit", where)
                caption = listing_field(entry, "output", where, required=False)
                case_id = safe_id(f"{edit_type}__{name}")
                cases.append(
                    EditCase(
                        self.name,
                        case_id,
                        f"{edit_type}/{name}",
                        instruction,
                        "instruction",
                        edit_type,
                        picture,
                        picture,
                        caption,
                        side_by_side=True,
                    )  # fmt: skip
                )
        return cases

    def output_parts(self, case: EditCase) -> tuple[str, ...]:
        return (case.category, case.key.rpartition("/")[2])

    def official(self, run: OfficialRun) -> dict[str, Any]:
        """The GPT judge of ByteMorph-Eval (0-100 per edit type), after copying each case's JSON beside its output."""
        repo, work = run.repo, run.work
        folders = (repo / name for name in ("ByteMorph-Eval", "SeedMorph-Eval"))
        evaluation = next((folder for folder in folders if folder.is_dir()), repo)
        images = (run.folder.root / "images").resolve()
        # The script averages every score file it finds and appends to its error log: start both afresh.
        error_log = work / "error_log.txt"
        for stale in [*work.glob("*/*.score.json"), *work.glob("*_avg_score.json"), error_log]:
            stale.unlink(missing_ok=True)
        run.launch(official_script(evaluation, "utils/copy_json.py"), "--src_json_root", run.data.resolve(),
                   "--tgt_json_root", images, cwd=evaluation, judge=False)  # fmt: skip
        run.launch(official_script(evaluation, "gpt_eval.py"), "--src_root", images, "--output_root",
                   work.resolve(), cwd=evaluation)  # fmt: skip
        averages = {
            path.name.removesuffix("_avg_score.json"): read_json(path, "a ByteMorph-Bench average", ANY_JSON_SCORE)
            for path in sorted(work.glob("*_avg_score.json"))
        }
        if not averages:
            reason = f"its errors are in {error_log}" if error_log.is_file() else "it logged no error"
            raise SetupError(f"ByteMorph's gpt_eval.py scored no case ({reason})")
        return {"numbers": averages}
