"""Reading and validating user images, and writing results atomically."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import PIL.Image
import PIL.ImageOps

from .errors import InvalidInputError

MIN_SIDE = 64
MAX_PIXELS = 40_000_000
MAX_UPLOAD_BYTES = 50 * 2**20  # the web UI's limit per upload; a 40-megapixel JPEG is well under it
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def load_image(path: str | os.PathLike, *, max_bytes: int | None = None, name: str | None = None) -> PIL.Image.Image:
    """Open a user's image file as RGB, honouring EXIF orientation; raise InvalidInputError on any problem.

    `max_bytes` refuses larger files before reading them (a server takes files from strangers); `name` is how
    messages call the file when its path means nothing to the user (an upload's temporary copy).
    """
    path = Path(path)
    shown = name or str(path)
    if not path.exists():
        raise InvalidInputError(f"image file not found: {shown}")
    if not path.is_file():
        raise InvalidInputError(f"image path is not a file: {shown}")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise InvalidInputError(
            f"image file is too large: {shown} is {size / 2**20:.1f} MiB (at most {max_bytes / 2**20:.3g} MiB)"
        )
    try:
        with PIL.Image.open(path) as image:
            # Check the declared size before decoding, so a huge file is refused without loading it.
            _check_size(image.size, shown)
            image.load()
            return to_rgb(PIL.ImageOps.exif_transpose(image))
    except PermissionError as error:
        raise InvalidInputError(f"image file is not readable: {shown} ({error.strerror})") from None
    except PIL.UnidentifiedImageError:
        raise InvalidInputError(
            f"not an image file: {shown} (expected a PNG, JPEG, WebP or another format Pillow reads)"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, InvalidInputError):
            raise
        raise InvalidInputError(f"image file is damaged or truncated: {shown} ({error})") from None


def validate_image(image: PIL.Image.Image, name: str = "image") -> PIL.Image.Image:
    """Check an in-memory image's size and return it as RGB."""
    if not isinstance(image, PIL.Image.Image):
        raise InvalidInputError(f"{name} must be a PIL image, got {type(image).__name__}")
    _check_size(image.size, name)
    return to_rgb(image)


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Convert any Pillow mode to RGB; transparent pixels become white rather than whatever colour they hide."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit and 32-bit grayscale: scale to 8 bits instead of clipping at 255.
        image = image.point(lambda value: value / 256).convert("L")
    return image.convert("RGB")


def _check_size(size: tuple[int, int], name: str) -> None:
    width, height = size
    if min(width, height) < MIN_SIDE:
        raise InvalidInputError(f"{name} is too small: {width}x{height} px (each side must be at least {MIN_SIDE} px)")
    if width * height > MAX_PIXELS:
        raise InvalidInputError(
            f"{name} is too large: {width}x{height} px = {width * height / 1e6:.1f} megapixels "
            f"(at most {MAX_PIXELS / 1e6:.0f} megapixels)"
        )


def check_output_path(path: str | os.PathLike, overwrite: bool, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> Path:
    """Refuse an output path before any work is done: bad suffix, missing folder, or an existing file."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise InvalidInputError(f"output {path} must end in one of {', '.join(suffixes)}")
    if not path.parent.is_dir():
        raise InvalidInputError(f"output folder does not exist: {path.parent}")
    if path.exists() and not overwrite:
        raise InvalidInputError(f"output exists: {path} (pass --overwrite to replace it)")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    temporary = path.parent / f".{path.stem}.{secrets.token_hex(8)}.tmp{path.suffix}"
    # Created here rather than by mkstemp, whose files are private (0600): an output gets the permissions any new
    # file gets under the user's umask. O_EXCL keeps it from ever reusing an existing file.
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_image(image: PIL.Image.Image, path: str | os.PathLike) -> None:
    """Write an image atomically; the format follows the suffix."""
    path = Path(path)
    with atomic_path(path) as temporary:
        image.save(temporary, format=PIL.Image.registered_extensions()[path.suffix.lower()])


def save_json(data: Any, path: str | os.PathLike) -> None:
    """Write JSON atomically, pretty-printed for people reading records."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
