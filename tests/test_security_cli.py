"""Attacks on the command line: keys that must never show, numbers and images that must be refused before any
model loads, and writes that must leave either every output or none."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import PIL.Image
import pytest
import safetensors.torch

import ifedit.outputs
from chat_server import Reply, completion
from ifedit.cli import main

# --no-lora: the tiny a14b folder gets the paper's recipe, whose LoRAs these tests have no use for
FAST = ["--steps", "2", "--frames", "5", "--height", "64", "--width", "96", "--no-refine", "--no-lora"]
KEY = "sk-live-0123456789abcdef"


@pytest.fixture
def source(tmp_path, source_image):
    path = tmp_path / "source.png"
    source_image.save(path)
    return path


@pytest.fixture
def broken_model(tmp_path, tiny_dirs):
    """A model folder whose weights cannot load: a check that passes with it ran before the model was loaded."""
    folder = tmp_path / "broken-model"
    shutil.copytree(tiny_dirs["a14b"], folder)
    for weights in folder.rglob("*.safetensors"):
        weights.write_bytes(b"not weights")
    return str(folder)


def _run(capsys, *arguments: str) -> tuple[int, str]:
    try:
        code = main(list(arguments))
    except SystemExit as exit:  # argparse's own refusals
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _files(folder) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels in a few dozen bytes (its pixel data is cut short)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


def _gif_header(width: int, height: int) -> bytes:
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", width, height, 0, 0, 0)
        + b"\x2c"
        + struct.pack("<HHHHB", 0, 0, width, height, 0)
        + b"\x02\x02\x44\x01\x00\x3b"
    )


def test_abbreviated_key_option_is_refused_and_its_value_never_shown(tmp_path, source, capsys):
    spellings = (["--vlm-api-k", KEY], [f"--vlm-api-ke={KEY}"], ["--judge-api-k", KEY], ["--vlm-api-kye", KEY],
                 ["--vlm-apikye", KEY], ["--vlm-base", KEY])  # fmt: skip
    for spelling in spellings:
        command = "prompt" if "vlm" in spelling[0] else "bench"
        arguments = (
            [command, str(source), "x", *spelling] if command == "prompt" else ["bench", "score", "d", *spelling]
        )
        code, output = _run(capsys, *arguments)
        assert code == 2, output
        assert KEY not in output and "***" in output, output
        assert len(output.strip().splitlines()) == 1
        # The command refuses what it does not know, pointing to its own --help, which lists its options.
        assert output.rstrip().endswith(f"(see ifedit {' '.join(arguments[: 2 if command == 'bench' else 1])} --help)")


def test_key_echoed_by_the_server_is_masked_in_output_and_record(tmp_path, source, tiny_dirs, chat_server, capsys):
    # The server rejects the key and quotes it back, as some gateways do.
    echo = {"error": {"message": f"invalid key: Bearer {KEY}"}}
    chat_server.replies = [Reply(500, echo), Reply(500, echo), Reply(500, echo)]
    output = tmp_path / "o.png"
    code, printed = _run(
        capsys, "edit", str(source), "the square slides right", "-o", str(output), "--model", tiny_dirs["a14b"],
        *FAST, "--vlm-base-url", chat_server.url, "--vlm-api-model", "m", "--vlm-api-key", KEY,
    )  # fmt: skip
    assert code == 0, printed
    assert chat_server.requests and chat_server.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"
    everything = printed + "".join(path.read_text(errors="replace") for path in tmp_path.rglob("*") if path.is_file()
                                   and path.suffix in (".json", ".txt"))  # fmt: skip
    assert KEY not in everything
    record = json.loads(output.with_suffix(".json").read_text())
    assert "***" in json.dumps(record["prompt_enhancement"]["fallbacks"]) and "***" in record["argv"]


def test_key_from_the_environment_is_masked_too(tmp_path, source, chat_server, capsys, monkeypatch):
    monkeypatch.setenv("IFEDIT_VLM_API_KEY", KEY)
    chat_server.replies = [Reply(503, {"error": {"message": f"key {KEY} is revoked"}})] * 3
    code, printed = _run(capsys, "prompt", str(source), "the square slides right", "--vlm-base-url", chat_server.url,
                         "--vlm-api-model", "m", "--json")  # fmt: skip
    assert code == 0 and chat_server.requests
    assert KEY not in printed and "***" in printed


@pytest.mark.parametrize(
    "option, value",
    [
        ("--guidance", "inf"),
        ("--guidance", "nan"),
        ("--guidance-2", "-inf"),
        ("--lora-scale", "nan"),
        ("--refine-strength", "nan"),
        ("--tld-threshold", "NaN"),
        ("--first-block-cache", "inf"),
        ("--vlm-timeout", "inf"),
        ("--seed", "99999999999999999999"),
        ("--seed", "-1"),
        ("--height", "0"),
        ("--height", "-16"),
        ("--width", "100000"),
        ("--frames", "100001"),
        ("--steps", "5000"),
        ("--refine-steps", "0"),
    ],
)
def test_bad_number_is_refused_before_the_model_loads(tmp_path, source, broken_model, option, value, capsys):
    output = tmp_path / "o.png"
    code, printed = _run(capsys, "edit", str(source), "melt", "-o", str(output), "--model", broken_model,
                         f"{option}={value}")  # fmt: skip
    assert code == 2, printed
    assert len(printed.strip().splitlines()) == 1 and "error:" in printed
    assert re.search(r"seed|height|width|frames|steps|number", printed), printed
    assert not output.exists()


def test_bench_run_refuses_a_bad_seed_before_anything(tmp_path, broken_model, capsys):
    code, printed = _run(capsys, "bench", "run", "--benchmark", "tedbench", "--data", str(tmp_path), "--out",
                         str(tmp_path / "run"), "--model", broken_model, "--seed", str(2**70))  # fmt: skip
    assert code == 2 and "seed must be a whole number" in printed
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "name, data",
    [
        ("bomb.png", _png_header(30000, 30000)),
        ("wide.png", _png_header(1_000_000, 200)),
        ("warning_zone.png", _png_header(10000, 10000)),
        ("bomb.gif", _gif_header(65535, 65535)),
    ],
)
def test_decompression_bomb_is_a_bad_image(tmp_path, broken_model, name, data, capsys):
    bomb = tmp_path / name
    bomb.write_bytes(data)
    assert bomb.stat().st_size < 2000
    for arguments in (
        ["edit", str(bomb), "melt", "-o", str(tmp_path / "o.png"), "--model", broken_model],
        ["prompt", str(bomb), "melt"],
    ):
        code, printed = _run(capsys, *arguments)
        assert code == 2, printed
        assert len(printed.strip().splitlines()) == 1 and "too large" in printed, printed
        assert "Error" not in printed  # no exception class names
    assert not (tmp_path / "o.png").exists()


def test_unwritable_output_folder_is_found_before_the_model_loads(tmp_path, source, broken_model, capsys):
    # /proc/self is a folder that nobody, root included, can create files in.
    code, printed = _run(capsys, "edit", str(source), "melt", "-o", "/proc/self/edited.png", "--model", broken_model)
    assert code == 2 and "cannot write into the output folder /proc/self" in printed, printed
    frames = _run(capsys, "edit", str(source), "melt", "-o", str(tmp_path / "o.png"), "--model", broken_model,
                  "--save-frames", "/proc/self/frames")  # fmt: skip
    assert frames[0] == 2 and "cannot write into the output folder /proc/self" in frames[1]
    # An existing frames folder is probed itself: /proc/self/fdinfo exists and takes no new file.
    existing = _run(capsys, "edit", str(source), "melt", "-o", str(tmp_path / "o.png"), "--model", broken_model,
                    "--save-frames", "/proc/self/fdinfo", "--overwrite")  # fmt: skip
    assert existing[0] == 2 and "cannot write into the output folder /proc/self/fdinfo" in existing[1], existing


def _limit_file_size():
    # A file-size limit fails writes past it with EFBIG, as a full disk fails them with ENOSPC.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))


def test_full_disk_leaves_neither_image_nor_record(tmp_path, source, tiny_dirs):
    out = tmp_path / "out"
    out.mkdir()
    completed = subprocess.run(
        [sys.executable, "-m", "ifedit", "edit", str(source), "the square slides right", "-o", str(out / "o.png"),
         "--model", tiny_dirs["a14b"], *FAST, "--save-frames", str(out / "frames"), "--prompt-enhancer", "template"],
        capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 1, completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert "no output was kept" in lines[-1] and "Traceback" not in completed.stderr
    assert _files(out) == []


def test_an_overwrite_that_fails_puts_the_previous_outputs_back(tmp_path, source, tiny_dirs, capsys):
    out = tmp_path / "out"
    frames = out / "frames"
    frames.mkdir(parents=True)
    previous = {out / "o.png": b"old image", out / "o.json": b"{}", frames / "edit_000.png": b"old frame"}
    for path, content in previous.items():
        path.write_bytes(content)
    (frames / "edit_candidates.png").mkdir()  # a folder where the edit writes its candidate sheet: the move fails
    code, printed = _run(capsys, "edit", str(source), "the square slides right", "-o", str(out / "o.png"), "--model",
                         tiny_dirs["a14b"], *FAST, "--save-frames", str(frames), "--overwrite")  # fmt: skip
    assert code == 1, printed
    last = printed.strip().splitlines()[-1]
    assert f"cannot write {frames / 'edit_candidates.png'}" in last and "previous outputs are kept" in last, printed
    assert {path: path.read_bytes() for path in previous} == previous
    assert sorted(path.name for path in frames.iterdir()) == ["edit_000.png", "edit_candidates.png"]
    assert sorted(path.name for path in out.iterdir()) == ["frames", "o.json", "o.png"]


def test_interrupt_while_saving_frames_leaves_nothing(tmp_path, source, tiny_dirs, capsys, monkeypatch):
    written = []

    def save_then_interrupt(frames, folder, prefix):
        written.extend(real_save_frames(frames, folder, prefix)[:2])
        raise KeyboardInterrupt  # Ctrl-C halfway through the frames

    real_save_frames = ifedit.outputs.save_frames
    monkeypatch.setattr(ifedit.outputs, "save_frames", save_then_interrupt)
    out = tmp_path / "out"
    out.mkdir()
    code, printed = _run(capsys, "edit", str(source), "the square slides right", "-o", str(out / "o.png"), "--model",
                         tiny_dirs["a14b"], *FAST, "--save-frames", str(out / "frames"))  # fmt: skip
    assert code == 130 and written, printed
    assert "were not written" in printed
    assert _files(out) == []


@pytest.mark.parametrize("option", ["instruction", "--prompt"])
def test_control_characters_in_typed_text_are_refused(tmp_path, source, broken_model, option, capsys):
    output = tmp_path / "o.png"
    hostile = "the square\x1b[2J\x1b]0;owned\x07 slides\x00 right"
    text = ["melt", "--prompt", hostile] if option == "--prompt" else [hostile]
    code, printed = _run(capsys, "edit", str(source), *text, "-o", str(output), "--model", broken_model)
    assert code == 2 and f"{option}: text holds the control character U+001B" in printed, printed
    assert len(printed.strip().splitlines()) == 1
    for sequence in ("\x1b", "\x07", "\x00"):
        assert sequence not in printed
    assert not output.exists()


def test_joiners_in_typed_text_are_kept(tmp_path, source, tiny_dirs):
    output = tmp_path / "o.png"
    instruction = "the square turns into 👩\u200d🚀 (می\u200cخواهم)"
    assert main(["edit", str(source), instruction, "-o", str(output), "--model", tiny_dirs["a14b"], *FAST, "-q"]) == 0
    assert json.loads(output.with_suffix(".json").read_text())["instruction"] == instruction


def test_records_are_strict_json(tmp_path):
    from ifedit.io import save_json

    path = tmp_path / "record.json"
    save_json({"sharpness": {"0": float("nan"), "1": float("inf")}, "scale": [float("-inf"), 1.5]}, path)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text

    def refuse(name):
        raise ValueError(name)

    assert json.loads(text, parse_constant=refuse) == {"sharpness": {"0": None, "1": None}, "scale": [None, 1.5]}


def test_outputs_get_the_umask_mode_not_a_private_one(tmp_path, source, tiny_dirs):
    old = os.umask(0o022)
    try:
        assert main(["edit", str(source), "melt", "-o", str(tmp_path / "o.png"), "--model", tiny_dirs["a14b"],
                     *FAST, "-q"]) == 0  # fmt: skip
    finally:
        os.umask(old)
    assert (tmp_path / "o.png").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "o.json").stat().st_mode & 0o777 == 0o644
    assert PIL.Image.open(tmp_path / "o.png").size == (96, 64)


def test_key_split_by_invisible_characters_in_an_answer_is_masked(tmp_path, source, chat_server, capsys):
    split = KEY[:6] + "\u200b" + KEY[6:12] + "\x1b[0m" + KEY[12:]
    answer = f"A fixed shot of the red square; it slowly slides to the right across the plain floor. token {split}."
    chat_server.replies = [Reply(200, completion(answer))]
    for extra in ([], ["--json"]):
        server = ["--vlm-base-url", chat_server.url, "--vlm-api-model", "m", "--vlm-api-key", KEY, "--no-cache"]
        code, printed = _run(capsys, "prompt", str(source), "the square slides right", *server, *extra)
        assert code == 0 and chat_server.requests, printed
        assert KEY not in printed and "\u200b" not in printed and "\x1b" not in printed, printed
        chat_server.replies = [Reply(200, completion(answer))]


@pytest.mark.parametrize("body", [lambda key: f"invalid key {key[:-3]}", lambda key: "bad key \\u0073" + key[1:]])
def test_a_refused_key_is_never_quoted_back(tmp_path, source, chat_server, capsys, body):
    chat_server.replies = [Reply(401, {"error": {"message": body(KEY)}})]
    code, printed = _run(capsys, "prompt", str(source), "the square slides right", "--vlm-base-url", chat_server.url,
                         "--vlm-api-model", "m", "--vlm-api-key", KEY)  # fmt: skip
    assert code == 0 and "refused the API key (HTTP 401)" in printed
    assert KEY[:12] not in printed and KEY[-12:] not in printed


@pytest.mark.parametrize("spelling", ["--VLM-API-KEY", "--vlm-api_key", "--vlm-apikey", "--vlm-token", "-vlm-api-key"])
def test_misspelt_key_options_never_show_the_key(source, spelling, capsys):
    for arguments in ([spelling, KEY], [f"{spelling}={KEY}"], [f"{spelling}:{KEY}"]):
        code, printed = _run(capsys, "prompt", str(source), "x", *arguments)
        assert code == 2 and KEY not in printed, printed


@pytest.mark.parametrize("value", ["1e10", "1e308", "0", "-1"])
def test_vlm_timeout_out_of_range_is_refused(source, value, capsys):
    code, printed = _run(capsys, "prompt", str(source), "melt", f"--vlm-timeout={value}", "--vlm-base-url",
                         "http://127.0.0.1:9/v1", "--vlm-api-model", "m")  # fmt: skip
    assert code == 2 and "--vlm-timeout must be" in printed


@pytest.mark.parametrize("option", ["--negative-prompt", "--refine-prompt"])
def test_control_characters_in_other_typed_prompts_are_refused(tmp_path, source, broken_model, option, capsys):
    code, printed = _run(capsys, "edit", str(source), "melt", "-o", str(tmp_path / "o.png"), "--model", broken_model,
                         option, "blur\u202eevil\x1b[31m")  # fmt: skip
    assert code == 2 and f"{option}: text holds the control character" in printed and "\x1b" not in printed


def test_output_names_that_collide_are_refused_before_loading(tmp_path, source, broken_model, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.json").mkdir()
    for arguments, message in (
        (["-o", str(out / "a.png"), "--save-frames", str(out / "a.png")], "also the name of an output file"),
        (["-o", str(out / "a.png"), "--save-frames", str(out / "a.json")], "also the name of an output file"),
        (["-o", str(out / "b.png"), "--overwrite"], "b.json is a folder"),
    ):
        code, printed = _run(capsys, "edit", str(source), "melt", *arguments, "--model", broken_model)
        assert code == 2 and message in printed, printed
    assert _files(out) == ["b.json"]


def test_a_dangling_link_at_the_output_is_not_replaced_without_overwrite(tmp_path, source, broken_model, capsys):
    (tmp_path / "o.png").symlink_to(tmp_path / "elsewhere.png")
    code, printed = _run(capsys, "edit", str(source), "melt", "-o", str(tmp_path / "o.png"), "--model", broken_model)
    assert code == 2 and "output exists" in printed
    assert (tmp_path / "o.png").is_symlink() and not (tmp_path / "elsewhere.png").exists()


def test_a_path_that_is_not_utf8_is_recorded_as_strict_json(tmp_path, source, tiny_dirs, capsys):
    odd = tmp_path / os.fsdecode(b"\xff-source.png")
    shutil.copy(source, odd)
    output = tmp_path / os.fsdecode(b"\xfe-out.png")
    code, printed = _run(capsys, "edit", str(odd), "the square slides right", "-o", str(output), "--model",
                         tiny_dirs["a14b"], *FAST)  # fmt: skip
    assert code == 0, printed
    record = json.loads(output.with_suffix(".json").read_bytes().decode("utf-8"))
    assert record["source"]["path"] == str(odd.resolve())


def _edit_process(source, output, model, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "ifedit", "edit", str(source), "the square slides right", "-o", str(output), "--model",
         model, "--prompt-enhancer", "template", "--no-lora", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_sigterm_during_an_edit_leaves_nothing(tmp_path, source, tiny_dirs):
    out = tmp_path / "out"
    out.mkdir()
    process = _edit_process(source, out / "o.png", tiny_dirs["a14b"], "--steps", "200", "--frames", "33",
                            "--height", "64", "--width", "96", "--save-frames", str(out / "frames"))  # fmt: skip
    for line in process.stderr:  # the edit has started once the model is loading
        if "loading" in line:
            break
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM  # as a shell reports a run SIGTERM ended
    assert "interrupted" in process.stderr.read()
    assert _files(out) == []


def test_two_runs_never_replace_each_others_output_without_overwrite(tmp_path, source, tiny_dirs):
    output = tmp_path / "o.png"
    runs = [_edit_process(source, output, tiny_dirs["a14b"], *FAST, "--seed", str(seed)) for seed in (11, 22)]
    codes = [run.wait(timeout=300) for run in runs]
    errors = [run.stderr.read() for run in runs]
    assert sorted(codes) == [0, 1] or codes == [0, 2] or codes == [2, 0], (codes, errors)
    loser = codes.index(max(codes))
    assert "output exists" in errors[loser] and "Traceback" not in errors[loser]
    winner_seed = (11, 22)[1 - loser]
    assert json.loads(output.with_suffix(".json").read_text())["seed"] == winner_seed
    assert sorted(path.name for path in tmp_path.iterdir()) == ["o.json", "o.png", "source.png"]


DEEP = "[" * 100_000  # parsing it overflows Python's recursion limit
WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


@pytest.mark.parametrize(
    ("part", "text", "reason"),
    [("model_index.json", DEEP, "nested too deeply"),
     ("model_index.json", "[1, 2]", "expected an object for a pipeline's index, got a list"),
     ("model_index.json", "{}", "_class_name|is not a Wan pipeline"),
     ("model_index.json", lambda index: {**index, "transformer_2": 5}, "transformer_2"),
     ("transformer/config.json", DEEP, "nested too deeply"),
     ("transformer/config.json", '["a list"]', "expected an object"),
     ("vae/config.json", '{"z_dim": ' * 50_000, "nested too deeply"),
     (WEIGHTS, struct.pack("<Q", 2**62) + b"{}", "header of 4611686018427387904 bytes")],
)  # fmt: skip
def test_a_model_folder_with_damaged_files_is_one_line_naming_the_folder(tmp_path, source, tiny_dirs, capsys, part,
                                                                         text, reason):  # fmt: skip
    """A model folder is the user's or a download's: a config of the wrong shape or nested without end, or a
    weights header claiming exabytes, is one line naming the folder (the plan, which reads the files itself, says
    what is wrong), never a traceback or gigabytes read."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_dirs["a14b"], folder)
    if callable(text):  # a change to the real file
        text = json.dumps(text(json.loads((folder / part).read_text())))
    (folder / part).write_bytes(text if isinstance(text, bytes) else text.encode())
    output = tmp_path / "o.png"
    for command in (["plan", "--gpu-memory", "24"], ["edit", str(source), "melt", "-o", str(output), *FAST]):
        code, printed = _run(capsys, *command, "--model", str(folder))
        errors = [line for line in printed.splitlines() if "error:" in line]  # beside the offline-prompt notice
        assert code != 0 and "Traceback" not in printed and len(errors) == 1, printed
        assert str(folder) in errors[0], printed
        if command[0] == "plan" or part == "model_index.json":
            assert re.search(reason, errors[0]), printed
    assert not output.exists()


@pytest.mark.parametrize("damage", ["a tensor removed", "another part's file"])
def test_weights_lacking_tensors_are_one_line_naming_the_part(tmp_path, source, tiny_dirs, capsys, damage):
    """diffusers loads a weights file that lacks some of the model's tensors by leaving those without data; placing
    the model then failed inside torch ("Cannot copy out of meta tensor")."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_dirs["a14b"], folder)
    if damage == "a tensor removed":
        tensors = safetensors.torch.load_file(folder / WEIGHTS)
        tensors.pop(sorted(tensors)[0])
        safetensors.torch.save_file(tensors, folder / WEIGHTS)
    else:
        shutil.copy(folder / "vae" / "diffusion_pytorch_model.safetensors", folder / WEIGHTS)
    output = tmp_path / "o.png"
    code, printed = _run(capsys, "edit", str(source), "melt", "-o", str(output), *FAST, "--model", str(folder))
    errors = [line for line in printed.splitlines() if "error:" in line]
    assert code != 0 and "Traceback" not in printed and len(errors) == 1, printed
    assert f"could not load the pipeline in {folder}: the transformer weights lack" in errors[0]
    assert not output.exists()


def test_no_output_replaces_the_source_image_even_with_overwrite(tmp_path, source, tiny_dirs, capsys):
    photo = tmp_path / "in" / "photo.json"  # a PNG under the name the record of photo.png would take
    photo.parent.mkdir()
    shutil.copy(source, photo)
    kept = photo.read_bytes()
    cases = [
        (["-o", str(photo.with_suffix(".png"))], "the record output .*photo.json is the source image"),
        (["-o", str(photo)], "must end in one of"),  # a .json image as -o is refused by its suffix already
        (["-o", str(tmp_path / "o.png"), "--save-frames", str(photo.parent)], "--save-frames .*in holds the source"),
    ]
    for extra, message in cases:
        code, printed = _run(capsys, "edit", str(photo), "melt", *extra, "--overwrite", *FAST, "--model",
                             tiny_dirs["a14b"])  # fmt: skip
        assert code == 2 and re.search(message, printed), printed
    same = tmp_path / "same.png"
    shutil.copy(source, same)
    code, printed = _run(capsys, "edit", str(same), "melt", "-o", str(same), "--overwrite", *FAST, "--model",
                         tiny_dirs["a14b"])  # fmt: skip
    assert code == 2 and "the image output" in printed and "is the source image" in printed
    assert photo.read_bytes() == kept and same.read_bytes() == source.read_bytes()
    assert sorted(path.name for path in photo.parent.iterdir()) == ["photo.json"]


def test_names_too_long_and_frame_folders_that_are_not_folders_are_one_line_before_work(tmp_path, source, tiny_dirs,
                                                                                       capsys):  # fmt: skip
    """A name over the file system's limit raised from Path.exists(); one a little under it passed every check and
    failed only when the finished edit's temporary copies were written."""
    model = ["--model", tiny_dirs["a14b"], *FAST]
    (tmp_path / "file").write_text("x")
    (tmp_path / "nowhere").symlink_to(tmp_path / "missing")
    out = str(tmp_path / "o.png")
    cases = [
        ([str(tmp_path / ("a" * 300 + ".png")), "-o", out], "cannot open the image .*File name too long"),
        ([str(source), "-o", str(tmp_path / ("b" * 300 + ".png"))], "output name is too long: 300 bytes"),
        ([str(source), "-o", str(tmp_path / ("c" * 230 + ".png"))], "output name is too long: 230 bytes"),
        ([str(source), "-o", str(tmp_path / "file" / "o.png")], "output folder is not a folder"),
        ([str(source), "-o", out, "--save-frames", str(tmp_path / "nowhere")], "is a link to nothing"),
        ([str(source), "-o", out, "--save-frames", str(tmp_path / "file")], "file is a file; name a folder"),
        ([str(source), "-o", out, "--save-frames", str(tmp_path / ("f" * 240))], "output name is too long: 240 bytes"),
    ]
    for arguments, message in cases:
        code, printed = _run(capsys, "edit", arguments[0], "melt", *arguments[1:], *model)
        assert code == 2 and len(printed.strip().splitlines()) == 1 and re.search(message, printed), printed
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file", "nowhere", "source.png"]
