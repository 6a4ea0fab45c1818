"""What an edit leaves beside its image: the JSON record, a contact sheet of candidate frames, videos, frames."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

from .io import atomic_path, save_image

VERSIONED_PACKAGES = ("ifedit", "torch", "diffusers", "transformers", "peft", "accelerate")
SELECTED_COLOUR = (230, 40, 40)


@functools.cache
def versions() -> dict[str, str | None]:
    """Installed versions of Python and the packages that decide an edit's result (looked up once a process)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def contact_sheet(
    frames: Sequence[PIL.Image.Image], labels: Sequence[str], selected: int | None = None, thumb_width: int = 256
) -> PIL.Image.Image:
    """Frames side by side with a caption under each; the `selected` position framed in red."""
    scale = thumb_width / frames[0].width
    thumb_size = (thumb_width, max(1, round(frames[0].height * scale)))
    font = PIL.ImageFont.load_default()
    lines = [_wrap(label, font, thumb_width) for label in labels]
    line_height, border = 14, 4
    caption_height = 8 + line_height * max(len(label_lines) for label_lines in lines)
    sheet = PIL.Image.new(
        "RGB", (len(frames) * (thumb_size[0] + 2 * border), thumb_size[1] + 2 * border + caption_height), "white"
    )
    draw = PIL.ImageDraw.Draw(sheet)
    for position, (frame, label) in enumerate(zip(frames, lines, strict=True)):
        left = position * (thumb_size[0] + 2 * border)
        if position == selected:
            draw.rectangle(
                [left, 0, left + thumb_size[0] + 2 * border - 1, thumb_size[1] + 2 * border - 1], fill=SELECTED_COLOUR
            )
        sheet.paste(frame.resize(thumb_size, PIL.Image.Resampling.LANCZOS), (left + border, border))
        colour = SELECTED_COLOUR if position == selected else (0, 0, 0)
        for row, text in enumerate(label):
            draw.text(
                (left + border, thumb_size[1] + 2 * border + 4 + row * line_height), text, fill=colour, font=font
            )
    return sheet


def _wrap(label: str, font, width: int) -> list[str]:
    """A caption broken into lines at spaces so that each fits `width` pixels (a word longer than that is cut)."""
    lines: list[str] = []
    for word in label.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width:
            lines[-1] = candidate
        else:
            while font.getlength(word) > width and len(word) > 1:
                word = word[:-1]
            lines.append(word)
    return lines or [""]


def candidate_sheet(frames: Sequence[PIL.Image.Image], scores: dict[int, float], selected: int) -> PIL.Image.Image:
    """Contact sheet of the late frames an edit chose from, each with its Laplacian-variance sharpness."""
    indices = sorted(scores)
    labels = [f"frame {index}: {scores[index]:.1f}" + (" (chosen)" if index == selected else "") for index in indices]
    return contact_sheet([frames[index] for index in indices], labels, indices.index(selected))


def save_video(frames: Sequence[PIL.Image.Image], path: str | Path, fps: int) -> None:
    """Write frames as an H.264 MP4, atomically."""
    import imageio.v2 as imageio  # imported here: ffmpeg start-up is only paid when a video is asked for

    # macro_block_size=1: our sides are multiples of 16 already, never let the writer resize.
    with (
        atomic_path(path) as temporary,
        imageio.get_writer(temporary, fps=fps, codec="libx264", quality=8, macro_block_size=1) as writer,
    ):
        for frame in frames:
            writer.append_data(np.asarray(frame.convert("RGB")))


def save_frames(frames: Sequence[PIL.Image.Image], folder: Path, prefix: str) -> list[Path]:
    """Write every frame as `{prefix}_{index:03d}.png` in `folder`."""
    paths = [folder / f"{prefix}_{index:03d}.png" for index in range(len(frames))]
    for frame, path in zip(frames, paths, strict=True):
        save_image(frame, path)
    return paths
