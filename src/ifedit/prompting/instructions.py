"""The VLM's instructions, read from instructions.md, and the chat messages built from them (SPEC step 1)."""

from __future__ import annotations

import hashlib
import re
from importlib import resources

from .base import InputKind

_SOURCE = resources.files(__package__).joinpath("instructions.md").read_text(encoding="utf-8")
_SECTIONS = {
    match.group(1).strip(): match.group(2).strip()
    for match in re.finditer(r"^## ([^\n]+)\n(.*?)(?=^## |\Z)", _SOURCE, re.MULTILINE | re.DOTALL)
}
# Derived from the file itself, so an edited instruction never serves a prompt cached under the old wording.
INSTRUCTIONS_VERSION = "instructions-" + hashlib.sha256(_SOURCE.encode("utf-8")).hexdigest()[:12]


def system_message(kind: InputKind) -> str:
    """The system message: the shared rules, then the guidance and worked examples for this input kind."""
    return f"{_SECTIONS['system']}\n\n{_SECTIONS[kind]}"


def user_message(text: str, kind: InputKind) -> str:
    """The user message that goes beside the image."""
    return _SECTIONS[f"user {kind}"].replace("{text}", text)
