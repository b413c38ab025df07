"""Photo loading and subject-folder validation: every bad-input case of issue 4, synthesised with PIL."""

from __future__ import annotations

import logging
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from varlit.data.images import (
    BadImageError,
    CropBox,
    load_rgb,
    needs_upscale,
    resize_and_crop,
    to_uint8_tensor,
    uint8_to_pm1,
)
from varlit.data.subjects import SubjectError, load_subject_photos


def make_photo(path: Path, size=(64, 48), seed: int = 0, fmt: str | None = None) -> Path:
    """A random-noise RGB photo (noise so that different seeds give different content hashes)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def write_png(
    path: Path, width: int, height: int, bit_depth: int, color_type: int, rows: list[bytes]
) -> Path:
    """A PNG written byte by byte, for what PIL cannot write (48-bit RGB) or must not decode (bombs)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\x00" + r for r in rows))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_truncated_jpeg_is_reported_with_file_and_reason(tmp_path):
    good = make_photo(tmp_path / "good.jpg", size=(256, 256), fmt="JPEG")
    data = good.read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError) as info:
        load_rgb(bad)
    assert info.value.path == bad
    assert "truncated" in str(info.value) and "cut.jpg" in str(info.value)


def test_corrupt_jpeg_header_is_reported(tmp_path):
    good = make_photo(tmp_path / "good.jpg", size=(128, 128), fmt="JPEG")
    data = bytearray(good.read_bytes())
    data[2:40] = b"\x00" * 38  # wipe the segment markers after SOI
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(bytes(data))
    with pytest.raises(BadImageError, match="broken.jpg"):
        load_rgb(bad)


def test_non_image_with_image_extension(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("these are my shopping notes, not a photo\n")
    with pytest.raises(BadImageError, match=r"notes\.png: not a recognised image"):
        load_rgb(bad)


def test_zero_byte_file(tmp_path):
    bad = tmp_path / "empty.jpg"
    bad.touch()
    with pytest.raises(BadImageError, match=r"empty\.jpg: empty file \(0 bytes\)"):
        load_rgb(bad)


def test_grayscale_becomes_rgb(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (10, 8), 77).save(path)
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (10, 8)
    assert img.getpixel((3, 3)) == (77, 77, 77)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=100)  # pure red in CMYK
    img = load_rgb(path)
    assert img.mode == "RGB"
    r, g, b = img.getpixel((8, 8))
    assert r > 230 and g < 30 and b < 30


def test_rgba_is_composited_on_white(tmp_path):
    path = tmp_path / "cutout.png"
    arr = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black ...
    arr[0, 0] = (10, 200, 30, 255)  # ... except one opaque green pixel
    Image.fromarray(arr, mode="RGBA").save(path)
    img = load_rgb(path)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (10, 200, 30)
    assert img.getpixel((2, 2)) == (255, 255, 255)


def test_palette_png_with_and_without_transparency(tmp_path):
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 200, 20, 20] + [0] * (256 * 3 - 6))
    pal.putpixel((0, 0), 0)
    plain, transparent = tmp_path / "pal.png", tmp_path / "pal_t.png"
    pal.save(plain)
    pal.save(transparent, transparency=0)
    assert load_rgb(plain).getpixel((1, 1)) == (200, 20, 20)
    assert load_rgb(plain).getpixel((0, 0)) == (0, 0, 0)
    assert load_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)
    assert load_rgb(transparent).getpixel((1, 1)) == (200, 20, 20)


def test_16bit_grayscale_png_is_rescaled_not_clipped(tmp_path):
    path = tmp_path / "gray16.png"
    arr = np.full((6, 6), 128 * 257, dtype=np.uint16)  # mid grey in 16 bits
    arr[0, 0] = 65535
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    img = load_rgb(path)
    assert img.mode == "RGB"
    assert img.getpixel((3, 3)) == (128, 128, 128)  # a plain convert("RGB") would give 255
    assert img.getpixel((0, 0)) == (255, 255, 255)


def test_16bit_rgb_png(tmp_path):
    # 2x1 pixels, 16 bits per channel: (65535, 0, 32896) and (0, 65535, 0), big-endian.
    row = struct.pack(">6H", 65535, 0, 128 * 257, 0, 65535, 0)
    path = write_png(tmp_path / "rgb48.png", 2, 1, bit_depth=16, color_type=2, rows=[row])
    img = load_rgb(path)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 0, 128)
    assert img.getpixel((1, 0)) == (0, 255, 0)


def test_exif_rotated_photo_comes_out_upright(tmp_path):
    # Upright: 20 wide x 40 tall, red top half, blue bottom half.
    upright = Image.new("RGB", (20, 40), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 20, 20))
    # A camera stores it rotated and sets orientation 6 ("rotate 90 degrees clockwise to display").
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif.tobytes(), quality=95)
    assert Image.open(path).size == (40, 20)
    img = load_rgb(path)
    assert img.size == (20, 40)
    top, bottom = img.getpixel((10, 5)), img.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_pixel_limit_guards_against_huge_images(tmp_path):
    path = make_photo(tmp_path / "big.png", size=(300, 200))
    assert load_rgb(path, max_pixels=60_000).size == (300, 200)
    with pytest.raises(
        BadImageError, match=r"big\.png: image is 300x200 = 60000 pixels, above the limit of 59999"
    ):
        load_rgb(path, max_pixels=59_999)


def test_decompression_bomb_header_is_rejected_before_decoding(tmp_path):
    # 60000 x 60000 1-bit PNG (3.6 gigapixels) whose data is a few bytes: PIL itself refuses to open it.
    path = write_png(tmp_path / "bomb.png", 60000, 60000, bit_depth=1, color_type=0, rows=[b""])
    with pytest.raises(BadImageError) as info:
        load_rgb(path, max_pixels=10**12)
    assert info.value.path == path and "decompression-bomb" in info.value.reason
    with pytest.raises(BadImageError, match="decompression-bomb guard"):
        load_rgb(path)  # the default limit too


def test_resize_covers_and_centre_crops():
    img = Image.new("RGB", (300, 100), (0, 0, 0))
    img.paste((255, 255, 255), (100, 0, 200, 100))  # white centre third
    out = resize_and_crop(img, (50, 50))
    assert out.size == (50, 50)
    assert out.getpixel((25, 25)) == (255, 255, 255)  # the centre survives the crop
    assert not needs_upscale(img.size, (50, 50))
    assert needs_upscale(img.size, (128, 128))
    up = resize_and_crop(img, (128, 256))
    assert up.size == (256, 128)
    flipped = resize_and_crop(img, (50, 50), box=CropBox(flip=True))
    assert np.array_equal(np.asarray(flipped), np.asarray(out)[:, ::-1])


def test_pixels_scale_to_minus_one_one():
    img = Image.new("RGB", (2, 1))
    img.putpixel((0, 0), (0, 0, 0))
    img.putpixel((1, 0), (255, 255, 255))
    t = uint8_to_pm1(to_uint8_tensor(img))
    assert t.shape == (3, 1, 2)
    assert torch.equal(t[:, 0, 0], torch.full((3,), -1.0)) and torch.equal(t[:, 0, 1], torch.ones(3))


# ---------------------------------------------------------------------- subject folders


def _three_good(folder: Path) -> list[Path]:
    folder.mkdir(exist_ok=True)
    return [make_photo(folder / f"{i:02d}.jpg", seed=i) for i in range(3)]


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(SubjectError, match=r"nowhere does not exist"):
        load_subject_photos(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SubjectError, match=r"empty holds no photos"):
        load_subject_photos(empty)
    (empty / "readme.txt").write_text("no photos here")
    (empty / ".DS_Store").write_bytes(b"\x00")
    with pytest.raises(SubjectError, match="holds no photos"):
        load_subject_photos(empty)


def test_error_policy_lists_every_bad_file(tmp_path):
    folder = tmp_path / "subj"
    _three_good(folder)
    (folder / "zero.jpg").touch()
    (folder / "text.png").write_text("hello")
    with pytest.raises(BadImageError) as info:
        load_subject_photos(folder, on_bad_image="error")
    msg = str(info.value)
    assert "2 unusable photo(s)" in msg
    assert f"{folder / 'zero.jpg'}: empty file (0 bytes)" in msg
    assert f"{folder / 'text.png'}: not a recognised image" in msg


def test_skip_policy_logs_each_skipped_file(tmp_path, caplog):
    folder = tmp_path / "subj"
    good = _three_good(folder)
    (folder / "zero.jpg").touch()
    (folder / "text.png").write_text("hello")
    with caplog.at_level(logging.WARNING, logger="varlit.data"):
        photos = load_subject_photos(folder, on_bad_image="skip")
    assert [p.path for p in photos] == good
    skipped = [r.getMessage() for r in caplog.records if "skipping bad image" in r.getMessage()]
    assert len(skipped) == 2
    assert any("zero.jpg" in m and "empty file" in m for m in skipped)
    assert any("text.png" in m and "not a recognised image" in m for m in skipped)


def test_fewer_than_min_usable_photos(tmp_path):
    folder = tmp_path / "subj"
    folder.mkdir()
    make_photo(folder / "a.jpg", seed=1)
    make_photo(folder / "b.jpg", seed=2)
    (folder / "c.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(SubjectError) as info:
        load_subject_photos(folder, on_bad_image="skip", min_images=3)
    assert "2 usable photo(s), fewer than min_images=3" in str(info.value)
    assert "c.jpg" in str(info.value)  # says which file was left out
    assert len(load_subject_photos(folder, on_bad_image="skip", min_images=2)) == 2


def test_duplicates_are_dropped_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "subj"
    good = _three_good(folder)
    shutil.copy(good[1], folder / "zz_copy.jpg")
    with caplog.at_level(logging.WARNING, logger="varlit.data"):
        photos = load_subject_photos(folder)
    assert [p.path for p in photos] == good
    dup = [r.getMessage() for r in caplog.records if "duplicate" in r.getMessage()]
    assert len(dup) == 1 and "zz_copy.jpg" in dup[0] and "01.jpg" in dup[0]


def test_on_bad_image_value_is_checked(tmp_path):
    _three_good(tmp_path / "s")
    with pytest.raises(ValueError, match="on_bad_image must be 'error' or 'skip', got 'ignore'"):
        load_subject_photos(tmp_path / "s", on_bad_image="ignore")  # type: ignore[arg-type]


def _coordinate_photo(w: int, h: int) -> Image.Image:
    """Red = column, green = row: every pixel says where it came from."""
    x = np.broadcast_to(np.arange(w, dtype=np.uint8)[None, :], (h, w))
    y = np.broadcast_to(np.arange(h, dtype=np.uint8)[:, None], (h, w))
    return Image.fromarray(np.ascontiguousarray(np.stack([x, y, np.zeros_like(x)], -1)))


@pytest.mark.parametrize(("w", "h", "left", "top"), [(100, 60, 20, 0), (60, 100, 0, 20), (60, 90, 0, 15)])
def test_the_default_crop_is_centred(w: int, h: int, left: int, top: int):
    """A 60x60 target needs no resize here, so the crop's corner pixels give its exact offset: the slack
    of the long side is split evenly (wide photos lose columns on both sides, tall ones rows)."""
    for box in (None, CropBox()):
        out = np.asarray(resize_and_crop(_coordinate_photo(w, h), (60, 60), box=box))
        assert out.shape == (60, 60, 3)
        assert (out[0, 0, 0], out[0, 0, 1]) == (left, top)
        assert (out[-1, -1, 0], out[-1, -1, 1]) == (left + 59, top + 59)
        assert (w - 60 - left, h - 60 - top) == (left, top)  # as much cut after as before
