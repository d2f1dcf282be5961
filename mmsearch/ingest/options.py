"""The options of the ingest step (one frozen dataclass, validated once)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from .decode import DEFAULT_MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class IngestOptions:
    """Knobs of the ingest step, validated here (a bad value is a :class:`ConfigError` naming it). Passed whole
    to ``mmsearch.index(..., ingest=IngestOptions(...))``; a new knob is one field here (plus its CLI flag)."""

    batch_size: int = 32
    workers: int | None = None  # decode processes; 0 decodes in the calling process; None: chosen from the first batches' costs
    shard_rows: int = 8192  # rows per committed shard: the most work a kill can lose
    decode_timeout_s: float | None = 30.0  # per image; None: no limit
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # larger (after reduced-size JPEG decode) -> too-large
    dedup: bool = True  # identical image content is embedded once
    #: caption manifests (.jsonl/.csv/.parquet: image path -> caption): a path or paths, kept as a tuple of str
    captions: str | Path | Sequence[str | Path] = ()
    text_column: str | None = None  # corpora and caption manifests; default: text, caption or content
    id_column: str | None = None  # corpora; default: "id" when present
    path_column: str | None = None  # caption manifests; default: path, image, file...

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.shard_rows < 1:
            raise ConfigError("batch_size and shard_rows must be at least 1")
        if self.workers is not None and self.workers < 0:
            raise ConfigError("workers must be >= 0")
        if self.decode_timeout_s is not None and self.decode_timeout_s <= 0:
            raise ConfigError("decode_timeout_s must be positive (or None for no limit)")
        if self.max_image_pixels < 1:
            raise ConfigError("max_image_pixels must be at least 1")
        captions = self.captions
        manifests = [captions] if isinstance(captions, (str, Path)) else list(captions)
        object.__setattr__(self, "captions", tuple(str(Path(c).expanduser()) for c in manifests))
