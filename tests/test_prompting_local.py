"""The local enhancer on tiny random VLMs saved to disk and loaded back the way a user's model id is."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path

import PIL.Image
import pytest
import torch
from tokenizers import pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    GenerationMixin,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2Config,
    Qwen2Tokenizer,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)
from transformers.utils import is_torchvision_available

from ifedit.prompting import EnhancementError, enhance, enhance_many
from ifedit.prompting.local import LocalVLM, default_device_dtype, load_processor

# The one token a model with a zeroed final norm emits: its logits all tie and greedy search takes id 0.
WORD = "Ġmelts"
IMAGE_PLACEHOLDER = {"llava-qwen2": "<image>", "qwen3-vl": "<|vision_start|><|image_pad|><|vision_end|>"}
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}IMAGE"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_tokenizer(specials: list[str]) -> Qwen2Tokenizer:
    """Qwen's byte-level BPE tokenizer over the 256 byte symbols with no merges: needs no downloaded files."""
    vocab = {WORD: 0} | {symbol: index + 1 for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", *specials]})
    return tokenizer


def tiny_llava_qwen2(folder: Path) -> tuple[LlavaForConditionalGeneration, Qwen2Tokenizer]:
    """LLaVA with a Qwen2 language model and a CLIP vision tower, its processor saved in `folder`: no torchvision."""
    tokenizer = byte_tokenizer(["<image>"])
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE.replace("IMAGE", IMAGE_PLACEHOLDER["llava-qwen2"]),
    ).save_pretrained(folder)  # fmt: skip
    config = LlavaConfig(
        text_config=Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        ),
        vision_config=CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            patch_size=8,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
    )  # fmt: skip
    return LlavaForConditionalGeneration(config), tokenizer


def tiny_qwen3_vl(folder: Path) -> tuple[Qwen3VLForConditionalGeneration, Qwen2Tokenizer]:
    """Qwen3-VL, the family of the default local model, its processor saved in `folder` in the files Qwen ships.

    Those name a `Qwen3VLVideoProcessor`, which only torchvision can build, so its file is written out directly.
    """
    specials = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer = byte_tokenizer(specials)
    start, end, image, video = tokenizer.convert_tokens_to_ids(specials)
    tokenizer.save_pretrained(folder)
    image_processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, min_pixels=32 * 32, max_pixels=64 * 64)
    image_processor.save_pretrained(folder)
    video_processor = {"video_processor_type": "Qwen3VLVideoProcessor", "patch_size": 16, "merge_size": 2}
    (folder / "video_preprocessor_config.json").write_text(json.dumps(video_processor))
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE.replace("IMAGE", IMAGE_PLACEHOLDER["qwen3-vl"]))
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 1024,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                "mrope_interleaved": True},
        },
        vision_config={
            "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "patch_size": 16,
            "spatial_merge_size": 2, "out_hidden_size": 32, "num_position_embeddings": 64,
            "deepstack_visual_indexes": [1],
        },
        image_token_id=image, video_token_id=video, vision_start_token_id=start, vision_end_token_id=end,
    )  # fmt: skip
    return Qwen3VLForConditionalGeneration(config), tokenizer


@pytest.fixture(scope="module", params=[tiny_llava_qwen2, tiny_qwen3_vl], ids=["llava-qwen2", "qwen3-vl"])
def tiny_vlms(request, tmp_path_factory) -> dict[str, str]:
    """Two saved copies of one tiny VLM: random weights (garbage answers) and one that always says ' melts'."""
    folders = {}
    for variant in ("random", "constant"):
        folder = tmp_path_factory.mktemp(f"{request.param.__name__}-{variant}")
        torch.manual_seed(0)
        model, tokenizer = request.param(folder)
        if variant == "constant":
            with torch.no_grad():
                model.model.language_model.norm.weight.zero_()
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.eos_token_id
        model.save_pretrained(folder)
        folders[variant] = str(folder)
    return folders


@pytest.fixture
def generate_calls(monkeypatch) -> list[tuple[weakref.ref, dict]]:
    """Each `generate` call: a weak reference to the model that ran it and the inputs it got."""
    calls = []
    original = GenerationMixin.generate

    def spy(self, *args, **kwargs):
        calls.append((weakref.ref(self), kwargs))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    return calls


@pytest.fixture(autouse=True)
def short_answers_cached_in_tmp(monkeypatch, tmp_path):
    monkeypatch.setattr("ifedit.prompting.local.MAX_NEW_TOKENS", 48)  # a CPU test needs no 400-token answers
    monkeypatch.setenv("IFEDIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def image():
    return PIL.Image.new("RGB", (96, 64), "orange")


def assert_released(calls):
    gc.collect()
    assert all(model() is None for model, _ in calls)


def test_local_vlm_generates_a_cleaned_prompt_and_is_released(tiny_vlms, generate_calls, image):
    def count_tokens(text: str) -> int:
        return 16 * len(text.split())

    result = enhance(
        image, "let the snowman melt", enhancer="local", vlm_model=tiny_vlms["constant"], count_tokens=count_tokens
    )
    assert result.backend == "local" and result.model == tiny_vlms["constant"] and not result.fallbacks
    [(model, inputs)] = generate_calls
    assert inputs["pixel_values"].shape[0] > 0 and inputs["do_sample"] is False and inputs["max_new_tokens"] == 48
    assert result.raw_response == " melts" * 48
    assert result.prompt == " ".join(["melts"] * 32)  # stripped, then cut to 512 tokens
    assert_released(generate_calls)


def test_garbage_answer_falls_back_to_the_template(tiny_vlms, generate_calls, image, caplog):
    result = enhance(image, "let the snowman melt", enhancer="local", vlm_model=tiny_vlms["random"])
    assert len(generate_calls) == 1
    assert result.backend == "template" and result.prompt.startswith("Static camera")
    [fallback] = result.fallbacks
    assert fallback.backend == "local" and fallback.reason.startswith("unusable answer: ")
    assert "local prompt enhancer failed" in caplog.text
    assert_released(generate_calls)
    with pytest.raises(EnhancementError, match="^local prompt enhancer failed: unusable answer"):
        enhance(image, "let the snowman melt", enhancer="local", vlm_model=tiny_vlms["random"], strict=True)


def test_a_batch_loads_the_model_once_and_the_cache_skips_it(tiny_vlms, generate_calls, image):
    cases = [(image, "let the snowman melt"), (image, "A puddle on the grass.", "target"), (image, "make it snow")]
    results = enhance_many(cases, vlm_model=tiny_vlms["constant"])
    assert [result.backend for result in results] == ["local"] * 3
    assert len(generate_calls) == 3 and len({id(model()) for model, _ in generate_calls}) == 1
    assert_released(generate_calls)
    again = enhance_many(cases, vlm_model=tiny_vlms["constant"])
    assert len(generate_calls) == 3 and all(result.cached for result in again)
    assert [result.prompt for result in again] == [result.prompt for result in results]


def test_a_qwen_vl_processor_needs_torchvision_only_for_its_video_half(tmp_path):
    model, _ = tiny_qwen3_vl(tmp_path)
    model.config.save_pretrained(tmp_path)
    processor = load_processor(str(tmp_path))
    assert isinstance(processor, Qwen3VLProcessor)
    assert hasattr(processor, "video_processor") == is_torchvision_available()


def test_unloadable_model_falls_back(tmp_path, image):
    result = enhance(image, "make it snow", enhancer="local", vlm_model=str(tmp_path))
    [fallback] = result.fallbacks
    assert result.backend == "template" and fallback.reason.startswith(f"could not load the local VLM '{tmp_path}'")
    with pytest.raises(EnhancementError, match="could not load the local VLM"):
        LocalVLM(str(tmp_path))


def test_default_device_and_dtype():
    device, dtype = default_device_dtype()
    if torch.cuda.is_available():
        assert (device.type, dtype) == ("cuda", torch.bfloat16)
    else:
        assert (device.type, dtype) == ("cpu", torch.float32)
