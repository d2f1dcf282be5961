"""Images in and out: decoding uploaded query images, reading collection files safely, thumbnails.

Uploads and collection files are untrusted bytes: every decode is bounded (bytes and pixels) and any
decoder failure becomes a 4xx :class:`ApiError`, never a crash.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ..ingest.decode import to_rgb
from .catalog import Item
from .errors import ApiError, plain_message

THUMBNAIL_QUALITY = 82


def decode_upload(data: bytes, *, max_image_pixels: int) -> Image.Image:
    """An uploaded query image as RGB (400 when it is not an image, 413 when it has too many pixels).

    Transparency is composited over white, as at indexing, so a transparent query matches its indexed self.
    """
    if not data:
        raise ApiError(400, "the uploaded file is empty", code="not_an_image")
    image = _decode(data, max_image_pixels, what="the uploaded file")
    return to_rgb(ImageOps.exif_transpose(image))


def read_member(item: Item, roots: tuple[Path, ...], *, max_bytes: int) -> tuple[bytes, str]:
    """The bytes and MIME type of an image item's file, only if it still is the file indexed.

    Refused: text items, files whose real path (symlinks resolved) is outside ``roots``, files
    that are gone, not regular, changed size since indexing, or are not images.
    """
    if item.modality != "image" or not item.uri:
        raise ApiError(404, f"item {item.id} is a text; it has no image", code="not_an_image_item")
    real = Path(os.path.realpath(item.uri))
    if not any(real == r or r in real.parents for r in roots):
        raise ApiError(403, f"the file of item {item.id} lies outside the collection's folders; it is not served",
                       code="outside_collection")
    data = _read_exact(real, item, max_bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fmt = Image.open(io.BytesIO(data)).format
        except Exception:  # noqa: BLE001 - any decoder failure on a file means "not an image now"
            fmt = None
    mime = Image.MIME.get(fmt or "")
    if mime is None:
        raise ApiError(404, f"the file of item {item.id} is no longer a readable image; re-index", code="file_changed")
    return data, mime


def make_thumbnail(data: bytes, size: int, *, max_image_pixels: int) -> bytes:
    """A JPEG no larger than ``size`` x ``size`` of the image in ``data``.

    Transparent pixels are composited over white (the same as the embeddings see them), not dropped to black.
    """
    image = _decode(data, max_image_pixels, what="the file", draft=(size, size), bad_status=404)
    image = to_rgb(ImageOps.exif_transpose(image))
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=THUMBNAIL_QUALITY)
    return out.getvalue()


def _decode(data: bytes, max_image_pixels: int, *, what: str, draft: tuple[int, int] | None = None,
            bad_status: int = 400) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning: our own pixel limit applies
        try:
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_image_pixels:
                raise ApiError(413, f"{what} is {image.width}x{image.height} pixels; the limit is {max_image_pixels}",
                               code="image_too_large")
            if draft is not None and image.format == "JPEG":
                image.draft("RGB", draft)
            image.load()
            return image
        except ApiError:
            raise
        except Image.DecompressionBombError as exc:
            raise ApiError(413, f"{what} has too many pixels: {exc}", code="image_too_large") from exc
        except UnidentifiedImageError as exc:  # its message holds the repr of our BytesIO: say it plainly
            raise ApiError(bad_status, f"{what} is not an image in a format this server reads (JPEG, PNG, WebP, GIF, "
                           "BMP, TIFF...)", code="not_an_image") from exc
        except Exception as exc:  # noqa: BLE001 - decoders raise OSError, SyntaxError, struct.error... on bad bytes
            raise ApiError(bad_status, f"{what} is not a readable image ({type(exc).__name__}: {plain_message(exc)})",
                           code="not_an_image") from exc


def _read_exact(real: Path, item: Item, max_bytes: int) -> bytes:
    """Read the file through one descriptor, checking it is regular and has the indexed size."""
    expected = item.metadata.get("bytes")
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise ApiError(404, f"the file of item {item.id} is gone ({exc.strerror}); re-index", code="file_gone") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or (expected is not None and st.st_size != expected):
            raise ApiError(404, f"the file of item {item.id} changed since it was indexed; re-index", code="file_changed")
        if st.st_size > max_bytes:
            raise ApiError(413, f"the file of item {item.id} is larger than {max_bytes} bytes; not served",
                           code="file_too_large")
        return fh.read(st.st_size)


class ThumbnailCache:
    """A bounded, thread-safe LRU of rendered thumbnails keyed by (collection, id, size, sha256)."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[object, ...]) -> bytes | None:
        """The cached thumbnail, or None."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[object, ...], value: bytes) -> None:
        """Remember a thumbnail, dropping the least recently used beyond the bound."""
        if self.max_items == 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
