"""A machine that cannot reach the Hugging Face Hub: models named by Hub id come from the download cache, at once,
and one that is not there is one line at once, for the video model and the local VLM alike (instead of minutes of
the Hub client's retries per file). The Hub is "unreachable" here through an endpoint on a closed local port."""

import os
import shutil
import socket
import subprocess
import sys
import time

import huggingface_hub
import pytest

from ifedit import hub
from ifedit.cli import EXIT_SETUP, main

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
# Runs that would retry the Hub take minutes: these bound a run that does not.
RUN_SECONDS = 120


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # free once closed: nothing listens there


@pytest.fixture
def unreachable_hub(monkeypatch, closed_port, tmp_path):
    """The Hub at a port where nothing listens, an empty download cache, and no probe remembered."""
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "_probed", {})
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return f"http://127.0.0.1:{closed_port}"


@pytest.fixture
def source(tmp_path, source_image):
    path = tmp_path / "source.png"
    source_image.save(path)
    return path


def test_the_probe_says_why_the_hub_cannot_be_reached_and_asks_once(unreachable_hub, monkeypatch):
    reason = hub.unreachable()
    assert reason is not None and "127.0.0.1" in reason and "refused" in reason.lower()
    assert hub.known_unreachable() == reason
    monkeypatch.setattr(hub, "_probe", lambda endpoint: pytest.fail("asked the Hub twice"))
    assert hub.unreachable() == reason and hub.cache_only("some/model")


def test_a_listening_hub_a_proxy_and_a_folder_keep_downloads_on(unreachable_hub, monkeypatch, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub.unreachable() is None and not hub.cache_only("some/model")
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", unreachable_hub)
    monkeypatch.setattr(hub, "_probed", {})
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")  # reached through a proxy: not judged here
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert hub.unreachable() is None
    monkeypatch.setattr(hub, "_probed", {})
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # ...unless the Hub's host is reached directly all the same
    assert hub.unreachable() is not None
    assert not hub.cache_only(str(tmp_path)) and hub.cache_only(str(tmp_path), local_files_only=True)


def test_a_local_vlm_not_downloaded_fails_at_once_saying_why(unreachable_hub, source, capsys):
    assert main(["prompt", str(source), "the square slides right", "--prompt-enhancer", "local",
                 "--vlm", "ifedit-test/absent-vlm", "--strict-prompt"]) == EXIT_SETUP  # fmt: skip
    err = capsys.readouterr().err
    assert "it is not downloaded and the Hub cannot be reached (127.0.0.1" in err and "hf download" in err


def test_offline_covers_the_local_vlm_too(tmp_path, source, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "_probe", lambda endpoint: pytest.fail("--offline asked the Hub"))
    monkeypatch.setattr(hub, "_probed", {})  # an earlier test's probe would make the reason "cannot be reached"
    code = main(["edit", str(source), "the square slides right", "-o", str(tmp_path / "out.png"), "--model",
                 "toyworld", "--prompt-enhancer", "local", "--vlm", "ifedit-test/absent-vlm", "--offline",
                 "--strict-prompt"])  # fmt: skip
    assert code == EXIT_SETUP
    assert "not downloaded and --offline or HF_HUB_OFFLINE is set" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


def _run(*args: str, hub_url: str, cache) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": hub_url, "HF_HUB_CACHE": str(cache)}
    for name in PROXY_VARIABLES:
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "ifedit", *args], env=env, capture_output=True, text=True,
                          timeout=RUN_SECONDS)  # fmt: skip


def test_a_model_in_the_download_cache_edits_without_the_hub(tmp_path, tiny_dirs, source, closed_port):
    """`hf download` leaves a model in the cache; an edit by its Hub id then needs no network at all."""
    repo = tmp_path / "hub" / "models--ifedit-test--tiny"
    shutil.copytree(tiny_dirs["a14b"], repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    output = tmp_path / "edited.png"
    edit = ("edit", str(source), "the square slides right", "--no-lora", "--steps", "2", "--frames", "5",
            "--prompt-enhancer", "template")  # fmt: skip
    hub_url = f"http://127.0.0.1:{closed_port}"
    done = _run(*edit, "-o", str(output), "--model", "ifedit-test/tiny", hub_url=hub_url, cache=tmp_path / "hub")
    assert done.returncode == 0, done.stderr
    assert output.exists() and "cannot be reached" in done.stderr

    # With the prompt stage on (the default enhancer): a missing model is found before it, which would otherwise run
    # (a local VLM for minutes) for an edit that cannot.
    unguided = [part if part != "template" else "auto" for part in edit]
    absent = _run(*unguided, "-o", str(tmp_path / "no.png"), "--model", "ifedit-test/absent", hub_url=hub_url,
                  cache=tmp_path / "hub")  # fmt: skip
    assert absent.returncode == EXIT_SETUP and not (tmp_path / "no.png").exists()
    [line] = [line for line in absent.stderr.splitlines() if line.startswith("ifedit: error:")]
    assert "not in this machine's Hugging Face cache, and the Hub cannot be reached (127.0.0.1" in line
    assert "prompt enhancement" not in absent.stderr, absent.stderr


def test_importing_the_pipeline_says_nothing_about_torchvision():
    done = subprocess.run([sys.executable, "-c", "import ifedit.pipeline"], capture_output=True, text=True)
    assert done.returncode == 0 and "torchvision" not in done.stderr


def test_a_probe_that_gets_no_answer_gives_up_on_time(unreachable_hub, monkeypatch):
    """A firewall that drops packets, or a name lookup that hangs: the probe has one deadline for all of it."""
    monkeypatch.setattr(hub, "PROBE_SECONDS", 0.2)

    def hangs(*args, **kwargs):
        time.sleep(3)
        raise TimeoutError  # what the attempt meets in the end, long after the probe gave up

    monkeypatch.setattr(hub.socket, "create_connection", hangs)
    started = time.monotonic()
    assert hub.unreachable() == "127.0.0.1: no answer within 0.2 s"
    assert time.monotonic() - started < 2
