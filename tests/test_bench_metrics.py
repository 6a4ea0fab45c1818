"""TEdBench metrics on tiny random models built from config, on known image pairs; then score and report a run."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoTokenizer, ByT5Tokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

from bench_fixtures import FAST, bytemorph, imgedit, risebench, tedbench
from ifedit.bench.benchmarks import get_benchmark, load_cases
from ifedit.bench.layout import RunFolder, case_record, compose_output
from ifedit.bench.metrics import LPIPS, CLIPScorer, sharpness
from ifedit.cli import main
from ifedit.errors import SetupError
from ifedit.io import load_image


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


def _published_table(markdown: str) -> list[list[str]]:
    """The rows of a report's "Published" table as [method, metric, value, note] cells."""
    section = markdown.split("## Published", 1)[1].split("\n\n", 2)[1]
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in section.splitlines()[2:]]


def _shows_published(rows: list[list[str]], benchmark: str) -> None:
    """The table's first rows are the paper's numbers for `benchmark`, as its Benchmark object holds them."""
    published = get_benchmark(benchmark).published
    assert [(method, metric, note) for method, metric, _, note in rows[: len(published)]] == [
        (row.method, row.metric, row.note) for row in published
    ]
    shown = [float(value) for _, _, value, _ in rows[: len(published)]]
    assert shown == pytest.approx([row.value for row in published], rel=1e-3, abs=5e-4)  # as rounded for show


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
    # CLIP-T is the cosine the model's own forward pass reports: its image-text logit over the logit scale.
    model = CLIPModel.from_pretrained(clip_dir).eval()
    tokens = AutoTokenizer.from_pretrained(clip_dir)(["a red square"], return_tensors="pt")
    pixels = CLIPImageProcessor.from_pretrained(clip_dir)(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logit = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
    cosine = (logit.logits_per_image[0, 0] / model.logit_scale.exp()).item()
    assert scorer.clip_t(image, "a red square") == pytest.approx(cosine, abs=1e-5)
    assert scorer.clip_t(image, "a red square") != pytest.approx(scorer.clip_t(image, "a blue circle"), abs=1e-4)
    # Texts past the text encoder's 64 positions are cut to them: any two such texts with the same start score alike.
    assert scorer.clip_t(image, "a cat " * 100) == pytest.approx(scorer.clip_t(image, "a cat " * 200))


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
    assert case["lpips"] > 0 and case["sharpness"] > 0
    # CLIP-I compares the edit with its source, CLIP-T with the target caption.
    dog = next(case for case in load_cases("tedbench", data) if case.id == "000_dog")
    scorer, edited = CLIPScorer(str(clip_dir)), load_image(RunFolder(out).output(dog))
    assert case["clip_i"] == pytest.approx(scorer.clip_i(edited, dog.load_source()), abs=1e-6)
    assert case["clip_t"] == pytest.approx(scorer.clip_t(edited, "A photo of a sitting dog."), abs=1e-6)
    assert set(scores["overall"]) == {"lpips", "clip_i", "clip_t", "sharpness"} and "dog" in scores["categories"]
    assert main(["bench", "report", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    assert "| overall |" in markdown
    _shows_published(_published_table(markdown), "tedbench")
    page = (out / "report.html").read_text()
    assert "report/000_dog_source.jpg" in page and (out / "report" / "000_dog_output.jpg").is_file()


def test_official_scorers_need_a_checkout(tmp_path, tiny_dirs, capsys):
    out = tmp_path / "run"
    args = ["bench", "run", "--benchmark", "risebench", "--data", str(risebench(tmp_path / "r")), "--out", str(out)]
    assert main([*args, "--model", tiny_dirs["a14b"], *FAST, "--limit", "1"]) == 0
    assert main(["bench", "score", str(out)]) == 0
    assert "judge score needs --scorer-repo DIR: your checkout of https://github.com/PhoenixZ810/RISEBench" in (
        capsys.readouterr().err
    )
    assert main(["bench", "score", str(out), "--scorer-repo", str(tmp_path)]) == 1
    assert "the judge needs an endpoint: --judge-base-url URL" in capsys.readouterr().err


def _finished_run(out, benchmark, data):
    """A run folder whose every case is finished with its source as the output: enough for the scorers."""
    folder = RunFolder(out)
    with folder.claimed():
        settings = {"num_inference_steps": 2, "num_frames": 5, "tld_stride": 3, "refine": False}
        model = {"preset": "debug-tiny", "model_id": None}
        folder.write_manifest({"benchmark": benchmark, "data": str(data), "model": model, "settings": settings,
                               "seed": 0})  # fmt: skip
        for case in load_cases(benchmark, data):
            source = case.load_source()
            folder.write_case(case, compose_output(case, source, source), {"case": case_record(case)})
    return out


FAKE_RISEBENCH = """
import argparse, csv, json, os, re
parser = argparse.ArgumentParser()
for name in ("--data", "--output", "--input", "--model", "--prefix"):
    parser.add_argument(name)
args = parser.parse_args()
# The judge is always named, and its answers are kept apart from other judges'.
assert args.prefix == re.sub(r"[^A-Za-z0-9._-]+", "_", os.environ["IFEDIT_JUDGE_MODEL"]).strip("._"), args.prefix
with open(f"{args.output}/{args.prefix}_{args.model}_judge.csv", "w", newline="") as handle:
    rows = [["-", "Score-Origin", "Score-Percentage", "Accuracy"], ["Overall", 2.0, 25.0, 0.25],
            ["Temporal", 1.5, 12.5, 0.0], ["Overall_Reasoning", 2.5, 37.5, ""]]
    csv.writer(handle).writerows(rows + [["cases", len(json.load(open(args.data))), "", ""]])
"""


def test_risebench_official_scores_per_judge_in_percent(tmp_path, capsys):
    out = _finished_run(tmp_path / "run", "risebench", risebench(tmp_path / "rise"))
    repo = tmp_path / "RISEBench"
    repo.mkdir()
    (repo / "gpt_eval.py").write_text(FAKE_RISEBENCH)
    score = ["bench", "score", str(out), "--scorer-repo", str(repo), "--judge-base-url", "http://127.0.0.1:9/v1"]
    assert main(score) == 0
    official = json.loads((out / "scores.json").read_text())["official"]
    assert official["judge"]["model"] == "gpt-4.1-2025-04-14"
    assert official["comparable"] == {"overall": 25.0, "temporal_reasoning": 0.0}
    assert official["numbers"]["Overall"] == {"score_1_to_5": 2.0, "score_percent": 25.0, "accuracy_0_to_1": 0.25}
    assert official["numbers"]["cases"]["score_1_to_5"] == 4
    assert main(score + ["--judge-model", "other/judge v2"]) == 0
    assert json.loads((out / "scores.json").read_text())["official"]["judge"]["model"] == "other/judge v2"
    assert sorted(path.name for path in out.glob("*_judge.csv")) == [
        "gpt-4.1-2025-04-14_ifedit_judge.csv",
        "other_judge_v2_ifedit_judge.csv",
    ]
    assert main(["bench", "report", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    assert "## Published (arXiv 2511.19435), and this run on the same scale" in markdown
    table = _published_table(markdown)
    _shows_published(table, "risebench")
    this_run = [(metric, float(value)) for method, metric, value, _ in table if method == "this run"]
    assert this_run == [("overall", 25.0), ("temporal_reasoning", 0.0)]
    assert "| this run | overall | 25.000 | accuracy %: the official Accuracy (0-1) x 100" in markdown
    capsys.readouterr()
    missing = tmp_path / "no-python"
    assert main(score + ["--scorer-python", str(missing), "-q"]) == 1
    err = capsys.readouterr().err
    assert err == f"ifedit: error: --scorer-python {missing} cannot run: No such file or directory\n"


def test_bytemorph_scoring_starts_afresh_and_says_where_the_errors_are(tmp_path, capsys):
    out = _finished_run(tmp_path / "run", "bytemorph", bytemorph(tmp_path / "bm"))
    evaluation = tmp_path / "ByteMorph" / "ByteMorph-Eval"
    (evaluation / "utils").mkdir(parents=True)
    (evaluation / "utils" / "copy_json.py").write_text("")
    # Every judge call fails: the script only appends to its error log.
    (evaluation / "gpt_eval.py").write_text(
        "import sys\nroot = sys.argv[sys.argv.index('--output_root') + 1]\n"
        "open(f'{root}/error_log.txt', 'a').write('[API Error] 0001.png - 401 Unauthorized\\n')\n"
    )
    stale = [out / "official" / "0_camera_zoom" / "0001.score.json", out / "official" / "0_camera_zoom_avg_score.json"]
    stale[0].parent.mkdir(parents=True)
    for path in stale:
        path.write_text('{"Score": 90, "average_score": 90, "num_images": 1}')
    score = ["bench", "score", str(out), "--scorer-repo", str(evaluation.parent), "--judge-base-url", "http://x/v1"]
    assert main([*score, "-q"]) == 1
    log = out / "official" / "error_log.txt"
    err = capsys.readouterr().err
    assert err == f"ifedit: error: ByteMorph's gpt_eval.py scored no case (its errors are in {log})\n"
    assert not any(path.exists() for path in stale) and log.read_text().count("401") == 1


def test_imgedit_official_scorer_finds_the_source_images(tmp_path):
    out = _finished_run(tmp_path / "run", "imgedit", imgedit(tmp_path / "imgedit"))
    basic = tmp_path / "ImgEdit" / "Benchmark" / "Basic"
    basic.mkdir(parents=True)
    arguments = "import json, os, sys\nargs = dict(zip(sys.argv[1::2], sys.argv[2::2]))\n"
    (basic / "basic_bench.py").write_text(arguments + (
        "for key, item in json.load(open(args['--edit_json'])).items():\n"
        "    assert os.path.isfile(os.path.join(args['--origin_img_root'], item['id'])), item\n"
        "json.dump({}, open(os.path.join(args['--result_img_folder'], 'result.json'), 'w'))\n"
    ))  # fmt: skip
    (basic / "step1_get_avgscore.py").write_text(arguments + "json.dump({}, open(args['--average_score_json'], 'w'))")
    (basic / "step2_typescore.py").write_text(
        arguments + "json.dump({'adjust': 3.0, 'style': 2.0}, open(args['--typescore_json'], 'w'))"
    )
    assert main(["bench", "score", str(out), "--scorer-repo", str(basic.parent.parent), "--judge-base-url", "x"]) == 0
    official = json.loads((out / "scores.json").read_text())["official"]
    assert official["numbers"]["overall"] == 2.5 and official["comparable"] == {"overall": 2.5}
