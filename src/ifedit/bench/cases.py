"""Edit cases, and what every benchmark's loader checks its listing with: JSON read within bounds, fields of the
right type, names that are safe as file names, images by their header (the loaders are in `benchmarks/`)."""

from __future__ import annotations

import re
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image

from ..errors import InvalidInputError
from ..io import MAX_PIXELS, MIN_SIDE, load_image, shown
from ..prompting import InputKind

_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")
# A name, its record's name and the hidden temporaries written beside both stay under the usual 255-byte limit.
MAX_NAME_BYTES = 100
# Separators, and what Windows and macOS filesystems refuse or read as something else (`:` is a stream or a slash).
_NOT_IN_NAMES = frozenset('/\\<>:"|?*')
# The formats the benchmarks ship their images in; Pillow's other decoders are not offered to downloaded data.
SOURCE_FORMATS = ("PNG", "JPEG", "WEBP")


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
            f"{where} {shown(name)} cannot name an output file: {problem}; names are at most {MAX_NAME_BYTES} "
            'bytes without / \\ : * ? " < > |, control characters or a leading dot'
        )
    return name


def listing_field(entry: Any, name: str, where: str, required: bool = True) -> str | None:
    """A non-empty string field of a record, or a one-line error naming the file, the record and the field."""
    if not isinstance(entry, dict):
        raise InvalidInputError(f"{where}: expected an object, got {type(entry).__name__}")
    value = entry.get(name)
    if value is None and not required:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{where}: field {name!r} must be a non-empty string, got {shown(value)}")
    return value.strip()


def name_field(entry: Any, name: str, where: str) -> str:
    """A field that names an output file or folder (an index, a key, a category)."""
    return safe_name(listing_field(entry, name, where), f"{where}: field {name!r}")


def existing_image(path: Path, where: str) -> Path:
    """`path` when it is a file, else a one-line error naming the listing entry that named it."""
    if not path.is_file():
        raise InvalidInputError(f"{where}: image not found: {path}")
    return path


def visible(folder: Path) -> list[Path]:
    """The entries of `folder` but hidden ones (.git, .cache)."""
    return [path for path in folder.iterdir() if not path.name.startswith(".")]
