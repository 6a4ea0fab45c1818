"""The benchmark scripts run end to end (on tiny models), so they cannot rot between GPU sessions."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


@pytest.mark.parametrize("options", [[], ["--storage-dtype", "float8_e4m3fn", "--first-block-cache", "0.05"]])
def test_gpu_speed_script_runs_on_tiny_models(options):
    completed = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_speed.py"), "--tiny", *options],
                               capture_output=True, text=True, timeout=300)  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert report["runs"]["K=3"]["kept"] == [0, 3, 6, 8] and report["runs"]["K=1"]["kept"] is None
    assert report["runs"]["K=3"]["stages"]["total"] > 0 and report["speedup_K3_over_K1"] > 0
    assert "refine_decode" in report["runs"]["K=3 --fast"]["stages"] and report["speedup_fast_over_K3"] > 0
    assert report["speed_options"]["storage_dtype"] == (options[1] if options else None)


def test_flop_count_of_an_a14b_step_matches_a_hand_calculation(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import flops

    # 480 x 832 px, 33 frames: 9 latent frames of 30 x 52 tokens; width 5120, FFN 13824, 40 layers, 512 text tokens.
    tokens, width, ffn, text, layers = 9 * 30 * 52, 5120, 13824, 512, 40
    per_layer = (
        8 * tokens * width**2  # self-attention q, k, v, out
        + 4 * tokens**2 * width  # self-attention scores and weighted sum
        + 4 * tokens * width**2  # cross-attention q, out
        + 4 * text * width**2  # cross-attention k, v over the text
        + 4 * tokens * text * width  # cross-attention scores and weighted sum
        + 4 * tokens * width * ffn  # feed-forward
    )
    counted = flops.transformer_step(9, 480, 832)
    assert counted == pytest.approx(layers * per_layer, rel=2e-3)  # the rest: embeddings and the output head


def test_peak_activation_tracker_follows_tensor_lifetimes_and_fused_attention(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import flops

    with torch.device("meta"):
        mlp = torch.nn.Sequential(torch.nn.Linear(100, 200), torch.nn.ReLU(), torch.nn.Linear(200, 50))
    rows = torch.empty(1000, 100, device="meta")
    # The first layer's output and the ReLU's are alive together; the last layer's output is smaller.
    assert flops.peak_activations(mlp, lambda model: model(rows)) == 2 * 1000 * 200 * 4

    query = torch.empty(1, 2, 4096, 64, device="meta")

    def attention(_):  # looked up at call time, as diffusers' attention dispatcher does
        return torch.nn.functional.scaled_dot_product_attention(query, query, query)

    # A fused kernel holds its output, never the 2 x 4096 x 4096 score matrices (256 MiB here).
    assert flops.peak_activations(None, attention) == 1 * 2 * 4096 * 64 * 4
