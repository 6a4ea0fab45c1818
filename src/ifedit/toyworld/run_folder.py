"""A training run's folder: held by one run at a time, every part saved whole, an interrupted run's VAE reused.

```
OUT/vae_losses.json     while the run is unfinished: the settings that made OUT/vae and its stages' loss curves
OUT/vae/                the VAE, once saved whole (reused by the next run into OUT with the same VAE settings)
OUT/snapshot/           the experts' averaged weights while they train, replaced whole every N steps
OUT/... training.json   the finished pipeline; training.json is written last and marks OUT finished
OUT/.lock               the run writing into OUT (`folder_lock`)
```
A kill at any moment leaves OUT in a state the next run can use or names: every folder is saved beside its place and
renamed into it (`save_whole`), and a link planted at any name the run writes is replaced, never written through.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import InvalidInputError
from ..folder_lock import LOCK, folder_locked
from ..io import atomic_path, read_json, save_json
from ..presets import TOYWORLD_TRAINING_RECORD

VAE_LOSSES = "vae_losses.json"
PARTIAL, PREVIOUS = ".partial", ".old"  # suffixes of a folder being saved, and of the one it replaces
# The entries a run saves whole: its own folders (the finished pipeline is staged as `pipeline`) and the pipeline's
# parts. Only their partial and previous copies are a killed run's leftovers; any other hidden entry is the user's.
SAVED_WHOLE = ("vae", "snapshot", "pipeline", "model_index.json", "scheduler", "text_encoder", "tokenizer",
               "transformer", "transformer_2")  # fmt: skip
_LEFTOVERS = frozenset(f".{entry}{suffix}" for entry in SAVED_WHOLE for suffix in (PARTIAL, PREVIOUS))
# The temporary of an atomically written record (`io.atomic_path`): a killed run may leave one before anything else.
_RECORD_TEMPORARY = re.compile(r"\.(vae_losses|training)\.[0-9a-f]{16}\.tmp\.json")


@contextlib.contextmanager
def claimed(out: Path) -> Iterator[None]:
    """Hold `out` for one training run: created if missing (its parent must exist), refused when finished, when
    another run holds it, or when it holds files of something other than an unfinished run (they would be
    overwritten); cleared of what a killed run left half-written."""
    _refuse_finished(out)  # first, so that a finished folder we may not write to says so rather than the lock
    if not out.parent.exists():  # a mistyped path is not worth hours of training in a folder nobody looks in
        raise InvalidInputError(f"folder for --out does not exist: {out.parent}")
    try:
        out.mkdir(exist_ok=True)
    except OSError as error:
        raise InvalidInputError(f"cannot create the output folder {out}: {error.strerror}") from None
    with folder_locked(out):
        _refuse_finished(out)
        entries = [path for path in out.iterdir() if path.name != LOCK and not _leftover(path)]
        if entries and not (out / VAE_LOSSES).is_file():
            raise InvalidInputError(
                f"--out {out} is not empty and holds no unfinished training run ({VAE_LOSSES}); choose an empty or "
                "new folder"
            )
        _complete_swaps(out)
        for path in out.iterdir():
            if _leftover(path):
                remove(path)
        yield


def _refuse_finished(out: Path) -> None:
    if (out / TOYWORLD_TRAINING_RECORD).exists():
        raise InvalidInputError(
            f"--out {out} already holds a trained pipeline ({TOYWORLD_TRAINING_RECORD}); choose another folder"
        )


def _leftover(path: Path) -> bool:
    """A part a killed run was writing (a folder being saved whole, the one it replaced, a record's temporary)."""
    return path.name in _LEFTOVERS or _RECORD_TEMPORARY.fullmatch(path.name) is not None


def _complete_swaps(out: Path) -> None:
    """Finish the swap a kill interrupted between its two renames (`_swap_in`): the old folder moved aside, the new
    one, saved whole before the first rename, not yet in its place. Without this the leftovers' removal would lose
    both (the last snapshot, a VAE whose record is already written)."""
    for name in ("vae", "snapshot"):
        place, new, aside = out / name, out / f".{name}{PARTIAL}", out / f".{name}{PREVIOUS}"
        interrupted = os.path.lexists(aside) and not os.path.lexists(place)
        if interrupted and new.is_dir() and not new.is_symlink():
            new.rename(place)


def saved_vae_record(out: Path, settings: dict) -> dict | None:
    """The loss curves of the VAE an unfinished run saved whole in `out`, when it was made with `settings`; None
    when there is none; a one-line error when the one there was made otherwise (reusing it would ship a VAE
    `training.json` does not describe)."""
    folder, path = out / "vae", out / VAE_LOSSES
    if not (path.is_file() and folder.is_dir()) or folder.is_symlink():
        return None
    # Each refusal asks to remove the VAE only: this file marks `out` an unfinished run's, and the next run writes
    # it anew once it has trained the VAE again.
    try:
        record = read_json(path, "the record of the saved VAE", dict)
    except InvalidInputError as error:
        raise InvalidInputError(f"{error}; remove {folder} to train the VAE again") from None
    if record and "settings" not in record and _is_losses(record):
        raise InvalidInputError(
            f"{path} does not record the settings of the VAE in {folder} (an older ifedit wrote it); remove {folder} "
            "to train the VAE again"
        )
    if not (isinstance(record.get("settings"), dict) and _is_losses(record.get("losses"))):
        raise InvalidInputError(
            f"{path} cannot be read (not a record of settings and losses); remove {folder} to train the VAE again"
        )
    saved = record["settings"]
    if saved != settings:
        missing = object()  # a setting one of the two lacks differs even from a null
        changed = sorted(
            name for name in saved.keys() | settings.keys() if saved.get(name, missing) != settings.get(name, missing)
        )
        raise InvalidInputError(
            f"the VAE in {folder} was trained with other settings ({', '.join(changed)}); train with the same "
            f"settings, into another --out, or remove {folder} to train it again"
        )
    return record["losses"]


def _is_losses(losses: object) -> bool:
    return isinstance(losses, dict) and all(isinstance(curve, list) for curve in losses.values())


def save_vae(out: Path, save: Callable[[Path], None], settings: dict, losses: dict) -> None:
    """The loss curves and settings first, then the VAE whole: a rerun reuses a VAE only once all of it is saved."""
    save_json({"settings": settings, "losses": losses}, out / VAE_LOSSES)
    save_whole(save, out / "vae")


def finish(out: Path, save: Callable[[Path], None], record: dict) -> None:
    """Put the finished pipeline into `out` beside the VAE already saved there: saved aside, then moved in part by
    part (`out/vae` holds these weights already and is left alone, so a kill here never damages it), then
    `training.json`, which marks `out` finished. The last snapshot goes only after that: until `out` is finished it
    is the one copy of the experts' weights a kill would not lose."""
    staged = out / f".pipeline{PARTIAL}"
    remove(staged)
    save(staged)
    for part in sorted(staged.iterdir()):
        if part.name != "vae":
            _swap_in(part, out / part.name)
    remove(staged)
    with atomic_path(out / TOYWORLD_TRAINING_RECORD) as temporary:
        temporary.write_text(json.dumps(record))
    remove(out / "snapshot")
    remove(out / VAE_LOSSES)


def save_whole(save: Callable[[Path], None], folder: Path) -> None:
    """`save` into a folder beside `folder`, then rename it into place: a kill leaves the old folder or the new one,
    never half of one (a rename is atomic)."""
    partial = folder.with_name(f".{folder.name}{PARTIAL}")
    remove(partial)
    save(partial)
    _swap_in(partial, folder)


def _swap_in(new: Path, place: Path) -> None:
    """Rename `new` to `place`, replacing what is there (a file, a folder, a link: the link, never what it points
    to). A file replaces a file or a link in one atomic rename; a folder, or anything replacing one, goes through
    a rename aside, as a rename cannot replace a folder by a file or a non-empty folder."""
    place_is_folder = place.is_dir() and not place.is_symlink()
    if place_is_folder or (new.is_dir() and (place.is_symlink() or place.exists())):
        previous = place.with_name(f".{place.name}{PREVIOUS}")
        remove(previous)
        place.rename(previous)
        new.rename(place)
        remove(previous)
    else:
        os.replace(new, place)


def remove(path: Path) -> None:
    """Remove a file, a link (the link, not what it points to) or a folder, if there is one."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
