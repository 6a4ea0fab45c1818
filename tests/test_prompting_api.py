"""The API enhancer against a real chat-completions server on 127.0.0.1, including every fault it must survive."""

from __future__ import annotations

import base64
import io
import logging
import socket
import time

import numpy as np
import PIL.Image
import pytest

from chat_server import GOOD_ANSWER, KEY, Reply, completion
from ifedit.errors import InvalidInputError
from ifedit.prompting import EnhancementError, enhance, enhance_many


@pytest.fixture
def server(chat_server):
    return chat_server


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))


FAST = {"api_model": "tiny-vlm", "api_key": KEY, "timeout": 5.0, "max_retries": 2, "backoff": 0.01, "use_cache": False}


def ask(server, image, text="turn the square into a triangle", **options):
    """One API enhancement with short waits, so every failing case ends within a second."""
    return enhance(image, text, enhancer="api", api_base_url=server.url, **(FAST | options))


def test_request_carries_model_messages_key_and_image(server, image):
    result = ask(server, image, kind="target", text="A red triangle on a plain background.")
    assert result.backend == "api" and result.model == "tiny-vlm" and not result.fallbacks
    assert result.prompt == GOOD_ANSWER and result.raw_response == GOOD_ANSWER
    [request] = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    payload = server.payload()
    assert payload["model"] == "tiny-vlm"
    system, user = payload["messages"]
    assert system["role"] == "system" and "target description" in system["content"]
    image_part, text_part = user["content"]
    assert text_part == {"type": "text", "text": text_part["text"]}
    assert "A red triangle on a plain background." in text_part["text"]
    url = image_part["image_url"]["url"]
    assert image_part["type"] == "image_url" and url.startswith("data:image/png;base64,")
    sent = PIL.Image.open(io.BytesIO(base64.b64decode(url.removeprefix("data:image/png;base64,"))))
    assert sent.size == image.size and np.array_equal(np.asarray(sent.convert("RGB")), np.asarray(image))


def test_large_image_is_sent_downscaled(server):
    big = PIL.Image.new("RGB", (2048, 1024), "blue")
    ask(server, big)
    url = server.payload()["messages"][1]["content"][0]["image_url"]["url"]
    sent = PIL.Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.width * sent.height <= 1024 * 1024 and abs(sent.width / sent.height - 2) < 0.01


def test_settings_come_from_the_environment(server, image, monkeypatch):
    monkeypatch.setenv("IFEDIT_VLM_BASE_URL", server.url)
    monkeypatch.setenv("IFEDIT_VLM_MODEL", "env-model")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    result = enhance(image, "turn the square into a triangle", use_cache=False)
    assert result.backend == "api" and result.model == "env-model"
    assert server.requests[0]["headers"]["Authorization"] == "Bearer sk-openai"
    monkeypatch.setenv("IFEDIT_VLM_API_KEY", "sk-ifedit")
    enhance(image, "turn the square into a triangle", use_cache=False)
    assert server.requests[1]["headers"]["Authorization"] == "Bearer sk-ifedit"


def test_answer_is_cleaned(server, image):
    raw = f'<think>The square should fold.</think>\n## Video prompt\n**Prompt:** "{GOOD_ANSWER}"'
    server.replies = [Reply(body=completion(raw))]
    result = ask(server, image)
    assert result.prompt == GOOD_ANSWER and result.raw_response == raw


def test_prompt_is_kept_within_the_token_limit(server, image):
    long_answer = " ".join([GOOD_ANSWER] * 3)
    server.replies = [Reply(body=completion(long_answer))]

    def count_tokens(text: str) -> int:
        return 5 * len(text.split())

    result = ask(server, image, count_tokens=count_tokens)
    assert count_tokens(long_answer) > 512 >= count_tokens(result.prompt)
    assert long_answer.startswith(result.prompt) and result.prompt.endswith(".")


def last_warning(caplog) -> str:
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings and warnings[-1].name == "ifedit"
    return warnings[-1].getMessage()


def fell_back(result, *phrases: str) -> str:
    """Assert the result came from the template after the API failed, with every phrase in the reason."""
    assert result.backend == "template" and result.prompt.startswith("Static camera")
    [fallback] = result.fallbacks
    assert fallback.backend == "api"
    for phrase in phrases:
        assert phrase in fallback.reason
    assert result.to_record()["fallbacks"] == [{"backend": "api", "reason": fallback.reason}]
    return fallback.reason


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_unreachable_server_falls_back_after_bounded_retries(image, caplog):
    start = time.perf_counter()
    result = enhance(
        image, "turn the square into a triangle", api_base_url=closed_port_url(), api_model="m",
        max_retries=2, backoff=0.01, use_cache=False,
    )  # fmt: skip
    assert time.perf_counter() - start < 5
    reason = fell_back(result, "unreachable", "gave up after 3 attempts")
    assert reason in last_warning(caplog) and "falling back to template" in last_warning(caplog)


@pytest.mark.parametrize(
    ("reply", "phrases"),
    [
        # A refusal of the key is never quoted: servers echo the key in forms no masking recognises.
        (Reply(401, {"error": {"message": "Incorrect key"}}), ["refused the API key (HTTP 401); check"]),
        (Reply(403, "forbidden"), ["refused the API key (HTTP 403); check"]),
        (Reply(400, {"error": {"message": "no images"}}), ["rejected the request (HTTP 400)", "no images"]),
        (Reply(404, "no such route"), ["rejected the request (HTTP 404)"]),
        (Reply(200, "{not json"), ["malformed JSON", "{not json"]),
        (Reply(200, {"id": "x"}), ["not a chat completion"]),
        (Reply(429, "slow down", {"Retry-After": "3600"}), ["HTTP 429", "asks to wait 3600 s"]),
    ],
    ids=["401", "403", "400", "404", "malformed-json", "not-a-completion", "429-retry-after-too-long"],
)  # fmt: skip
def test_final_failures_are_not_retried(server, image, caplog, reply, phrases):
    server.replies = [reply]
    reason = fell_back(ask(server, image), *phrases)
    assert len(server.requests) == 1
    assert KEY not in reason and reason in last_warning(caplog)
    if reply.status in (401, 403):
        assert "Incorrect key" not in reason and "forbidden" not in reason


def test_server_error_is_retried_then_succeeds(server, image):
    server.replies = [Reply(500, "overloaded"), Reply(502, "bad gateway")]
    result = ask(server, image)
    assert result.backend == "api" and result.prompt == GOOD_ANSWER and not result.fallbacks
    assert len(server.requests) == 3


def test_persistent_server_error_gives_up(server, image):
    server.replies = [Reply(500, {"error": {"message": "model crashed"}})] * 3
    fell_back(ask(server, image), "failed (HTTP 500)", "model crashed", "gave up after 3 attempts")
    assert len(server.requests) == 3


def test_rate_limit_honours_retry_after(server, image):
    server.replies = [Reply(429, "slow down", {"Retry-After": "1"})]
    start = time.perf_counter()
    result = ask(server, image)
    assert result.backend == "api" and len(server.requests) == 2
    assert time.perf_counter() - start >= 0.95


def test_slow_server_times_out(server, image):
    server.replies = [Reply(delay=1.0), Reply(delay=1.0)]
    start = time.perf_counter()
    fell_back(ask(server, image, timeout=0.2, max_retries=1), "timed out after 0.2 s", "gave up after 2 attempts")
    assert time.perf_counter() - start < 1.5
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("answer", "phrase"),
    [
        ("", "empty answer"),
        ("<think>I need to think about the square for a while", "empty answer"),
        ("I'm sorry, but I can't help with that request.", "refusal"),
        ('Prompt: "Turn the square into a triangle."', "repeats the user's text"),
    ],
    ids=["empty", "unfinished-reasoning", "refusal", "echo"],
)
def test_unusable_answers_fall_back(server, image, answer, phrase):
    server.replies = [Reply(body=completion(answer))]
    fell_back(ask(server, image), "unusable answer", phrase)
    assert len(server.requests) == 1


def test_strict_raises_instead_of_falling_back(server, image):
    server.replies = [Reply(401, "bad key")]
    with pytest.raises(EnhancementError, match=r"^api prompt enhancer failed: VLM server refused the API key"):
        ask(server, image, strict=True)
    server.replies = [Reply(body=completion("Turn the square into a triangle."))]
    with pytest.raises(EnhancementError, match="repeats the user's text"):
        ask(server, image, strict=True)


def test_api_falls_back_to_the_named_local_vlm_then_the_template(server, image, tmp_path, caplog):
    server.replies = [Reply(401, "bad key")]
    result = ask(server, image, vlm_model=str(tmp_path))
    assert [fallback.backend for fallback in result.fallbacks] == ["api", "local"]
    assert "could not load the local VLM" in result.fallbacks[1].reason
    assert result.backend == "template"
    assert "falling back to local" in caplog.text


def test_batch_stops_calling_a_failed_server(server, image):
    server.replies = [Reply(401, "bad key")]
    cases = [
        (image, "make it a triangle"),
        (image, "make it a circle", "instruction"),
        (image, "A blue star.", "target"),
    ]
    results = enhance_many(
        cases, enhancer="api", api_base_url=server.url, api_model="m", backoff=0.01, use_cache=False
    )
    assert len(server.requests) == 1
    assert [result.backend for result in results] == ["template"] * 3
    assert "skipped after an earlier failure" in results[2].fallbacks[0].reason
    assert results[2].input_kind == "target"


def test_misconfigured_api_is_an_input_error(image, monkeypatch):
    with pytest.raises(
        InvalidInputError, match=r"needs a server: pass --vlm-base-url \(api_base_url\) or set IFEDIT_VLM_BASE_URL"
    ):
        enhance(image, "make it blue", enhancer="api")
    with pytest.raises(
        InvalidInputError, match=r"needs a model name: pass --vlm-api-model \(api_model\) or set IFEDIT_VLM_MODEL"
    ):
        enhance(image, "make it blue", enhancer="api", api_base_url="http://127.0.0.1:9/v1")
    monkeypatch.setenv("IFEDIT_VLM_BASE_URL", "ftp://example")
    with pytest.raises(InvalidInputError, match="must start with http:// or https://"):
        enhance(image, "make it blue", api_model="m")


def test_cache_hit_skips_the_server(server, image, tmp_path):
    first = ask(server, image, use_cache=True)
    second = ask(server, image, use_cache=True)
    assert len(server.requests) == 1
    assert not first.cached and second.cached
    assert second.prompt == first.prompt and second.raw_response == first.raw_response
    assert second.to_record()["cached"] is True
    ask(server, image, use_cache=False)
    assert len(server.requests) == 2
    ask(server, image, use_cache=True, cache_dir=tmp_path / "elsewhere")
    assert len(server.requests) == 3


def test_cache_misses_when_anything_that_shapes_the_answer_changes(server, image, monkeypatch):
    ask(server, image, use_cache=True)
    variants = [
        {"text": "turn the square into a circle"},
        {"kind": "target"},
        {"api_model": "another-model"},
        {"image": image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)},
    ]
    for count, variant in enumerate(variants, start=2):
        ask(server, variant.pop("image", image), use_cache=True, **variant)
        assert len(server.requests) == count
    monkeypatch.setattr("ifedit.prompting.chain.INSTRUCTIONS_VERSION", "instructions-edited")
    ask(server, image, use_cache=True)
    assert len(server.requests) == len(variants) + 2


def test_failures_are_not_cached(server, image):
    server.replies = [Reply(body=completion(""))]
    assert ask(server, image, use_cache=True).backend == "template"
    assert ask(server, image, use_cache=True).backend == "api"
    assert len(server.requests) == 2
