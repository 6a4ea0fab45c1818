"""`ifedit serve` on the toy world: OpenAI's client edits through it, jobs run and stop, and every bad request,
missing key or overload gets OpenAI's error shape with the right status (servers bind 127.0.0.1 on free ports)."""

import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import PIL.Image
import pytest

from ifedit.cli import EXIT_INPUT, EXIT_SETUP, build_parser, main
from ifedit.errors import InvalidInputError
from ifedit.loading import LoadOptions
from ifedit.presets import get_preset
from ifedit.serve import app as serve_app
from ifedit.serve import connections
from ifedit.serve.app import ServeConfig, Service, bind, serving
from ifedit.serve.backends import LocalBackend
from ifedit.serve.command import build_service, replica_counts
from ifedit.serve.files import ResultFiles
from ifedit.serve.form import parse_form
from ifedit.serve.replica import EditReplica, prompt_options
from ifedit.toyworld.scenes import render_frame, sample_case

# Short edits: two denoising steps of a five-frame clip, as the server's defaults (requests may change them).
FAST = ("--model", "toyworld", "--steps", "2", "--frames", "5", "--prompt-enhancer", "template")
KEY = "test-key-0123456789abcdef"
SLOW_STEPS = "1000"  # the most EditSettings allows  # an edit that runs far longer than any test waits for it


def serve_args(*options: str):
    return build_parser().parse_args(["serve", *FAST, *options])


def running(service: Service, wait_ready: bool = True):
    """`service` served on a free loopback port for the length of a with block."""
    return serving(service, bind("127.0.0.1", 0), wait_ready)


@pytest.fixture(scope="module")
def server():
    """One model, one edit at a time and one waiting: two requests in the server at most."""
    service = build_service(serve_args("--queue-size", "1", "--timeout", "120"))
    with running(service) as url:
        yield url


@pytest.fixture(scope="module")
def scene() -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(render_frame(sample_case(1_000_003), 0.0)).save(buffer, format="PNG")
    return buffer.getvalue()


def post_edit(
    url: str, scene: bytes, path: str = "/v1/images/edits", files=None, headers=None, **fields
) -> httpx.Response:
    files = {"image": ("scene.png", scene, "image/png")} if files is None else files
    data = {"prompt": "slide the red square left", **fields}
    return httpx.post(url + path, files=files, data=data, headers=headers, timeout=120)


def error_of(response: httpx.Response) -> dict:
    """The OpenAI error object of a response, checked for its shape."""
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def wait_for(url: str, job_id: str, done, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/edits/{job_id}").json()
        if done(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached the state waited for: {job}")


def test_openai_client_edits_and_gets_the_same_pixels_as_base64_and_as_url(server, scene):
    client = openai.OpenAI(base_url=server + "/v1", api_key="not-checked", max_retries=0)
    image = ("scene.png", scene, "image/png")
    answer = client.images.edit(image=image, prompt="slide the red square left", n=2, extra_body={"seed": 5})
    assert len(answer.data) == 2 and answer.created > 0
    records = [item.model_extra["ifedit"] for item in answer.data]
    # n images run n consecutive seeds with the server's default settings, and each record says so.
    assert [record["seed"] for record in records] == [5, 6]
    assert all(record["settings"]["num_inference_steps"] == 2 for record in records)
    assert records[0]["instruction"] == "slide the red square left" and records[0]["source"]["path"] == "scene.png"
    # How the edit was made, not how the server is laid out: no path of its files, no figure of its free memory.
    text = json.dumps(records)
    assert os.path.dirname(get_preset("toyworld").model_id) not in text and "free_host_gb" not in text
    assert records[0]["model"]["model_id"] == "weights" and records[0]["memory_plan"]["tier"]
    assert (
        answer.data[0].revised_prompt == records[0]["prompt"] and "slide the red square left" in records[0]["prompt"]
    )
    pngs = [base64.b64decode(item.b64_json) for item in answer.data]
    assert PIL.Image.open(io.BytesIO(pngs[0])).size == (64, 64) and pngs[0] != pngs[1]

    linked = client.images.edit(
        image=image, prompt="slide the red square left", response_format="url", extra_body={"seed": 6}
    )
    assert linked.data[0].b64_json is None and linked.data[0].url.startswith(server + "/v1/files/")
    assert httpx.get(linked.data[0].url).content == pngs[1]  # same seed, same pixels, whichever way they travel
    name = linked.data[0].url.rsplit("/", 1)[1]
    assert len(name) >= 43  # 256 random bits: nobody finds another user's result by guessing


def test_a_job_reports_progress_and_ends_with_the_edit(server, scene):
    created = post_edit(server, scene, "/v1/edits", seed="4", steps="3", refine="true")
    assert created.status_code == 202 and created.headers["location"] == f"/v1/edits/{created.json()['id']}"
    assert created.json()["status"] in ("queued", "running")
    job = wait_for(server, created.json()["id"], lambda job: job["status"] not in ("queued", "running"))
    assert job["status"] == "succeeded" and job["error"] is None
    # Refinement asked for (the toyworld preset has none): 3 steps of the edit, then 3 of the still video.
    assert job["progress"] == {"step": 6, "total": 6, "stage": "refine"}
    [item] = job["result"]["data"]
    assert item["ifedit"]["seed"] == 4 and item["ifedit"]["settings"]["num_inference_steps"] == 3
    assert item["ifedit"]["settings"]["refine"] is True
    assert PIL.Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).format == "PNG"


def test_a_cancelled_job_stops_at_once_and_frees_the_model(server, scene):
    created = post_edit(server, scene, "/v1/edits", steps=SLOW_STEPS).json()
    first = wait_for(server, created["id"], lambda job: job["progress"]["step"] >= 1)
    started = time.monotonic()
    running_job = wait_for(server, created["id"], lambda job: job["progress"]["step"] >= first["progress"]["step"] + 3)
    total = running_job["progress"]["total"]
    assert running_job["status"] == "running" and total == int(SLOW_STEPS), "the edit; the preset does not refine"
    step_seconds = (time.monotonic() - started) / (running_job["progress"]["step"] - first["progress"]["step"])
    cancelled = httpx.delete(f"{server}/v1/edits/{created['id']}", timeout=30).json()
    assert cancelled["status"] == "cancelled" and cancelled["error"]["code"] == "cancelled"
    assert cancelled["result"] is None
    # The model is free again: the next edit does not wait for the hundreds of steps the cancelled one had left.
    left = (total - cancelled["progress"]["step"]) * step_seconds
    start = time.monotonic()
    assert post_edit(server, scene).status_code == 200
    assert time.monotonic() - start < left / 4
    assert httpx.get(f"{server}/v1/edits/{created['id']}").json()["status"] == "cancelled"


def test_a_client_that_gives_up_frees_its_place(server, scene):
    before = _metric(server, 'ifedit_failures_total{code="cancelled"}')
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            server + "/v1/images/edits",
            files={"image": ("scene.png", scene, "image/png")},
            data={"prompt": "slide the red square left", "steps": SLOW_STEPS},
            timeout=2,
        )
    deadline = time.monotonic() + 30
    while _metric(server, 'ifedit_failures_total{code="cancelled"}') == before:
        assert time.monotonic() < deadline, "the abandoned edit was never stopped"
        time.sleep(0.1)
    assert _metric(server, "ifedit_edits_running") == _metric(server, "ifedit_queue_length") == 0


@pytest.mark.parametrize(
    ("fields", "message", "param"),
    [
        ({"prompt": "  "}, "prompt must not be empty", "prompt"),
        ({"steps": "abc"}, "steps: invalid int value: 'abc'", "steps"),
        ({"steps": "0"}, "steps must be an integer >= 1, got 0", "steps"),
        ({"guidance_2": "-1"}, "guidance_2 must be a number from 0 to 100, got -1", "guidance_2"),
        ({"tld_history": "forget"}, "tld_history: invalid choice: 'forget'", "tld_history"),
        ({"refine": "maybe"}, "refine must be true or false, got 'maybe'", "refine"),
        ({"size": "large"}, "size must be WIDTHxHEIGHT in px (e.g. 832x480) or auto, got 'large'", "size"),
        ({"size": "4096x4096"}, "size 4096x4096 is too large for this server", "size"),
        ({"size": "9000x64"}, "size: width must be a whole number of pixels from 16 to 4096", "size"),
        ({"frames": "999"}, "frames must be at most 68 on this server, got 999", "frames"),
        ({"n": "9"}, "n must be between 1 and 4, got 9", "n"),
        ({"response_format": "xml"}, "response_format must be b64_json or url, got 'xml'", "response_format"),
        ({"model": "dall-e-2"}, "model must be 'toyworld' (see GET /v1/models), got 'dall-e-2'", "model"),
        ({"seed": "-1"}, "seed must be between 0 and", "seed"),
        (
            {"quality": "high"},
            "quality is one of OpenAI's settings that this server has no counterpart for",
            "quality",
        ),
        ({"background": "transparent"}, "background is one of OpenAI's settings", "background"),
        # Every text reaches the prompt and the record: escape codes are refused before the request waits.
        ({"video_prompt": "evil\x1b]0;title\x07"}, "video_prompt: text holds the control character U+001B", None),
        ({"prompt": "turn \u202eleft"}, "prompt: text holds the control character U+202E", "prompt"),
        ({"negative_prompt": "a\x00b"}, "negative_prompt: text holds the control character U+0000", None),
        # Options naming servers, files or devices belong to the operator: a request that tries is refused.
        ({"vlm_base_url": "http://elsewhere.invalid/v1"}, "unknown field 'vlm_base_url'", "vlm_base_url"),
        ({"model_path": "/etc"}, "unknown field 'model_path'", "model_path"),
    ],
)
def test_bad_fields_get_the_clis_message_as_an_openai_400(server, scene, fields, message, param):
    """The command line's checks, worded with the form's field names, which `param` gives too."""
    response = post_edit(server, scene, **fields)
    assert response.status_code == 400
    error = error_of(response)
    assert message in error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] == (param or next(iter(fields)))
    assert "--" not in error["message"] and "num_" not in error["message"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"user": (None, "someone")}, "image is required"),
        ({}, "the body must be multipart/form-data"),
        ({"image": ("notes.txt", b"not a picture", "text/plain")}, "not an image file: notes.txt"),
        ({"image": ("dot.png", None, "image/png")}, "dot.png is too small: 8x8 px"),
        ({"image": ("bomb.png", None, "image/png")}, "bomb.png is too large"),
        ({"image": ("../../etc/passwd", b"x", "image/png")}, "not an image file: passwd"),
        ({"mask": ("mask.png", b"x", "image/png")}, "mask is not supported"),
    ],
)
def test_bad_images_get_an_openai_400(server, scene, files, message):
    if "image" in files and files["image"][1] is None:  # built here: a real tiny PNG, or a huge declared size
        name = files["image"][0]
        files = {"image": (name, _png_header(30_000, 30_000) if name == "bomb.png" else _png(8, 8), "image/png")}
    elif "mask" in files:
        files = {"image": ("scene.png", scene, "image/png"), **files}
    response = post_edit(server, scene, files=files)
    assert response.status_code == 400 and message in error_of(response)["message"]


def test_the_official_client_sees_the_error_message(server, scene):
    client = openai.OpenAI(base_url=server + "/v1", api_key="not-checked", max_retries=0)
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.edit(image=("scene.png", scene, "image/png"), prompt="x", size="1x")
    assert raised.value.status_code == 400 and raised.value.body["message"].startswith("size must be WIDTHxHEIGHT")


def test_an_upload_over_the_limit_gets_413_before_it_is_read(server, scene):
    oversize = b"\0" * (51 * 2**20)
    declared = post_edit(server, scene, files={"image": ("big.png", oversize, "image/png")})
    assert declared.status_code == 413 and error_of(declared)["code"] == "file_too_large"

    def chunks():  # a well-formed form without Content-Length: counted as it arrives
        yield b'--x\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
        for _ in range(52):
            yield b"\0" * 2**20

    streamed = httpx.post(
        server + "/v1/images/edits",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=x"},
        timeout=60,
    )
    assert streamed.status_code == 413 and error_of(streamed)["code"] == "file_too_large"


def test_unknown_jobs_and_routes_get_openai_404s(server):
    assert error_of(httpx.get(server + "/v1/edits/edit_nothing"))["code"] == "job_not_found"
    assert error_of(httpx.delete(server + "/v1/edits/edit_nothing"))["code"] == "job_not_found"
    assert error_of(httpx.get(server + "/v1/files/../../etc/passwd"))["code"] in ("not_found", "file_not_found")
    assert error_of(httpx.get(server + "/v1/files/made-up.png"))["code"] == "file_not_found"
    assert httpx.get(server + "/v1/nothing").status_code == 404


def test_models_health_and_metrics(server):
    models = httpx.get(server + "/v1/models").json()
    assert [model["id"] for model in models["data"]] == ["toyworld"] and models["object"] == "list"
    assert httpx.get(server + "/health").json() == {"status": "ok", "model": "toyworld"}
    metrics = httpx.get(server + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("ifedit_requests_total", "ifedit_queue_length", "ifedit_edit_seconds", "ifedit_failures_total"):
        assert name in metrics.text


def test_a_burst_larger_than_the_queue_gets_only_successes_and_429s(server, scene):
    before = _metric(server, "ifedit_rejected_total")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post_edit(server, scene), range(8)))
    statuses = [answer.status_code for answer in answers]
    assert len(statuses) == 8 and set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 1 and statuses.count(429) >= 1
    for answer in answers:
        if answer.status_code == 429:
            assert error_of(answer)["code"] == "queue_full" and int(answer.headers["retry-after"]) >= 1
        else:
            assert answer.json()["data"][0]["b64_json"]
    assert _metric(server, "ifedit_rejected_total") - before == statuses.count(429)


def _slow_upload(url: str) -> socket.socket:
    """A request whose headers and first bytes arrive and whose body never does (a slow or stalled client)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = socket.create_connection((host, int(port)))
    connection.sendall(
        b"POST /v1/images/edits HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\n\r\n--x\r\n"
        b'Content-Disposition: form-data; name="prompt"\r\n\r\nslide'
    )
    return connection


def test_slow_uploads_hold_no_place_and_are_dropped_after_the_read_deadline(server, scene, monkeypatch):
    stalled = [_slow_upload(server) for _ in range(3)]  # more than the server's two places
    try:
        time.sleep(0.5)
        assert post_edit(server, scene).status_code == 200
    finally:
        for connection in stalled:
            connection.close()
    # A client gone mid-upload is no failure of the server's: 499 in the metrics, nothing logged as a 500.
    gone = 'ifedit_requests_total{route="/v1/images/edits",status="499"}'
    deadline = time.monotonic() + 10
    while _metric(server, gone) < 3:
        assert time.monotonic() < deadline, "the abandoned uploads were never noticed"
        time.sleep(0.1)
    assert _metric(server, 'ifedit_requests_total{route="/v1/images/edits",status="500"}') == 0

    monkeypatch.setattr(serve_app, "READ_SECONDS", 1)
    with _slow_upload(server) as connection:
        connection.settimeout(10)
        answer = connection.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 408") and "request_timeout" in answer


def _answer(connection: socket.socket, seconds: float = 10) -> bytes:
    """What the server sends before it closes the connection (b"" for a connection closed unanswered)."""
    connection.settimeout(seconds)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := connection.recv(65536):
            received += chunk
    return received


def test_a_head_too_large_or_too_slow_is_cut_off_but_a_slow_body_gets_its_own_deadline(server, monkeypatch):
    host, port = server.removeprefix("http://").rsplit(":", 1)
    endless = socket.create_connection((host, int(port)))
    endless.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: ")
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the server may close while this still sends
        for _ in range(64):
            endless.sendall(b"a" * 4096)  # 256 KiB of one header, four times the limit
    assert _answer(endless).startswith(b"HTTP/1.1 400")

    monkeypatch.setattr(connections, "HEAD_SECONDS", 0.5)
    silent = socket.create_connection((host, int(port)))
    half = socket.create_connection((host, int(port)))
    half.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line that ends the head
    started = time.monotonic()
    assert _answer(silent) == b"" and _answer(half) == b""
    assert time.monotonic() - started < 5
    # A head that arrives in time is answered, and its body's deadline (not the head's) then applies.
    monkeypatch.setattr(serve_app, "READ_SECONDS", 2)
    with _slow_upload(server) as connection:
        assert _answer(connection).startswith(b"HTTP/1.1 408")
    assert httpx.get(server + "/health").status_code == 200


def test_one_client_holds_only_so_many_connections_and_uploads(server, scene, monkeypatch):
    host, port = server.removeprefix("http://").rsplit(":", 1)
    # The server holds two requests (one editing, one waiting): four connections a client, where the floor is less.
    monkeypatch.setattr(connections, "MAX_CONNECTIONS_PER_CLIENT", 1)
    idle = [socket.create_connection((host, int(port))) for _ in range(4)]
    try:
        surplus = socket.create_connection((host, int(port)))
        assert _answer(surplus, seconds=5) == b""  # closed unread
    finally:
        for connection in idle:
            connection.close()
    monkeypatch.setattr(connections, "MAX_CONNECTIONS_PER_CLIENT", 64)

    monkeypatch.setattr(serve_app, "MAX_READING_PER_CLIENT", 2)
    stalled = [_slow_upload(server) for _ in range(2)]
    try:
        time.sleep(0.5)
        refused = post_edit(server, scene)
        assert refused.status_code == 429 and error_of(refused)["code"] == "too_many_uploads"
        assert "from you" in error_of(refused)["message"]
        # Another address on this machine (Linux routes all of 127/8 to loopback) still gets its edit.
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=120) as other:
            files = {"image": ("scene.png", scene, "image/png")}
            answer = other.post(server + "/v1/images/edits", files=files, data={"prompt": "slide the red square left"})
        assert answer.status_code == 200, answer.text
    finally:
        for connection in stalled:
            connection.close()


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "rebind.attacker.example:8000"},  # a name rebound to 127.0.0.1: its page could read the answer
        {"Origin": "https://attacker.example"},  # a form another site posts: no preflight protects it
        {"Origin": "null"},  # a sandboxed page or a file
    ],
)
def test_without_a_key_pages_of_other_sites_are_refused(server, scene, headers):
    for response in (httpx.get(server + "/v1/models", headers=headers), post_edit(server, scene, headers=headers)):
        assert response.status_code == 403 and error_of(response)["code"] == "forbidden_without_key"
        assert "IFEDIT_SERVE_API_KEY" in error_of(response)["message"]


def test_without_a_key_loopback_names_and_local_pages_are_served(server):
    for headers in ({"Host": "localhost:1234"}, {"Host": "[::1]:80"}, {"Origin": "http://localhost:3000"}):
        assert httpx.get(server + "/v1/models", headers=headers).status_code == 200, headers


def test_sigterm_answers_the_edit_in_flight_with_503_and_stops_cleanly(scene, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "ifedit", "serve", *FAST, "--port", str(port)],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline and process.poll() is None, "the server never became ready"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health").status_code == 200:
                    break
            time.sleep(0.2)
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(post_edit, url, scene, steps=SLOW_STEPS)
            while _metric(url, "ifedit_edits_running") < 1:
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            response = answer.result(timeout=60)
        assert response.status_code == 503 and error_of(response)["code"] == "server_stopping"
        assert process.wait(timeout=60) == 0  # a server stopped by its manager has done its job
        err = process.stderr.read()
        assert "Traceback" not in err and "the server has stopped" in err
        assert not list(tmp_path.glob("ifedit-serve-*"))  # its uploads and results are gone with it
    finally:
        process.kill()
        process.wait()


def test_with_a_key_only_requests_that_send_it_get_in(scene):
    with running(build_service(serve_args("--api-key", KEY))) as url:
        missing = httpx.get(url + "/v1/models")
        wrong = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer " + KEY[:-1]})
        posted = post_edit(url, scene)
        assert [missing.status_code, wrong.status_code, posted.status_code] == [401, 401, 401]
        assert error_of(missing)["code"] == "missing_api_key" and error_of(wrong)["code"] == "invalid_api_key"
        assert missing.headers["www-authenticate"] == "Bearer"
        assert httpx.get(url + "/metrics").status_code == 401
        assert httpx.get(url + "/health").status_code == 200  # load balancers probe without the key
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        assert [model.id for model in client.models.list()] == ["toyworld"]
        # Behind a proxy, under any name and from a web app of its own: the key is what lets a request in.
        named = {"Authorization": f"Bearer {KEY}", "Host": "edits.example.com", "Origin": "https://app.example.com"}
        assert httpx.get(url + "/v1/models", headers=named).status_code == 200
        for response in (missing, wrong, posted):
            assert KEY[:-1] not in response.text
        # A field named after the key: the error names the field, masked as everywhere else.
        echoed = post_edit(url, scene, headers={"Authorization": f"Bearer {KEY}"}, **{KEY: "1"})
        assert echoed.status_code == 400 and error_of(echoed)["param"] == "***" and KEY not in echoed.text


def test_the_toy_world_served_edits_as_its_command_line_does(scene):
    # No --prompt-enhancer: the toy world gets its template without a VLM notice, and plans its own 64 x 64 clip.
    args = build_parser().parse_args(["serve", "--model", "toyworld", "--steps", "2", "--frames", "5"])
    with running(build_service(args)) as url:
        answer = post_edit(url, scene)
    assert answer.status_code == 200, answer.text
    record = answer.json()["data"][0]["ifedit"]
    assert record["prompt_enhancement"]["backend"] == "template" and record["prompt_enhancement"]["fallbacks"] == []
    clip = record["memory_plan"]["planned_clip"]
    assert (clip["height"], clip["width"]) == (64, 64)


def test_health_says_503_until_the_model_has_loaded_and_deadlines_give_504(scene):
    args = serve_args("--timeout", "3")
    loaded = threading.Event()

    def replica():
        loaded.wait(60)
        return EditReplica(get_preset("toyworld"), LoadOptions(device="cpu"), prompt_options(args))

    service = Service(LocalBackend(replica), ServeConfig(preset=get_preset("toyworld"), defaults=args, timeout=3))
    with running(service, wait_ready=False) as url:
        health = httpx.get(url + "/health")
        assert health.status_code == 503 and health.json() == {"status": "loading"} and health.headers["retry-after"]
        early = post_edit(url, scene)
        assert early.status_code == 503 and error_of(early)["code"] == "model_not_ready"
        loaded.set()
        while not service.ready:
            time.sleep(0.05)
        assert httpx.get(url + "/health").status_code == 200
        late = post_edit(url, scene, steps=SLOW_STEPS)
        assert late.status_code == 504 and error_of(late)["code"] == "deadline_exceeded"
        assert "3 s" in error_of(late)["message"]


def test_listening_beyond_loopback_needs_a_long_key(capsys, monkeypatch):
    monkeypatch.delenv("IFEDIT_SERVE_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--model", "toyworld"]) == EXIT_INPUT
    assert "IFEDIT_SERVE_API_KEY" in capsys.readouterr().err
    assert main(["serve", "--api-key", "short", "--model", "toyworld"]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "at least 16 characters" in err and "short" not in err
    assert main(["serve", "--replicas", "3", "--max-replicas", "2", "--model", "toyworld"]) == EXIT_INPUT
    # A header's bytes are read as Latin-1: a key of other characters could never be sent so that it matches.
    assert main(["serve", "--api-key", "ключ-ключ-ключ-ключ", "--model", "toyworld"]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "printable ASCII" in err and "ключ" not in err
    assert main(["serve", "--api-key", "a key with spaces inside", "--model", "toyworld"]) == EXIT_INPUT


def test_a_taken_port_and_a_model_that_cannot_load_end_with_one_line(tmp_path, capsys, monkeypatch):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["serve", *FAST, "--port", port]) == EXIT_SETUP
    assert f"cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err
    assert list(temporary.iterdir()) == []  # no work folder made for a server that never started
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({}))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    assert main(["serve", "--model", str(broken), "--port", port]) == EXIT_SETUP
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ifedit: error:")]
    assert len(lines) == 1 and "Traceback" not in lines[0]


def test_request_settings_override_the_servers_defaults():
    preset = get_preset("toyworld")
    defaults = serve_args("--fast", "--height", "48", "--width", "64", "--seed", "9")
    request = parse_form({"prompt": "x"}, preset, defaults, "toyworld")
    assert request.settings.refine_frames == 5 and request.settings.decode_frames == "needed"  # --fast
    assert (request.settings.height, request.settings.width, request.seeds) == (48, 64, (9,))
    request = parse_form(
        {"prompt": "x", "fast": "false", "size": "auto", "refine": "true", "n": "2"}, preset, defaults, "toyworld"
    )
    assert request.settings.refine_frames is None and request.settings.refine is True
    assert (request.settings.height, request.settings.width, request.seeds) == (None, None, (9, 10))
    request = parse_form({"prompt": "x", "size": "80x48", "video_prompt": " ready "}, preset, defaults, "toyworld")
    assert (request.settings.width, request.settings.height, request.video_prompt) == (80, 48, "ready")
    with pytest.raises(InvalidInputError, match="video_prompt must not be empty"):
        parse_form({"prompt": "x", "video_prompt": " "}, preset, defaults, "toyworld")


def test_replicas_are_fixed_by_replicas_and_autoscale_between_min_and_max():
    assert replica_counts(serve_args("--replicas", "2")) == (2, 2, 2)
    assert replica_counts(serve_args("--min-replicas", "1", "--max-replicas", "3")) == (1, 1, 3)
    assert replica_counts(serve_args("--replicas", "2", "--max-replicas", "4")) == (1, 2, 4)
    with pytest.raises(InvalidInputError, match="--min-replicas must be at least 1, got 0"):
        replica_counts(serve_args("--min-replicas", "0"))


def test_result_files_expire_and_no_name_reaches_outside_them(tmp_path):
    files = ResultFiles(tmp_path / "results", ttl=0.2)
    name = files.add(b"an image")
    assert files.path(name).read_bytes() == b"an image" and (files.folder / name).stat().st_mode & 0o077 == 0
    (tmp_path / "secret.png").write_bytes(b"not for clients")
    assert files.path("../secret.png") is None and files.path(str(tmp_path / "secret.png")) is None
    time.sleep(0.3)
    assert files.path(name) is None and not (files.folder / name).exists()


def _metric(url: str, name: str) -> float:
    """A metric's value; a labelled counter never incremented reads 0."""
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    if "{" in name:
        return 0.0
    raise AssertionError(f"no metric {name}")


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (width, height), "red").save(buffer, format="PNG")
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares a huge size in a few bytes: a decompression bomb's opening."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


@pytest.fixture
def ray_cluster():
    """A two-CPU Ray cluster of this test's own, shut down afterwards whatever happens."""
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        serve.shutdown()
        ray.shutdown()


def test_killing_a_ray_replica_during_a_burst_loses_no_accepted_request(ray_cluster, scene):
    with running(build_service(serve_args("--replicas", "2", "--queue-size", "2"))) as url:
        jobs = [post_edit(url, scene, "/v1/edits", steps="8", seed=str(seed)) for seed in range(4)]
        assert [job.status_code for job in jobs] == [202] * 4
        ids = [job.json()["id"] for job in jobs]
        deadline = time.monotonic() + 120
        while sum(_job(url, job_id)["progress"]["step"] >= 1 for job_id in ids) < 2:  # both replicas are editing
            assert time.monotonic() < deadline
            time.sleep(0.05)
        replicas = [
            actor["name"]
            for actor in ray_cluster.util.list_named_actors(all_namespaces=True)
            if actor["name"].startswith("SERVE_REPLICA::ifedit#")
        ]
        assert len(replicas) == 2
        ray_cluster.kill(ray_cluster.get_actor(replicas[0], namespace="serve"), no_restart=True)
        finished = [wait_for(url, job_id, lambda job: job["status"] not in ("queued", "running")) for job_id in ids]
        assert [job["status"] for job in finished] == ["succeeded"] * 4, [job["error"] for job in finished]
        assert [job["result"]["data"][0]["ifedit"]["seed"] for job in finished] == [0, 1, 2, 3]
        assert _metric(url, "ifedit_retries_total") >= 1  # the killed replica's edit ran again elsewhere


def _job(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}/v1/edits/{job_id}").json()
