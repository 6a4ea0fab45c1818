"""A VLM behind an OpenAI-compatible chat-completions endpoint, called with the image as a base64 data URL."""

from __future__ import annotations

import base64
import contextlib
import email.utils
import http.client
import io
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

import PIL.Image

from ..errors import InvalidInputError
from ..redact import register_secret
from .base import EnhancementError, one_line

ENV_BASE_URL = "IFEDIT_VLM_BASE_URL"
ENV_MODEL = "IFEDIT_VLM_MODEL"
ENV_API_KEY = "IFEDIT_VLM_API_KEY"
MAX_BACKOFF_S = 30.0
MAX_TIMEOUT_S = 3600.0  # an hour per attempt; far beyond it, deadlines overflow the platform's clock
MAX_ANSWER_TOKENS = 400
# A 400-token answer is a few kilobytes; bigger bodies are refused rather than read into memory.
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_ERROR_BYTES = 64 * 1024


@dataclass(frozen=True)
class ApiSettings:
    """Where and how to call the VLM server; the key stays out of repr so it never reaches a log."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    max_retries: int = 2
    backoff: float = 1.0

    def __post_init__(self):
        # From here on the key is masked in every message, record and log line, even if a server echoes it.
        register_secret(self.api_key)


def configured_base_url(base_url: str | None = None) -> str | None:
    """The base URL from the argument or IFEDIT_VLM_BASE_URL; None when the API is not configured."""
    return base_url or os.environ.get(ENV_BASE_URL) or None


# How messages name the server setting: the flag of the command line, then the argument from Python.
URL = "--vlm-base-url (api_base_url)"


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
        raise InvalidInputError(f"the 'api' enhancer needs a server: pass {URL} or set {ENV_BASE_URL}")
    if not base_url.startswith(("http://", "https://")):
        raise InvalidInputError(f"{URL} must start with http:// or https://, got {base_url!r}")
    _check_base_url(base_url)
    model = model or os.environ.get(ENV_MODEL)
    if not model:
        raise InvalidInputError(
            f"the 'api' enhancer needs a model name: pass --vlm-api-model (api_model) or set {ENV_MODEL}"
        )
    if not timeout > 0:
        raise InvalidInputError(f"timeout must be positive, got {timeout}")
    if timeout > MAX_TIMEOUT_S:
        raise InvalidInputError(f"timeout must be at most {MAX_TIMEOUT_S:g} s, got {timeout:g}")
    if max_retries < 0:
        raise InvalidInputError(f"max_retries must be 0 or more, got {max_retries}")
    api_key = (api_key or os.environ.get(ENV_API_KEY) or os.environ.get("OPENAI_API_KEY") or "").strip() or None
    if api_key and not all("!" <= char <= "~" for char in api_key):
        raise InvalidInputError(
            "the API key holds a space, a control or a non-ASCII character, which an HTTP header cannot carry; "
            f"check --vlm-api-key (api_key), {ENV_API_KEY} or OPENAI_API_KEY"
        )
    return ApiSettings(base_url.rstrip("/"), model, api_key, timeout, max_retries, backoff)


def _check_base_url(base_url: str) -> None:
    """Refuse a base URL that the HTTP client cannot send, or one that would carry a password into records."""
    if not base_url.isascii() or any(char.isspace() or not char.isprintable() for char in base_url):
        raise InvalidInputError(
            f"{URL} must be ASCII without spaces or control characters (percent-encode the others), got {base_url!r}"
        )
    try:
        parts = urllib.parse.urlsplit(base_url)
    except ValueError as error:  # an unclosed IPv6 bracket
        raise InvalidInputError(f"{URL} is not a URL ({error}), got {base_url!r}") from None
    if parts.username is not None or parts.password is not None:
        raise InvalidInputError(
            f"{URL} must not hold a user name or password (it is kept in records): "
            f"pass the key as --vlm-api-key (api_key) or {ENV_API_KEY}"
        )
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if not parts.hostname or not port_ok:
        raise InvalidInputError(f"{URL} needs a host and a valid port, got {base_url!r}")


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
    """Ask the server for one answer, retrying timeouts, lost connections, 429 and 5xx with backoff.

    The whole call, waits between attempts included, ends within (max_retries + 1) x timeout: each attempt gets
    at most `timeout`, and a wait that would leave no time for the next attempt ends the call instead."""
    data = json.dumps(request_body(settings, image, system, user)).encode("utf-8")
    headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "ifedit"}
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    url = f"{settings.base_url}/chat/completions"
    limit = (settings.max_retries + 1) * settings.timeout
    end = time.monotonic() + limit
    attempt = 0
    while True:
        attempt += 1
        deadline = min(time.monotonic() + settings.timeout, end)
        try:
            return _answer_text(_post(url, data, headers, deadline, settings.timeout))
        except _Retryable as error:
            attempts = f"gave up after {attempt} attempt{'s' if attempt > 1 else ''}"
            if attempt > settings.max_retries:
                raise EnhancementError(f"{error} ({attempts})") from None
            wait = error.retry_after
            if wait is None:
                # Jitter keeps many clients of one server from retrying in lockstep.
                wait = min(settings.backoff * 2 ** (attempt - 1), MAX_BACKOFF_S) * random.uniform(0.5, 1.0)
            if time.monotonic() + wait >= end:
                raise EnhancementError(f"{error} ({attempts}: another would pass the {limit:g} s limit)") from None
            time.sleep(wait)


_Connect = Callable[..., http.client.HTTPConnection]


class _Cutoff:
    """Shuts the socket of one request once its deadline passes.

    A socket timeout bounds each read, not the request: a server sending a byte every few seconds, in the headers
    or the body, would otherwise hold the request open for ever. The watcher shuts a duplicate of the socket, which
    ends the connection itself: a blocked read wakes up, whether TLS wraps the socket or the response holds it."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.handles: list[socket.socket] = []
        self.finished = threading.Event()
        self.watcher = threading.Thread(target=self._watch, daemon=True)

    @property
    def passed(self) -> bool:
        return time.monotonic() >= self.deadline

    def __enter__(self) -> _Cutoff:
        self.watcher.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finished.set()
        self.watcher.join()
        for handle in self.handles:
            handle.close()

    def _watch(self) -> None:
        self.finished.wait(max(0.0, self.deadline - time.monotonic()))
        # Until the request gives up, shut every socket it has, including one opened after the deadline.
        while not self.finished.is_set():
            for handle in list(self.handles):
                with contextlib.suppress(OSError):
                    handle.shutdown(socket.SHUT_RDWR)
            self.finished.wait(0.05)

    def track(self, http_class: _Connect) -> _Connect:
        """`http_class` wrapped so that the socket of each connection it makes is watched."""

        def connect(host: str, **options) -> http.client.HTTPConnection:
            connection = http_class(host, **options)
            # The hook http.client gives for making the plain socket, before any TLS wraps it.
            create_socket = connection._create_connection

            def create_and_watch(*args, **kwargs) -> socket.socket:
                sock = create_socket(*args, **kwargs)
                self.handles.append(sock.dup())
                return sock

            connection._create_connection = create_and_watch
            return connection

        return connect


class _Watched:
    """urllib's HTTP(S) handler with every connection it opens handed to a _Cutoff."""

    def __init__(self, cutoff: _Cutoff):
        super().__init__()
        self.cutoff = cutoff

    def do_open(self, http_class, req, **options):
        return super().do_open(self.cutoff.track(http_class), req, **options)


class _WatchedHTTP(_Watched, urllib.request.HTTPHandler):
    pass


class _WatchedHTTPS(_Watched, urllib.request.HTTPSHandler):
    pass


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect: the request carries the API key, which goes to the configured server and nowhere else."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _post(url: str, data: bytes, headers: dict[str, str], deadline: float, timeout: float) -> bytes:
    """POST the request, ending by `deadline` (time.monotonic); sort failures into worth-retrying and final ones."""
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    with _Cutoff(deadline) as cutoff:
        opener = urllib.request.build_opener(_WatchedHTTP(cutoff), _WatchedHTTPS(cutoff), _NoRedirects)
        try:
            body = _exchange(opener, request, deadline)
        except (_Retryable, EnhancementError):
            if not cutoff.passed:
                raise
        else:
            if not cutoff.passed:
                return body
    # Past the deadline, a short answer or a dropped connection is the cutoff's doing.
    raise _Retryable(f"VLM server at {url} timed out after {timeout:g} s")


def _exchange(opener: urllib.request.OpenerDirector, request: urllib.request.Request, deadline: float) -> bytes:
    """One request and its bounded body; network and HTTP failures become _Retryable or EnhancementError."""
    url = request.full_url
    try:
        with opener.open(request, timeout=max(deadline - time.monotonic(), 0.001)) as response:
            return _read_body(response)
    except urllib.error.HTTPError as error:
        raise _http_failure(error) from None
    except urllib.error.URLError as error:
        raise _Retryable(f"VLM server at {url} unreachable: {one_line(error.reason)}") from None
    except (OSError, http.client.HTTPException) as error:
        raise _Retryable(f"VLM server at {url} dropped the connection: {one_line(error)}") from None


def _read_body(response: http.client.HTTPResponse) -> bytes:
    """The answer's body, refused unread when it declares more than MAX_BODY_BYTES and cut off when it sends more."""
    too_large = EnhancementError(
        f"VLM server's answer is larger than {MAX_BODY_BYTES // 2**20} MiB; a prompt answer takes a few kilobytes"
    )
    if response.length is not None and response.length > MAX_BODY_BYTES:
        raise too_large
    body = response.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise too_large
    return body


def _http_failure(error: urllib.error.HTTPError) -> Exception:
    """Turn an HTTP error status into a retryable failure (429, 5xx) or a final one (redirects, other 4xx)."""
    detail = _error_detail(error)
    status = error.code
    if 300 <= status < 400:
        location = one_line(error.headers.get("Location") or "nowhere", 200)
        return EnhancementError(
            f"VLM server redirected the request (HTTP {status}) to {location}; redirects are not followed, so the "
            "API key goes to no other server: set the base URL to the server's own address"
        )
    if status in (401, 403):
        # The body is not shown: servers quote the key they refused, in forms no masking can recognise.
        return EnhancementError(f"VLM server refused the API key (HTTP {status}); check {ENV_API_KEY}")
    if status == 429:
        wait = _retry_after(error.headers.get("Retry-After"))
        asks = f" and asks to wait {wait:.0f} s" if wait is not None else ""
        return _Retryable(f"VLM server is rate limiting (HTTP 429){asks}: {detail}", retry_after=wait)
    if status >= 500:
        return _Retryable(f"VLM server failed (HTTP {status}): {detail}")
    return EnhancementError(f"VLM server rejected the request (HTTP {status}): {detail}")


def _error_detail(error: urllib.error.HTTPError) -> str:
    """The server's own error message when it sends the usual {"error": {"message": ...}} body, else the body."""
    try:
        body = error.read(MAX_ERROR_BYTES + 1)
    except (OSError, http.client.HTTPException):
        return one_line(error.reason) or "no details"
    if len(body) > MAX_ERROR_BYTES:
        # Never shown cut off: a key cut in half would escape masking.
        return f"an error body over {MAX_ERROR_BYTES // 1024} KiB, not shown"
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        payload = None
    message = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(message, dict):
        message = message.get("message")
    if not isinstance(message, str):
        message = body.decode("utf-8", errors="replace")
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
    """The first choice's message text; any other body (not JSON, not a chat completion, text that is not a string)
    is a final failure, so the chain falls back as for any broken server."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise EnhancementError(f"VLM server sent malformed JSON: {_snippet(body)}") from None
    choices = payload.get("choices") if isinstance(payload, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise EnhancementError(f"VLM server's answer is not a chat completion: {_snippet(body)}")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    # Some servers send content parts even for text: text parts are joined, other kinds (a refusal) skipped.
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        texts = [part.get("text") for part in content if part.get("type", "text") == "text"]
        if all(isinstance(text, str) for text in texts):
            return "".join(texts)
    raise EnhancementError(f"VLM server's answer holds no text (content is not a string): {_snippet(body)}")


def _snippet(body: bytes) -> str:
    """The start of a body for an error message, masked as a whole before it is cut."""
    return repr(one_line(body.decode("utf-8", errors="replace"), 120))
