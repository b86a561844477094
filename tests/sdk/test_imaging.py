"""Tests for covip.sdk.imaging: every way a photo can come in, and every way it can be bad."""

from __future__ import annotations

import hashlib
import io
import struct
import subprocess
import sys
import textwrap
import zlib
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from covip.sdk.errors import (
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    InputError,
    NotAnImageError,
    TruncatedImageError,
)
from covip.sdk.imaging import DEFAULT_MAX_PIXELS, Photo, image_to_png_bytes, load_photo


def _save(img: Image.Image, path: Path, fmt: str, **kwargs) -> Path:
    img.save(path, format=fmt, **kwargs)
    return path


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _gradient(width: int = 48, height: int = 32) -> Image.Image:
    """An RGB image whose pixels differ so rotation and cropping are visible."""
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None].repeat(width, 1)
    arr = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    return Image.fromarray(arr)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height RGB pixels but whose data is a few bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


# ----------------------------------------------------------------------------- inputs


def test_jpeg_path_fields_and_hash(tmp_path: Path) -> None:
    path = _save(_gradient(), tmp_path / "a.jpg", "JPEG", quality=90)
    photo = load_photo(path)
    assert isinstance(photo, Photo)
    assert photo.format == "JPEG" and photo.extension == ".jpg"
    assert (photo.width, photo.height) == (48, 32) == photo.image.size
    assert photo.image.mode == "RGB"
    assert photo.data == path.read_bytes()
    assert photo.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert photo.source_path == path.absolute()
    assert photo.taken_at is None and photo.gps is None


def test_str_path_and_bytes_give_same_photo(tmp_path: Path) -> None:
    path = _save(_gradient(), tmp_path / "a.png", "PNG")
    from_str = load_photo(str(path))
    from_bytes = load_photo(path.read_bytes())
    assert from_str.sha256 == from_bytes.sha256
    assert from_bytes.source_path is None
    assert from_bytes.extension == ".png"
    assert np.array_equal(np.asarray(from_str.image), np.asarray(from_bytes.image))
    assert np.array_equal(np.asarray(from_bytes.image), np.asarray(_gradient()))
    assert load_photo(bytearray(path.read_bytes())).sha256 == from_str.sha256


def test_photo_passes_through_unchanged(tmp_path: Path) -> None:
    photo = load_photo(_png_bytes(_gradient()))
    assert load_photo(photo) is photo
    assert load_photo(photo, max_pixels=1) is photo
    assert photo == load_photo(_png_bytes(_gradient()))  # compares hash and metadata, not pixels
    assert hash(photo) == hash(load_photo(_png_bytes(_gradient())))


def test_pil_input_is_encoded_to_png_and_round_trips() -> None:
    src = _gradient()
    photo = load_photo(src)
    assert photo.format == "PNG" and photo.extension == ".png"
    assert photo.sha256 == hashlib.sha256(photo.data).hexdigest()
    assert photo.image is not src
    assert np.array_equal(np.asarray(photo.image), np.asarray(src))
    again = load_photo(photo.data)
    assert np.array_equal(np.asarray(again.image), np.asarray(src))
    assert load_photo(_gradient()).sha256 == photo.sha256  # encoding is deterministic


def test_pil_rgba_input_is_flattened_over_white() -> None:
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    photo = load_photo(img)
    assert photo.image.mode == "RGB"
    assert photo.image.getpixel((0, 0)) == (255, 255, 255)


def test_pil_input_keeps_exif_and_orientation(tmp_path: Path) -> None:
    path = tmp_path / "o.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    exif.get_ifd(0x8769)[0x9003] = "2021:01:02 03:04:05"
    _gradient(40, 20).save(path, "JPEG", exif=exif)
    with Image.open(path) as opened:
        photo = load_photo(opened)
    assert (photo.width, photo.height) == (20, 40)
    assert photo.taken_at == datetime(2021, 1, 2, 3, 4, 5)
    again = load_photo(photo.data)  # the PNG keeps the time but no longer needs rotating
    assert (again.width, again.height) == (20, 40)
    assert again.taken_at == datetime(2021, 1, 2, 3, 4, 5)


def test_wrong_type_is_input_error() -> None:
    with pytest.raises(InputError, match="cannot take a photo from a int"):
        load_photo(42)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="max_pixels"):
        load_photo(b"x", max_pixels=0)


# ----------------------------------------------------------------------------- EXIF


def test_exif_orientation_6_rotates(tmp_path: Path) -> None:
    img = _gradient(60, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    path = _save(img, tmp_path / "rot.jpg", "JPEG", exif=exif, quality=95)
    photo = load_photo(path)
    assert (photo.width, photo.height) == (20, 60)
    assert photo.image.size == (20, 60)
    expected = np.asarray(img.transpose(Image.Transpose.ROTATE_270), dtype=np.int16)
    got = np.asarray(photo.image, dtype=np.int16)
    assert np.abs(got - expected).mean() < 6  # JPEG noise only, not a different orientation
    assert photo.data == path.read_bytes()  # stored bytes are the original file


def test_exif_datetime_original_and_gps(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0132] = "2000:01:01 00:00:00"  # DateTime: must lose to DateTimeOriginal
    exif.get_ifd(0x8769)[0x9003] = "2023:07:14 18:30:05"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (52.0, 31.0, 12.0)
    gps[3], gps[4] = "W", (13.0, 24.0, 36.0)
    path = _save(_gradient(), tmp_path / "exif.jpg", "JPEG", exif=exif)
    photo = load_photo(path)
    assert photo.taken_at == datetime(2023, 7, 14, 18, 30, 5)
    assert photo.taken_at.tzinfo is None
    assert photo.gps is not None
    lat, lon = photo.gps
    assert lat == pytest.approx(52 + 31 / 60 + 12 / 3600, abs=1e-6)
    assert lon == pytest.approx(-(13 + 24 / 60 + 36 / 3600), abs=1e-6)


def test_exif_datetime_fallback_and_bad_values(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0132] = "2019:12:31 23:59:58"
    photo = load_photo(_save(_gradient(), tmp_path / "dt.jpg", "JPEG", exif=exif))
    assert photo.taken_at == datetime(2019, 12, 31, 23, 59, 58)

    bad = Image.Exif()
    bad.get_ifd(0x8769)[0x9003] = "0000:00:00 00:00:00"
    g = bad.get_ifd(0x8825)
    g[1], g[2], g[3], g[4] = "N", (123.0, 0.0, 0.0), "E", (1.0, 0.0, 0.0)  # latitude out of range
    photo = load_photo(_save(_gradient(), tmp_path / "bad.jpg", "JPEG", exif=bad))
    assert photo.taken_at is None and photo.gps is None


# ----------------------------------------------------------------------------- modes


def test_rgba_png_composited_over_white(tmp_path: Path) -> None:
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[..., 0] = 255
    arr[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
    photo = load_photo(_save(Image.fromarray(arr), tmp_path / "rgba.png", "PNG"))
    assert photo.image.mode == "RGB"
    assert photo.image.getpixel((0, 0)) == (255, 0, 0)
    assert photo.image.getpixel((0, 3)) == (255, 255, 255)


def test_la_png(tmp_path: Path) -> None:
    img = Image.new("LA", (4, 4), (0, 128))
    r, g, b = load_photo(_save(img, tmp_path / "la.png", "PNG")).image.getpixel((1, 1))
    assert r == g == b and 120 <= r <= 135  # half-transparent black over white is mid grey


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 255] + [0, 255, 0] + [0, 0, 0] * 254)
    img.putpixel((0, 0), 1)
    img.info["transparency"] = 0
    path = _save(img, tmp_path / "p.png", "PNG", transparency=0)
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" in check.info
    photo = load_photo(path)
    assert photo.image.getpixel((0, 0)) == (0, 255, 0)
    assert photo.image.getpixel((2, 2)) == (255, 255, 255)  # transparent index -> white


def test_palette_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (6, 6), c).convert("P") for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    photo = load_photo(path)
    assert photo.format == "GIF" and photo.extension == ".gif"
    assert photo.image.getpixel((3, 3)) == (255, 0, 0)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    img = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red in CMYK
    photo = load_photo(_save(img, tmp_path / "cmyk.jpg", "JPEG", quality=95))
    r, g, b = photo.image.getpixel((4, 4))
    assert photo.image.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_cmyk_tiff(tmp_path: Path) -> None:
    img = Image.new("CMYK", (8, 8), (255, 0, 255, 0))  # green
    photo = load_photo(_save(img, tmp_path / "cmyk.tif", "TIFF"))
    assert photo.format == "TIFF" and photo.extension == ".tiff"
    assert photo.image.getpixel((0, 0)) == (0, 255, 0)


def test_16bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    path = _save(img, tmp_path / "g16.png", "PNG")
    photo = load_photo(path)
    values = [photo.image.getpixel((x, 0))[0] for x in range(4)]
    assert values[0] == 0 and values[3] == 255
    assert 126 <= values[2] <= 129  # mid-range stays mid-grey (clipping would give 255)
    assert values[1] <= 2


def test_32bit_int_and_float_modes() -> None:
    i_img = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert [load_photo(i_img).image.getpixel((x, 0))[0] for x in range(2)] == [0, 255]
    f_img = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert [load_photo(f_img).image.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    wide = Image.fromarray(np.array([[-1000.0, 1000.0]], dtype=np.float32))
    assert [load_photo(wide).image.getpixel((x, 0))[0] for x in range(2)] == [0, 255]


def test_grey_and_bilevel(tmp_path: Path) -> None:
    grey = load_photo(_save(Image.new("L", (5, 5), 77), tmp_path / "l.png", "PNG"))
    assert grey.image.getpixel((2, 2)) == (77, 77, 77)
    bilevel = Image.new("1", (5, 5), 0)
    bilevel.putpixel((1, 1), 1)
    photo = load_photo(_save(bilevel, tmp_path / "one.png", "PNG"))
    assert photo.image.getpixel((1, 1)) == (255, 255, 255)
    assert photo.image.getpixel((0, 0)) == (0, 0, 0)


def test_image_to_png_bytes_handles_cmyk() -> None:
    data = image_to_png_bytes(Image.new("CMYK", (3, 3), (0, 0, 0, 0)))
    with Image.open(io.BytesIO(data)) as back:
        assert back.format == "PNG" and back.mode == "RGB"


# ----------------------------------------------------------------------------- bad inputs


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    with pytest.raises(InputError, match="does not exist") as info:
        load_photo(missing)
    assert str(missing) in str(info.value)
    assert not isinstance(info.value, ImageError)


def test_directory_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a directory") as info:
        load_photo(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_zero_bytes(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(EmptyImageError, match="empty") as info:
        load_photo(empty)
    assert str(empty) in str(info.value)
    with pytest.raises(EmptyImageError):
        load_photo(b"")


def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("these are not pixels\n" * 10)
    with pytest.raises(NotAnImageError, match="not an image") as info:
        load_photo(text)
    assert str(text) in str(info.value) and "JPEG, PNG" in str(info.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_half(tmp_path: Path, fmt: str) -> None:
    buf = io.BytesIO()
    _gradient(128, 96).save(buf, format=fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedImageError, match="truncated or corrupt") as info:
        load_photo(path)
    assert str(path) in str(info.value) and "copy or export it again" in str(info.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_png_body() -> None:
    rng = np.random.default_rng(0)
    data = bytearray(_png_bytes(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))))
    idat = data.index(b"IDAT")
    for i in range(idat + 40, idat + 400):
        data[i] ^= 0x5A
    with pytest.raises(TruncatedImageError):
        load_photo(bytes(data))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_damaged_header() -> None:
    data = _png_bytes(_gradient())[:20]  # signature plus half an IHDR
    with pytest.raises((TruncatedImageError, NotAnImageError)):
        load_photo(data)


def test_too_large_from_header_without_decoding() -> None:
    data = _png_claiming(5000, 4000)  # 20 MP claimed, 100 bytes of data
    with pytest.raises(ImageTooLargeError, match="5000x4000") as info:
        load_photo(data, max_pixels=1_000_000)
    assert "max_pixels" in str(info.value)
    with pytest.raises(ImageTooLargeError, match="9000x8000"):  # over the default, under Pillow's
        load_photo(_png_claiming(9000, 8000))
    # within the limit the header passes and the bogus body is what fails
    with pytest.raises(TruncatedImageError):
        load_photo(data)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # global untouched
    assert DEFAULT_MAX_PIXELS == 64_000_000


def test_too_large_pil_input() -> None:
    with pytest.raises(ImageTooLargeError):
        load_photo(Image.new("1", (200, 200)), max_pixels=100)


def test_huge_claimed_png_does_not_allocate(tmp_path: Path) -> None:
    """A 20000x20000 RGB header (1.2 GB decoded) is refused with no large allocation."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(20000, 20000))
    assert path.stat().st_size < 200
    script = textwrap.dedent(
        f"""
        import resource, sys
        from covip.sdk.errors import ImageTooLargeError
        from covip.sdk.imaging import load_photo
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for max_pixels in (64_000_000, 10**12):  # ours, then Pillow's own bomb limit
            try:
                load_photo({str(path)!r}, max_pixels=max_pixels)
            except ImageTooLargeError as exc:
                print("refused:", exc)
            else:
                sys.exit("not refused")
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("grew_kb", after - before)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert proc.stdout.count("refused:") == 2 and "400000000 pixels" in proc.stdout
    grew_kb = int(proc.stdout.split("grew_kb")[1])
    assert grew_kb < 100_000  # far below the 1.2 GB a decode would need


# ----------------------------------------------------------------------------- what errors show


def test_not_an_image_does_not_echo_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "notes.jpg"
    secret.write_text("password=hunter2\n" * 4)
    for source in (secret, secret.read_bytes()):
        with pytest.raises(NotAnImageError) as info:
            load_photo(source)
        assert "password" not in str(info.value) and "hunter2" not in str(info.value)
        assert "JPEG, PNG" in str(info.value)


def test_decoder_errors_do_not_echo_file_bytes() -> None:
    """Pillow quotes a PNG chunk's raw type bytes in its error; the message keeps the reason, not the bytes."""
    rng = np.random.default_rng(0)
    raw = b"".join(b"\x00" + rng.integers(0, 255, 96, dtype=np.uint8).tobytes() for _ in range(32))
    packed = zlib.compress(raw)
    data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", packed[:100]) + _png_chunk(b"p@s$", packed[100:]) + _png_chunk(b"IEND", b""))
    with pytest.raises(TruncatedImageError) as info:
        load_photo(data)
    assert "p@s$" not in str(info.value) and "broken PNG file" in str(info.value)


def test_absolute_missing_path_shows_only_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(InputError, match="does not exist") as info:
        load_photo(tmp_path / "nope.jpg")
    assert str(elsewhere) not in str(info.value)  # no working directory for an absolute path
    with pytest.raises(InputError, match="relative to") as info:
        load_photo("nope.jpg")  # a relative one says what it is relative to


def test_special_files_are_refused_unread() -> None:
    with pytest.raises(InputError, match="not a regular file"):
        load_photo("/dev/null")


# ----------------------------------------------------------------------------- reduced decoding


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_max_side_decodes_smaller_and_keeps_the_original(tmp_path: Path, fmt: str) -> None:
    img = _gradient(1600, 900)
    path = _save(img, tmp_path / f"big.{fmt.lower()}", fmt)
    full = load_photo(path)
    small = load_photo(path, max_side=400)
    assert max(small.image.size) <= 400 and small.image.size[0] > small.image.size[1]
    assert (small.width, small.height) == (full.width, full.height) == (1600, 900)
    assert small.sha256 == full.sha256 and small.data == full.data
    expected = np.asarray(full.image.resize(small.image.size), dtype=np.int16)
    assert np.abs(np.asarray(small.image, dtype=np.int16) - expected).mean() < 6  # the same picture
    assert load_photo(path, max_side=4000).image.size == (1600, 900)  # never enlarged
    with pytest.raises(InputError, match="max_side"):
        load_photo(path, max_side=0)


def test_max_side_keeps_exif_orientation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(_gradient(1200, 400), tmp_path / "rot.jpg", "JPEG", exif=exif, quality=95)
    photo = load_photo(path, max_side=300)
    assert (photo.width, photo.height) == (400, 1200)
    assert photo.image.size[1] == 300 and photo.image.size[0] < 300


def test_max_side_palette_and_pil_inputs() -> None:
    pal = _gradient(800, 200).convert("P")
    photo = load_photo(_png_bytes(pal), max_side=100)
    assert photo.image.mode == "RGB" and photo.image.size == (100, 25) and photo.width == 800
    pil = load_photo(_gradient(800, 200), max_side=100)
    assert pil.image.size == (100, 25) and (pil.width, pil.height) == (800, 200)
