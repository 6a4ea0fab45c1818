"""`ifedit ui` as a stranger meets it: the real command on the toy world, driven over HTTP through Gradio's API.

Every handler takes the client's JSON as sent, so these tests send what a browser never would: paths to files on
the server, a decompression bomb, prompt requests to a VLM server that stalls, and SIGTERM to the process.
"""

import io
import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from chat_server import ChatServer, Reply
from ifedit import cli
from ifedit.ui import NO_SUCH_UPLOAD

SERVER_START_S = 120  # imports and the model load, slow on a small machine that is busy with other work
STALL_S = 300  # the VLM server answers long after every test here is done
# Steps, frames, height, width (0: automatic), stride, threshold (0: automatic), refine, refine steps and frames,
# refine strength: a quick edit in the order the page sends them.
QUICK = [2, 5, 0, 0, 3, 0, False, 0, 0, 1.0]


@dataclass
class Server:
    """A running `ifedit ui` process: its URL and the temporary folder it was given."""

    process: subprocess.Popen
    url: str
    tmp: Path

    def call(self, endpoint: str, *data, timeout: float = 60) -> tuple[str, object]:
        """Call an endpoint and wait: ("complete", outputs) or ("error", the page's message, None when Gradio
        itself refused the request)."""
        return self.result(endpoint, self.submit(endpoint, *data), timeout)

    def submit(self, endpoint: str, *data) -> str:
        """Queue a call without waiting for it; the event id to read its result with."""
        request = urllib.request.Request(
            f"{self.url}gradio_api/call/{endpoint}",
            json.dumps({"data": list(data)}).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)["event_id"]

    def result(self, endpoint: str, event_id: str, timeout: float) -> tuple[str, object]:
        """The call's outcome within `timeout` seconds, else TimeoutError (Gradio's heartbeats keep a waiting stream
        alive, so a read timeout alone would wait for as long as the call does)."""
        outcome = []

        def read() -> None:
            try:
                outcome.append(self._read(endpoint, event_id))
            except Exception as error:
                outcome.append(error)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not outcome:
            raise TimeoutError(f"{endpoint}: no result within {timeout} s")
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        return outcome[0]

    def _read(self, endpoint: str, event_id: str) -> tuple[str, object]:
        event = None
        with urllib.request.urlopen(f"{self.url}gradio_api/call/{endpoint}/{event_id}") as stream:
            for line in stream:
                line = line.decode().strip()
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event in ("complete", "error"):
                    data = json.loads(line.removeprefix("data: "))
                    return event, data["error"] if event == "error" and isinstance(data, dict) else data
        return "ended", None

    def upload(self, name: str, content: bytes) -> dict:
        """Send a file through Gradio's upload route, as the page does; the value a handler then receives."""
        boundary = secrets.token_hex(8)
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + content
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(
            f"{self.url}gradio_api/upload", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            [path] = json.load(response)
        return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def launch(tmp: Path, *options: str) -> Server:
    """Start `ifedit ui --model toyworld` on a free loopback port with `tmp` as its temporary folder (Gradio's too)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("IFEDIT_VLM_", "GRADIO_TEMP"))}
    env.pop("OPENAI_API_KEY", None)
    env.update(TMPDIR=str(tmp), NO_PROXY="*", IFEDIT_CACHE_DIR=str(tmp / "cache"))
    command = [sys.executable, "-m", "ifedit", "ui", "--model", "toyworld", "--port", str(port), *options]
    with (tmp / "server.log").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return Server(process, f"http://127.0.0.1:{port}/", tmp)


def wait_until_serving(server: Server) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while True:
        if server.process.poll() is not None:
            log = (server.tmp / "server.log").read_text()
            pytest.fail(f"ifedit ui exited with {server.process.returncode}: {log}")
        try:
            with urllib.request.urlopen(server.url, timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"ifedit ui did not answer within {SERVER_START_S} s")
            time.sleep(0.25)


def stop(*processes: subprocess.Popen) -> None:
    """Terminate the processes still running, all at once, then wait for each."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.terminate()
    for process in running:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def png(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def decompression_bomb(side: int = 30_000) -> bytes:
    """A valid PNG that declares side x side pixels in about 110 KB: 1-bit rows of zeros compress a thousandfold."""
    packer = zlib.compressobj(9)
    row = bytes(1 + side // 8)  # the filter byte, then eight pixels a byte
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def stalling_vlm():
    """A VLM server that takes every prompt request and answers none while the tests run."""
    server = ChatServer()
    server.replies = [Reply(delay=STALL_S) for _ in range(10)]
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory, stalling_vlm):
    """Two `ifedit ui` processes, started together to share the wait: one whose prompts come from the stalling
    VLM server, and one to stop with SIGTERM."""
    options = ["--prompt-enhancer", "api", "--vlm-base-url", stalling_vlm.url, "--vlm-api-model", "stuck",
               "--allow-host", "Notebook.Example.org"]  # fmt: skip
    started = {
        "main": launch(tmp_path_factory.mktemp("ui"), *options, "--vlm-timeout", str(STALL_S)),
        "stopped": launch(tmp_path_factory.mktemp("stopped")),
    }
    try:
        for running in started.values():
            wait_until_serving(running)
        yield started
    finally:
        stop(*(running.process for running in started.values()))


@pytest.fixture(scope="module")
def server(servers):
    return servers["main"]


@pytest.fixture(scope="module")
def photo(server) -> dict:
    """A photo uploaded the way the page uploads one."""
    pixels = np.zeros((64, 96, 3), np.uint8)
    pixels[20:44, 30:54] = (220, 40, 40)
    return server.upload("square.png", png(PIL.Image.fromarray(pixels)))


@pytest.fixture(scope="module")
def elsewhere(server) -> Path:
    """A real image on the server's disk that nobody uploaded."""
    path = server.tmp / "private" / "holiday.png"
    path.parent.mkdir()
    PIL.Image.new("RGB", (96, 64), (10, 200, 10)).save(path)
    return path


def gradio_folder(server: Server) -> Path:
    return server.tmp / "gradio"


@pytest.mark.parametrize(
    "attack",
    [
        "an image elsewhere",
        "a text file elsewhere",
        "a missing file",
        "a folder",
        "the upload folder itself",
        "dot-dot out of an upload",
        "dot-dot to an upload",
        "proc self environ",
        "a file placed in the upload folder without the upload route",
        "a url",
        "no path",
    ],
)
def test_a_request_naming_a_file_that_was_not_uploaded_is_refused_with_one_message(server, photo, elsewhere, attack):
    upload_dir = gradio_folder(server)
    planted = upload_dir / ("0" * 64) / "planted.png"
    planted.parent.mkdir(exist_ok=True)
    PIL.Image.new("RGB", (96, 64)).save(planted)
    uploaded = Path(photo["path"])
    path = {
        "an image elsewhere": str(elsewhere),
        "a text file elsewhere": str(server.tmp / "server.log"),
        "a missing file": str(elsewhere.with_name("missing.png")),
        "a folder": str(elsewhere.parent),
        "the upload folder itself": str(upload_dir),
        "dot-dot out of an upload": f"{uploaded.parent}/../../private/holiday.png",
        "dot-dot to an upload": f"{uploaded.parent}/../{uploaded.parent.name}/{uploaded.name}",
        "proc self environ": "/proc/self/environ",
        "a file placed in the upload folder without the upload route": str(planted),
        "a url": f"{server.url}gradio_api/file={uploaded}",
        "no path": None,
    }[attack]
    # Without Gradio's `meta` block a value reaches the handler untouched: the handler alone decides.
    assert server.call("inspect", {"path": path, "orig_name": "x.png"}) == ("error", NO_SUCH_UPLOAD)
    if attack == "a url":
        assert server.call("inspect", {"url": path}) == ("error", NO_SUCH_UPLOAD)


def test_every_handler_that_reads_the_photo_refuses_a_server_file(server, elsewhere):
    # The proposed size, the prompt stage's view and the slider's "before" image would each show the file.
    taken = {"path": str(elsewhere), "orig_name": "holiday.png"}
    for endpoint, data in [
        ("inspect", [taken]),
        ("write_prompt", [taken, "the square slides right"]),
        ("prepare", [taken, "the square slides right", "", -1, *QUICK]),
        ("edit", [taken, "the square slides right", "a ready prompt", -1, *QUICK]),
    ]:
        assert server.call(endpoint, *data) == ("error", NO_SUCH_UPLOAD), endpoint
    # Gradio's own check of a value with a `meta` block refuses a path outside its folder before any handler runs,
    # without naming it; the string form is not an image value at all.
    assert server.call("inspect", {**taken, "meta": {"_type": "gradio.FileData"}}) == ("error", None)
    assert server.call("inspect", str(elsewhere)) == ("error", None)


def test_a_symlink_swapped_in_for_an_upload_is_refused(server, elsewhere):
    upload = server.upload("swapped.png", png(PIL.Image.new("RGB", (80, 64), (1, 2, 3))))
    assert server.call("inspect", upload)[0] == "complete"
    path = Path(upload["path"])
    path.unlink()
    path.symlink_to(elsewhere)
    # Gradio checks a value with a `meta` block itself; without one, the handler must resolve the link.
    assert server.call("inspect", upload) == ("error", None)
    assert server.call("inspect", {"path": upload["path"]}) == ("error", NO_SUCH_UPLOAD)


def test_uploads_and_examples_are_read(server, photo):
    assert server.call("inspect", photo) == ("complete", [56, 80, ""])
    # A file the user uploaded that is not an image is their own: the message says what is wrong with it.
    notes = server.upload("notes.png", b"a shopping list, not a picture")
    status, message = server.call("inspect", notes)
    assert status == "error" and message.startswith("not an image file: notes.png (expected a PNG")
    with urllib.request.urlopen(f"{server.url}config", timeout=10) as response:
        config = json.load(response)
    [examples] = [block for block in config["components"] if block["type"] == "dataset"]
    for sample in examples["props"]["samples"]:
        assert server.call("inspect", sample[0]) == ("complete", [64, 64, ""])


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"Host": "rebind.attacker.example"}, False),  # a name its owner rebound to 127.0.0.1
        ({"Origin": "https://attacker.example"}, False),  # another site's page posting to the local port
        ({"Origin": "null"}, False),
        ({"Host": "localhost"}, True),
        ({}, True),
        # The public name of a proxy on this machine, given with --allow-host (JupyterHub, code-server).
        ({"Host": "notebook.example.org:443", "Origin": "https://notebook.example.org"}, True),
        ({"Host": "notebook.example.org.attacker.example"}, False),
    ],
)
def test_the_page_answers_only_this_machines_names_and_pages(server, headers, allowed):
    """A page on 127.0.0.1 is out of other machines' reach, not out of other sites' pages in the user's browser."""
    request = urllib.request.Request(f"{server.url}config", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
        assert "answers only this machine's own pages and names" in error.read().decode()
    assert status == (200 if allowed else 403)


def test_a_decompression_bomb_is_a_one_line_bad_image_message(server):
    bomb = decompression_bomb()
    assert len(bomb) < 150_000
    upload = server.upload("bomb.png", bomb)
    for endpoint, data in [("inspect", [upload]), ("prepare", [upload, "the square slides right", "", -1, *QUICK])]:
        status, message = server.call(endpoint, *data)
        assert status == "error" and message.startswith("bomb.png") and "too large" in message, message
        assert not any(word in message for word in ("Error", "Warning", "Decompression", "/", "\n")), message


@pytest.mark.parametrize("stalled", ["write_prompt", "prepare"])
def test_a_stalled_vlm_server_does_not_hold_up_an_edit_with_a_ready_prompt(server, stalling_vlm, photo, stalled):
    asked = len(stalling_vlm.requests)
    # "Write the video prompt", or Run with an empty prompt box: both wait for the VLM server, which stalls.
    inputs = [photo, "the square slides right"] + (["", -1, *QUICK] if stalled == "prepare" else [])
    waiting = server.submit(stalled, *inputs)
    deadline = time.monotonic() + 30
    while len(stalling_vlm.requests) == asked:
        assert time.monotonic() < deadline, "the prompt request never reached the VLM server"
        time.sleep(0.05)
    # Meanwhile another user runs an edit whose prompt is ready, through both of Run's steps.
    ready = [photo, "the square slides right", "a red square slides to the right", 5, *QUICK]
    status, outputs = server.call("prepare", *ready, timeout=30)
    assert status == "complete" and outputs[0] == "a red square slides to the right"
    status, outputs = server.call("edit", *ready, timeout=60)
    assert status == "complete" and any(str(output).startswith("Done in ") for output in outputs), outputs
    assert len(stalling_vlm.requests) == asked + 1  # the edit asked nothing; the stalled request is still open
    with pytest.raises(TimeoutError):
        server.result(stalled, waiting, timeout=1)


def test_sigterm_deletes_the_pages_results_and_gradios_copies_of_uploads(servers):
    server = servers["stopped"]
    [workdir] = server.tmp.glob("ifedit-ui-*")
    photo = server.upload("square.png", png(PIL.Image.new("RGB", (96, 64), (200, 30, 30))))
    status, outputs = server.call("edit", photo, "the square slides right", "a red square", 5, *QUICK)
    assert status == "complete", outputs
    assert list(workdir.rglob("clip.mp4")) and list(workdir.rglob("edit.json"))
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    assert not workdir.exists()
    # Gradio keeps only the copies of the page's own examples; the upload and every result it served are gone.
    left = [path.name for path in gradio_folder(server).rglob("*") if path.is_file()]
    assert left and all(name.startswith("scene_") for name in left), left


def test_sigterm_is_ctrl_c_only_while_the_command_runs_and_ctrl_c_stays_untouched():
    ctrl_c, terminate = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with cli._terminate_as_interrupt():
        assert signal.getsignal(signal.SIGINT) is ctrl_c
        assert signal.getsignal(signal.SIGTERM) is not terminate  # else the signal below would end the tests
        # Gradio's launch ends on KeyboardInterrupt, after which `serve` deletes the app's files.
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is terminate
