"""The prompt cache: where it lives, what keys it, and that concurrent writers leave a valid entry."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import PIL.Image
import pytest

from ifedit.prompting import default_cache_dir
from ifedit.prompting.cache import CacheKey, PromptCache, image_digest

KEY = CacheKey("ab" * 32, "make the dog sit", "instruction", "api", "qwen", "http://127.0.0.1:8000/v1", "v1")


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("IFEDIT_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "ifedit" / "prompts"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "ifedit" / "prompts"
    monkeypatch.setenv("IFEDIT_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine" / "prompts"
    assert PromptCache().directory == tmp_path / "mine" / "prompts"


@pytest.mark.parametrize(
    "change",
    [
        {"image": "cd" * 32},
        {"text": "make the dog stand"},
        {"kind": "target"},
        {"backend": "local"},
        {"model": "qwen-large"},
        {"endpoint": "http://127.0.0.1:9000/v1"},
        {"instructions_version": "v2"},
    ],
)
def test_every_key_field_changes_the_entry(tmp_path, change):
    cache = PromptCache(tmp_path)
    cache.put(KEY, "a prompt", "raw", 1.0)
    other = dataclasses.replace(KEY, **change)
    assert other.filename() != KEY.filename()
    assert cache.get(other) is None
    assert cache.get(KEY)["prompt"] == "a prompt"


def test_entry_round_trip_and_bad_entries(tmp_path, caplog):
    cache = PromptCache(tmp_path / "new" / "folder")
    assert cache.get(KEY) is None
    cache.put(KEY, "a prompt", "<think>x</think>a prompt", 2.5)
    entry = cache.get(KEY)
    assert entry["raw_response"] == "<think>x</think>a prompt" and entry["elapsed_s"] == 2.5
    path = cache.directory / KEY.filename()
    path.write_text("{torn")
    assert cache.get(KEY) is None and "unreadable prompt cache entry" in caplog.text
    path.write_text(json.dumps({"key": {}, "prompt": "someone else's"}))
    assert cache.get(KEY) is None and "does not match its key" in caplog.text


def test_unwritable_cache_only_warns(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    PromptCache(blocker / "prompts").put(KEY, "a prompt", None, 0.1)
    assert "could not write the prompt cache entry" in caplog.text


def test_concurrent_writers_leave_a_valid_entry(tmp_path):
    cache = PromptCache(tmp_path)
    prompts = [f"prompt written by thread {index}" for index in range(8)]
    barrier = threading.Barrier(len(prompts))
    seen: list[str | None] = []

    def write(prompt: str) -> None:
        barrier.wait()
        for _ in range(25):
            cache.put(KEY, prompt, prompt, 0.0)
            entry = cache.get(KEY)  # a reader racing the writers must never see a torn file
            seen.append(entry and entry["prompt"])

    threads = [threading.Thread(target=write, args=(prompt,)) for prompt in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8 * 25 and set(seen) <= set(prompts)
    assert cache.get(KEY)["prompt"] in prompts
    assert [path.name for path in Path(tmp_path).iterdir()] == [KEY.filename()]  # no temporary files left


def test_image_digest_is_about_pixels():
    image = PIL.Image.new("RGB", (64, 64), "red")
    assert image_digest(image) == image_digest(image.copy())
    assert image_digest(image) != image_digest(PIL.Image.new("RGB", (64, 64), "blue"))
    assert image_digest(image) != image_digest(PIL.Image.new("RGB", (32, 128), "red"))
