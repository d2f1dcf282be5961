"""Decoding and preprocessing one image file; runs in worker processes (see :mod:`.pool`).

A bad input never raises out of :func:`decode_image`: it comes back as a :class:`Decoded` with
``reason`` (one of :mod:`.quarantine`'s reasons) and ``error`` set.

Decisions, documented here once:

- JPEGs at least twice the model input on both sides are decoded at reduced size (Pillow ``draft``,
  DCT scaling by 1/2, 1/4 or 1/8), which is much faster and uses less memory.
- Decompression bombs: Pillow's own check is off during decoding; instead, after ``draft``, an image
  with more than ``max_image_pixels`` pixels is rejected as ``too-large``. A huge JPEG is therefore
  decoded at reduced size when that brings it under the limit; a huge PNG is quarantined.
- Colour: CMYK, palette, 16-bit and float greyscale are converted to 8-bit RGB; transparency is
  composited onto white; animated images use their first frame; EXIF orientation is applied.
- ``width`` / ``height`` are those of the file (after EXIF rotation), not of the reduced decode.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import math
import os
import signal
import stat
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import quarantine as q

DEFAULT_MAX_IMAGE_PIXELS = 2 * 89_478_485  # Pillow's error threshold (twice its warning threshold)
DEFAULT_MAX_FILE_BYTES = 512 * 1024**2  # a larger "image" is quarantined as too-large before it is read
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_REDUCIBLE_MODES = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "I", "F", "CMYK"})  # Image.reduce supports
_SWAPPED_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class DecodeSettings:
    """Everything a worker needs to decode; picklable."""

    transform: Callable[[Image.Image], Any]
    draft_px: int | None = None  # model input side; None: no reduced-size decoding for quality
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    timeout_s: float | None = 30.0
    skip_hashes: frozenset[str] = field(default_factory=frozenset)  # content already embedded
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES  # larger files are rejected from their size, unread


@dataclass
class Decoded:
    """The result of decoding one image file. ``pixels`` is the transformed array: float32, or uint8
    (C, H, W) when the settings' transform is the uint8 head of a split transform (:mod:`.transfer`)."""

    seq: int
    pixels: np.ndarray | None = None
    width: int = 0
    height: int = 0
    sha256: str | None = None
    reason: str | None = None
    error: str | None = None
    duplicate: bool = False  # content in ``skip_hashes``: hashed, not decoded

    @property
    def ok(self) -> bool:
        """True when the file was read (decoded, or recognised as a known duplicate)."""
        return self.reason is None

    @property
    def index(self) -> int:
        """The position of the input in its stream (alias of ``seq``)."""
        return self.seq

    @property
    def tensor(self) -> Any:
        """The transformed image as a torch tensor (None when rejected)."""
        import torch

        return None if self.pixels is None else torch.from_numpy(self.pixels)


class DecodeTimeout(Exception):
    """Raised inside a decode that ran past ``timeout_s``."""


def decode_image(path: str, settings: DecodeSettings, seq: int = 0) -> Decoded:
    """Read, hash, decode and transform one image file; never raises for bad data."""
    try:
        with _alarm(settings.timeout_s):
            data = read_file(path, max_bytes=settings.max_file_bytes)
            if not data:
                return Decoded(seq, reason=q.EMPTY, error="the file is empty (0 bytes)")
            sha = hashlib.sha256(data).hexdigest()
            if sha in settings.skip_hashes:
                return Decoded(seq, sha256=sha, duplicate=True)
            pixels, width, height = _decode_bytes(data, settings)
    except DecodeTimeout:
        return Decoded(seq, reason=q.TIMEOUT, error=f"decoding took longer than {settings.timeout_s:g}s")
    except Exception as exc:  # any failure is data about this input, not a crash of the run
        reason, message = classify_error(exc)
        return Decoded(seq, reason=reason, error=message)
    if pixels is None:
        return Decoded(seq, sha256=sha, width=width, height=height, reason=q.TOO_LARGE,
                       error=f"{width}x{height} image exceeds max_image_pixels={settings.max_image_pixels}")
    return Decoded(seq, pixels, width, height, sha)


def batched(items: Iterable[Decoded], size: int) -> Iterator[list[Decoded]]:
    """Consecutive lists of ``size`` items (the last one shorter)."""
    batch: list[Decoded] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_file(path: str, *, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file; never blocks on a FIFO or device (raises :class:`NotAFileError`), never reads
    more than ``max_bytes`` (raises :class:`FileTooLargeError` from the file's size, before reading any of it)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotAFileError(f"{path!r} is not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise FileTooLargeError(f"the file is {st.st_size / 1024**2:,.0f} MiB, more than the "
                                    f"{max_bytes / 1024**2:,.0f} MiB an image may have")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        if max_bytes is not None and len(data) > max_bytes:  # it grew while we read it
            raise FileTooLargeError(f"the file grew past the {max_bytes / 1024**2:,.0f} MiB an image may have")
        return data
    finally:
        os.close(fd)


class NotAFileError(OSError):
    """A path with an image name that is a FIFO, socket or device."""


class FileTooLargeError(OSError):
    """A file larger than an image may be (read bounded: it is never loaded into memory)."""


def classify_error(exc: BaseException) -> tuple[str, str]:
    """(quarantine reason, message) of an exception raised while reading or decoding an input."""
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, NotAFileError):
        return q.NOT_A_FILE, str(exc)
    if isinstance(exc, FileTooLargeError):
        return q.TOO_LARGE, str(exc)
    if isinstance(exc, FileNotFoundError):
        return q.VANISHED, message
    if isinstance(exc, (PermissionError, IsADirectoryError)):
        return q.UNREADABLE, message
    if isinstance(exc, Image.DecompressionBombError) or isinstance(exc, MemoryError):
        return q.TOO_LARGE, message
    if isinstance(exc, UnidentifiedImageError):
        return q.NOT_AN_IMAGE, "not a recognised image format"
    if isinstance(exc, OSError) and exc.errno in (errno.ELOOP, errno.EIO, errno.ENAMETOOLONG, errno.EACCES):
        return q.UNREADABLE, message
    if "truncated" in str(exc).lower() or isinstance(exc, EOFError):
        return q.TRUNCATED, message
    return q.CORRUPT, message


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of any Pillow image: high bit depths scaled down, transparency over white."""
    if image.mode in _HIGH_DEPTH_MODES:
        image = _to_8bit_grey(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        # pasting through the alpha channel onto white gives exactly alpha_composite's pixels (checked on every
        # alpha value in tests/test_ingest_split.py), in one pass: ~4x faster on a large RGBA clip-art PNG
        if image.mode == "La":  # premultiplied grey: Pillow converts it to RGBA only through LA
            image = image.convert("LA")
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _to_8bit_grey(image: Image.Image) -> Image.Image:
    """16-bit greyscale is scaled by its range (not clipped); 32-bit int / float by their values."""
    arr = np.asarray(image, dtype=np.float32)
    peak = float(arr.max()) if arr.size else 0.0
    if image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG") or (image.mode == "I" and peak > 255):
        arr = arr / 257.0  # the 16-bit range onto 8 bits
    elif image.mode == "F" and peak <= 1.0:
        arr = arr * 255.0
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")


def _decode_bytes(data: bytes, settings: DecodeSettings) -> tuple[np.ndarray | None, int, int]:
    """(transformed pixels or None when too large, width, height) of an encoded image."""
    with _no_pillow_bomb_check(), Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        _draft(image, settings)
        if image.size[0] * image.size[1] > settings.max_image_pixels:
            return None, width, height
        image.load()  # before anything reads metadata: a failed load must raise here, not be half-done
        orientation = _orientation(image)
        if orientation in _SWAPPED_ORIENTATIONS:
            width, height = height, width
        upright = ImageOps.exif_transpose(image) if orientation not in (None, 1) else image
        if upright.mode in _REDUCIBLE_MODES:  # shrink first: cheaper conversion
            rgb = to_rgb(_reduce(upright, settings.draft_px))
        else:
            rgb = _reduce(to_rgb(upright), settings.draft_px)
        out = settings.transform(rgb)
    array = out.numpy() if hasattr(out, "numpy") else np.asarray(out)
    return np.ascontiguousarray(array, dtype=np.uint8 if array.dtype == np.uint8 else np.float32), width, height


def _orientation(image: Image.Image) -> int | None:
    """The EXIF orientation tag, if any."""
    try:
        return image.getexif().get(0x0112)
    except Exception:  # a broken EXIF block must not reject an otherwise good image
        return None


def _reduce(image: Image.Image, model_px: int | None) -> Image.Image:
    """Box-shrink by an integer factor to no less than twice the model input (the transform's own
    antialiased resize then does the rest, much faster than from full size, to the same result)."""
    if not model_px:
        return image
    factor = min(image.size) // (2 * model_px)
    return image.reduce(factor) if factor >= 2 else image


def _draft(image: Image.Image, settings: DecodeSettings) -> None:
    """Ask the JPEG decoder for a reduced size: the model input side, or what fits the pixel limit."""
    if image.format != "JPEG":
        return
    width, height = image.size
    want: tuple[int, int] | None = None
    if settings.draft_px and min(width, height) >= 2 * settings.draft_px:
        want = (settings.draft_px, settings.draft_px)
    if width * height > settings.max_image_pixels:
        # JPEG can only scale by 1/2, 1/4, 1/8, and draft() keeps at least the size asked for: ask for the
        # size at the first of those scales that fits under the limit
        scale = min(8, 2 ** math.ceil(math.log2(math.sqrt(width * height / settings.max_image_pixels))))
        fit = (max(1, math.ceil(width / scale)), max(1, math.ceil(height / scale)))
        want = fit if want is None else (max(want[0], fit[0]), max(want[1], fit[1]))
    if want is not None:
        image.draft(None, want)


@contextlib.contextmanager
def _no_pillow_bomb_check() -> Iterator[None]:
    """Pillow's bomb check raises at open time, before ``draft`` could shrink the decode; we check after."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


@contextlib.contextmanager
def _alarm(timeout_s: float | None) -> Iterator[None]:
    """Raise :class:`DecodeTimeout` in this thread after ``timeout_s`` (main thread of a process only).

    It interrupts Python code and blocking system calls; a codec stuck inside C code is stopped by the
    pool's watchdog instead, which kills the worker.
    """
    usable = timeout_s and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise DecodeTimeout()

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, float(timeout_s))  # type: ignore[arg-type]
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
