"""The toy world's model: Wan2.2's image-to-video architecture (causal VAE, two DiT experts, UMT5) at toy size."""

from __future__ import annotations

import re

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from ..pipeline import DEFAULT_REFINE_PROMPT
from ..prompting.template import template_prompt
from .scenes import COLOURS, EVENTS, SHAPES, sample_case

TEXT_DIM = 64
BOUNDARY_RATIO = 0.9
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def training_texts(case) -> list[str]:
    """Every wording of a case the model learns from: instruction, caption, and both through the offline template."""
    return [
        case.instruction,
        case.caption,
        template_prompt(case.instruction, "instruction"),
        template_prompt(case.caption, "target"),
    ]


def vocabulary() -> list[str]:
    """All words the toy world's texts use, from a sweep of cases plus the still-video prompt; sorted."""
    texts = [DEFAULT_REFINE_PROMPT, *(f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES)]
    for seed in range(2000):
        texts += training_texts(sample_case(seed, EVENTS[seed % len(EVENTS)]))
    words = {word for text in texts for word in re.findall(r"\w+|[^\w\s]", text.lower())}
    return sorted(words)


def build_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `words`: built in code, saved as tokenizer.json, loaded by AutoTokenizer."""
    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_text_encoder(vocab_size: int, seed: int) -> UMT5EncoderModel:
    torch.manual_seed(seed)
    config = UMT5Config(vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=16, d_ff=128, num_layers=2, num_heads=4)
    return UMT5EncoderModel(config)


def build_vae(seed: int) -> AutoencoderKLWan:
    """0.7 M parameters; 4x spatial and 4x temporal compression into 16 channels.

    With Wan's 8x spatial compression a 64 px frame became 8x8 latents, shapes were two or three latent pixels
    wide, and the trained toy VAE kept only 5 of 15 changed shapes recognisable (red and yellow both decoded
    orange); at 4x, on clips that end holding the result, 10 of 15. The experts' 2x2 patches give 8x8 tokens
    per latent frame, 320 per clip."""
    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=16,
        z_dim=16,
        dim_mult=[1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[True, True],
        scale_factor_spatial=4,
    )


def build_transformer(seed: int) -> WanTransformer3DModel:
    """One expert: about 1.4 M parameters, the I2V channel layout (16 noisy + 4 mask + 16 image latent channels)."""
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=4,
        attention_head_dim=32,
        in_channels=36,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=64,
        ffn_dim=256,
        num_layers=6,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    )


def build_scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(shift=5.0)
