"""The HTTP API: OpenAI's `POST /v1/images/edits`, jobs for long edits, models, health and metrics.

`Service` holds the server's state (the backend, admitted requests, jobs, result files, metrics) and answers in
plain Python; `build_app` maps routes onto it with FastAPI. Every error leaves as OpenAI's error JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import functools
import hmac
import logging
import math
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Protocol

import PIL.Image
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from ..errors import IFEditError, InvalidInputError, SetupError
from ..hosts import LoopbackOnly
from ..io import MAX_UPLOAD_BYTES, load_image
from ..presets import Preset
from ..redact import safe_text
from .command import KEY_VARIABLE
from .connections import HEAD_BYTES, GuardedConnection
from .files import ResultFiles
from .form import EditRequest, parse_form
from .metrics import CONTENT_TYPE, Metrics
from .replica import Event

logger = logging.getLogger("ifedit")

FORM_BYTES = 2**20  # the text fields and multipart framing a request may add to its image
IMAGE_FIELDS = ("image", "image[]")  # OpenAI's client names a list of images "image[]"
MAX_KEPT_JOBS = 256  # finished jobs kept for polling (each may hold its images)
LOADING_RETRY_SECONDS = 10
GRACE_SECONDS = 10  # how long a stopping server waits for requests in flight before cancelling them
ANSWER_SECONDS = 2  # edits still running that long before the grace ends are stopped, so their requests get a 503
DISCONNECT_POLL_SECONDS = 1.0  # how often a request waiting for its edit checks that its client is still there
# A request's body must arrive within this (50 MiB at under 1 MiB/s); a slower upload is dropped with 408. Until it
# has arrived a request holds no place in the queue, so slow uploads never keep edits waiting.
READ_SECONDS = 60
MAX_READING = 16  # requests whose bodies are arriving at once (uploads are spooled to disk); more get 429
# Of those, from one client address: a client stalling its uploads cannot take every place (a proxy in front, whose
# connections all come from one address, passes on each client's own with X-Forwarded-For, which uvicorn trusts
# from the addresses in $FORWARDED_ALLOW_IPS, by default 127.0.0.1).
MAX_READING_PER_CLIENT = MAX_READING // 2
ERROR_TYPES = {401: "authentication_error", 429: "rate_limit_error"}
# Jobs end in one of these; "queued" and "running" before.
FINISHED = ("succeeded", "failed", "cancelled")


class Backend(Protocol):
    """Where edits run (see `backends`): loaded by `start`, each request's events from `stream`."""

    max_replicas: int

    async def start(self) -> None: ...
    def stream(self, request: EditRequest) -> AsyncIterator[Event]: ...
    async def close(self) -> None: ...


class ApiError(Exception):
    """An answer other than success, as OpenAI shapes it: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.retry_after = status, message, code, param, retry_after

    def body(self) -> dict[str, Any]:
        kind = ERROR_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        param = None if self.param is None else safe_text(self.param)  # a field's name may be anything a client sent
        return {"error": {"message": safe_text(self.message), "type": kind, "param": param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


@dataclass(frozen=True)
class ServeConfig:
    """The server's settings (what `ifedit serve` was given)."""

    preset: Preset
    defaults: argparse.Namespace  # `ifedit serve`'s options: every request's settings start from them
    api_key: str | None = None
    queue_size: int = 4  # requests waiting per replica beyond the one it runs
    timeout: float = 600.0  # seconds from acceptance to the answer, waiting included
    url_ttl: float = 3600.0  # seconds a result stays downloadable (and a finished job pollable)
    public_url: str | None = None  # how clients reach the server behind a reverse proxy, for result URLs

    @property
    def model(self) -> str:
        return self.preset.name


@dataclass(eq=False)
class Job:
    """One admitted request: its state while it runs, then its answer or its error."""

    id: str
    base_url: str
    response_format: str
    created: int = field(default_factory=lambda: int(time.time()))
    status: str = "queued"
    progress: dict[str, Any] = field(default_factory=lambda: {"step": 0, "total": 0, "stage": None})
    result: dict[str, Any] | None = None
    error: ApiError | None = None
    finished_at: float | None = None
    task: asyncio.Task | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "image.edit.job",
            "created": self.created,
            "status": self.status,
            "progress": self.progress,
            "result": self.result,
            "error": self.error.body()["error"] if self.error else None,
        }


class Service:
    """The server's state and its answers, independent of the web framework's routing."""

    def __init__(self, backend: Backend, config: ServeConfig):
        self.backend = backend
        self.config = config
        self.active: set[Job] = set()  # admitted requests that have not ended
        self.metrics = Metrics(
            waiting=lambda: sum(job.status == "queued" for job in self.active),
            running=lambda: sum(job.status == "running" for job in self.active),
        )
        self.capacity = backend.max_replicas * (1 + config.queue_size)
        self.admission = threading.BoundedSemaphore(self.capacity)
        self.reading: Counter[str] = Counter()  # requests whose bodies are arriving, by client address
        # The private folder for uploads and results: made when the server starts (`open`), removed by `close`.
        self.workdir: Path | None = None
        self.jobs: dict[str, Job] = {}
        self.ready = False
        self.stopping = False  # the server is shutting down: edits still running are cut short with 503
        self.failure: str | None = None
        self.on_failure: Callable[[], None] | None = None  # the server stops when the model cannot load
        self.started_at = int(time.time())
        self._last_seconds = 1.0

    # Life cycle.

    def open(self) -> None:
        """Make the server's private folder (mode 0700) for uploads and result files."""
        self.workdir = Path(tempfile.mkdtemp(prefix="ifedit-serve-"))
        self.uploads = self.workdir / "uploads"
        self.uploads.mkdir(mode=0o700)
        self.files = ResultFiles(self.workdir / "results", self.config.url_ttl)

    async def start(self) -> None:
        """Load the model(s); the server answers /health with 503 until this is done."""
        try:
            await self.backend.start()
        except Exception as error:
            text = str(error) if isinstance(error, IFEditError) else f"{type(error).__name__}: {error}"
            self.failure = safe_text((text.strip().splitlines() or [type(error).__name__])[0])
            logger.error("the model could not be loaded: %s", self.failure)
            if self.on_failure is not None:
                self.on_failure()
            return
        self.ready = True
        logger.info("%s loaded: ready for edits", self.config.model)

    async def stop_edits(self, after: float) -> None:
        """After `after` seconds, stop the edits still running: their requests answer 503 instead of being cut off
        without an answer when the server stops waiting for them."""
        await asyncio.sleep(after)
        self.stopping = True
        running = [job.task for job in self.active]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def close(self) -> None:
        await self.stop_edits(after=0)
        await self.backend.close()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # Checks every request passes.

    def authorize(self, request: Request) -> None:
        """With a key set, require `Authorization: Bearer KEY`, compared in constant time."""
        key = self.config.api_key
        if key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "missing API key: send the header 'Authorization: Bearer <key>'", "missing_api_key")
        if not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise ApiError(401, "invalid API key", "invalid_api_key")

    def require_ready(self) -> None:
        if not self.ready:
            message = f"the model could not be loaded: {self.failure}" if self.failure else "the model is loading"
            raise ApiError(503, message, "model_not_ready", retry_after=LOADING_RETRY_SECONDS)

    def check_room(self) -> None:
        """Refuse at once when every place in the queue is taken (before the upload is read), taking none."""
        self.admit()
        self.admission.release()

    def admit(self) -> None:
        """Take a place in the queue or refuse at once: a full server answers 429 instead of waiting."""
        if not self.admission.acquire(blocking=False):
            self.metrics.rejected.inc()
            # About when the next place frees: the time one edit took lately.
            raise ApiError(
                429,
                f"the server is busy: {self.capacity} edits are running or waiting; try again later",
                "queue_full",
                retry_after=max(1, math.ceil(self._last_seconds)),
            )

    # Requests.

    async def receive_form(self, request: Request):
        """The request's multipart form, received within READ_SECONDS (the caller closes it)."""
        kind = request.headers.get("content-type", "")
        if kind.partition(";")[0].strip().lower() != "multipart/form-data":
            raise ApiError(
                400,
                "the body must be multipart/form-data (an image file and text fields, as OpenAI's image edits "
                f"take them), got {kind[:100] or 'no content type'!r}",
                "invalid_form",
            )
        client = request.client.host if request.client else ""
        for reading, limit, whose in ((self.reading.total(), MAX_READING, ""),
                                      (self.reading[client], MAX_READING_PER_CLIENT, "from you ")):  # fmt: skip
            if reading >= limit:
                self.metrics.rejected.inc()
                message = f"the server is receiving {limit} uploads {whose}already; try again later"
                raise ApiError(429, message, "too_many_uploads", retry_after=1)
        self.reading[client] += 1
        try:
            form = await asyncio.wait_for(request.form(max_files=2, max_fields=len(IMAGE_FIELDS) + 64), READ_SECONDS)
        except asyncio.TimeoutError:
            message = f"the request's body did not arrive within {READ_SECONDS} s"
            raise ApiError(408, message, "request_timeout") from None
        except ClientDisconnect:
            raise ApiError(499, "the client went away while sending the request", "client_disconnected") from None
        except MultiPartException as error:
            raise ApiError(400, f"the body is not a valid multipart form: {error.message}", "invalid_form") from None
        finally:
            self.reading[client] -= 1
            if not self.reading[client]:
                del self.reading[client]
        return form

    async def read_request(self, form) -> EditRequest:
        """A received form as an EditRequest with its image decoded and checked."""
        images, fields = [], {}
        for name, value in form.multi_items():
            if name == "mask":
                message = "mask is not supported: IF-Edit changes the whole image as the prompt says"
                raise ApiError(400, message, "unsupported_field", name)
            if isinstance(value, UploadFile) != (name in IMAGE_FIELDS):
                kind = "a file upload" if name in IMAGE_FIELDS else "text, not a file"
                raise ApiError(400, f"{name} must be {kind}", "invalid_field", name)
            if isinstance(value, UploadFile):
                images.append(value)
            elif name in fields:
                raise ApiError(400, f"field {name} is given twice", "invalid_field", name)
            else:
                fields[name] = value
        if len(images) != 1:
            message = f"one image per request, got {len(images)}" if images else "image is required (a file)"
            raise ApiError(400, message, "invalid_image", "image")
        edit = parse_form(fields, self.config.preset, self.config.defaults, self.config.model)
        image, source = await asyncio.to_thread(self._load_upload, images[0])
        return dataclasses.replace(edit, image=image, source=source)

    def _load_upload(self, upload: UploadFile) -> tuple[PIL.Image.Image, str]:
        """Decode an upload through io.load_image (size, pixel count and format checks) from a file named here."""
        name = upload_name(upload.filename)
        if upload.size is not None and upload.size > MAX_UPLOAD_BYTES:
            raise ApiError(
                413,
                f"image file is too large: {name} is {upload.size / 2**20:.1f} MiB "
                f"(at most {MAX_UPLOAD_BYTES / 2**20:.3g} MiB)",
                "file_too_large",
                "image",
            )
        path = self.uploads / secrets.token_hex(16)
        try:
            upload.file.seek(0)
            with path.open("xb") as copy:
                shutil.copyfileobj(upload.file, copy)
            return load_image(path, max_bytes=MAX_UPLOAD_BYTES, name=name), name
        finally:
            path.unlink(missing_ok=True)

    def start_job(self, edit: EditRequest, request: Request) -> Job:
        """Run an admitted request in the background; its place in the queue is released when it ends."""
        base = self.config.public_url or str(request.base_url)
        job = Job(
            id=f"edit_{secrets.token_urlsafe(16)}", base_url=base.rstrip("/"), response_format=edit.response_format
        )
        job.task = asyncio.create_task(self._run(job, edit))
        return job

    def keep_job(self, job: Job) -> None:
        """Make a job pollable, forgetting finished ones past their lifetime (or the oldest, past MAX_KEPT_JOBS)."""
        now = time.monotonic()
        finished = [job for job in self.jobs.values() if job.finished_at is not None]
        finished.sort(key=lambda job: job.finished_at)
        for index, old in enumerate(finished):
            if now - old.finished_at > self.config.url_ttl or len(finished) - index > MAX_KEPT_JOBS:
                del self.jobs[old.id]
        self.jobs[job.id] = job

    def find_job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None or (job.finished_at is not None and time.monotonic() - job.finished_at > self.config.url_ttl):
            raise ApiError(404, f"no job {job_id!r}: it never existed or has expired", "job_not_found", "id")
        return job

    async def cancel(self, job: Job) -> None:
        if job.task is not None and not job.task.done():
            job.task.cancel()
            await asyncio.wait([job.task])

    async def _run(self, job: Job, edit: EditRequest) -> None:
        self.active.add(job)
        try:
            # The deadline covers waiting and editing; the replica stops at its next step when it passes.
            await asyncio.wait_for(self._follow(job, edit), self.config.timeout)
        except asyncio.TimeoutError:
            message = f"the edit did not finish within the server's limit of {self.config.timeout:g} s"
            self._fail(job, ApiError(504, message, "deadline_exceeded"))
        except asyncio.CancelledError:
            if self.stopping:
                message = "the server is stopping: the edit was not finished; send it again"
                self._fail(job, ApiError(503, message, "server_stopping", retry_after=LOADING_RETRY_SECONDS))
            else:
                self._fail(job, ApiError(499, "the edit was cancelled", "cancelled"))
        except Exception:
            logger.exception("an edit request failed")
            self._fail(job, ApiError(500, "the server failed; details are in its log", "internal_error"))
        finally:
            job.finished_at = time.monotonic()
            self.active.discard(job)
            self.admission.release()

    async def _follow(self, job: Job, edit: EditRequest) -> None:
        """Track the backend's events for `job` until its result or error."""
        async with contextlib.aclosing(self.backend.stream(edit)) as events:
            async for event in events:
                kind = event["event"]
                if kind == "started":
                    job.status = "running"
                elif kind == "progress":
                    job.progress = {name: event[name] for name in ("step", "total", "stage")}
                elif kind == "retried":
                    self.metrics.retries.inc()
                elif kind == "result":
                    job.result = self._answer(job, event)
                    job.status = "succeeded"
                    self._last_seconds = event["seconds"] / len(event["images"])
                    self.metrics.edit_seconds.observe(event["seconds"])
                elif kind == "error":
                    self._fail(job, ApiError(event["status"], event["message"], event["code"]))
        if job.status not in FINISHED:
            raise RuntimeError(f"the backend's events for {job.id} ended without a result or an error")

    def _fail(self, job: Job, error: ApiError) -> None:
        job.error = error
        job.status = "cancelled" if error.code == "cancelled" else "failed"
        self.metrics.failures.labels(code=error.code).inc()

    def _answer(self, job: Job, event: Event) -> dict[str, Any]:
        """OpenAI's ImagesResponse: each image as base64 or a URL, its video prompt, and ifedit's record."""
        data = []
        for image in event["images"]:
            if job.response_format == "url":
                item = {"url": f"{job.base_url}/v1/files/{self.files.add(image['png'])}"}
            else:
                item = {"b64_json": base64.b64encode(image["png"]).decode("ascii")}
            data.append({**item, "revised_prompt": image["prompt"], "ifedit": image["record"]})
        return {"created": int(time.time()), "data": data}


def upload_name(filename: str | None) -> str:
    """How messages and records call an upload: the base name the client gave, printable and short."""
    name = PureWindowsPath(PurePosixPath(filename or "").name).name
    return safe_text(name)[:100] or "upload"


class BodyLimit:
    """Refuse bodies larger than an upload may be with 413, before reading them (declared) or while (chunked)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = ApiError(413, f"the request is larger than {self.limit / 2**20:.3g} MiB", "file_too_large")
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await too_large.response()(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise too_large
            return message

        await self.app(scope, counted, send)


class CountRequests:
    """Count every answer by route and status, including the ones middleware gives."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def noted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noted)
        finally:
            route = scope.get("route")
            self.metrics.requests.labels(route=getattr(route, "path", "other"), status=str(status)).inc()


def build_app(service: Service) -> FastAPI:
    """The FastAPI application over `service`; the model loads in the background once it starts."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.open()
        loading = asyncio.create_task(service.start())
        try:
            yield
        finally:
            loading.cancel()  # a server stopped while loading stops waiting for the load
            await asyncio.gather(loading, return_exceptions=True)
            await service.close()

    # No documentation pages: they load scripts from a CDN, and the API is OpenAI's.
    app = FastAPI(title="ifedit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, limit=MAX_UPLOAD_BYTES + FORM_BYTES)
    if service.config.api_key is None:
        # With a key, browsers cannot send requests across sites: the Authorization header needs a permission
        # (CORS) this server never gives. Without one, only this machine's own names and pages are answered.
        app.add_middleware(LoopbackOnly, respond=_refused_without_key)
    app.add_middleware(CountRequests, metrics=service.metrics)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(InvalidInputError)
    async def bad_input(request: Request, error: InvalidInputError) -> JSONResponse:
        return ApiError(400, str(error), "invalid_input", getattr(error, "field", None)).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 404:
            return ApiError(404, f"no such endpoint: {request.method} {request.url.path}", "not_found").response()
        return ApiError(error.status_code, str(error.detail), "invalid_request").response()

    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception) -> JSONResponse:
        logger.error("request failed: %s %s", request.method, request.url.path, exc_info=error)
        return ApiError(500, "the server failed; details are in its log", "internal_error").response()

    @app.post("/v1/images/edits")
    async def edit_now(request: Request) -> JSONResponse:
        service.authorize(request)
        service.require_ready()
        job = await _admitted_job(service, request)
        while not job.task.done():
            # A client that gave up (timed out, went away) frees its place instead of waiting for an unread edit.
            await asyncio.wait([job.task], timeout=DISCONNECT_POLL_SECONDS)
            if not job.task.done() and await request.is_disconnected():
                await service.cancel(job)
        if job.error is not None:
            raise job.error
        return JSONResponse(job.result)

    @app.post("/v1/edits", status_code=202)
    async def create_job(request: Request) -> JSONResponse:
        service.authorize(request)
        service.require_ready()
        job = await _admitted_job(service, request)
        service.keep_job(job)
        return JSONResponse(job.to_json(), status_code=202, headers={"Location": f"/v1/edits/{job.id}"})

    @app.get("/v1/edits/{job_id}")
    async def get_job(job_id: str, request: Request) -> JSONResponse:
        service.authorize(request)
        return JSONResponse(service.find_job(job_id).to_json())

    @app.delete("/v1/edits/{job_id}")
    async def cancel_job(job_id: str, request: Request) -> JSONResponse:
        service.authorize(request)
        job = service.find_job(job_id)
        await service.cancel(job)
        return JSONResponse(job.to_json())

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        service.authorize(request)
        model = {"id": service.config.model, "object": "model", "created": service.started_at, "owned_by": "ifedit"}
        return JSONResponse({"object": "list", "data": [model]})

    @app.get("/v1/files/{name}")
    async def result_file(name: str) -> FileResponse:
        # No key needed, as with OpenAI's image URLs: the unguessable name is the permission.
        path = service.files.path(name)
        if path is None:
            raise ApiError(404, "no such file: result URLs expire", "file_not_found")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, no-store"})

    @app.get("/health")
    async def health() -> JSONResponse:
        if service.ready:
            return JSONResponse({"status": "ok", "model": service.config.model})
        status = {"status": "failed", "error": service.failure} if service.failure else {"status": "loading"}
        return JSONResponse(status, status_code=503, headers={"Retry-After": str(LOADING_RETRY_SECONDS)})

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        service.authorize(request)
        return Response(service.metrics.text(), media_type=CONTENT_TYPE)

    return app


def _refused_without_key(reason: str) -> JSONResponse:
    message = (
        f"this server has no API key, so it answers only requests to localhost from this machine; this one was "
        f"{reason} (set ${KEY_VARIABLE} to serve other names and pages)"
    )
    return ApiError(403, message, "forbidden_without_key").response()


async def _admitted_job(service: Service, request: Request) -> Job:
    """A full server refuses without reading the upload; otherwise the body is received (within READ_SECONDS)
    holding no place in the queue, so that slow uploads never keep edits waiting, and the place is taken before
    the image is decoded, so that no more images are decoded at once than the queue holds."""
    service.check_room()
    form = await service.receive_form(request)
    try:
        service.admit()
        try:
            edit = await service.read_request(form)
        except BaseException:
            service.admission.release()
            raise
    finally:
        await form.close()
    return service.start_job(edit, request)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, opened before the model loads so that a taken port fails at once."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as error:
        raise SetupError(f"cannot serve on {host}:{port}: {error.strerror or error}") from None


@contextlib.contextmanager
def serving(service: Service, listening: socket.socket, wait_ready: bool = True) -> Iterator[str]:
    """Serve in a thread of this process (tests, benchmarks, notebooks) until the block ends; yields the base URL
    once the server listens and, with `wait_ready`, once the model has loaded."""
    server = uvicorn_server(service)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    host, port = listening.getsockname()[:2]
    try:
        while not server.started or (wait_ready and not service.ready):
            if not thread.is_alive():
                raise SetupError(f"the server stopped: {service.failure or 'see its log'}")
            time.sleep(0.05)
        yield f"http://{f'[{host}]' if ':' in host else host}:{port}"
    finally:
        server.should_exit = True
        thread.join()


class StoppingServer(uvicorn.Server):
    """uvicorn's server, which on its way down stops the edits still running shortly before it stops waiting for
    their requests, so that each gets a 503 instead of a dropped connection, and says when it has shut down."""

    def __init__(self, config: uvicorn.Config, service: Service):
        super().__init__(config)
        self.service = service
        self.stopped = False  # shut down cleanly (after a signal, uvicorn then raises that signal again)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        ending = asyncio.create_task(self.service.stop_edits(after=GRACE_SECONDS - ANSWER_SECONDS))
        try:
            await super().shutdown(sockets)
        finally:
            ending.cancel()
        self.stopped = True


def uvicorn_server(service: Service) -> StoppingServer:
    """A uvicorn server for `service` that stops by itself when the model cannot be loaded."""
    config = uvicorn.Config(
        build_app(service),
        http=functools.partial(GuardedConnection, places=service.capacity),
        h11_max_incomplete_event_size=HEAD_BYTES,
        log_config=None,
        access_log=False,  # result URLs are capabilities: they stay out of logs
        timeout_graceful_shutdown=GRACE_SECONDS,
    )
    server = StoppingServer(config, service)
    service.on_failure = lambda: setattr(server, "should_exit", True)
    return server
