"""ImgEdit-Bench (basic): instructions by edit type, judged by the repository's basic_bench.py and averaging steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...io import read_json, save_json, shown
from ..cases import EditCase, existing_image, listing_field, name_field, safe_id, safe_name
from ..published import Published
from .base import Benchmark, OfficialRun, official_script


class ImgEdit(Benchmark):
    name = "imgedit"
    title = "ImgEdit-Bench"
    listings = ("basic_edit.json", "Basic/basic_edit.json", "Benchmark/Basic/basic_edit.json")
    repository = "https://github.com/PKU-YuanGroup/ImgEdit"
    published = (
        Published("IF-Edit", "overall", 2.19, "GPT-4.1 judge, 1-5"),
        Published("GPT-Image", "overall", 4.20, "GPT-4.1 judge, 1-5"),
    )

    def load(self, root: Path) -> list[EditCase]:
        """`basic_edit.json` (key -> id, prompt, edit_type) and the images of Benchmark.tar, found by their `id`."""
        listing = self.listing(root)
        entries = read_json(listing, "ImgEdit-Bench list (basic_edit.json)", dict)
        image_root = _image_root(listing.parent, entries)
        cases = []
        for key, entry in entries.items():
            where = f"{listing} entry {shown(key)}"
            safe_name(key, f"{listing}: the key")
            source = existing_image(image_root / listing_field(entry, "id", where), where)
            prompt, edit_type = listing_field(entry, "prompt", where), name_field(entry, "edit_type", where)
            cases.append(EditCase(self.name, safe_id(key), key, prompt, "instruction", edit_type, source))
        return cases

    def output_parts(self, case: EditCase) -> tuple[str, ...]:
        return (case.key,)

    def official(self, run: OfficialRun) -> dict[str, Any]:
        """basic_bench.py (the judge), then the repository's own averaging steps; overall is the mean over types."""
        basic = run.repo / "Benchmark" / "Basic"
        listing = self.listing(run.data)
        everything = read_json(listing, "ImgEdit-Bench list (basic_edit.json)")
        keys = {case.key for case in run.cases}
        entries = {key: entry for key, entry in everything.items() if key in keys}
        subset = run.work / "basic_edit.json"
        save_json(entries, subset)
        image_root = _image_root(listing.parent, everything)
        images = (run.folder.root / "images").resolve()
        run.launch(official_script(basic, "basic_bench.py"), "--result_img_folder", images, "--edit_json",
                   subset.resolve(), "--origin_img_root", image_root.resolve(), "--num_processes", "4",
                   "--prompts_json", basic / "prompts.json", cwd=basic)  # fmt: skip
        average, types = run.work / "average_score.json", run.work / "typescore.json"
        run.launch(official_script(basic, "step1_get_avgscore.py"), "--result_json", images / "result.json",
                   "--average_score_json", average.resolve(), cwd=basic, judge=False)  # fmt: skip
        run.launch(official_script(basic, "step2_typescore.py"), "--average_score_json", average.resolve(),
                   "--typescore_json", types.resolve(), "--basic_edit", subset.resolve(), cwd=basic,
                   judge=False)  # fmt: skip
        per_type = read_json(types, "ImgEdit-Bench scores by type (typescore.json)", dict)
        overall = sum(per_type.values()) / len(per_type) if per_type else None
        return {
            "comparable": {"overall": overall} if overall is not None else {},
            "comparable_unit": "mean judge score, 1-5",
            "numbers": {"types": per_type, "overall": overall},
        }


def _image_root(folder: Path, entries: dict) -> Path:
    """The folder under which the `id`s resolve: beside the JSON or one folder down (where Benchmark.tar unpacks)."""
    first = next(iter(entries.values()), None)
    name = first.get("id") if isinstance(first, dict) else None
    if isinstance(name, str):
        for candidate in (folder, *sorted(path for path in folder.iterdir() if path.is_dir())):
            if (candidate / name).is_file():
                return candidate
    return folder
