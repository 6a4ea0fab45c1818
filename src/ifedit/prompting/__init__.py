"""Prompt enhancement (SPEC step 1): a VLM turns an image and the user's words into a time-ordered video prompt."""

from .base import (
    DEFAULT_LOCAL_MODEL,
    ENHANCER_CHOICES,
    INPUT_KINDS,
    PAPER_LOCAL_MODEL,
    EnhancementError,
    Fallback,
    InputKind,
    PromptResult,
)
from .cache import default_cache_dir
from .instructions import INSTRUCTIONS_VERSION
from .options import PromptOptions
from .template import TEMPLATE_VERSION

__all__ = [
    "DEFAULT_LOCAL_MODEL",
    "ENHANCER_CHOICES",
    "INPUT_KINDS",
    "INSTRUCTIONS_VERSION",
    "PAPER_LOCAL_MODEL",
    "TEMPLATE_VERSION",
    "EnhancementError",
    "Fallback",
    "InputKind",
    "PromptCase",
    "PromptOptions",
    "PromptResult",
    "default_cache_dir",
    "enhance",
    "enhance_many",
]


def __getattr__(name: str):
    # The backends pull in torch and transformers; import them on first use so the command line starts fast.
    if name in ("PromptCase", "enhance", "enhance_many"):
        from . import chain

        return getattr(chain, name)
    raise AttributeError(f"module 'ifedit.prompting' has no attribute {name!r}")
