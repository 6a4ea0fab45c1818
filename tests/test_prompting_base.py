"""The pure parts of prompt enhancement: input checks, answer cleaning and rejection, the token limit, messages."""

from __future__ import annotations

import PIL.Image
import pytest

from ifedit.errors import InvalidInputError
from ifedit.prompting import ENHANCER_CHOICES, INPUT_KINDS, PromptResult, enhance, enhance_many
from ifedit.prompting.base import (
    MAX_PROMPT_TOKENS,
    Fallback,
    check_kind,
    check_text,
    clean_response,
    estimate_tokens,
    fit_tokens,
    rejection_reason,
    vlm_view,
)
from ifedit.prompting.instructions import INSTRUCTIONS_VERSION, system_message, user_message

PROMPT = (
    "A fixed shot of the dog on the wooden floor. The dog slowly lowers its hindquarters until it sits. "
    "In the final frame the same dog sits upright on the floor."
)


@pytest.mark.parametrize(
    "raw",
    [
        PROMPT,
        f"  {PROMPT}\n",
        f'"{PROMPT}"',
        f"“{PROMPT}”",
        f"Prompt: {PROMPT}",
        f"**Final prompt:** {PROMPT}",
        f"<think>The dog stands; it must sit.\nSo the hind legs bend.</think>\n\n{PROMPT}",
        f"The dog must sit, so...</think>{PROMPT}",
        f"Sure! Here is the video prompt:\n\n{PROMPT}",
        f"Here's the prompt: {PROMPT}",
        f"```\n{PROMPT}\n```",
        f"## Video prompt\n\n{PROMPT}\n\n---",
        f"*{PROMPT}*",
    ],
)
def test_clean_response_leaves_only_the_prompt(raw):
    assert clean_response(raw) == PROMPT


def test_clean_response_joins_lines_and_list_items_into_one_paragraph():
    raw = "The dog bends its legs\n- it lowers its body\n2. it sits\n\nIn the final frame it sits."
    assert clean_response(raw) == "The dog bends its legs it lowers its body. it sits. In the final frame it sits."


def test_clean_response_drops_escape_sequences_control_and_replacement_characters():
    assert clean_response("a\x00b\x1b\ufffdc\u200b") == "ab c"
    answer = "The dog \x1b[31msits\x1b[0m down.\x1b]0;pwned\x07 \u202eIt stays\u202c still."
    assert clean_response(answer) == "The dog sits down. It stays still."


@pytest.mark.parametrize(
    ("prompt", "phrase"),
    [
        ("", "empty answer"),
        ("ok", "too short"),
        ("#$%^ 12345 ^&*() 98765 abc def ghi jkl mno pqr stu ////// 0000000000000000000000", "not readable"),
        ("I'm sorry, but I can't help with editing this photo of a person.", "refusal"),
        ("I cannot describe this image because it shows a real person.", "refusal"),
        ("I’m unable to write a prompt for an image I cannot see clearly.", "refusal"),
        ("As an AI language model I do not produce video prompts for this.", "refusal"),
        ("Make the brown dog sit on the wooden floor.", "repeats"),
        ("make the brown dog sit down on the wooden floor", "repeats"),
    ],
)
def test_rejection_reason(prompt, phrase):
    assert phrase in rejection_reason(prompt, "make the brown dog sit on the wooden floor")


@pytest.mark.parametrize(
    "prompt", [PROMPT, "一只狗慢慢地坐下来，尾巴轻轻摆动，背景和光线保持不变。最后一帧：狗坐在木地板上。"]
)
def test_rejection_reason_accepts_real_prompts(prompt):
    assert rejection_reason(prompt, "make the dog sit") is None


def test_fit_tokens_cuts_at_a_sentence_boundary():
    sentences = [f"Sentence number {index} describes one more step of the change." for index in range(200)]
    prompt = " ".join(sentences)
    fitted = fit_tokens(prompt)
    assert estimate_tokens(prompt) > MAX_PROMPT_TOKENS >= estimate_tokens(fitted)
    assert fitted.endswith("change.") and prompt.startswith(fitted)
    assert estimate_tokens(fit_tokens(prompt + " x")) <= MAX_PROMPT_TOKENS
    assert fit_tokens(PROMPT) == PROMPT


def test_fit_tokens_uses_the_given_counter_and_falls_back_to_words():
    def count(text):
        return len(text.split())

    assert fit_tokens(PROMPT, count, limit=12) == "A fixed shot of the dog on the wooden floor."
    assert fit_tokens("one two three four five six", count, limit=4) == "one two three four"


def test_estimate_is_conservative_for_english():
    # umT5 spends about 1.3 tokens per English word; the estimate must not undercount.
    assert estimate_tokens(PROMPT) >= 1.3 * len(PROMPT.split())


def test_check_text():
    assert check_text("  make the dog sit \n") == "make the dog sit"
    with pytest.raises(InvalidInputError, match=r"^text is empty: give an edit instruction"):
        check_text(" \n\t")
    with pytest.raises(InvalidInputError, match=r"^text is too long: 2001 characters \(at most 2000\)$"):
        check_text("x" * 2001)
    with pytest.raises(InvalidInputError, match="text must be a string, got int"):
        check_text(3)


def test_check_kind():
    assert INPUT_KINDS == ("instruction", "target")
    assert check_kind("target") == "target"
    with pytest.raises(InvalidInputError, match=r"^unknown input kind 'caption'; choose one of instruction, target$"):
        check_kind("caption")


def test_bad_inputs_fail_before_any_backend(tmp_path):
    image = PIL.Image.new("RGB", (64, 64))
    with pytest.raises(
        InvalidInputError, match=r"^unknown prompt enhancer 'gpt'; choose one of auto, api, local, tem"
    ):
        enhance(image, "make it red", enhancer="gpt")
    assert ENHANCER_CHOICES == ("auto", "api", "local", "template", "none")
    with pytest.raises(InvalidInputError, match=r"^image must be a PIL image or a file path, got bytes$"):
        enhance(b"\x89PNG", "make it red")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    with pytest.raises(InvalidInputError, match=r"^not an image file: .*notes.png"):
        enhance(not_an_image, "make it red")
    with pytest.raises(InvalidInputError, match=r"^image is too small: 8x8 px"):
        enhance(PIL.Image.new("RGB", (8, 8)), "make it red")
    with pytest.raises(InvalidInputError, match=r"^case 1: text is empty"):
        enhance_many([(image, "make it red"), (image, "")], enhancer="template")
    with pytest.raises(InvalidInputError, match=r"^case 0: a case must be \(image, text\) or \(image, text, kind\)"):
        enhance_many([image, (image, "x")], enhancer="template")


def test_enhance_reads_image_files(tmp_path):
    path = tmp_path / "in.png"
    PIL.Image.new("RGBA", (64, 64)).save(path)
    assert enhance(path, "make it red", enhancer="none").prompt == "make it red"


def test_vlm_view_downscales_only_large_images():
    small = PIL.Image.new("RGB", (640, 480))
    assert vlm_view(small) is small
    view = vlm_view(PIL.Image.new("RGB", (4000, 3000)))
    assert view.width * view.height <= 1024 * 1024 and view.size == (1182, 886)


def test_messages_follow_the_input_kind():
    assert "edit instruction" in system_message("instruction") and "target description" not in system_message(
        "instruction"
    )
    assert "target description" in system_message("target")
    for kind in INPUT_KINDS:
        assert "In the final frame" in system_message(kind) and "camera" in system_message(kind)
    assert user_message("make it {red}", "instruction").startswith("Edit instruction: make it {red}\n")
    assert user_message("A red car.", "target").startswith("Target description: A red car.\n")
    assert INSTRUCTIONS_VERSION.startswith("instructions-") and len(INSTRUCTIONS_VERSION) == len("instructions-") + 12


def test_record_is_json_ready():
    result = PromptResult(
        "prompt", "text", "target", "api", "m", 1.23456, "raw", "v", (Fallback("local", "no GPU"),), cached=True
    )
    assert result.to_record() == {
        "prompt": "prompt",
        "text": "text",
        "input_kind": "target",
        "backend": "api",
        "model": "m",
        "elapsed_s": 1.235,
        "cached": True,
        "raw_response": "raw",
        "instructions_version": "v",
        "fallbacks": [{"backend": "local", "reason": "no GPU"}],
    }
