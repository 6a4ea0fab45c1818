"""A VLM behind an OpenAI-compatible chat-completions endpoint, called with the image as a base64 data URL."""

from __future__ import annotations

import base64
import email.utils
import http.client
import io
import json
import os
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import PIL.Image

from ..errors import InvalidInputError
from .base import EnhancementError, one_line

ENV_BASE_URL = "IFEDIT_VLM_BASE_URL"
ENV_MODEL = "IFEDIT_VLM_MODEL"
ENV_API_KEY = "IFEDIT_VLM_API_KEY"
# Longest Retry-After we wait for; a server asking for more (a spent quota) is treated as a failure.
MAX_RETRY_AFTER_S = 60.0
MAX_BACKOFF_S = 30.0
MAX_ANSWER_TOKENS = 400


@dataclass(frozen=True)
class ApiSettings:
    """Where and how to call the VLM server; the key stays out of repr so it never reaches a log."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    max_retries: int = 2
    backoff: float = 1.0


def configured_base_url(base_url: str | None = None) -> str | None:
    """The base URL from the argument or IFEDIT_VLM_BASE_URL; None when the API is not configured."""
    return base_url or os.environ.get(ENV_BASE_URL) or None


def resolve_settings(
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    timeout: float = 30.0,
    max_retries: int = 2,
    backoff: float = 1.0,
) -> ApiSettings:
    """Fill in settings from the environment and check them; raise InvalidInputError naming what is missing."""
    base_url = configured_base_url(base_url)
    if not base_url:
        raise InvalidInputError(f"the 'api' enhancer needs a server: pass api_base_url or set {ENV_BASE_URL}")
    if not base_url.startswith(("http://", "https://")):
        raise InvalidInputError(f"api_base_url must start with http:// or https://, got {base_url!r}")
    model = model or os.environ.get(ENV_MODEL)
    if not model:
        raise InvalidInputError(f"the 'api' enhancer needs a model name: pass api_model or set {ENV_MODEL}")
    if not timeout > 0:
        raise InvalidInputError(f"timeout must be positive, got {timeout}")
    if max_retries < 0:
        raise InvalidInputError(f"max_retries must be 0 or more, got {max_retries}")
    api_key = api_key or os.environ.get(ENV_API_KEY) or os.environ.get("OPENAI_API_KEY") or None
    return ApiSettings(base_url.rstrip("/"), model, api_key, timeout, max_retries, backoff)


def image_data_url(image: PIL.Image.Image) -> str:
    """The image as a PNG data URL, the image format every OpenAI-compatible server accepts."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def request_body(settings: ApiSettings, image: PIL.Image.Image, system: str, user: str) -> dict:
    """The chat-completions request: system rules, then the image and the user's words in one user turn."""
    return {
        "model": settings.model,
        "messages": [
            {"role": "system", "content": system},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_data_url(image)}},
                    {"type": "text", "text": user},
                ],
            },
        ],
        "temperature": 0,
        "max_tokens": MAX_ANSWER_TOKENS,
    }


class _Retryable(Exception):
    """A failure worth another attempt; carries the server's requested wait, if any."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def complete(settings: ApiSettings, image: PIL.Image.Image, system: str, user: str) -> str:
    """Ask the server for one answer, retrying timeouts, lost connections, 429 and 5xx with backoff."""
    data = json.dumps(request_body(settings, image, system, user)).encode("utf-8")
    headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "ifedit"}
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    url = f"{settings.base_url}/chat/completions"
    attempt = 0
    while True:
        try:
            return _answer_text(_post(url, data, headers, settings.timeout))
        except _Retryable as error:
            attempt += 1
            if attempt > settings.max_retries:
                raise EnhancementError(f"{error} (gave up after {attempt} attempts)") from None
            wait = error.retry_after
            if wait is None:
                # Jitter keeps many clients of one server from retrying in lockstep.
                wait = min(settings.backoff * 2 ** (attempt - 1), MAX_BACKOFF_S) * random.uniform(0.5, 1.0)
            time.sleep(wait)


def _post(url: str, data: bytes, headers: dict[str, str], timeout: float) -> bytes:
    """POST the request; sort network and HTTP failures into worth-retrying and final ones."""
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        raise _http_failure(error) from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise _Retryable(f"VLM server at {url} timed out after {timeout:g} s") from None
        raise _Retryable(f"VLM server at {url} unreachable: {one_line(error.reason)}") from None
    except TimeoutError:
        raise _Retryable(f"VLM server at {url} timed out after {timeout:g} s") from None
    except (ConnectionError, http.client.HTTPException) as error:
        raise _Retryable(f"VLM server at {url} dropped the connection: {one_line(error)}") from None


def _http_failure(error: urllib.error.HTTPError) -> Exception:
    """Turn an HTTP error status into a retryable failure (429, 5xx) or a final one (other 4xx)."""
    detail = _error_detail(error)
    status = error.code
    if status in (401, 403):
        return EnhancementError(f"VLM server refused the API key (HTTP {status}): {detail}; check {ENV_API_KEY}")
    if status == 429:
        wait = _retry_after(error.headers.get("Retry-After"))
        if wait is not None and wait > MAX_RETRY_AFTER_S:
            return EnhancementError(
                f"VLM server is rate limiting (HTTP 429) and asks to wait {wait:.0f} s, "
                f"longer than the {MAX_RETRY_AFTER_S:.0f} s we wait: {detail}"
            )
        return _Retryable(f"VLM server is rate limiting (HTTP 429): {detail}", retry_after=wait)
    if status >= 500:
        return _Retryable(f"VLM server failed (HTTP {status}): {detail}")
    return EnhancementError(f"VLM server rejected the request (HTTP {status}): {detail}")


def _error_detail(error: urllib.error.HTTPError) -> str:
    """The server's own error message when it sends the usual {"error": {"message": ...}} body."""
    try:
        body = error.read().decode("utf-8", errors="replace")
    except OSError:
        return error.reason or "no details"
    try:
        message = json.loads(body)["error"]
        message = message.get("message", message) if isinstance(message, dict) else message
    except (ValueError, KeyError, TypeError):
        message = body
    return one_line(message, 200) or "no details"


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header, given as seconds or as an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _answer_text(body: bytes) -> str:
    """The first choice's message text; a body that is not a chat completion is a final failure."""
    try:
        payload = json.loads(body)
    except ValueError:
        raise EnhancementError(
            f"VLM server sent malformed JSON: {one_line(body[:120].decode('utf-8', 'replace'))!r}"
        ) from None
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise EnhancementError(
            f"VLM server's answer is not a chat completion: {one_line(json.dumps(payload)[:120])}"
        ) from None
    if isinstance(content, list):  # some servers return content parts even for text
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""
