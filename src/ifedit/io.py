"""Reading and validating what users hand us (images, JSON files), and writing results atomically."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import reprlib
import secrets
import shutil
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import PIL.Image
import PIL.ImageOps

from .errors import InvalidInputError, SetupError
from .redact import redact_data

logger = logging.getLogger("ifedit")

MIN_SIDE = 64
MAX_PIXELS = 40_000_000
MAX_UPLOAD_BYTES = 50 * 2**20  # the web UI's limit per upload; a 40-megapixel JPEG is well under it
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


# Far above any JSON file a user hands us (a benchmark's listing is well under 1 MiB, a model's config a few KiB);
# parsing a bigger file takes gigabytes.
MAX_JSON_BYTES = 128 * 2**20
_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
               bool: "true or false", type(None): "null"}  # fmt: skip
# A value read from a file in a message: escaped like repr, and bounded in length and depth.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
shown = _REPR.repr


def load_image(path: str | os.PathLike, *, max_bytes: int | None = None, name: str | None = None) -> PIL.Image.Image:
    """Open a user's image file as RGB, honouring EXIF orientation; raise InvalidInputError on any problem.

    `max_bytes` refuses larger files before reading them (a server takes files from strangers); `name` is how
    messages call the file when its path means nothing to the user (an upload's temporary copy).
    """
    path = Path(path)
    shown = name or str(path)
    try:
        found, is_file = path.exists(), path.is_file()
    except OSError as error:  # a name longer than the file system allows
        raise InvalidInputError(f"cannot open the image {shown}: {error.strerror or error}") from None
    if not found:
        broken = path.is_symlink() and name is None
        raise InvalidInputError(f"image {shown} is a link to nothing (dangling, or a loop)" if broken else
                                f"image file not found: {shown}")  # fmt: skip
    if not is_file:
        raise InvalidInputError(f"image path is not a file: {shown}")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise InvalidInputError(
            f"image file is too large: {shown} is {size / 2**20:.1f} MiB (at most {max_bytes / 2**20:.3g} MiB)"
        )
    too_large = f"{shown} is too large: more than {MAX_PIXELS / 1e6:.0f} megapixels"
    try:
        # Pillow's bomb warning zone is above our own limit, which refuses such images below; its other warnings
        # (a truncated TIFF's) come before an error that says it all in one line.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with PIL.Image.open(path) as image:
                # Check the declared size before decoding, so a huge file is refused without loading it.
                _check_size(image.size, shown)
                image.load()
                if getattr(image, "n_frames", 1) > 1:
                    logger.warning("%s is animated (%d frames): editing its first frame", shown, image.n_frames)
                return to_rgb(PIL.ImageOps.exif_transpose(image))
    except PIL.Image.DecompressionBombError:
        # Pillow refuses to even open images past twice its own pixel limit (a few KB can declare gigapixels).
        raise InvalidInputError(too_large) from None
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
    elif image.mode == "F" and image.getextrema()[1] <= 1.0:
        # Floating-point grayscale in [0, 1] (scientific TIFFs): scaled up, where converting would make it black.
        image = image.point(lambda value: value * 255).convert("L")
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
    """Refuse an output path before any work is done: bad suffix, missing or unwritable folder, an existing file."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise InvalidInputError(f"output {path} must end in one of {', '.join(suffixes)}")
    try:
        if not path.parent.is_dir():
            what = "is not a folder" if path.parent.exists() else "does not exist"
            raise InvalidInputError(f"output folder {what}: {path.parent}")
        check_name_fits(path)
        if path.is_dir():
            raise InvalidInputError(f"output {path} is a folder; name a file")
        if (path.exists() or path.is_symlink()) and not overwrite:  # a dangling link is there too
            raise InvalidInputError(f"output exists: {path} (pass --overwrite to replace it)")
    except OSError as error:  # a name longer than the file system allows
        raise InvalidInputError(f"output {path}: {error.strerror or error}") from None
    check_writable(path.parent)
    return path


# What `staged_outputs` adds to an output's name for its temporary copy: "." before, "." + 16 hex digits + ".tmp"
# and the suffix again after; and the longest suffix an output or its record has (".jpeg", ".json").
TEMPORARY_NAME_EXTRA = 22
LONGEST_SUFFIX = 5


def check_name_fits(path: Path, folder: bool = False) -> None:
    """Refuse an output name whose temporary copy (for a file, its record's) would be longer than the file system
    allows, before the work that the failed write would lose."""
    try:
        limit = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    name = path.name if folder else path.stem
    most = limit - TEMPORARY_NAME_EXTRA - (0 if folder else 2 * LONGEST_SUFFIX)
    if len(os.fsencode(name)) > most:
        raise InvalidInputError(
            f"output name is too long: {len(os.fsencode(name))} bytes{'' if folder else ' before its suffix'} (at "
            f"most {most} here, so that the temporary copies it is written through fit the file system's {limit})"
        )


def check_writable(folder: Path) -> None:
    """Create and remove a file in `folder`, so a read-only or forbidden folder is found before a long edit rather
    than after it (permission bits alone do not tell: root ignores them, read-only mounts do not show in them)."""
    probe = folder / f".ifedit-probe-{secrets.token_hex(8)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as error:
        raise InvalidInputError(f"cannot write into the output folder {folder}: {error.strerror}") from None


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
    """Write strict JSON atomically, pretty-printed for people reading records, with every known secret masked.

    Infinite and NaN numbers become null: Python's `Infinity`/`NaN` are not JSON and break other readers."""
    text = json.dumps(redact_data(_finite(data)), indent=2, ensure_ascii=False, default=str, allow_nan=False)
    with atomic_path(path) as temporary:
        # A path that is not valid UTF-8 (which Python decodes to lone surrogates) is written as a JSON escape.
        temporary.write_bytes((text + "\n").encode("utf-8", errors="backslashreplace"))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


@contextlib.contextmanager
def staged_outputs(
    paths: Mapping[str, Path], folders: tuple[str, ...] = (), overwrite: bool = False
) -> Iterator[dict[str, Path]]:
    """Temporaries for several outputs, moved into place together only when the block succeeds.

    An edit writes an image, its record and maybe a clip and a folder of frames; an interruption, a full disk or
    any failure must leave none of them behind, and a record beside an image must mean the edit finished. Names in
    `folders` get a temporary folder whose files join the target folder (created if missing). Outputs are moved in
    the order of `paths` (the record last); if one cannot be, those already moved are removed again and the files
    they replaced (with `overwrite`) are put back, so a failure keeps the previous outputs. Without `overwrite` an
    output that appeared meanwhile (another run writing the same name) is never replaced. A failure is one line:
    SetupError naming the output.
    """
    staged: dict[str, Path] = {}
    placed: list[Path] = []
    created: list[Path] = []
    replaced: dict[Path, Path] = {}  # output -> a hidden second name of the file it replaces
    try:
        for name, path in paths.items():
            suffix = "" if name in folders else path.suffix
            temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp{suffix}"
            if name in folders:
                temporary.mkdir()
            else:
                os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            staged[name] = temporary
        yield staged
        for name, temporary in staged.items():
            if name in folders:
                if not paths[name].is_dir():
                    paths[name].mkdir()
                    created.append(paths[name])
                moves = [(item, paths[name] / item.name) for item in sorted(temporary.iterdir())]
            else:
                moves = [(temporary, paths[name])]
            for source, target in moves:
                if overwrite and not target.is_dir() and (target.exists() or target.is_symlink()):
                    replaced[target] = _second_name(target)
                _place(source, target, overwrite)
                placed.append(target)
    except BaseException as error:
        had_previous = bool(replaced)
        stranded = _roll_back(placed, replaced)
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        if stranded:
            kept = "could not put back " + ", ".join(f"{target} (it is {previous})" for target, previous in stranded)
        else:
            kept = "the previous outputs are kept" if had_previous else "no output was kept"
        if isinstance(error, FileExistsError):
            raise SetupError(
                f"output exists: {error.filename} (written by another run meanwhile; pass --overwrite to replace "
                f"it); {kept}"
            ) from None
        if isinstance(error, (OSError, UnicodeError)):
            # A move names the output it failed on second; a hidden name of ours stands for its folder.
            where = Path(getattr(error, "filename2", None) or getattr(error, "filename", None) or "")
            if not where.name:
                place = f"the outputs in {next(iter(paths.values())).parent}"
            else:
                place = f"the outputs in {where.parent}" if where.name.startswith(".") else str(where)
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            raise SetupError(f"cannot write {place}: {reason}; {kept}") from None
        raise
    else:
        for previous in replaced.values():
            with contextlib.suppress(OSError):
                previous.unlink()
    finally:
        for temporary in staged.values():
            if temporary.is_dir():
                shutil.rmtree(temporary, ignore_errors=True)
            else:
                temporary.unlink(missing_ok=True)


def _second_name(output: Path) -> Path:
    """A hidden second name for an output about to be replaced, so that a failure can put it back; the output keeps
    its own name meanwhile, and one rename replaces it (a hard link, or a copy where the file system has none)."""
    previous = output.parent / f".{output.name}.{secrets.token_hex(8)}.tmp"
    try:
        os.link(output, previous, follow_symlinks=False)
    except OSError:
        shutil.copy2(output, previous, follow_symlinks=False)
    return previous


def _roll_back(placed: list[Path], replaced: dict[Path, Path]) -> list[tuple[Path, Path]]:
    """Undo the outputs placed so far: each new one removed, or the file it replaced renamed back over it. Returns
    the (output, second name) of those that could not be put back."""
    stranded = []
    for target in placed:
        previous = replaced.pop(target, None)
        try:
            if previous is None:
                target.unlink(missing_ok=True)
            else:
                os.replace(previous, target)
        except OSError:
            if previous is not None:
                stranded.append((target, previous))
    for previous in replaced.values():  # outputs never reached still have their own content under their name
        with contextlib.suppress(OSError):
            previous.unlink()
    return stranded


def _place(source: Path, target: Path, overwrite: bool) -> None:
    """Move a finished temporary onto its output name; without `overwrite`, only if that name is still free."""
    if overwrite:
        os.replace(source, target)
        return
    try:
        os.link(source, target)  # atomic, and fails if the name exists
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
    except OSError:  # a filesystem without hard links: check, then move
        if target.exists() or target.is_symlink():
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
        os.replace(source, target)
    else:
        source.unlink()


def read_json(path: Path, what: str, kind: type | tuple[type, ...] = (dict, list), unique_keys: bool = True) -> Any:
    """A JSON file a user or a download supplies, or a one-line error naming `what`: missing, over MAX_JSON_BYTES, not
    JSON, nested too deeply to parse, holding a key twice (one of two cases would vanish; `unique_keys=False` for
    files other tools read too, which take the last), or not of `kind`."""
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
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys if unique_keys else None)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError and a repeated key
        raise InvalidInputError(f"{path} is not valid JSON ({error})") from None
    except RecursionError:
        raise InvalidInputError(f"{path} is nested too deeply to be {what}") from None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds):
        expected = " or ".join(dict.fromkeys(_JSON_TYPES[each] for each in kinds))
        raise InvalidInputError(f"{path}: expected {expected} for {what}, got {_JSON_TYPES[type(value)]}")
    return value


def read_model_json(path: Path, what: str) -> dict[str, Any]:
    """A model's config or index as diffusers reads it (a repeated key keeps its last value), or a one-line error:
    missing, too large, not JSON, nested too deeply or not an object."""
    return read_json(path, what, dict, unique_keys=False)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise ValueError(f"the key {shown(key)} appears twice in one object")
        value[key] = item
    return value
