"""The embed stage: the one seam between what ingest decides (plan, dedup, ids, captions, tombstones, commits)
and where image bytes become vectors.

Ingest plans the files of an image root, then hands them to an :class:`EmbedStage` and takes back, in input
order, each file's decode result and image vector (and, where the stage embedded it, its caption's vector). The
stage decides nothing about rows: it may embed a duplicate twice or leave it to ingest, and ingest commits the
same rows whatever stage ran. :class:`LocalStage` is this machine (decode processes + :class:`~.encode.BatchEncoder`);
the Ray engine's stages (actors; Ray Data) live in :mod:`mmsearch.distributed` and are passed in the same way
(``mmsearch.index(..., engine=...)``), as httpx takes a transport.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Protocol, Sequence

import numpy as np

from .decode import Decoded, DecodeSettings, batched
from .discover import ImageFile
from .encode import BatchEncoder, calibrate_workers, share_cpus_with_workers
from .options import IngestOptions
from .pool import decode_stream

if TYPE_CHECKING:
    from ..encoders.base import Encoder


@dataclass(frozen=True)
class ImageWork:
    """The files of one image root to embed, in input order (``Decoded.seq`` indexes ``files``)."""

    files: Sequence[ImageFile]
    #: sha256 of content the collection already holds: such a file is hashed, not decoded nor encoded
    known_hashes: frozenset[str] = frozenset()


@dataclass
class EmbeddedImage:
    """One planned file after the stage. ``decoded`` carries the outcome (``ok``, ``reason``, ``sha256``, size),
    never pixels. ``vector`` is None when the file was rejected, or its content is known (in ``known_hashes``, or
    a duplicate of an earlier file of this work that the stage embedded once); ``caption_vector`` is the file's
    caption embedded by the stage, or None (ingest then embeds it with :meth:`EmbedStage.encode_texts`)."""

    file: ImageFile
    decoded: Decoded
    vector: np.ndarray | None = None
    caption_vector: np.ndarray | None = None


class EmbedStage(Protocol):
    """Where inputs are embedded: this machine (:class:`LocalStage`) or a cluster (:mod:`mmsearch.distributed`)."""

    def embed_images(self, work: ImageWork) -> Iterator[list[EmbeddedImage]]:
        """Every file of ``work`` exactly once, in input order, in batches (their size is the stage's choice)."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(N, dim) float32 embeddings of ``texts``."""
        ...


class LocalStage:
    """Decode processes feeding a :class:`BatchEncoder` on this machine. Content seen twice in one work is
    encoded once (when ``options.dedup``). The encoder is asked nothing until something is embedded."""

    def __init__(self, encoder: Encoder, options: IngestOptions) -> None:
        self.encoder, self.options = encoder, options
        self.batcher = BatchEncoder(encoder, options.batch_size)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts in batches (out-of-memory back-off)."""
        return self.batcher.texts(texts)

    def embed_images(self, work: ImageWork) -> Iterator[list[EmbeddedImage]]:
        """Decode in worker processes (``options.workers``; None: split the cores from measured costs), encode
        each batch's new content."""
        if not work.files:
            return  # nothing to decode: the encoder is not even asked for its transform (it may not be loaded)
        options, files = self.options, work.files
        # uint8 pixels when the transform splits (see ingest.transfer); else the whole transform runs in the workers
        transform = self.batcher.worker_transform
        settings = DecodeSettings(
            transform=transform, draft_px=model_input_px(transform), max_image_pixels=options.max_image_pixels,
            timeout_s=options.decode_timeout_s, skip_hashes=work.known_hashes,
        )
        workers = 0 if len(files) < 2 * options.batch_size else options.workers
        if workers is None:  # split the cores between decoding and the encoder from their measured costs
            workers = calibrate_workers(self.batcher, settings, [f.os_path for f in files])
        stream = decode_stream((f.os_path for f in files), settings, workers=workers,
                               window=2 * options.batch_size + 2 * max(workers, 1))
        encoded: set[str] = set()  # content encoded in this work
        with share_cpus_with_workers(self.encoder, workers):
            for batch in batched(stream, options.batch_size):
                fresh = []
                for d in batch:
                    if d.pixels is None:
                        continue
                    if options.dedup and d.sha256:
                        if d.sha256 in encoded:
                            continue
                        encoded.add(d.sha256)
                    fresh.append(d)
                vectors = dict(zip((d.seq for d in fresh), self.batcher.images([d.pixels for d in fresh])))
                yield [EmbeddedImage(files[d.seq], dataclasses.replace(d, pixels=None), vectors.get(d.seq))
                       for d in batch]


def model_input_px(transform: object) -> int | None:
    """The side of the model's input image (probed once), or None when the transform is not spatial."""
    from PIL import Image

    try:
        out = transform(Image.new("RGB", (64, 64)))  # type: ignore[operator]
    except Exception:  # an odd transform: decode at full size
        return None
    shape = tuple(getattr(out, "shape", ()))
    return int(max(shape[-2:])) if len(shape) >= 3 else None
