"""The offline template and the selection rules that lead to it or to the text as given."""

from __future__ import annotations

import logging

import PIL.Image
import pytest

from ifedit.prompting import TEMPLATE_VERSION, EnhancementError, enhance, enhance_many
from ifedit.prompting.template import asks_for_camera_change, template_prompt

CASES = [
    ("make the dog sit", "instruction"),
    ("Take the paper out of her hand.", "instruction"),
    ("let the snowman melt!", "instruction"),
    ("I want the umbrella open", "instruction"),
    ("A photo of a sitting dog.", "target"),
    ("a bowl of fruit with a bitten apple", "target"),
    ("An open red umbrella against a white wall", "target"),
]


@pytest.fixture(autouse=True)
def no_vlm_configured(monkeypatch, tmp_path):
    monkeypatch.delenv("IFEDIT_VLM_BASE_URL", raising=False)
    monkeypatch.setenv("IFEDIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def image():
    return PIL.Image.new("RGB", (96, 64), "green")


@pytest.mark.parametrize(("text", "kind"), CASES)
def test_template_is_a_deterministic_temporal_prompt(text, kind):
    prompt = template_prompt(text, kind)
    assert prompt == template_prompt(text, kind)
    assert prompt.startswith("Static camera: a fixed shot with no zoom, pan, tilt or cut.")
    assert "gradually" in prompt and "slowly" in prompt
    assert "In the final frame" in prompt
    assert "stays the same" in prompt and "background" in prompt and "lighting" in prompt
    words = text.rstrip(".!")
    assert words[1:] in prompt and prompt.count(words[1:]) == 2  # once as the change, once as the final state
    assert prompt.index("stays the same") < prompt.index("In the final frame")


def test_template_wording():
    assert template_prompt("Make the dog sit.", "instruction") == (
        "Static camera: a fixed shot with no zoom, pan, tilt or cut. The video starts exactly as the first frame. "
        "Then, slowly, this edit takes place in the scene: make the dog sit. The change happens gradually, one "
        "continuous step at a time, with no sudden jumps. Everything the edit does not touch stays the same: the "
        "identity and appearance of every person, animal and object, the background, the lighting, the colours and "
        "the style. In the final frame the edit (make the dog sit) is complete and held still, with everything "
        "else as in the first frame."
    )
    target = template_prompt("A photo of a sitting dog", "target")
    assert "until it matches this description: A photo of a sitting dog." in target
    assert target.endswith("In the final frame the picture shows: A photo of a sitting dog.")


@pytest.mark.parametrize(
    ("text", "moves"),
    [
        ("zoom in on the cat", True),
        ("show the house from above", True),
        ("a close-up of her face", True),
        ("make the dog sit", False),
        ("the pantry door opens", False),
    ],
)
def test_camera_moves_only_when_asked(text, moves):
    assert asks_for_camera_change(text) is moves
    assert template_prompt(text, "instruction").startswith("Static camera") is not moves


def test_auto_without_a_vlm_uses_the_template_and_says_so_once(image, caplog, monkeypatch):
    result = enhance(image, "make the dog sit")
    assert result.backend == "template" and result.model is None and result.raw_response is None
    assert result.prompt == template_prompt("make the dog sit", "instruction")
    assert result.instructions_version == TEMPLATE_VERSION
    [note] = result.fallbacks
    assert note.backend == "auto" and note.reason.startswith("no VLM configured")
    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert warning.name == "ifedit" and "no VLM configured" in warning.getMessage()
    assert "--vlm-base-url" in warning.getMessage() and "--vlm MODEL" in warning.getMessage()
    again = enhance(image, "make the ice melt")
    assert again.fallbacks == result.fallbacks  # still recorded with every result, but said only once
    assert len([record for record in caplog.records if record.levelno == logging.WARNING]) == 1
    with pytest.raises(EnhancementError, match="^no VLM configured"):
        enhance(image, "make the dog sit", strict=True)


def test_requested_template_and_none_are_quiet(image, caplog):
    for use_cache in (True, False):
        result = enhance(
            image, "  A photo of a sitting dog. ", kind="target", enhancer="template", use_cache=use_cache
        )
        assert result.backend == "template" and not result.fallbacks and not result.cached
        assert result.prompt == template_prompt("A photo of a sitting dog.", "target")
        plain = enhance(image, "A photo of a sitting dog.", kind="target", enhancer="none", use_cache=use_cache)
        assert plain.prompt == "A photo of a sitting dog." and plain.backend == "none" and not plain.cached
        assert plain.to_record()["instructions_version"] is None
    assert not caplog.records


def test_template_respects_the_token_limit(image):
    text = "make the dog sit " + "and then stand up again, " * 70 + "and finally sit."
    result = enhance(image, text, enhancer="template", count_tokens=lambda prompt: len(prompt.split()))
    assert 0 < len(result.prompt.split()) <= 512 and result.prompt.endswith(".")


def test_many_cases_keep_their_order_and_kinds(image):
    results = enhance_many([(image, text, kind) for text, kind in CASES], enhancer="template")
    assert [(result.text, result.input_kind) for result in results] == [(text.strip(), kind) for text, kind in CASES]
