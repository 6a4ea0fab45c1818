"""`ifedit ui` as a user meets it: the real command on a tiny model, driven in headless Chromium by element id."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SERVER_START_S = 120  # imports and the model load, slow on a small machine that is busy with other work
EDIT_S = 120


def _browser_or_reason() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return "Chromium is not installed (apt-get install chromium)"
    return None


@pytest.fixture
def chromium():
    """Debian's headless Chromium under Playwright; in CI its absence is a failure, elsewhere a skip."""
    reason = _browser_or_reason()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(f"browser test cannot run in CI: {reason}")
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture
def server(tiny_dirs, tmp_path):
    """`ifedit ui` on a free loopback port; yields its URL once the page answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path / "server.log").open("w")
    command = [sys.executable, "-m", "ifedit", "ui", "--model", tiny_dirs["a14b"], "--no-lora", "--port", str(port)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_PROXY": "*"})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"ifedit ui exited with {process.returncode}: {(tmp_path / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"ifedit ui did not answer within {SERVER_START_S} s")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
        log.close()


def test_upload_edit_and_bad_upload_in_a_browser(chromium, server, tmp_path, source_image):
    photo, notes = tmp_path / "square.png", tmp_path / "notes.png"
    source_image.save(photo)
    notes.write_text("a shopping list, not a picture")
    page = chromium.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(30_000)
    page.goto(server)

    page.locator("#source-image input[type=file]").set_input_files(photo)
    page.locator("#instruction textarea").fill("the square slides right")
    page.locator("#run").click()
    page.locator("#result-image img").wait_for(timeout=EDIT_S * 1000)
    page.locator("#frames img").first.wait_for()
    assert page.locator("#frames img").count() >= 4  # the late frames the edit chose from
    assert "the square slides right" in page.locator("#prompt textarea").input_value()
    assert page.locator("#status").inner_text().startswith("Done in ")
    assert ".json" in page.locator("#record").inner_text()  # the record, to download
    page.screenshot(path=tmp_path / "ui.png", full_page=True)

    # A file that claims to be a PNG is refused with the library's message, and the photo slot is cleared.
    page.locator("#source-image input[type=file]").set_input_files(notes)
    page.get_by_text("not an image file: notes.png (expected a PNG, JPEG, WebP").wait_for()
    page.locator("#run").click()
    page.get_by_text("no image: upload a photo or pick an example first").wait_for()
    page.screenshot(path=tmp_path / "ui_bad_upload.png", full_page=True)
    assert (tmp_path / "ui.png").stat().st_size > 0
