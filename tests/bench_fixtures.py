"""Small copies of the benchmarks in their official formats, and the fast settings the bench tests run with."""

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL.Image

# --no-lora: the tiny a14b folder gets the paper's recipe, whose LoRAs the benchmark tests have no use for
FAST = ["--steps", "2", "--frames", "5", "--height", "64", "--width", "64", "--refine-steps", "1", "-q", "--no-lora"]
SHARED_TEDBENCH = Path(__file__).resolve().parent.parent.parent / "shared" / "benchmarks" / "tedbench"
RISE_CATEGORIES = ("temporal_reasoning", "causal_reasoning", "spatial_reasoning", "logical_reasoning")


def picture(path: Path, seed: int, size=(64, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path)
    return path


def declared_png(path: Path, width: int, height: int, rows: int) -> Path:
    """A grayscale PNG whose header declares `width` x `height` but whose data holds only `rows` rows: a few
    kilobytes that Pillow opens without complaint and fails only to decode (or refuses to open, past its limit)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * (width + 1) * rows)[:-6]  # the stream cut short: more rows are needed
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def risebench(root: Path, per_category: int = 1) -> Path:
    """`data/data_total.json` and `data/{category}_images/`, as the RISEBench repository ships them."""
    entries = []
    for number in range(1, per_category + 1):
        for seed, category in enumerate(RISE_CATEGORIES):
            entry = {
                "index": f"{category}_{number}",
                "category": category,
                "instruction": f"show the scene after step {number} of {category.split('_')[0]} change",
                "image": f"{category}_images/{number}.png",
            }
            picture(root / "data" / entry["image"], seed * 100 + number)
            if category == "logical_reasoning":
                entry["reference_img"] = f"{category}_images/{number}_ref.png"
                picture(root / "data" / entry["reference_img"], seed * 100 + number + 50)
            else:
                entry["reference"] = "A rotten banana."
            entries.append(entry)
    (root / "data" / "data_total.json").write_text(json.dumps(entries, indent=2))
    return root


def imgedit(root: Path) -> Path:
    """`basic_edit.json` (key -> id, prompt, edit_type) with the images unpacked one folder down."""
    entries = {
        "1082": {"id": "animal/000342021.jpg", "prompt": "Make the shell smooth.", "edit_type": "adjust"},
        "673": {"id": "style/000278574.jpg", "prompt": "Turn it into a woodblock print.", "edit_type": "style"},
    }
    for seed, entry in enumerate(entries.values()):
        picture(root / "singleturn" / entry["id"], seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "basic_edit.json").write_text(json.dumps(entries))
    return root


def bytemorph(root: Path) -> Path:
    """The ground-truth folder of ByteMorph-Eval: `{edit_type}/{name}.png` as [source | target] and `{name}.json`."""
    for seed, (folder, name) in enumerate([("0_camera_zoom", "0001"), ("3_human_motion", "0002")]):
        picture(root / folder / f"{name}.png", seed, size=(128, 64))
        record = {"edit": "The person raises both arms.", "input": "A person.", "output": "A person, arms raised."}
        (root / folder / f"{name}.json").write_text(json.dumps(record))
    return root


def tedbench(root: Path) -> Path:
    """`input_list.json` and `originals/`, as TEdBench ships them."""
    picture(root / "originals" / "dog.png", 0)
    entries = [{"img_name": "dog.png", "target_text": "A photo of a sitting dog."},
               {"img_name": "dog.png", "target_text": "A photo of a jumping dog."}]  # fmt: skip
    (root / "input_list.json").write_text(json.dumps(entries))
    return root
