"""TEdBench metrics on tiny random models built from config, on known image pairs; then score and report a run."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import ByT5Tokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

from bench_fixtures import FAST, tedbench
from ifedit.bench.metrics import LPIPS, CLIPScorer, sharpness
from ifedit.cli import main
from ifedit.errors import SetupError


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    """Random weights saved the way torchvision (backbone) and the lpips package (heads) save theirs."""
    folder = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    model = LPIPS()
    backbone = {f"features.{name}": value for name, value in model.features.state_dict().items()}
    backbone["classifier.1.weight"] = torch.zeros(2, 2)  # torchvision's file also holds the classifier
    heads = {f"lin{k}.model.1.weight": head.weight.abs() for k, head in enumerate(model.heads)}
    torch.save(backbone, folder / "alexnet.pth")
    torch.save(heads, folder / "alex.pth")
    return folder / "alexnet.pth", folder / "alex.pth"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    tokenizer = ByT5Tokenizer()
    text = dict(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=64, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _noise(seed, size=64):
    return torch.from_numpy(np.random.default_rng(seed).random((1, 3, size, size), dtype=np.float32))


def test_lpips_is_zero_for_identical_images_and_grows_with_the_difference(lpips_files):
    model = LPIPS.from_files(*lpips_files)
    image = _noise(0)
    assert model(image, image).item() == 0
    slightly, very = image * 0.95 + 0.05 * _noise(1), _noise(2)
    near, far = model(image, slightly).item(), model(image, very).item()
    assert 0 < near < far
    assert model(very, image).item() == pytest.approx(far, rel=1e-5)  # symmetric


def test_lpips_names_the_files_it_needs(tmp_path, lpips_files):
    with pytest.raises(SetupError, match="--lpips-alexnet FILE: torchvision's AlexNet weights, alexnet-owt-7be5be79"):
        LPIPS.from_files(None, lpips_files[1])
    with pytest.raises(SetupError, match="--lpips-heads file not found: .*alex.pth from the lpips package"):
        LPIPS.from_files(lpips_files[0], tmp_path / "missing.pth")
    with pytest.raises(SetupError, match="no key lin0.model.1.weight"):
        LPIPS.from_files(*lpips_files[:1], lpips_files[0])


def test_clip_scores_on_a_tiny_random_model(clip_dir):
    scorer = CLIPScorer(str(clip_dir))
    image = PIL.Image.fromarray((np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8))
    assert scorer.clip_i(image, image) == pytest.approx(1.0, abs=1e-5)
    assert scorer.clip_i(image, PIL.Image.new("RGB", (48, 48), "red")) < 0.9999
    assert -1 <= scorer.clip_t(image, "a red square") <= 1
    assert scorer.clip_t(image, "a cat " * 100) == pytest.approx(scorer.clip_t(image, "a cat " * 100))  # truncated


def test_clip_that_cannot_load_says_what_to_pass(tmp_path):
    with pytest.raises(SetupError, match="pass --clip a folder or Hub id holding a transformers CLIPModel"):
        CLIPScorer(str(tmp_path))


def test_sharpness_of_known_images():
    assert sharpness(PIL.Image.new("RGB", (64, 64), "gray")) == 0
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::2] = 255
    assert sharpness(PIL.Image.fromarray(stripes)) > 1000


def test_score_and_report_a_tedbench_run(tmp_path, tiny_dirs, clip_dir, lpips_files):
    data, out = tedbench(tmp_path / "ted"), tmp_path / "run"
    run = ["bench", "run", "--benchmark", "tedbench", "--data", str(data), "--out", str(out)]
    assert main([*run, "--model", tiny_dirs["a14b"], *FAST]) == 0
    score = ["bench", "score", str(out), "--clip", str(clip_dir), "--lpips-alexnet", str(lpips_files[0]),
             "--lpips-heads", str(lpips_files[1]), "--device", "cpu"]  # fmt: skip
    assert main(score) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["metrics"]["clip_backbone"] == str(clip_dir) and scores["cases_scored"] == 2
    case = scores["cases"]["000_dog"]
    assert case["lpips"] > 0 and -1 <= case["clip_i"] <= 1 and -1 <= case["clip_t"] <= 1 and case["sharpness"] > 0
    assert set(scores["overall"]) == {"lpips", "clip_i", "clip_t", "sharpness"} and "dog" in scores["categories"]
    assert main(["bench", "report", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    assert "| overall |" in markdown and "IF-Edit | clip_t | 0.650" in markdown
    page = (out / "report.html").read_text()
    assert "report/000_dog_source.jpg" in page and (out / "report" / "000_dog_output.jpg").is_file()


def test_official_scorers_need_a_checkout(tmp_path, tiny_dirs, capsys):
    from bench_fixtures import risebench

    out = tmp_path / "run"
    args = ["bench", "run", "--benchmark", "risebench", "--data", str(risebench(tmp_path / "r")), "--out", str(out)]
    assert main([*args, "--model", tiny_dirs["a14b"], *FAST, "--limit", "1"]) == 0
    assert main(["bench", "score", str(out)]) == 0
    assert "judge score needs --scorer-repo DIR: your checkout of https://github.com/PhoenixZ810/RISEBench" in (
        capsys.readouterr().err
    )
    assert main(["bench", "score", str(out), "--scorer-repo", str(tmp_path)]) == 1
    assert "the judge needs an endpoint: --judge-base-url URL" in capsys.readouterr().err
