"""Read each benchmark from a user's local copy in its official format, as uniform edit cases."""

from __future__ import annotations

import json
import os
import re
import reprlib
import unicodedata
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image

from ..errors import InvalidInputError
from ..io import IMAGE_SUFFIXES, MAX_PIXELS, MIN_SIDE, load_image
from ..prompting import InputKind

BENCHMARKS: tuple[str, ...] = ("tedbench", "bytemorph", "risebench", "imgedit")
RISEBENCH_CATEGORIES = ("temporal_reasoning", "causal_reasoning", "spatial_reasoning", "logical_reasoning")
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")
# Far above any benchmark's listing (the largest is well under 1 MiB); parsing a bigger file takes gigabytes.
MAX_JSON_BYTES = 128 * 2**20
# A name, its record's name and the hidden temporaries written beside both stay under the usual 255-byte limit.
MAX_NAME_BYTES = 100
# Separators, and what Windows and macOS filesystems refuse or read as something else (`:` is a stream or a slash).
_NOT_IN_NAMES = frozenset('/\\<>:"|?*')
# The formats the benchmarks ship their images in; Pillow's other decoders are not offered to downloaded data.
SOURCE_FORMATS = ("PNG", "JPEG", "WEBP")
_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
               bool: "true or false", type(None): "null"}  # fmt: skip
# A value from a listing in a message: escaped like repr, and bounded in length and depth.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_shown = _REPR.repr


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

    def check_source(self) -> None:
        """Read only the source's header, so an unreadable, foreign or oversized file fails its case before any
        case's pixels are decoded."""
        check_header(self.source)

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


def check_header(path: Path) -> None:
    """Refuse an image by its header alone (Pillow's open reads no pixels): a format the benchmarks do not use, or a
    declared size `load_image` would refuse, which a few kilobytes of PNG can declare by the gigapixel."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(path, formats=SOURCE_FORMATS) as image:
                width, height = image.size
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
        raise InvalidInputError(f"image file is too large: {path} declares more pixels than Pillow opens") from None
    except PIL.UnidentifiedImageError:
        raise InvalidInputError(f"not an image file: {path} (sources must be PNG, JPEG or WebP)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidInputError(f"image file is damaged: {path} ({error})") from None
    if min(width, height) < MIN_SIDE or width * height > MAX_PIXELS:
        raise InvalidInputError(
            f"image file {path} declares {width}x{height} px; a source needs at least {MIN_SIDE} px a side and at "
            f"most {MAX_PIXELS / 1e6:.0f} megapixels"
        )


def safe_id(text: str) -> str:
    """A file-name-safe form of a benchmark's key (keys are usually safe already and then kept as they are)."""
    return _SAFE_ID.sub("_", text).strip("._") or "case"


def name_problem(name: str) -> str | None:
    """Why `name` cannot be one file or folder name inside a run folder on any common filesystem, or None.

    Refused rather than rewritten: a scorer finds outputs by the benchmark's own names, so a changed name would be
    a case silently left unscored."""
    if not name.strip():
        return "it is empty"
    if name.startswith("."):
        return "it starts with a dot (., .. and hidden files)"
    if name != name.strip() or name.endswith("."):
        return "it starts or ends with a space, or ends with a dot"
    for char in name:
        if char in _NOT_IN_NAMES or unicodedata.category(char).startswith("C"):
            return f"it holds {char!r}"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"it is longer than {MAX_NAME_BYTES} bytes"
    return None


def safe_name(name: str, where: str) -> str:
    """`name` when it can name a file or folder in a run folder, else a one-line error saying where it came from."""
    problem = name_problem(name)
    if problem is not None:
        raise InvalidInputError(
            f"{where} {_shown(name)} cannot name an output file: {problem}; names are at most {MAX_NAME_BYTES} "
            'bytes without / \\ : * ? " < > |, control characters or a leading dot'
        )
    return name


def load_cases(benchmark: str, data: str | Path, allow_outside_data: bool = False) -> list[EditCase]:
    """All cases of `benchmark` from the user's copy at `data`, in the benchmark's own order.

    Every image a case names must lie inside the data folder after links are followed, unless `allow_outside_data`:
    a downloaded listing must not be able to send any file of this machine to a prompt server or a report."""
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
    if not allow_outside_data:
        _check_inside(cases, (root if root.is_dir() else root.parent).resolve())
    return cases


def _check_inside(cases: Iterable[EditCase], folder: Path) -> None:
    for case in cases:
        for path in (case.source, case.reference):
            if path is not None and not path.resolve().is_relative_to(folder):
                raise InvalidInputError(
                    f"{case.benchmark} case {_shown(case.key)}: its image {path} lies outside the data folder "
                    f"{folder} (links followed); pass --allow-outside-data to use images from anywhere"
                )


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


def read_json(path: Path, what: str, kind: type | tuple[type, ...] = (dict, list)) -> Any:
    """A JSON file of a benchmark or a run, or a one-line error naming `what`: missing, over MAX_JSON_BYTES, not
    JSON, nested too deeply to parse, holding a key twice (one of two cases would vanish), or not of `kind`."""
    if not path.is_file():
        raise InvalidInputError(f"{what} {'is not a file' if path.exists() else 'not found'}: {path}")
    try:
        with path.open("rb") as file:
            # One byte past the limit at most, and nothing when the size already says too much.
            fits = os.fstat(file.fileno()).st_size <= MAX_JSON_BYTES
            data = file.read(MAX_JSON_BYTES + 1) if fits else b""
    except OSError as error:
        raise InvalidInputError(f"{what} cannot be read: {path} ({error.strerror})") from None
    if not fits or len(data) > MAX_JSON_BYTES:
        raise InvalidInputError(f"{path} is over {MAX_JSON_BYTES // 2**20} MiB, too large for {what}")
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError and a repeated key
        raise InvalidInputError(f"{path} is not valid JSON ({error})") from None
    except RecursionError:
        raise InvalidInputError(f"{path} is nested too deeply to be {what}") from None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds):
        expected = " or ".join(dict.fromkeys(_JSON_TYPES[each] for each in kinds))
        raise InvalidInputError(f"{path}: expected {expected} for {what}, got {_JSON_TYPES[type(value)]}")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise ValueError(f"the key {_shown(key)} appears twice in one object")
        value[key] = item
    return value


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
        raise InvalidInputError(f"{where}: field {name!r} must be a non-empty string, got {_shown(value)}")
    return value.strip()


def _name_field(entry: Any, name: str, where: str) -> str:
    """A field that names an output file or folder (an index, a key, a category)."""
    return safe_name(_field(entry, name, where), f"{where}: field {name!r}")


def _existing(path: Path, where: str) -> Path:
    if not path.is_file():
        raise InvalidInputError(f"{where}: image not found: {path}")
    return path


def _tedbench(root: Path) -> list[EditCase]:
    """`input_list.json` (img_name, target_text) and `originals/`: target captions, no ground-truth image."""
    listing = find_listing("tedbench", root)
    folder = listing.parent / "originals"
    entries = read_json(listing, "TEdBench list (input_list.json)", list)
    cases = []
    for index, entry in enumerate(entries):
        where = f"{listing} entry {index}"
        name, target = _field(entry, "img_name", where), _field(entry, "target_text", where)
        source = _existing(folder / name, where)
        stem = safe_name(Path(name).stem, f"{where}: field 'img_name'")
        case_id = f"{index:03d}_{safe_id(stem)}"
        cases.append(EditCase("tedbench", case_id, case_id, target, "target", stem, source))
    return cases


def _risebench(root: Path) -> list[EditCase]:
    """`data/data_total.json` (index, category, instruction, image, reference...), images relative to `data/`."""
    listing = find_listing("risebench", root)
    entries = read_json(listing, "RISEBench list (data/data_total.json)", list)
    cases = []
    for position, entry in enumerate(entries):
        where = f"{listing} entry {position}"
        index, category = _name_field(entry, "index", where), _field(entry, "category", where)
        if category not in RISEBENCH_CATEGORIES:
            raise InvalidInputError(
                f"{where}: category must be one of {', '.join(RISEBENCH_CATEGORIES)}, got {_shown(category)}"
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
    entries = read_json(listing, "ImgEdit-Bench list (basic_edit.json)", dict)
    image_root = imgedit_image_root(listing.parent, entries)
    cases = []
    for key, entry in entries.items():
        where = f"{listing} entry {_shown(key)}"
        safe_name(key, f"{listing}: the key")
        source = _existing(image_root / _field(entry, "id", where), where)
        prompt, edit_type = _field(entry, "prompt", where), _name_field(entry, "edit_type", where)
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
    `{name}.json` holding the edit instruction (`edit`) and the captions (`input`, `output`). Hidden entries (.git,
    .cache) are no edit types or pictures."""
    if not root.is_dir():
        raise InvalidInputError(f"ByteMorph-Bench data must be a folder of edit-type folders, got a file: {root}")
    folders = sorted(path for path in _visible(root) if path.is_dir())
    if not folders:
        raise InvalidInputError(f"ByteMorph-Bench folder {root} has no edit-type folders ({{edit_type}}/{{name}}.png)")
    cases = []
    for folder in folders:
        edit_type = safe_name(folder.name, f"ByteMorph-Bench edit-type folder in {root}:")
        for picture in sorted(path for path in _visible(folder) if path.suffix.lower() in IMAGE_SUFFIXES):
            name = safe_name(picture.stem, f"ByteMorph-Bench picture in {folder}:")
            record = picture.with_suffix(".json")
            where = str(record)
            entry = read_json(record, f"ByteMorph-Bench record for {picture.name}", dict)
            instruction = _field(entry, "edit", where)
            caption = _field(entry, "output", where, required=False)
            case_id = safe_id(f"{edit_type}__{name}")
            cases.append(
                EditCase(
                    "bytemorph",
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


def _visible(folder: Path) -> list[Path]:
    return [path for path in folder.iterdir() if not path.name.startswith(".")]


_LOADERS: dict[str, Callable[[Path], list[EditCase]]] = {
    "tedbench": _tedbench,
    "bytemorph": _bytemorph,
    "risebench": _risebench,
    "imgedit": _imgedit,
}
