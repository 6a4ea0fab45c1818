"""Read each benchmark from a user's local copy in its official format, as uniform edit cases."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image

from ..errors import InvalidInputError
from ..io import IMAGE_SUFFIXES, load_image
from ..prompting import InputKind

BENCHMARKS: tuple[str, ...] = ("tedbench", "bytemorph", "risebench", "imgedit")
RISEBENCH_CATEGORIES = ("temporal_reasoning", "causal_reasoning", "spatial_reasoning", "logical_reasoning")
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class EditCase:
    """One edit of a benchmark: its source, the words about it, and what the result is compared with.

    `id` is unique within the benchmark and safe as a file name; `key` is the benchmark's own name for the case
    (RISEBench's index, ImgEdit's key, ByteMorph's file stem), which the output layout uses.
    """

    benchmark: str
    id: str
    key: str
    text: str
    kind: InputKind
    category: str
    source: Path
    reference: Path | None = None
    reference_text: str | None = None
    # ByteMorph ships each pair as one [source | target] picture: the source is its left half, the target its right.
    side_by_side: bool = False

    def load_source(self) -> PIL.Image.Image:
        image = load_image(self.source)
        return _half(image, "left") if self.side_by_side else image

    def load_reference(self) -> PIL.Image.Image | None:
        if self.reference is None:
            return None
        image = load_image(self.reference)
        return _half(image, "right") if self.side_by_side else image


def _half(image: PIL.Image.Image, side: str) -> PIL.Image.Image:
    half = image.width // 2
    return image.crop((0, 0, half, image.height) if side == "left" else (half, 0, 2 * half, image.height))


def safe_id(text: str) -> str:
    """A file-name-safe form of a benchmark's key (keys are usually safe already and then kept as they are)."""
    return _SAFE_ID.sub("_", text).strip("._") or "case"


def load_cases(benchmark: str, data: str | Path) -> list[EditCase]:
    """All cases of `benchmark` from the user's copy at `data`, in the benchmark's own order."""
    if benchmark not in _LOADERS:
        raise InvalidInputError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    root = Path(data).expanduser()
    if not root.exists():
        raise InvalidInputError(f"{benchmark} data not found: {root}")
    cases = _LOADERS[benchmark](root)
    if not cases:
        raise InvalidInputError(f"{benchmark} data at {root} has no cases")
    seen: set[str] = set()
    for case in cases:
        if case.id in seen:
            raise InvalidInputError(f"{benchmark} data at {root} has two cases named {case.id!r}")
        seen.add(case.id)
    return cases


# Where each benchmark's list of cases sits inside a copy of its repository or dataset.
_LISTINGS = {
    "tedbench": ("input_list.json",),
    "risebench": ("data/data_total.json", "data_total.json"),
    "imgedit": ("basic_edit.json", "Basic/basic_edit.json", "Benchmark/Basic/basic_edit.json"),
}


def find_listing(benchmark: str, root: Path) -> Path:
    """The JSON listing the cases: `root` itself when it is a file, else the first known place under it."""
    if root.is_file():
        return root
    candidates = [root / name for name in _LISTINGS[benchmark]]
    return next((path for path in candidates if path.is_file()), candidates[0])


def read_json(path: Path, what: str) -> Any:
    """A JSON file of the benchmark, or a one-line error naming `what` is missing or damaged."""
    if not path.is_file():
        raise InvalidInputError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"{path} is not valid JSON ({error})") from None


def _field(entry: Any, name: str, where: str, required: bool = True) -> str | None:
    """A non-empty string field of a record, or a one-line error naming the file, the record and the field."""
    if not isinstance(entry, dict):
        raise InvalidInputError(f"{where}: expected an object, got {type(entry).__name__}")
    value = entry.get(name)
    if value is None and not required:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")
    return value.strip()


def _existing(path: Path, where: str) -> Path:
    if not path.is_file():
        raise InvalidInputError(f"{where}: image not found: {path}")
    return path


def _tedbench(root: Path) -> list[EditCase]:
    """`input_list.json` (img_name, target_text) and `originals/`: target captions, no ground-truth image."""
    listing = find_listing("tedbench", root)
    folder = listing.parent / "originals"
    entries = read_json(listing, "TEdBench list (input_list.json)")
    if not isinstance(entries, list):
        raise InvalidInputError(f"{listing}: expected a list of {{img_name, target_text}} objects")
    cases = []
    for index, entry in enumerate(entries):
        where = f"{listing} entry {index}"
        name, target = _field(entry, "img_name", where), _field(entry, "target_text", where)
        source = _existing(folder / name, where)
        case_id = f"{index:03d}_{safe_id(Path(name).stem)}"
        cases.append(EditCase("tedbench", case_id, case_id, target, "target", Path(name).stem, source))
    return cases


def _risebench(root: Path) -> list[EditCase]:
    """`data/data_total.json` (index, category, instruction, image, reference...), images relative to `data/`."""
    listing = find_listing("risebench", root)
    entries = read_json(listing, "RISEBench list (data/data_total.json)")
    if not isinstance(entries, list):
        raise InvalidInputError(f"{listing}: expected a list of {{index, category, instruction, image}} objects")
    cases = []
    for position, entry in enumerate(entries):
        where = f"{listing} entry {position}"
        index, category = _field(entry, "index", where), _field(entry, "category", where)
        if category not in RISEBENCH_CATEGORIES:
            raise InvalidInputError(
                f"{where}: category must be one of {', '.join(RISEBENCH_CATEGORIES)}, got {category!r}"
            )
        source = _existing(listing.parent / _field(entry, "image", where), where)
        reference_image = _field(entry, "reference_img", where, required=False)
        reference_text = _field(entry, "reference", where, required=False) or _field(
            entry, "reference_txt", where, required=False
        )
        reference = _existing(listing.parent / reference_image, where) if reference_image else None
        instruction = _field(entry, "instruction", where)
        cases.append(
            EditCase(
                "risebench",
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


def _imgedit(root: Path) -> list[EditCase]:
    """`basic_edit.json` (key -> id, prompt, edit_type) and the images of Benchmark.tar, found by their `id`."""
    listing = find_listing("imgedit", root)
    entries = read_json(listing, "ImgEdit-Bench list (basic_edit.json)")
    if not isinstance(entries, dict):
        raise InvalidInputError(f"{listing}: expected an object from key to {{id, prompt, edit_type}}")
    image_root = imgedit_image_root(listing.parent, entries)
    cases = []
    for key, entry in entries.items():
        where = f"{listing} entry {key!r}"
        source = _existing(image_root / _field(entry, "id", where), where)
        prompt, edit_type = _field(entry, "prompt", where), _field(entry, "edit_type", where)
        cases.append(EditCase("imgedit", safe_id(key), key, prompt, "instruction", edit_type, source))
    return cases


def imgedit_image_root(folder: Path, entries: dict) -> Path:
    """The folder under which the `id`s resolve: beside the JSON or one folder down (where Benchmark.tar unpacks)."""
    first = next(iter(entries.values()), None)
    name = first.get("id") if isinstance(first, dict) else None
    if isinstance(name, str):
        for candidate in (folder, *sorted(path for path in folder.iterdir() if path.is_dir())):
            if (candidate / name).is_file():
                return candidate
    return folder


def _bytemorph(root: Path) -> list[EditCase]:
    """The ground-truth folder the official evaluation reads: `{edit_type}/{name}.png` as [source | target] with
    `{name}.json` holding the edit instruction (`edit`) and the captions (`input`, `output`)."""
    if not root.is_dir():
        raise InvalidInputError(f"ByteMorph-Bench data must be a folder of edit-type folders, got a file: {root}")
    folders = sorted(path for path in root.iterdir() if path.is_dir())
    if not folders:
        raise InvalidInputError(f"ByteMorph-Bench folder {root} has no edit-type folders ({{edit_type}}/{{name}}.png)")
    cases = []
    for folder in folders:
        for picture in sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES):
            record = picture.with_suffix(".json")
            where = str(record)
            entry = read_json(record, f"ByteMorph-Bench record for {picture.name}")
            instruction = _field(entry, "edit", where)
            caption = _field(entry, "output", where, required=False)
            case_id = safe_id(f"{folder.name}__{picture.stem}")
            cases.append(
                EditCase(
                    "bytemorph",
                    case_id,
                    f"{folder.name}/{picture.stem}",
                    instruction,
                    "instruction",
                    folder.name,
                    picture,
                    picture,
                    caption,
                    side_by_side=True,
                )  # fmt: skip
            )
    return cases


_LOADERS: dict[str, Callable[[Path], list[EditCase]]] = {
    "tedbench": _tedbench,
    "bytemorph": _bytemorph,
    "risebench": _risebench,
    "imgedit": _imgedit,
}
