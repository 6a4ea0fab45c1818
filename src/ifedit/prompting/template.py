"""The offline prompt: a fixed temporal frame around the user's words, for when no VLM is available."""

from __future__ import annotations

import re

from .base import InputKind

# Bump when the wording below changes, so records say which template wrote a prompt.
TEMPLATE_VERSION = "template-1"

_CAMERA_WORDS = re.compile(
    r"\b(?:camera|zoom\w*|pan|pans|panning|dolly|tilt\w*|orbit\w*|close-?up|wide shot|viewpoint|"
    r"point of view|from above|from below|bird'?s-eye)\b",
    re.IGNORECASE,
)
_STATIC_CAMERA = "Static camera: a fixed shot with no zoom, pan, tilt or cut."
_MOVING_CAMERA = "The camera moves only in the way the edit asks and is otherwise steady, with no cuts."
_START = "The video starts exactly as the first frame."
_GRADUAL = "The change happens gradually, one continuous step at a time, with no sudden jumps."
_UNCHANGED = (
    "Everything the edit does not touch stays the same: the identity and appearance of every person, animal "
    "and object, the background, the lighting, the colours and the style."
)


def asks_for_camera_change(text: str) -> bool:
    """Whether the user's words mention the camera or framing, which lifts the static-camera rule."""
    return bool(_CAMERA_WORDS.search(text))


def template_prompt(text: str, kind: InputKind) -> str:
    """A deterministic, temporally structured prompt: static camera, a gradual change, the final state."""
    camera = _MOVING_CAMERA if asks_for_camera_change(text) else _STATIC_CAMERA
    if kind == "instruction":
        instruction = text.rstrip(" .!")
        if len(instruction) > 1 and instruction[1].islower():  # keep "I" and acronyms as written
            instruction = instruction[0].lower() + instruction[1:]
        change = f"Then, slowly, this edit takes place in the scene: {instruction}."
        final = (
            f"In the final frame the edit ({instruction}) is complete and held still, "
            "with everything else as in the first frame."
        )
    else:
        target = text if text.endswith((".", "!", "?")) else f"{text}."
        change = f"Then, slowly, the scene transforms until it matches this description: {target}"
        final = f"In the final frame the picture shows: {target}"
    return " ".join((camera, _START, change, _GRADUAL, _UNCHANGED, final))
