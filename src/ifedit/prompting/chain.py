"""Choosing the prompt backend, falling back when one fails, and consulting the cache (SPEC step 1)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import PIL.Image
import torch

from ..errors import InvalidInputError
from ..io import load_image, validate_image
from . import api
from .base import (
    DEFAULT_LOCAL_MODEL,
    ENHANCER_CHOICES,
    MAX_ANSWER_CHARS,
    EnhancementError,
    Fallback,
    InputKind,
    PromptResult,
    TokenCounter,
    check_kind,
    check_text,
    clean_response,
    fit_tokens,
    recordable,
    rejection_reason,
    vlm_view,
)
from .cache import CacheKey, PromptCache, image_digest
from .instructions import INSTRUCTIONS_VERSION, system_message, user_message
from .local import LocalVLM
from .template import TEMPLATE_VERSION, template_prompt

logger = logging.getLogger("ifedit")


# Notices already logged by this process; every result still records its own fallbacks.
_NOTED: set[str] = set()


class PromptCase(NamedTuple):
    """One image and the user's words about it; a plain (image, text, kind) tuple works the same."""

    image: PIL.Image.Image | str | os.PathLike
    text: str
    kind: InputKind = "instruction"


class _Plan(NamedTuple):
    """The VLM backends to try in order, what to use when all of them fail, and why a VLM was skipped."""

    vlms: tuple[str, ...]
    last: str
    notes: tuple[Fallback, ...]


def _plan(enhancer: str, vlm_model: str | None, api_base_url: str | None) -> _Plan:
    """Turn the requested enhancer into the order of backends to try: api -> named local VLM -> template."""
    if enhancer not in ENHANCER_CHOICES:
        raise InvalidInputError(f"unknown prompt enhancer {enhancer!r}; choose one of {', '.join(ENHANCER_CHOICES)}")
    if enhancer in ("template", "none"):
        return _Plan((), enhancer, ())
    if enhancer == "local":
        return _Plan(("local",), "template", ())
    if enhancer == "api" or api.configured_base_url(api_base_url):
        return _Plan(("api", "local") if vlm_model else ("api",), "template", ())
    if vlm_model:
        return _Plan(("local",), "template", ())
    reason = (
        f"no VLM configured (a server: --vlm-base-url URL or ${api.ENV_BASE_URL}; a local model: --vlm MODEL; "
        "from Python: api_base_url or vlm_model); the prompt is the offline template"
    )
    return _Plan((), "template", (Fallback("auto", reason),))


class _Enhancer:
    """Runs the plan for each case, holding one local VLM and the backends that failed for the whole batch."""

    def __init__(
        self,
        plan: _Plan,
        settings: api.ApiSettings | None,
        local_model: str,
        device: str | torch.device | None,
        cache: PromptCache | None,
        strict: bool,
        count_tokens: TokenCounter | None,
        local_files_only: bool = False,
    ):
        self.plan = plan
        self.local_files_only = local_files_only
        self.settings = settings
        self.local_model = local_model
        self.device = device
        self.cache = cache
        self.strict = strict
        self.count_tokens = count_tokens
        self.vlm: LocalVLM | None = None
        # A backend that failed (not one that gave an unusable answer) is not retried for later cases.
        self.failed: dict[str, str] = {}

    def source(self, backend: str) -> tuple[str, str | None]:
        """The model and the server URL (None for a local model) that answer for a backend."""
        if backend == "api" and self.settings:
            return self.settings.model, self.settings.base_url
        return self.local_model, None

    def run(self, image: PIL.Image.Image, text: str, kind: InputKind) -> PromptResult:
        """One case: the first usable VLM answer, cached or fresh, else the template (or the text as given)."""
        start = time.perf_counter()
        fallbacks: list[Fallback] = list(self.plan.notes)

        def result(prompt: str, backend: str, model: str | None = None, **details) -> PromptResult:
            elapsed = time.perf_counter() - start
            return PromptResult(prompt, text, kind, backend, model, elapsed, fallbacks=tuple(fallbacks), **details)

        digest = image_digest(image) if self.cache and self.plan.vlms else ""
        for position, backend in enumerate(self.plan.vlms):
            model, endpoint = self.source(backend)
            key = CacheKey(digest, text, kind, backend, model, endpoint, INSTRUCTIONS_VERSION)
            entry = self.cache.get(key) if self.cache else None
            if entry:
                prompt, raw = fit_tokens(entry["prompt"], self.count_tokens), entry["raw_response"]
                return result(
                    prompt, backend, model, raw_response=raw, instructions_version=INSTRUCTIONS_VERSION, cached=True
                )
            try:
                raw = self.ask(backend, image, text, kind)
            except EnhancementError as error:
                reason = str(error)
            else:
                # The answer is server- or model-made text: masked and stripped before it is cleaned or kept.
                raw = recordable(raw)
                if len(raw) > MAX_ANSWER_CHARS:
                    reason = f"{len(raw)} characters long, more than the {MAX_ANSWER_CHARS} an answer may have"
                else:
                    prompt = clean_response(raw)
                    reason = rejection_reason(prompt, text)
                if reason is None:
                    if self.cache:
                        self.cache.put(key, prompt, raw, time.perf_counter() - start)
                    prompt = fit_tokens(prompt, self.count_tokens)
                    return result(prompt, backend, model, raw_response=raw, instructions_version=INSTRUCTIONS_VERSION)
                reason = f"unusable answer: {reason}"
            if self.strict:
                raise EnhancementError(f"{backend} prompt enhancer failed: {reason}")
            following = self.plan.vlms[position + 1] if position + 1 < len(self.plan.vlms) else self.plan.last
            logger.warning("%s prompt enhancer failed: %s; falling back to %s", backend, reason, following)
            fallbacks.append(Fallback(backend, reason))
        if self.plan.last == "none":
            return result(text, "none")
        prompt = fit_tokens(template_prompt(text, kind), self.count_tokens)
        return result(prompt, "template", instructions_version=TEMPLATE_VERSION)

    def ask(self, backend: str, image: PIL.Image.Image, text: str, kind: InputKind) -> str:
        """One raw answer from a VLM backend; a failure marks the backend failed for the rest of the batch."""
        if backend in self.failed:
            raise EnhancementError(f"skipped after an earlier failure in this batch: {self.failed[backend]}")
        try:
            if backend == "api":
                return api.complete(self.settings, vlm_view(image), system_message(kind), user_message(text, kind))
            if self.vlm is None:
                self.vlm = LocalVLM(self.local_model, self.device, local_files_only=self.local_files_only)
            return self.vlm.generate(vlm_view(image), system_message(kind), user_message(text, kind))
        except EnhancementError as error:
            self.failed[backend] = str(error)
            raise

    def close(self) -> None:
        """Release the local VLM, if one was loaded."""
        if self.vlm is not None:
            self.vlm.close()
            self.vlm = None


def _check_case(case: Sequence, where: str) -> tuple[PIL.Image.Image, str, InputKind]:
    """Validate one case up front, so a bad input fails before any model is loaded."""
    if isinstance(case, (str, bytes)) or not isinstance(case, Sequence) or len(case) not in (2, 3):
        raise InvalidInputError(f"{where}a case must be (image, text) or (image, text, kind), got {case!r:.80}")
    image, text, kind = case if len(case) == 3 else (*case, "instruction")
    try:
        if isinstance(image, (str, os.PathLike)):
            image = load_image(image)
        elif isinstance(image, PIL.Image.Image):
            image = validate_image(image)
        else:
            raise InvalidInputError(f"image must be a PIL image or a file path, got {type(image).__name__}")
        return image, check_text(text), check_kind(kind)
    except InvalidInputError as error:
        raise InvalidInputError(f"{where}{error}") from None


def enhance_many(
    cases: Iterable[PromptCase | tuple],
    enhancer: str = "auto",
    vlm_model: str | None = None,
    api_base_url: str | None = None,
    api_model: str | None = None,
    api_key: str | None = None,
    timeout: float = 30.0,
    max_retries: int = 2,
    backoff: float = 1.0,
    use_cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    strict: bool = False,
    count_tokens: TokenCounter | None = None,
    device: str | torch.device | None = None,
    local_files_only: bool = False,
) -> list[PromptResult]:
    """Write video prompts for many cases, loading a local VLM at most once and releasing it before returning.

    Call this before loading the video model: a local VLM and the video model rarely fit in memory together.

    Args:
        cases: (image, text) or (image, text, kind) tuples; the image is a PIL image or a file path and kind is
            "instruction" (an edit order, "make the dog sit") or "target" (a caption of the wanted result).
        enhancer: "auto" (the API if a base URL is set, else the local VLM if `vlm_model` is named, else the
            template), "api", "local", "template" (offline, no model) or "none" (the text as given).
        vlm_model: local VLM id or folder; names the fallback after the API, and the model for "local"
            (default Qwen/Qwen3-VL-8B-Instruct).
        api_base_url, api_model, api_key: the OpenAI-compatible server, e.g. "http://localhost:8000/v1";
            default to $IFEDIT_VLM_BASE_URL, $IFEDIT_VLM_MODEL and $IFEDIT_VLM_API_KEY (else $OPENAI_API_KEY).
        timeout, max_retries, backoff: seconds per request, retries after the first attempt, and the first
            retry's wait in seconds (doubled each time) for timeouts, lost connections, 429 and 5xx.
        use_cache, cache_dir: reuse VLM answers stored on disk (default folder from `default_cache_dir()`).
        strict: raise EnhancementError instead of falling back to the next backend.
        count_tokens: the video text encoder's token counter; a conservative estimate by default.
        device: where a local VLM runs (default: CUDA in bfloat16 when available, else CPU in float32).
        local_files_only: take a local VLM named by Hub id from the download cache only (as when the Hub cannot
            be reached).
    """
    cases = list(cases)
    checked = [_check_case(case, f"case {index}: " if len(cases) > 1 else "") for index, case in enumerate(cases)]
    plan = _plan(enhancer, vlm_model, api_base_url)
    settings = None
    if "api" in plan.vlms:
        settings = api.resolve_settings(api_base_url, api_model, api_key, timeout, max_retries, backoff)
    if plan.notes:
        if strict:
            raise EnhancementError(plan.notes[0].reason)
        if plan.notes[0].reason not in _NOTED:  # a web page or a server enhances per request: say it once
            _NOTED.add(plan.notes[0].reason)
            logger.warning("prompt enhancement: %s", plan.notes[0].reason)
    cache = PromptCache(cache_dir) if use_cache else None
    runner = _Enhancer(
        plan, settings, vlm_model or DEFAULT_LOCAL_MODEL, device, cache, strict, count_tokens, local_files_only
    )
    try:
        return [runner.run(image, text, kind) for image, text, kind in checked]
    finally:
        runner.close()


def enhance(
    image: PIL.Image.Image | str | os.PathLike, text: str, kind: InputKind = "instruction", **options
) -> PromptResult:
    """Write the video prompt for one image and text; `options` are the keyword arguments of `enhance_many`."""
    [result] = enhance_many([(image, text, kind)], **options)
    return result
