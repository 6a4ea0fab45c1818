"""Tiny real Wan pipelines, saved with save_pretrained and loaded back the way a user's download is."""

from __future__ import annotations

import warnings

import numpy as np
import PIL.Image
import pytest
import torch

from chat_server import ChatServer
from ifedit import IFEditPipeline
from ifedit.prompting import chain
from ifedit.tiny import VARIANTS, tiny_components

# A 2:3 source keeps the default size search honest (64x96 px at the tiny presets' area).
SOURCE_SIZE = (96, 64)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, str]:
    """One saved pipeline folder per Wan layout: a14b (two experts), ti2v (expand_timesteps), wan21 (CLIP)."""
    root = tmp_path_factory.mktemp("models")
    folders = {}
    for variant in VARIANTS:
        folder = root / variant
        IFEditPipeline(**tiny_components(variant)).save_pretrained(folder)
        folders[variant] = str(folder)
    return folders


@pytest.fixture
def load_tiny(tiny_dirs):
    """Load a saved tiny pipeline through from_pretrained, with progress bars off."""

    def load(variant: str = "a14b", cls=IFEditPipeline):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = cls.from_pretrained(tiny_dirs[variant])
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return load


@pytest.fixture
def source_image() -> PIL.Image.Image:
    """A smooth gradient with a bright square: structured enough that blur and edits change it measurably."""
    width, height = SOURCE_SIZE
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x / width, y / height, 0.5 + 0 * x], axis=-1) * 200
    pixels[20:44, 30:54] = 250
    return PIL.Image.fromarray(pixels.astype(np.uint8))


@pytest.fixture
def generator():
    return torch.Generator("cpu").manual_seed(0)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No test sees the developer's VLM settings, and each writes its prompt cache to its own folder."""
    for name in ("IFEDIT_VLM_BASE_URL", "IFEDIT_VLM_MODEL", "IFEDIT_VLM_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IFEDIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # the test server is local even where a proxy is configured
    monkeypatch.setattr(chain, "_NOTED", set())  # each test sees the once-per-process notices afresh


@pytest.fixture
def chat_server():
    """A running chat-completions server on a free loopback port."""
    server = ChatServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()
