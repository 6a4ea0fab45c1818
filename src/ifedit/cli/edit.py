"""`ifedit edit`: one image edited as an instruction says, with its record and, when asked, its clip and frames."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import os
from pathlib import Path

from ..errors import InvalidInputError, SetupError
from ..extras import install_command
from ..io import check_name_fits, check_output_path, check_writable, load_image
from ..presets import resolve_model
from .options import (
    add_model_and_sampling_arguments,
    add_prompt_arguments,
    check_seed_option,
    edit_settings_of,
    enhance,
    load_options,
    note_unused_options,
    quiet_libraries,
    user_text,
    with_lora_options,
)

logger = logging.getLogger("ifedit")


def register(commands) -> None:
    edit = commands.add_parser(
        "edit",
        help="edit an image as an instruction says",
        description="Edit IMAGE as INSTRUCTION says and write the result to OUTPUT, with a JSON record of how it "
        "was made beside it (same name, .json). Settings left out come from the model preset.",
        epilog="example: ifedit edit cat.jpg 'the cat stands up' -o cat_standing.png",
    )
    edit.add_argument("image", help="source image (PNG, JPEG, WebP, ...; at least 64 px a side)")
    edit.add_argument("instruction", help="what should happen, e.g. 'the ice cube melts'")
    edit.add_argument("-o", "--output", required=True, help="edited image to write (.png, .jpg, .jpeg or .webp)")
    edit.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    edit.add_argument("--save-video", action="store_true", help="also write the edit clip as OUTPUT.mp4")
    edit.add_argument(
        "--save-frames",
        metavar="DIR",
        help="also write every frame of both clips and contact sheets of the "
        "candidate frames with their sharpness scores to DIR",
    )
    edit.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes")

    prompt = add_prompt_arguments(edit)
    prompt.add_argument("--prompt", help="a ready video prompt: skips prompt enhancement")
    prompt.add_argument("--negative-prompt", help="what to avoid (only used when guidance is above 1)")
    add_model_and_sampling_arguments(edit)
    edit.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Everything a user can get wrong is checked before the (slow) model load.
    preset = with_lora_options(resolve_model(args.model), args)
    settings = edit_settings_of(preset, args)
    note_unused_options(args, settings)
    check_seed_option(args.seed)
    instruction = user_text(args.instruction, "instruction")
    if args.prompt is not None:
        args.prompt = user_text(args.prompt, "--prompt")
    image = load_image(args.image)
    outputs = _output_paths(args)
    quiet_libraries()
    from ..editor import Editor, final_frame
    from ..io import save_image, save_json, staged_outputs
    from ..loading import check_photo_fits, check_placement

    options = dataclasses.replace(load_options(args), plan_image_size=image.size)  # the plan sizes this photo's clip
    check_placement(preset, options)
    check_photo_fits(preset, image.size, settings)
    # The prompt stage runs first: a local VLM is loaded, used and released before the video model loads.
    if args.prompt is not None:
        prompt, provenance = args.prompt.strip(), {"backend": "given"}
    else:
        enhanced = enhance(args, image, instruction, device=None if args.device == "auto" else args.device)
        prompt, provenance = enhanced.prompt, enhanced.to_record()
    editor = Editor(preset, options)
    editor.pipe.set_progress_bar_config(disable=args.quiet, leave=False)
    edit = editor.edit(
        image,
        instruction,
        settings,
        prompt=prompt,
        prompt_provenance=provenance,
        seed=args.seed,
        return_frames=bool(args.save_video or args.save_frames),
        source=str(Path(args.image).resolve()),
    )
    result = edit.result

    # Every output is written to a temporary first and all are moved into place together, the record last: an
    # interruption or a full disk leaves none of them, and a JSON beside an image means the edit finished.
    outputs_record = {name: str(path) for name, path in outputs.items() if name != "record"}
    with staged_outputs(outputs, folders=("frames",), overwrite=args.overwrite) as staged:
        if args.save_frames:
            _write_frames(result, staged["frames"])
        if args.save_video:
            from ..outputs import save_video

            save_video(result.frames, staged["video"], preset.fps)
        save_image(result.image, staged["image"])
        save_json({**edit.record, "outputs": outputs_record, "argv": args.argv}, staged["record"])
    index, sharpness = final_frame(result)
    logger.info(
        "wrote %s (%dx%d, frame %d, sharpness %.1f) in %.1f s; record: %s",
        outputs["image"],
        result.width,
        result.height,
        index,
        sharpness,
        result.timings["total"],
        outputs["record"],
    )
    return 0


def _output_paths(args: argparse.Namespace) -> dict[str, Path]:
    """Every file the edit will write, refused up front if it exists (without --overwrite), is a folder, is named
    twice, or cannot be written."""
    image = check_output_path(args.output, args.overwrite)
    paths = {"image": image}
    if args.save_video:
        if importlib.util.find_spec("imageio_ffmpeg") is None:
            raise SetupError(f"--save-video needs the video extra: {install_command('video')}")
        paths["video"] = image.with_suffix(".mp4")
    paths["record"] = image.with_suffix(".json")  # last: staged_outputs moves the record in after everything else
    for name, path in paths.items():
        if name != "image":
            _check_output_file(path, args.overwrite)
    if args.save_frames:
        folder = Path(args.save_frames)
        if not folder.parent.is_dir():
            raise InvalidInputError(f"folder for --save-frames does not exist: {folder.parent}")
        if any(folder.absolute() == path.absolute() for path in paths.values()):
            raise InvalidInputError(f"--save-frames {folder} is also the name of an output file; choose another")
        check_name_fits(folder, folder=True)
        if folder.is_symlink() and not folder.exists():
            raise InvalidInputError(f"--save-frames {folder} is a link to nothing; name a folder")
        if folder.exists() and not folder.is_dir():
            raise InvalidInputError(f"--save-frames {folder} is a file; name a folder")
        if folder.exists() and any(folder.iterdir()) and not args.overwrite:
            raise InvalidInputError(
                f"--save-frames {folder} exists and is not empty (pass --overwrite to write into it)"
            )
        check_writable(folder if folder.is_dir() else folder.parent)
        paths = {"frames": folder, **paths}
    _check_source_kept(Path(args.image), paths)
    return paths


def _check_source_kept(source: Path, paths: dict[str, Path]) -> None:
    """No output replaces the image being edited, --overwrite or not: the record, the video or a frame named like
    it would leave the user without their photo."""
    for name, path in paths.items():
        held = path.is_dir() and source.parent.exists() and os.path.samefile(path, source.parent)
        if held or (path.exists() and not path.is_dir() and os.path.samefile(path, source)):
            what = f"--save-frames {path} holds" if held else f"the {name} output {path} is"
            raise InvalidInputError(f"{what} the source image {source}; name another output")


def _check_output_file(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise InvalidInputError(f"output {path} is a folder; move it away or name another output")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise InvalidInputError(f"output exists: {path} (pass --overwrite to replace it)")


def _write_frames(result, folder: Path) -> None:
    from ..io import save_image
    from ..outputs import candidate_sheet, save_frames

    save_frames(result.frames, folder, "edit")
    save_image(candidate_sheet(result.frames, result.sharpness, result.selected_index), folder / "edit_candidates.png")
    if result.refine_frames is not None:
        save_frames(result.refine_frames, folder, "refine")
        sheet = candidate_sheet(result.refine_frames, result.refine_sharpness, result.refine_selected_index)
        save_image(sheet, folder / "refine_candidates.png")
