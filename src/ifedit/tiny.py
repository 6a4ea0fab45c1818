"""Tiny random Wan components built from config: for smoke tests and the `debug-tiny` preset (they produce noise)."""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from transformers import (
    ByT5Tokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    UMT5Config,
    UMT5EncoderModel,
)

Variant = Literal["a14b", "ti2v", "wan21"]
VARIANTS: tuple[str, ...] = ("a14b", "ti2v", "wan21")

TEXT_DIM = 32


def tiny_text_encoder(seed: int = 0) -> tuple[ByT5Tokenizer, UMT5EncoderModel]:
    """A byte-level tokenizer (needs no vocabulary file) and a two-layer UMT5 encoder."""
    tokenizer = ByT5Tokenizer()
    torch.manual_seed(seed)
    config = UMT5Config(vocab_size=tokenizer.vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    return tokenizer, UMT5EncoderModel(config).eval()


def tiny_vae(variant: Variant = "a14b", seed: int = 0) -> AutoencoderKLWan:
    """Wan's causal 3D VAE at toy width: 4x temporal, 8x (Wan2.1/2.2-A14B) or 16x (TI2V) spatial compression."""
    torch.manual_seed(seed)
    if variant == "ti2v":
        z_dim = 48
        return AutoencoderKLWan(
            base_dim=4,
            z_dim=z_dim,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
            is_residual=True,
            patch_size=2,
            scale_factor_spatial=16,
            in_channels=12,
            out_channels=12,
            latents_mean=[0.0] * z_dim,
            latents_std=[1.0] * z_dim,
        ).eval()
    return AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()


def tiny_transformer(variant: Variant = "a14b", seed: int = 0) -> WanTransformer3DModel:
    """A two-layer Wan DiT with the channel layout of the variant's real model."""
    torch.manual_seed(seed)
    in_channels, out_channels = {"a14b": (36, 16), "ti2v": (48, 48), "wan21": (36, 16)}[variant]
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=in_channels,
        out_channels=out_channels,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
        image_dim=16 if variant == "wan21" else None,
    ).eval()


def tiny_image_encoder(seed: int = 0) -> tuple[CLIPImageProcessor, CLIPVisionModel]:
    """Wan2.1's CLIP image encoder at toy size (32 px input, hidden size 16)."""
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return processor, CLIPVisionModel(config).eval()


def tiny_components(variant: Variant = "a14b", seed: int = 0) -> dict:
    """Every component `IFEditPipeline.__init__` takes, for one of the three Wan layouts we support."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    tokenizer, text_encoder = tiny_text_encoder(seed)
    components = {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": tiny_vae(variant, seed),
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=5.0),
        "transformer": tiny_transformer(variant, seed),
        "transformer_2": None,
        "image_encoder": None,
        "image_processor": None,
        "boundary_ratio": None,
        "expand_timesteps": variant == "ti2v",
    }
    if variant == "a14b":
        components["transformer_2"] = tiny_transformer(variant, seed + 1)
        components["boundary_ratio"] = 0.9
    if variant == "wan21":
        components["image_processor"], components["image_encoder"] = tiny_image_encoder(seed)
    return components
