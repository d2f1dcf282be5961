"""The embed stage: the one seam between what ingest decides (plan, dedup, ids, captions, tombstones, commits)
and where image bytes become vectors.

Ingest plans the files of an image root, then hands them to an :class:`EmbedStage` and takes back, in input
order, each file's decode result and image vector (and, where the stage embedded it, its caption's vector). The
stage decides nothing about rows: it may embed a duplicate twice or leave it to ingest, and ingest commits the
same rows whatever stage ran. :class:`LocalStage` is this machine (decoding + :class:`~.encode.BatchEncoder`);
the Ray engine's stages (actors; Ray Data) live in :mod:`mmsearch.distributed` and are passed in the same way
(``mmsearch.index(..., engine=...)``), as httpx takes a transport.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Protocol, Sequence

import numpy as np

from .decode import Decoded, DecodeSettings, batched, decode_image
from .discover import ImageFile
from .encode import PROBE_BATCHES, BatchEncoder, choose_workers, gpu_workers, share_cpus_with_workers, transfer_s
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
    """Decoding (in this process or in worker processes) feeding a :class:`BatchEncoder` in an encoder thread, on
    this machine. Content seen twice in one work is encoded once (when ``options.dedup``). The encoder is asked
    nothing until something is embedded."""

    def __init__(self, encoder: Encoder, options: IngestOptions) -> None:
        self.encoder, self.options = encoder, options
        self.batcher = BatchEncoder(encoder, options.batch_size)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts in batches (out-of-memory back-off)."""
        return self.batcher.texts(texts)

    def embed_images(self, work: ImageWork) -> Iterator[list[EmbeddedImage]]:
        """Decode (in ``options.workers`` processes; 0: here; None: chosen from the first batches' costs, see
        :meth:`_probed_stream`), encode each batch's new content in an encoder thread (:func:`overlapped`)."""
        if not work.files:
            return  # nothing to decode: the encoder is not even asked for its transform (it may not be loaded)
        options, files = self.options, work.files
        # uint8 pixels when the transform splits (see ingest.transfer); else the whole transform runs in the workers
        transform = self.batcher.worker_transform
        settings = DecodeSettings(
            transform=transform, draft_px=model_input_px(transform), max_image_pixels=options.max_image_pixels,
            timeout_s=options.decode_timeout_s, skip_hashes=work.known_hashes,
        )
        paths = [f.os_path for f in files]
        workers = 0 if len(files) < 2 * options.batch_size else options.workers
        if workers is None and self.batcher.cuda:
            workers = gpu_workers()
        if workers is None:  # the first batches decode here; their costs choose the split for the rest
            stream = self._probed_stream(paths, settings)
        else:
            stream = self._stream(paths, settings, workers)
        encoded: set[str] = set()  # content encoded in this work

        def fresh(batch: list[Decoded]) -> list[Decoded]:
            """The batch's decoded images whose content is new to this work."""
            out = []
            for d in batch:
                if d.pixels is None:
                    continue
                if options.dedup and d.sha256:
                    if d.sha256 in encoded:
                        continue
                    encoded.add(d.sha256)
                out.append(d)
            return out

        def embed(batch: list[Decoded]) -> list[EmbeddedImage]:
            todo = fresh(batch)
            vectors = dict(zip((d.seq for d in todo), self.batcher.images([d.pixels for d in todo])))
            return [EmbeddedImage(files[d.seq], dataclasses.replace(d, pixels=None), vectors.get(d.seq))
                    for d in batch]

        batches = batched(stream, options.batch_size)
        if OVERLAP_ENCODE:
            yield from overlapped(batches, embed)
        else:
            yield from map(embed, batches)

    def _stream(self, paths: Sequence[str], settings: DecodeSettings, workers: int, start: int = 0
                ) -> Iterator[Decoded]:
        """``paths`` decoded by ``workers`` processes (0: here), numbered from ``start``; a CPU encoder shares the
        cores with the workers meanwhile (:func:`share_cpus_with_workers`)."""
        window = 2 * self.options.batch_size + 2 * max(workers, 1)
        with share_cpus_with_workers(self.encoder, workers):
            for d in decode_stream(paths, settings, workers=workers, window=window):
                yield dataclasses.replace(d, seq=d.seq + start) if start else d

    def _probed_stream(self, paths: Sequence[str], settings: DecodeSettings) -> Iterator[Decoded]:
        """The automatic split: the first :data:`~.encode.PROBE_BATCHES` batches decode here (timed) while the
        encoder thread embeds them (timed by the batcher); :func:`choose_workers` then sets the decode processes
        for the rest. Nothing is decoded or encoded twice."""
        probe = PROBE_BATCHES * self.options.batch_size
        decode_times: list[float] = []
        ipc_s = 0.0
        for seq, path in enumerate(paths[:probe]):
            start = time.perf_counter()
            decoded = decode_image(path, settings, seq)
            decode_times.append(time.perf_counter() - start)
            if not ipc_s and decoded.pixels is not None:
                ipc_s = transfer_s(decoded)
            yield decoded
        if len(paths) > probe:
            workers = choose_workers(self.batcher, decode_times, ipc_s)
            yield from self._stream(paths[probe:], settings, workers, start=probe)


#: encode each batch in a thread while this one decodes (or receives) the next (see :func:`overlapped`);
#: False: one after the other (the code before issue 16's overlap, kept for benchmarks/ingest.py's A/B)
OVERLAP_ENCODE = True


def overlapped(batches: Iterator[list[Decoded]],
               embed: Callable[[list[Decoded]], list[EmbeddedImage]]) -> Iterator[list[EmbeddedImage]]:
    """``map(embed, batches)``, with ``embed`` of one batch running in an encoder thread while this thread
    decodes the next batch and the caller commits the previous one: at most two batches in flight, results in
    order, an encoder error raised here. Decoding stays in this thread (its alarm time limit needs the main
    thread); PIL's codecs and resampling, ONNX Runtime and torch release the GIL, so the two use two cores.
    One thread runs ``embed`` on one batch at a time, in order, so state it keeps (the dedup set) stays ordered."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmsearch-encode")
    try:
        pending: Future[list[EmbeddedImage]] | None = None
        for batch in batches:
            submitted = pool.submit(embed, batch)
            if pending is not None:
                yield pending.result()
            pending = submitted
        if pending is not None:
            yield pending.result()
    finally:  # an error, or the caller stopped early: a batch not started yet is dropped
        pool.shutdown(wait=True, cancel_futures=True)


def model_input_px(transform: object) -> int | None:
    """The side of the model's input image (probed once), or None when the transform is not spatial."""
    from PIL import Image

    try:
        out = transform(Image.new("RGB", (64, 64)))  # type: ignore[operator]
    except Exception:  # an odd transform: decode at full size
        return None
    shape = tuple(getattr(out, "shape", ()))
    return int(max(shape[-2:])) if len(shape) >= 3 else None
