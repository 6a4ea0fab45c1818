"""Reading user images (formats, orientation, limits) and atomic writes."""

import numpy as np
import PIL.Image
import pytest

from ifedit.errors import InvalidInputError, SetupError
from ifedit.io import atomic_path, check_output_path, load_image, save_json, staged_outputs, validate_image


def _write(image: PIL.Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "LA", "CMYK", "I;16", "1"])
def test_every_common_mode_becomes_rgb(tmp_path, mode):
    suffix = ".jpg" if mode == "CMYK" else ".png"
    image = PIL.Image.new("RGB", (80, 70), (200, 40, 10)).convert(mode)
    loaded = load_image(_write(image, tmp_path / f"image{suffix}"))
    assert loaded.mode == "RGB"
    assert loaded.size == (80, 70)


def test_transparent_pixels_become_white(tmp_path):
    image = PIL.Image.new("RGBA", (64, 64), (255, 0, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, 32, 64))
    loaded = np.asarray(load_image(_write(image, tmp_path / "alpha.png")))
    assert tuple(loaded[10, 10]) == (255, 255, 255)
    assert tuple(loaded[10, 50]) == (255, 0, 0)


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path):
    image = PIL.Image.fromarray(np.full((64, 64), 32768, dtype=np.uint16))
    loaded = np.asarray(load_image(_write(image, tmp_path / "deep.png")))
    assert loaded[0, 0, 0] == 128


def test_floating_point_gray_in_zero_to_one_is_scaled_not_made_black(tmp_path):
    image = PIL.Image.fromarray(np.full((64, 64), 0.5, dtype=np.float32))  # mode F, as scientific TIFFs hold it
    loaded = np.asarray(load_image(_write(image, tmp_path / "float.tiff")))
    assert loaded[0, 0, 0] in (127, 128)


def test_an_animated_image_is_edited_from_its_first_frame_and_says_so(tmp_path, caplog):
    frames = [PIL.Image.new("RGB", (64, 64), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    path = tmp_path / "moving.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with caplog.at_level("WARNING", logger="ifedit"):
        loaded = np.asarray(load_image(path))
    assert loaded[0, 0, 0] > 200 and loaded[0, 0, 2] < 50
    assert "moving.gif is animated (2 frames): editing its first frame" in caplog.text


def test_exif_orientation_is_honoured(tmp_path):
    image = PIL.Image.new("RGB", (128, 64), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 16, 16))  # a white corner at the top left
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    loaded = load_image(_write(image, tmp_path / "rotated.jpg", exif=exif, quality=95))
    assert loaded.size == (64, 128)
    pixels = np.asarray(loaded)
    assert pixels[4, 60].mean() > 200  # the white corner is now at the top right
    assert pixels[4, 4].mean() < 50


def test_missing_unreadable_and_non_image_files_are_named(tmp_path):
    with pytest.raises(InvalidInputError, match="image file not found: .*nope.png"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(InvalidInputError, match="image path is not a file"):
        load_image(tmp_path)
    (tmp_path / "loop.png").symlink_to("loop.png")
    with pytest.raises(InvalidInputError, match="image .*loop.png is a link to nothing"):
        load_image(tmp_path / "loop.png")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    with pytest.raises(InvalidInputError, match="not an image file: .*notes.png"):
        load_image(text)
    good = _write(PIL.Image.new("RGB", (80, 80)), tmp_path / "cut.png")
    good.write_bytes(good.read_bytes()[:60])
    with pytest.raises(InvalidInputError, match="damaged or truncated"):
        load_image(good)


def test_size_limits(tmp_path):
    with pytest.raises(InvalidInputError, match=r"too small: 63x100 px \(each side must be at least 64 px\)"):
        load_image(_write(PIL.Image.new("RGB", (63, 100)), tmp_path / "small.png"))
    huge = _write(PIL.Image.new("L", (8000, 5001)), tmp_path / "huge.png")
    with pytest.raises(InvalidInputError, match=r"too large: 8000x5001 px = 40.0 megapixels \(at most 40"):
        load_image(huge)
    with pytest.raises(InvalidInputError, match="image must be a PIL image, got str"):
        validate_image("cat.png")


def test_byte_limit_and_shown_name(tmp_path):
    noisy = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    path = _write(noisy, tmp_path / "upload123.png")
    assert load_image(path, max_bytes=path.stat().st_size).size == (256, 256)
    with pytest.raises(
        InvalidInputError, match=r"^image file is too large: cat\.png is 0\.2 MiB \(at most 0\.0625 MiB\)"
    ):
        load_image(path, max_bytes=2**16, name="cat.png")
    text = tmp_path / "upload456.png"
    text.write_text("not pixels")
    with pytest.raises(InvalidInputError, match=r"^not an image file: notes\.png \(expected"):
        load_image(text, name="notes.png")


def test_output_paths_are_checked_up_front(tmp_path):
    with pytest.raises(InvalidInputError, match="output folder does not exist"):
        check_output_path(tmp_path / "missing" / "out.png", overwrite=False)
    with pytest.raises(InvalidInputError, match=r"must end in one of \.png"):
        check_output_path(tmp_path / "out.gif", overwrite=False)
    existing = tmp_path / "out.png"
    existing.write_bytes(b"x")
    with pytest.raises(InvalidInputError, match="output exists: .*--overwrite"):
        check_output_path(existing, overwrite=False)
    assert check_output_path(existing, overwrite=True) == existing


def test_outputs_get_the_permissions_of_any_new_file(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_path(target) as temporary:
        temporary.write_text("x")
    (tmp_path / "plain.txt").write_text("x")
    assert target.stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "record.json"
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    save_json({"a": 1}, target)
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert list(tmp_path.iterdir()) == [target]


def test_an_overwrite_that_fails_puts_back_what_it_replaced_and_one_that_succeeds_leaves_nothing_else(tmp_path):
    image, record = tmp_path / "o.png", tmp_path / "o.json"
    image.write_bytes(b"old image")
    old_inode = image.stat().st_ino
    record.mkdir()  # a folder holds the record's name: its move fails after the image was placed
    failure = f"cannot write {record}: Is a directory; the previous outputs are kept"
    with (
        pytest.raises(SetupError, match=failure),
        staged_outputs({"image": image, "record": record}, overwrite=True) as staged,
    ):
        staged["image"].write_bytes(b"new image")
        staged["record"].write_text("{}")
    assert image.read_bytes() == b"old image" and image.stat().st_ino == old_inode  # the file itself, put back
    assert sorted(path.name for path in tmp_path.iterdir()) == ["o.json", "o.png"]  # no hidden second names

    record.rmdir()
    with staged_outputs({"image": image, "record": record}, overwrite=True) as staged:
        staged["image"].write_bytes(b"new image")
        staged["record"].write_text("{}")
    assert image.read_bytes() == b"new image" and record.read_text() == "{}"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["o.json", "o.png"]
