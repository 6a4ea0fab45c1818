"""The prompt stage against hostile input: a VLM server, a cache folder or a user's text trying to leak the key,
drive the terminal, hang the call, crash it or swell the records."""

from __future__ import annotations

import json
import logging
import os
import secrets
import time

import numpy as np
import PIL.Image
import pytest

from chat_server import GOOD_ANSWER, ChatServer, Reply, completion
from ifedit.cli import main
from ifedit.errors import InvalidInputError
from ifedit.prompting import EnhancementError, enhance, enhance_many
from ifedit.prompting.cache import MAX_ENTRY_BYTES
from ifedit.redact import strip_control

TEXT = "turn the square into a triangle"
# Every character a terminal would act on, as a server might send it.
ESCAPES = (
    "\x1b[2J\x1b[31mred\x1b[0m \x1b]0;owned\x07 \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ \x9b1m \x07\x08\u202egnp.exe"
)
DANGEROUS = ["\x1b", "\x07", "\x08", "\x9b", "\u202e"]


@pytest.fixture
def image():
    rng = np.random.default_rng(1)
    return PIL.Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))


@pytest.fixture
def key():
    """A key no earlier test registered, so masking it proves that this call registered it."""
    return "sk-" + secrets.token_hex(12)


@pytest.fixture
def cli_logging():
    """`main` points the ifedit logger at stderr only; restore it so later tests' caplog still sees warnings."""
    logger = logging.getLogger("ifedit")
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    yield
    logger.handlers[:], logger.propagate = handlers, propagate
    logger.setLevel(level)


@pytest.fixture
def other_server():
    """A second server on another port: where a redirect would take the key."""
    with ChatServer() as server:
        yield server


def ask(server, image, key, text=TEXT, **options):
    settings = {"api_model": "m", "api_key": key, "timeout": 5.0, "backoff": 0.01, "use_cache": False}
    return enhance(image, text, enhancer="api", api_base_url=server.url, **(settings | options))


def fallback_reason(result) -> str:
    assert result.backend == "template" and result.fallbacks[-1].backend == "api"
    return result.fallbacks[-1].reason


def assert_no_key(key: str, *texts: str) -> None:
    """Neither the key nor a cut-off piece of it (its random middle) is in any of the texts."""
    for text in texts:
        assert key not in text and key[3:15] not in text


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("target", ["other-port", "other-scheme", "same-origin"])
def test_redirect_to_another_origin_never_receives_the_key(chat_server, other_server, image, key, status, target):
    server, other = chat_server, other_server
    location = {
        "other-port": f"{other.url}/chat/completions",
        "other-scheme": f"{other.url.replace('http://', 'https://')}/chat/completions",
        "same-origin": "/v1/elsewhere",
    }[target]
    server.replies = [Reply(status, "moved", {"Location": location})]
    reason = fallback_reason(ask(server, image, key))
    assert f"redirected the request (HTTP {status})" in reason and "not followed" in reason
    assert len(server.requests) == 1 and other.requests == []
    server.replies = [Reply(status, f"moved; your key was {key}", {"Location": location})]
    with pytest.raises(EnhancementError, match=r"^api prompt enhancer failed: VLM server redirected") as caught:
        ask(server, image, key, strict=True)
    assert "\n" not in str(caught.value)
    assert_no_key(key, str(caught.value))
    assert other.requests == []


@pytest.mark.parametrize(
    "reply",
    [
        lambda key: Reply(401, {"error": {"message": f"invalid key: Bearer {key}"}}),
        lambda key: Reply(400, f"bad request from Bearer {key}"),
        lambda key: Reply(500, {"error": {"message": f"crashed on {key}"}}),
        lambda key: Reply(429, f"slow down, {key}", {"Retry-After": "3600"}),
        lambda key: Reply(200, f"{{not json {key}"),
        lambda key: Reply(200, {"unexpected": key}),
        lambda key: Reply(200, completion({"key": key})),
        # The key where a 200-character cut would halve it, and behind a long run of spaces.
        lambda key: Reply(403, "x" * 190 + key),
        lambda key: Reply(403, " " * 5000 + key),
        lambda key: Reply(302, "moved", {"Location": f"http://127.0.0.1:1/{key}"}),
    ],
    ids=["401", "400", "500", "429", "malformed", "not-completion", "dict-content", "cut", "spaces", "location"],
)
def test_server_echoing_the_key_never_gets_it_recorded(chat_server, image, key, tmp_path, caplog, reply):
    chat_server.replies = [reply(key)] * 3
    result = ask(chat_server, image, key, use_cache=True, cache_dir=tmp_path)
    fallback_reason(result)
    chat_server.replies = [reply(key)] * 3
    with pytest.raises(EnhancementError) as caught:
        ask(chat_server, image, key, strict=True)
    files = [path.read_text() for path in tmp_path.rglob("*") if path.is_file()]
    assert_no_key(key, json.dumps(result.to_record()), str(caught.value), caplog.text, *files)


def test_answer_echoing_the_key_never_gets_it_recorded_or_cached(chat_server, image, key, tmp_path):
    chat_server.replies = [Reply(body=completion(f"{GOOD_ANSWER}\nYour key is {key}."))]
    result = ask(chat_server, image, key, use_cache=True, cache_dir=tmp_path)
    assert result.backend == "api" and GOOD_ANSWER in result.prompt
    [entry] = list(tmp_path.iterdir())
    cached = ask(chat_server, image, key, use_cache=True, cache_dir=tmp_path)
    assert cached.cached
    records = [json.dumps(item.to_record()) for item in (result, cached)]
    assert_no_key(key, result.prompt, result.raw_response, entry.read_text(), *records)


@pytest.mark.parametrize("how", ["option", "environment"])
def test_prompt_command_never_prints_the_key_a_server_echoes(
    chat_server, image, key, tmp_path, monkeypatch, capsys, cli_logging, how
):
    monkeypatch.setenv("IFEDIT_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "source.png"
    image.save(source)
    arguments = ["prompt", str(source), TEXT, "--vlm-base-url", chat_server.url, "--vlm-api-model", "m"]
    if how == "option":
        arguments += ["--vlm-api-key", key]
    else:
        monkeypatch.setenv("IFEDIT_VLM_API_KEY", key)
    echo = Reply(401, {"error": {"message": f"invalid key: Bearer {key} {ESCAPES}"}})
    outputs = []
    for extra, code in [([], 0), (["--json"], 0), (["--strict-prompt"], 1)]:
        chat_server.replies = [echo]
        assert main(arguments + extra) == code
        out, err = capsys.readouterr()
        assert "refused the API key" in out + err
        outputs += [out, err]
    chat_server.replies = [Reply(body=completion(f"{GOOD_ANSWER} {key} {ESCAPES}"))]
    assert main(arguments) == 0
    outputs += list(capsys.readouterr())
    cached = [path.read_text() for path in (tmp_path / "cache").rglob("*.json")]
    assert cached and len(chat_server.requests) == 4
    assert_no_key(key, *outputs, *cached)
    for text in outputs + cached:
        assert not any(char in text for char in DANGEROUS)


def test_terminal_codes_from_the_server_never_reach_records_or_logs(chat_server, image, key, caplog):
    chat_server.replies = [Reply(400, {"error": {"message": ESCAPES}}, {"X-Note": "ignored"})]
    failed = ask(chat_server, image, key)
    assert strip_control(fallback_reason(failed)) == fallback_reason(failed) and "red" in fallback_reason(failed)
    chat_server.replies = [Reply(body=completion(f"{GOOD_ANSWER}\n{ESCAPES}"))]
    answered = ask(chat_server, image, key)
    assert answered.backend == "api" and answered.prompt.startswith(GOOD_ANSWER)
    assert strip_control(answered.prompt) == answered.prompt
    assert strip_control(answered.raw_response, keep_newlines=True) == answered.raw_response
    for text in (json.dumps(failed.to_record(), ensure_ascii=False), caplog.text, answered.prompt):
        assert not any(char in text for char in DANGEROUS)


def test_lone_surrogates_from_the_server_never_break_records_or_the_cache(chat_server, image, key, tmp_path):
    # JSON may spell characters that UTF-8 cannot encode; printing or saving them would raise.
    chat_server.replies = [Reply(400, json.dumps({"error": {"message": "bad \udc00 request"}}))]
    failed = ask(chat_server, image, key)
    chat_server.replies = [Reply(body=json.dumps(completion(GOOD_ANSWER + "\ud800")))]
    answered = ask(chat_server, image, key, use_cache=True, cache_dir=tmp_path)
    assert "bad request" in fallback_reason(failed) and answered.backend == "api"
    for result in (failed, answered):
        json.dumps(result.to_record(), ensure_ascii=False).encode("utf-8")
    assert ask(chat_server, image, key, use_cache=True, cache_dir=tmp_path).cached


@pytest.mark.parametrize("trickle_from", ["status", "body"])
def test_trickling_server_cannot_hold_the_call_past_its_budget(chat_server, image, key, trickle_from):
    # A byte every 0.3 s beats a 1 s per-read timeout for ever; the call has 3 attempts x 1 s in all.
    chat_server.replies = [Reply(trickle=0.3, trickle_from=trickle_from)] * 3
    start = time.monotonic()
    result = enhance(image, TEXT, api_base_url=chat_server.url, api_model="m", api_key=key, timeout=1.0,
                     use_cache=False)  # fmt: skip
    elapsed = time.monotonic() - start
    assert 0.9 < elapsed < 3.5
    assert "timed out after 1 s" in fallback_reason(result) and "gave up after" in fallback_reason(result)


def test_one_attempt_ends_at_its_timeout(chat_server, image, key):
    chat_server.replies = [Reply(trickle=0.2, trickle_from="body")]
    start = time.monotonic()
    with pytest.raises(EnhancementError, match="timed out after 0.5 s .gave up after 1 attempt.$"):
        ask(chat_server, image, key, timeout=0.5, max_retries=0, strict=True)
    assert time.monotonic() - start < 0.9


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "body",
    [
        completion(42),
        completion(4.5),
        completion(True),
        completion({"text": GOOD_ANSWER}),
        completion([{"type": "text", "text": 5}]),
        completion([{"type": "text", "text": None}]),
        completion([{"type": "text", "text": ["a"]}]),
        completion([GOOD_ANSWER]),
        completion([None]),
        completion({"deep": json.loads("[" * 500 + "]" * 500)}),
        {"choices": {"0": {"message": {"content": GOOD_ANSWER}}}},
        {"choices": []},
        {"choices": None},
        {"choices": [GOOD_ANSWER]},
        {"choices": [None]},
        {"choices": [{"message": None}]},
        {"choices": [{"message": GOOD_ANSWER}]},
        {"choices": [{"message": [GOOD_ANSWER]}]},
        {"choices": [{"text": GOOD_ANSWER}]},
        "[]",
        '"a string"',
        "42",
        "null",
        DEEP,
        '{"choices": [{"message": {"content": ' + DEEP + "}}]}",
        '{"choices": [{"message": {"content": ' + "1" * 5000 + "}}]}",
        b"\xff\xfe\x00garbage",
        "",
    ],
)
def test_malformed_answer_is_a_failed_backend_not_a_crash(chat_server, image, key, body):
    chat_server.replies = [Reply(body=body)]
    reason = fallback_reason(ask(chat_server, image, key))
    assert reason.startswith("VLM server") and len(reason) < 1000
    chat_server.replies = [Reply(body=body)]
    with pytest.raises(EnhancementError, match=r"^api prompt enhancer failed: VLM server"):
        ask(chat_server, image, key, strict=True)


def test_malformed_answer_does_not_abort_a_batch(chat_server, image, key):
    chat_server.replies = [Reply(body=completion({"text": "nested"}))]
    cases = [(image, TEXT), (image, "make it a circle"), (image, "A blue star.", "target")]
    results = enhance_many(cases, enhancer="api", api_base_url=chat_server.url, api_model="m", api_key=key,
                           use_cache=False)  # fmt: skip
    assert [result.backend for result in results] == ["template"] * 3 and len(chat_server.requests) == 1


@pytest.mark.parametrize("length", [True, False], ids=["declared", "undeclared"])
def test_huge_answer_is_refused_not_stored(chat_server, image, key, tmp_path, length):
    chat_server.replies = [Reply(body=completion("a " * 25_000_000), length=length)]
    start = time.monotonic()
    result = ask(chat_server, image, key, use_cache=True, cache_dir=tmp_path)
    assert time.monotonic() - start < 5
    assert "larger than 4 MiB" in fallback_reason(result) and len(chat_server.requests) == 1
    assert len(json.dumps(result.to_record())) < 5000 and not list(tmp_path.iterdir())


def test_long_answer_under_the_network_limit_is_not_kept(chat_server, image, key, tmp_path):
    chat_server.replies = [Reply(body=completion(GOOD_ANSWER + " And then more." * 100_000))]
    result = ask(chat_server, image, key, use_cache=True, cache_dir=tmp_path)
    assert "unusable answer: 1500" in fallback_reason(result) and "more than the 16000" in fallback_reason(result)
    assert len(json.dumps(result.to_record())) < 5000 and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("make it \x1b[31mred", "001B"),
        ("make it red\x07", "0007"),
        ("make it \u202ered", "202E"),
        ("make it \u2066red\u2069", "2066"),
        ("make it \u061cred", "061C"),
        ("make\x00 it red", "0000"),
        ("make it \x9b31mred", "009B"),
        ("make it \x7fred", "007F"),
    ],
)
def test_control_characters_in_the_instruction_are_refused(chat_server, image, key, text, code):
    for enhancer in ("api", "template", "none"):
        with pytest.raises(InvalidInputError, match=rf"^text holds the control character U\+{code} at position \d+;"):
            enhance(image, text, enhancer=enhancer, api_base_url=chat_server.url, api_model="m", api_key=key)
    assert chat_server.requests == []


def test_instruction_whitespace_becomes_single_spaces(image):
    result = enhance(image, " make the dog\n\tsit\r\n  down\u2028now ", enhancer="template")
    assert result.text == "make the dog sit down now"
    assert "make the dog sit down now" in result.prompt and strip_control(result.prompt) == result.prompt


def test_control_characters_on_the_command_line_are_one_line_errors(tmp_path, image, capsys, cli_logging):
    source = tmp_path / "source.png"
    image.save(source)
    assert main(["prompt", str(source), "make it \x1b]0;owned\x07red", "--prompt-enhancer", "template"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "U+001B" in err and "\x1b" not in err


def hostile_entries(entry: dict) -> list[bytes]:
    """Damaged or planted versions of a valid cache entry."""
    variants = [
        b"\x00" * 10,
        b"\xff\xfe not utf-8",
        DEEP.encode(),
        ('{"key": ' + "[" * 50_000 + "]" * 50_000 + "}").encode(),
        json.dumps(entry | {"pad": "x" * MAX_ENTRY_BYTES}).encode(),
        json.dumps([entry]).encode(),
    ]
    for field, value in [
        ("prompt", 42),
        ("prompt", ["a prompt"]),
        ("prompt", {"text": "a prompt"}),
        ("prompt", ""),
        ("prompt", "a prompt \x1b]0;owned\x07 with codes"),
        ("prompt", "a prompt\nwith a line break"),
        ("prompt", "x" * 20_000),
        ("raw_response", 42),
        ("raw_response", "raw \x1b[2J"),
        ("key", None),
    ]:
        variants.append(json.dumps(entry | {field: value}).encode())
    return variants


def test_hostile_cache_entry_is_a_miss(chat_server, image, key, tmp_path, caplog):
    ask(chat_server, image, key, use_cache=True, cache_dir=tmp_path)
    [path] = list(tmp_path.iterdir())
    entry = json.loads(path.read_text())
    for count, content in enumerate(hostile_entries(entry), start=2):
        path.write_bytes(content)
        result = ask(chat_server, image, key, use_cache=True, cache_dir=tmp_path)
        assert not result.cached and result.prompt == GOOD_ANSWER and len(chat_server.requests) == count
        assert "ignoring" in caplog.text
        caplog.clear()
    assert ask(chat_server, image, key, use_cache=True, cache_dir=tmp_path).cached


def test_cache_entry_that_is_not_a_file_is_a_miss(chat_server, image, key, tmp_path):
    ask(chat_server, image, key, use_cache=True, cache_dir=tmp_path)
    [path] = list(tmp_path.iterdir())
    path.unlink()
    os.mkfifo(path)  # opening a pipe with no writer would block for ever
    assert not ask(chat_server, image, key, use_cache=True, cache_dir=tmp_path).cached


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"api_key": "sk-line\r\nX-Injected: 1"}, "the API key holds a space, a control or a non-ASCII character"),
        ({"api_key": "sk-ключ-123"}, "the API key holds a space, a control or a non-ASCII character"),
        ({"api_base_url": "http://user:hunter22@127.0.0.1:9/v1"}, "must not hold a user name or password"),
        ({"api_base_url": "http://127.0.0.1:9/v1\r\nX: 1"}, "must be ASCII without spaces or control characters"),
        ({"api_base_url": "http://exämple.com/v1"}, "must be ASCII without spaces or control characters"),
        ({"api_base_url": "http://127.0.0.1:port/v1"}, "needs a host and a valid port"),
        ({"api_base_url": "http:///v1"}, "needs a host and a valid port"),
        ({"api_base_url": "http://[::1/v1"}, r"--vlm-base-url \(api_base_url\) is not a URL \(Invalid IPv6 URL\)"),
    ],
)
def test_settings_that_would_break_the_request_are_input_errors(image, options, message):
    settings = {"api_base_url": "http://127.0.0.1:9/v1", "api_model": "m"} | options
    with pytest.raises(InvalidInputError, match=message) as caught:
        enhance(image, TEXT, enhancer="api", use_cache=False, **settings)
    assert "hunter22" not in str(caught.value) and "sk-line" not in str(caught.value)


def test_key_with_a_trailing_newline_is_sent_trimmed(chat_server, image, key):
    ask(chat_server, image, f" {key}\r\n")
    assert chat_server.requests[0]["headers"]["Authorization"] == f"Bearer {key}"
