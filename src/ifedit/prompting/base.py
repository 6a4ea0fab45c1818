"""Result types, input checks and the cleaning every VLM answer goes through before it reaches the video model."""

from __future__ import annotations

import difflib
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import PIL.Image

from ..errors import InvalidInputError, SetupError
from ..redact import redact, redact_data, safe_text, strip_control

InputKind = Literal["instruction", "target"]
INPUT_KINDS: tuple[str, ...] = ("instruction", "target")
ENHANCER_CHOICES: tuple[str, ...] = ("auto", "api", "local", "template", "none")
DEFAULT_LOCAL_MODEL = "Qwen/Qwen3-VL-8B-Instruct"
# The model the paper used; about 60 GB in bfloat16.
PAPER_LOCAL_MODEL = "Qwen/Qwen3-VL-30B-A3B-Instruct"
MAX_TEXT_CHARS = 2000
# An answer to a 400-token request fits easily; a longer one is a misbehaving server, refused before cleaning (whose
# patterns would be slow on megabytes) and before it can swell a record or the cache.
MAX_ANSWER_CHARS = 16_000
# Longest one-line message, in case a server's text reaches it whole.
MAX_MESSAGE_CHARS = 1000
# Wan's umT5 text encoder reads at most 512 tokens; longer prompts are cut off mid-sentence by the pipeline.
MAX_PROMPT_TOKENS = 512
# Plenty for a VLM to see the scene; keeps API requests small and local vision token counts bounded.
VLM_MAX_PIXELS = 1024 * 1024

TokenCounter = Callable[[str], int]


class EnhancementError(SetupError):
    """A prompt backend could not produce a usable prompt (unreachable, refused, bad answer).

    Messages quote servers and exceptions, so each is made one line here, with keys masked and control codes
    removed, whatever raised it."""

    def __init__(self, message: str):
        super().__init__(one_line(message, MAX_MESSAGE_CHARS))


@dataclass(frozen=True)
class Fallback:
    """A backend that was passed over, and why, so a record shows every change of backend."""

    backend: str
    reason: str


@dataclass(frozen=True)
class PromptResult:
    """The prompt for the video model and everything that made it."""

    prompt: str
    text: str
    input_kind: InputKind
    backend: str
    model: str | None
    elapsed_s: float
    raw_response: str | None = None
    instructions_version: str | None = None
    fallbacks: tuple[Fallback, ...] = field(default_factory=tuple)
    cached: bool = False

    def to_record(self) -> dict[str, Any]:
        """A JSON-able dict for result records, with every registered key masked."""
        return redact_data(
            {
                "prompt": self.prompt,
                "text": self.text,
                "input_kind": self.input_kind,
                "backend": self.backend,
                "model": self.model,
                "elapsed_s": round(self.elapsed_s, 3),
                "cached": self.cached,
                "raw_response": self.raw_response,
                "instructions_version": self.instructions_version,
                "fallbacks": [{"backend": item.backend, "reason": item.reason} for item in self.fallbacks],
            }
        )


def check_text(text: str) -> str:
    """Return the user's text on one line with single spaces, or raise InvalidInputError saying what is allowed.

    Every backend and the template put this text into a prompt, and records and the terminal show it, so escape
    codes, control and bidirectional-override characters are refused here rather than passed on."""
    if not isinstance(text, str):
        raise InvalidInputError(f"text must be a string, got {type(text).__name__}")
    text = " ".join(text.split())
    if not text:
        raise InvalidInputError(
            "text is empty: give an edit instruction ('make the dog sit') or a target description "
            "('A photo of a sitting dog.')"
        )
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInputError(f"text is too long: {len(text)} characters (at most {MAX_TEXT_CHARS})")
    for position, char in enumerate(text):
        if strip_control(char) != char:
            raise InvalidInputError(
                f"text holds the control character U+{ord(char):04X} at position {position}; "
                "escape codes, control and bidirectional-override characters are not allowed"
            )
    return text


def check_kind(kind: str) -> InputKind:
    """Return the input kind, or raise InvalidInputError listing the allowed ones."""
    if kind not in INPUT_KINDS:
        raise InvalidInputError(f"unknown input kind {kind!r}; choose one of {', '.join(INPUT_KINDS)}")
    return kind  # type: ignore[return-value]


def one_line(message: str, limit: int = 300) -> str:
    """Collapse a message (server body, exception text) to one safe line of bounded length.

    Keys are masked before the cut, so a key cut in half never survives as a prefix."""
    message = " ".join(safe_text(message).split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


def vlm_view(image: PIL.Image.Image) -> PIL.Image.Image:
    """Downscale an RGB image to at most VLM_MAX_PIXELS, keeping its aspect ratio."""
    width, height = image.size
    if width * height <= VLM_MAX_PIXELS:
        return image
    scale = math.sqrt(VLM_MAX_PIXELS / (width * height))
    return image.resize((max(1, int(width * scale)), max(1, int(height * scale))), PIL.Image.Resampling.LANCZOS)


_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_LABEL = re.compile(
    r"^(?:(?:final|video|enhanced|rewritten|edited)\s+)?(?:prompt|answer|output|description)\s*:\s*", re.IGNORECASE
)
_PREAMBLE = re.compile(
    r"^(?:(?:sure|okay|ok|certainly|of course)[,!.]?\s*)?here(?:'s| is) (?:the|your|a|an)\b[^:]{0,40}:\s*",
    re.IGNORECASE,
)
_BULLET = re.compile(r"^\s*(?:[-*+•]|\d{1,2}[.)])\s+")
_EMPHASIS = re.compile(r"(\*\*|__|\*|`)")
_QUOTE_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "„": "“"}


def recordable(raw: str) -> str:
    """A raw answer as records and the cache keep it: keys masked, escape and control codes removed, lines kept."""
    return redact(strip_control(raw, keep_newlines=True))  # stripped first: it could rejoin a split key


def clean_response(raw: str) -> str:
    """Reduce a VLM answer to the bare prompt: no reasoning, markdown, headings, bullets, labels or quotes."""
    text = _THINK_BLOCK.sub(" ", strip_control(raw, keep_newlines=True))
    lowered = text.lower()
    if "</think>" in lowered:  # the opening tag may sit in the chat template rather than the answer
        text = text[lowered.rindex("</think>") + len("</think>") :]
    elif "<think>" in lowered:  # reasoning that never finished holds no prompt
        text = text[: lowered.index("<think>")]
    text = "".join(
        char if char in "\n\t" or unicodedata.category(char)[0] != "C" else " " for char in text.replace("\ufffd", " ")
    )
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("```", "#")) or set(line) <= set("-=*_ "):
            continue
        bullet = _BULLET.match(line)
        line = _LABEL.sub("", _EMPHASIS.sub("", _BULLET.sub("", line)).strip()).strip()
        if bullet and line and not line.endswith((".", "!", "?", ";", ":", ",")):
            line += "."  # list items become sentences once the list is joined into a paragraph
        if line:
            lines.append(line)
    # A short first line ending in a colon is a preamble ("Sure, here is the prompt:").
    if len(lines) > 1 and lines[0].endswith(":") and len(lines[0]) < 100:
        lines = lines[1:]
    text = _PREAMBLE.sub("", " ".join(" ".join(lines).split()))
    while len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text


_REFUSAL = re.compile(
    r"^(?:i'?m sorry|i am sorry|sorry\b|i apologi[sz]e|i can(?:no|')t|i can not|i cannot|i am unable|i'?m unable|"
    r"i am not able|i'?m not able|i won'?t|i will not|as an ai|unfortunately,? i)",
    re.IGNORECASE,
)
_MIN_LETTERS = 20


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def rejection_reason(prompt: str, text: str) -> str | None:
    """Why a cleaned answer cannot be a video prompt (empty, unreadable, refusal, an echo), or None if it can."""
    if not prompt:
        return "empty answer"
    letters = sum(char.isalpha() for char in prompt)
    if letters < _MIN_LETTERS:
        return f"answer too short or not text: {one_line(prompt, 80)!r}"
    if letters < 0.5 * len(prompt.replace(" ", "")):
        return f"answer is not readable text: {one_line(prompt, 80)!r}"
    if _REFUSAL.match(prompt.replace("’", "'")):
        return f"answer is a refusal: {one_line(prompt, 80)!r}"
    prompt_words, text_words = _words(prompt), _words(text)
    if difflib.SequenceMatcher(None, prompt_words, text_words).ratio() >= 0.8:
        return "answer only repeats the user's text"
    return None


def estimate_tokens(text: str) -> int:
    """A deliberately high token count for umT5 (a token per 3 UTF-8 bytes, plus the end token)."""
    return math.ceil(len(text.encode("utf-8")) / 3) + 1


_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def fit_tokens(prompt: str, count_tokens: TokenCounter | None = None, limit: int = MAX_PROMPT_TOKENS) -> str:
    """Shorten a prompt to `limit` tokens, at a sentence boundary when one fits, else at a word boundary."""
    count = count_tokens or estimate_tokens
    if count(prompt) <= limit:
        return prompt
    sentences = _SENTENCE_END.split(prompt)
    kept = ""
    for sentence in sentences:
        candidate = f"{kept} {sentence}".strip()
        if count(candidate) > limit:
            break
        kept = candidate
    if kept:
        return kept
    words = prompt.split()
    low, high = 0, len(words)  # the longest word prefix that fits: count grows with length
    while low < high:
        middle = (low + high + 1) // 2
        if count(" ".join(words[:middle])) <= limit:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low])
