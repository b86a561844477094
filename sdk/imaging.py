"""Taking in photos: the one place a path, bytes or PIL image becomes a checked RGB :class:`Photo`.

Memory, the CLI and any server call :func:`load_photo` so every photo is validated, oriented,
converted and hashed the same way. Pillow's global settings (``LOAD_TRUNCATED_IMAGES``,
``MAX_IMAGE_PIXELS``, warning filters) are never changed: limits are checked per call.

Paths are checked before anything opens them: a file of a memory home other than its photo store
(database, WAL, index, locks: see :mod:`covip.sdk.homefiles`) is refused, and so is anything that is not a
regular file. Error messages name the source as the caller gave it and never echo the file's contents.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from covip.sdk.errors import (
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    InputError,
    NotAnImageError,
    TruncatedImageError,
)
from covip.sdk.homefiles import refuse_home_file

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "Photo",
    "PhotoSource",
    "load_photo",
    "image_to_png_bytes",
    "to_rgb",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 64_000_000
"""Largest width*height taken in by default (a 64-megapixel photo); larger needs ``max_pixels=``."""
MAX_FILE_BYTES = 1 << 30
"""Largest photo file read from a path (1 GiB); a bigger file is refused before it is read."""
_RESIZABLE_MODES = {"RGB", "RGBA", "L", "LA", "CMYK", "YCbCr", "RGBX"}
"""Modes Pillow resizes with a real filter (palette and 16-bit images are converted to RGB first)."""

_EXIF_ORIENTATION = 0x0112
_EXIF_DATETIME = 0x0132
_EXIF_IFD = 0x8769
_EXIF_DATETIME_ORIGINAL = 0x9003
_GPS_IFD = 0x8825
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 1, 2, 3, 4

_EXTENSIONS = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "TIFF": ".tiff",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "DIB": ".bmp",
    "PPM": ".ppm",
    "ICO": ".ico",
    "JPEG2000": ".jp2",
    "TGA": ".tga",
    "HEIF": ".heic",
    "AVIF": ".avif",
}

# Exceptions Pillow's decoders raise on bad or short data (OSError covers "image file is truncated").
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    zlib.error,
    struct.error,
)


@dataclass(frozen=True)
class Photo:
    """A checked photo: RGB pixels plus the original bytes, their hash and EXIF time/place.

    ``width`` and ``height`` are the photo's own (upright) size; ``image`` has that size unless it was
    taken in with ``max_side``, which decodes it smaller. Equality and hashing use the metadata and
    ``sha256``, never the pixels or bytes.
    """

    image: Image.Image = field(repr=False, compare=False)
    data: bytes = field(repr=False, compare=False)
    sha256: str
    format: str
    width: int
    height: int
    taken_at: datetime | None = None
    gps: tuple[float, float] | None = None
    source_path: Path | None = None

    @property
    def extension(self) -> str:
        """File extension (with dot) matching :attr:`format`, used when the bytes are written to disk."""
        ext = _EXTENSIONS.get(self.format.upper())
        if ext:
            return ext
        for registered, fmt in Image.registered_extensions().items():
            if fmt == self.format.upper():
                return registered
        return ".img"


PhotoSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Image.Image, Photo]


def load_photo(source: PhotoSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None) -> Photo:
    """Take in a path, encoded bytes, PIL image or Photo and return a fully decoded RGB :class:`Photo`.

    ``max_side`` bounds the decoded pixels' longest side (JPEGs are decoded at 1/2, 1/4 or 1/8 scale
    directly, others are shrunk right after decoding), for callers that only show the photo to a model:
    the bytes, hash and ``width``/``height`` stay the original's. A Photo passes through unchanged.
    """
    if isinstance(source, Photo):
        return source
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise InputError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 16):
        raise InputError(f"max_side must be an integer of at least 16 pixels (or None), got {max_side!r}")
    if isinstance(source, Image.Image):
        return _from_pil(source, max_pixels=max_pixels, max_side=max_side)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return _from_bytes(data, label=f"the given bytes ({len(data)} bytes)", path=None, max_pixels=max_pixels,
                           max_side=max_side)
    if isinstance(source, (str, os.PathLike)):
        path = Path(os.fspath(source)).expanduser()
        label = f"'{path}'"
        data = _read_file(path, label)
        return _from_bytes(data, label=label, path=path.absolute(), max_pixels=max_pixels, max_side=max_side)
    raise InputError(
        f"cannot take a photo from a {type(source).__name__}; "
        "pass a file path, the encoded bytes, a PIL.Image.Image or a Photo"
    )


def image_to_png_bytes(img: Image.Image, *, exif: Image.Exif | None = None) -> bytes:
    """Encode ``img`` losslessly as PNG (modes PNG cannot hold are converted to RGB first)."""
    if img.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
        img = to_rgb(img)
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {}
    if exif is not None and len(exif):
        kwargs["exif"] = exif
    img.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: alpha over white, 16-bit/float scaled (not clipped)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(img), mode)).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    try:
        if has_alpha:
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageError(
            f"photos in Pillow color mode {mode!r} cannot be converted to RGB ({exc}); "
            "save the photo as an RGB JPEG or PNG and try again"
        ) from exc


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Map 16-bit, 32-bit integer or float pixels onto 0..255 by scaling, never by clipping."""
    if mode.startswith("I;16"):
        wide = arr.astype(np.uint32)
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)
    values = arr.astype(np.float64)
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 0.0
    if mode == "I" and lo >= 0 and hi <= 65535:
        scaled = values * (255.0 / 65535.0)  # 16-bit data held in a 32-bit container
    elif mode == "F" and lo >= 0 and hi <= 1.0:
        scaled = values * 255.0
    elif lo >= 0 and hi <= 255:
        scaled = values
    elif hi > lo:
        scaled = (values - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(values)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _read_file(path: Path, label: str) -> bytes:
    """Read a photo file, turning missing paths, folders, special files, a memory home's own files and OS
    errors into :class:`InputError` (all checked with stat(), before the file is opened)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        where = "" if path.is_absolute() else f" (it is relative to {Path.cwd()})"
        raise InputError(f"photo file {label} does not exist; check the path{where}") from None
    except (OSError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or "an unusable path"
        raise InputError(f"photo file {label} cannot be used ({why}); check the path") from None
    if path.is_dir():
        raise InputError(f"{label} is a directory, not a photo file; pass the path of one image file")
    if not path.is_file():
        raise InputError(f"{label} is not a regular file (a device, pipe or socket); pass a photo file")
    refuse_home_file(path, label)
    if st.st_size > MAX_FILE_BYTES:
        raise InputError(f"photo file {label} is {st.st_size:,} bytes, more than the {MAX_FILE_BYTES:,} bytes a "
                         "photo may have; pass a smaller (compressed) copy")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(
            f"photo file {label} cannot be read ({exc.strerror or type(exc).__name__}); check its permissions"
        ) from None


_BYTES_LITERAL = re.compile(r"b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\"")


def _why(exc: BaseException) -> str:
    """A decoder error as ``Type: message`` without the file contents Pillow sometimes quotes (header bytes,
    chunk names), cut to a readable length."""
    text = _BYTES_LITERAL.sub("<bytes>", str(exc))
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_pixels(width: int, height: int, *, label: str, max_pixels: int) -> None:
    """Refuse images over ``max_pixels`` before any pixel data is decoded."""
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{label} is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{max_pixels:,}; downscale it, or pass a larger max_pixels if you trust the file"
        )


def _from_bytes(data: bytes, *, label: str, path: Path | None, max_pixels: int, max_side: int | None) -> Photo:
    """Decode encoded bytes fully (at most ``max_side`` on the longest side), checking size from the header
    first. The decoded image itself becomes the Photo's image when no conversion is needed (no copy)."""
    if not data:
        raise EmptyImageError(f"{label} is empty (0 bytes); pass a photo file that has image data")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise NotAnImageError(
            f"{label} is not an image format Pillow can read ({len(data):,} bytes of something else); "
            "pass a JPEG, PNG, WebP, GIF, TIFF or BMP file"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(
            f"{label} declares more pixels than Pillow's decompression-bomb limit ({_why(exc)}); "
            "downscale the photo before adding it"
        ) from None
    except _DECODE_ERRORS as exc:
        raise TruncatedImageError(
            f"{label} has a damaged image header ({_why(exc)}); "
            "the file is corrupt or cut short: copy or export it again"
        ) from None
    result: Photo | None = None
    try:
        fmt = im.format or "PNG"
        _check_pixels(im.width, im.height, label=label, max_pixels=max_pixels)
        size = im.size
        try:
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            if max_side is not None and max(im.size) > max_side and fmt in ("JPEG", "MPO"):
                ratio = max_side / max(im.size)  # decode at 1/2..1/8 scale, never below max_side
                im.draft(None, (max(1, int(im.width * ratio)), max(1, int(im.height * ratio))))
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageTooLargeError(
                f"{label} expands past Pillow's decompression-bomb limit ({_why(exc)}); downscale the photo"
            ) from None
        except _DECODE_ERRORS as exc:
            raise TruncatedImageError(
                f"{label} is a {fmt} image whose data is truncated or corrupt "
                f"({_why(exc)}); the file is damaged or cut short: copy or export it again"
            ) from None
        if max_side is not None and max(im.size) > max_side and im.mode in _RESIZABLE_MODES:
            im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)  # before any full-size conversion
        result = _finish(im, data=data, fmt=fmt, path=path, label=label, size=size, max_side=max_side)
        return result
    finally:
        if result is None or result.image is not im:
            im.close()


def _from_pil(img: Image.Image, *, max_pixels: int, max_side: int | None = None) -> Photo:
    """Take in an in-memory PIL image; its ``data`` becomes the PNG encoding of the oriented RGB pixels."""
    label = f"the given {img.mode} PIL image"
    _check_pixels(img.width, img.height, label=label, max_pixels=max_pixels)
    try:
        img.load()
    except _DECODE_ERRORS as exc:
        raise TruncatedImageError(
            f"{label} cannot be decoded ({_why(exc)}); the file it was opened from is damaged or cut short"
        ) from None
    taken_at, gps, exif = _read_exif(img)
    rgb = to_rgb(_oriented(img))
    if rgb is img:
        rgb = img.copy()
    if exif is not None:
        exif = _exif_without_orientation(exif)
    data = image_to_png_bytes(rgb, exif=exif)
    width, height = rgb.size
    if max_side is not None and max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return Photo(
        image=rgb,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        format="PNG",
        width=width,
        height=height,
        taken_at=taken_at,
        gps=gps,
        source_path=None,
    )


def _finish(im: Image.Image, *, data: bytes, fmt: str, path: Path | None, label: str, size: tuple[int, int],
            max_side: int | None) -> Photo:
    """Read EXIF, apply orientation, convert to RGB and build the Photo (``size``: the undecoded original's)."""
    taken_at, gps, _ = _read_exif(im)
    upright = _oriented(im)
    width, height = size
    if upright.size != im.size and upright.size == im.size[::-1]:
        width, height = height, width  # EXIF orientation turned it by 90 degrees
    rgb = to_rgb(upright)
    if max_side is not None and max(rgb.size) > max_side:  # modes shrunk only after conversion (palette, 16-bit)
        rgb = rgb.copy() if rgb is im else rgb
        rgb.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    logger.debug("took in %s: %s %dx%d (decoded %dx%d)", label, fmt, width, height, rgb.width, rgb.height)
    return Photo(
        image=rgb,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        format=fmt,
        width=width,
        height=height,
        taken_at=taken_at,
        gps=gps,
        source_path=path,
    )


def _oriented(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (rotation/mirroring) so pixels are upright; an upright image is
    returned as is (Pillow's exif_transpose would copy it)."""
    try:
        if im.getexif().get(_EXIF_ORIENTATION, 1) not in (2, 3, 4, 5, 6, 7, 8):
            return im
        out = ImageOps.exif_transpose(im)
    except Exception as exc:  # a damaged EXIF block must not lose the photo
        logger.warning("ignoring unreadable EXIF orientation: %s", exc)
        return im
    return im if out is None else out


def _exif_without_orientation(exif: Image.Exif) -> Image.Exif:
    """Copy of ``exif`` minus the orientation tag (the pixels are already upright)."""
    out = Image.Exif()
    out.load(exif.tobytes())
    out.pop(_EXIF_ORIENTATION, None)
    return out


def _read_exif(im: Image.Image) -> tuple[datetime | None, tuple[float, float] | None, Image.Exif | None]:
    """Return (taken_at, gps, exif) from the image's EXIF, tolerating missing or malformed tags."""
    try:
        exif = im.getexif()
    except Exception as exc:
        logger.debug("no readable EXIF: %s", exc)
        return None, None, None
    if not len(exif):
        return None, None, None
    taken_at = None
    try:
        taken_at = _parse_exif_datetime(exif.get_ifd(_EXIF_IFD).get(_EXIF_DATETIME_ORIGINAL))
    except Exception as exc:
        logger.debug("unreadable EXIF sub-IFD: %s", exc)
    if taken_at is None:
        taken_at = _parse_exif_datetime(exif.get(_EXIF_DATETIME))
    gps = None
    try:
        gps = _parse_gps(exif.get_ifd(_GPS_IFD))
    except Exception as exc:
        logger.debug("unreadable EXIF GPS: %s", exc)
    return taken_at, gps, exif


def _parse_exif_datetime(value: Any) -> datetime | None:
    """Parse an EXIF ``YYYY:MM:DD HH:MM:SS`` stamp into a naive datetime, or None when unusable."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "ignore")
    if not isinstance(value, str):
        return None
    text = value.strip().strip("\x00").strip()
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d %H:%M", "%Y:%m:%d"):
        try:
            return datetime.strptime(text[:19] if "%S" in fmt else text, fmt)
        except ValueError:
            continue
    if text:
        logger.debug("ignoring unparseable EXIF date %r", text)
    return None


def _parse_gps(gps: Any) -> tuple[float, float] | None:
    """Turn an EXIF GPS IFD into (lat, lon) decimal degrees, or None when absent or out of range."""
    if not gps:
        return None
    lat = _dms_to_degrees(gps.get(_GPS_LAT), gps.get(_GPS_LAT_REF), "S")
    lon = _dms_to_degrees(gps.get(_GPS_LON), gps.get(_GPS_LON_REF), "W")
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return (lat, lon)


def _dms_to_degrees(dms: Any, ref: Any, negative_ref: str) -> float | None:
    """Degrees/minutes/seconds rationals plus a hemisphere letter -> signed decimal degrees."""
    if dms is None:
        return None
    try:
        parts = [float(x) for x in (dms if isinstance(dms, (tuple, list)) else (dms,))]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not parts or len(parts) > 3 or any(p != p for p in parts):  # NaN from 0/0 rationals
        return None
    parts += [0.0] * (3 - len(parts))
    degrees = parts[0] + parts[1] / 60.0 + parts[2] / 3600.0
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "ignore")
    if isinstance(ref, str) and ref.strip("\x00 ").upper() == negative_ref:
        degrees = -degrees
    return round(degrees, 7)
