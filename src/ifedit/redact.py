"""Keeping secrets and terminal control codes out of every text the project prints or records.

API keys reach this process from options and the environment; a server may echo one back inside an error body
("invalid key: Bearer sk-..."). Every key is registered here as soon as it is known, and `redact` replaces it in
any text before that text is printed, logged or written to a record. Text that came from a server or a user is
also stripped of control characters, so an answer cannot move the cursor, recolour or clear the terminal.
"""

from __future__ import annotations

import re
import threading
from typing import Any

MASK = "***"
# Keys shorter than this are not masked in free text: replacing every "a" or "12" would garble messages, and a key
# that short protects nothing.
MIN_SECRET_CHARS = 6

_secrets: set[str] = set()
_lock = threading.Lock()

# ANSI/VT escape sequences (CSI, OSC, and two-byte escapes), then any remaining C0/C1 control character, and the
# invisible characters that reorder or hide text. Zero-width (non-)joiners stay: Persian, Hindi and emoji need them.
_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])|\x9b[0-?]*[ -/]*[@-~]")
# Lone surrogates (from JSON escapes or undecodable bytes) are not text: UTF-8 output cannot encode them.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def register_secret(value: str | None) -> None:
    """Remember a secret so that `redact` masks it wherever it shows up from now on."""
    if isinstance(value, str) and len(value.strip()) >= MIN_SECRET_CHARS:
        with _lock:
            _secrets.add(value.strip())


def redact(text: str) -> str:
    """`text` with every registered secret replaced by `***` (longest first, so a key inside a key is covered)."""
    text = str(text)
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_data(value: Any) -> Any:
    """A JSON-able structure with every string in it redacted (dict keys included)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_data(key): redact_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_data(item) for item in value]
    return value


def strip_control(text: str, keep_newlines: bool = False) -> str:
    """Remove terminal escape sequences and control characters from text a server or a user sent.

    Tabs become spaces; newlines are kept only when asked (a prompt shown in a multi-line box)."""
    text = _ESCAPE.sub("", str(text))
    if keep_newlines:
        text = text.replace("\r\n", "\n")
        return "\n".join(_CONTROL.sub("", line.replace("\t", " ")) for line in text.split("\n"))
    return _CONTROL.sub("", text.replace("\t", " ").replace("\n", " ").replace("\r", " "))


def safe_text(text: str) -> str:
    """What may reach a terminal or a record: no control codes, no secrets. Control codes go first: a key split
    by an invisible character would be whole again after they are removed."""
    return redact(strip_control(text))
