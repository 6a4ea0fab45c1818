"""The published sizes of Wan2.2-I2V-A14B's parts, shared by the benchmark scripts."""

# One of the two experts (high- and low-noise share the architecture): 14.3 B parameters.
A14B_EXPERT = dict(
    patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)  # fmt: skip
# The UMT5-XXL text encoder: 5.7 B parameters.
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64)
