"""Server settings: one frozen dataclass, validated once, with units in the names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class ServeOptions:
    """How the HTTP app behaves. Every limit is enforced with a 4xx JSON error, never a 500.

    - ``api_key``: when set, every ``/api`` route but ``/api/health`` needs the header ``X-API-Key``.
    - ``max_upload_bytes``: the largest query image accepted (413 above it).
    - ``max_image_pixels``: the largest decoded query image, width x height (413 above it).
    - ``max_query_chars``: the longest text query (422 above it).
    - ``max_k``: the most results one query may ask for (422 above it).
    - ``worker_threads``: encoding, search and thumbnails run on a pool this size, off the event loop.
    - ``faiss_threads``: OpenMP threads each FAISS search may use.
    - ``torch_threads``: torch's intra-op threads for the whole process (None: leave as is). One is best for
      serving: requests run in parallel on the pool, and more threads per request thrash a busy CPU.
    - ``media_roots``: folders whose files may be served as images/thumbnails; default, per collection,
      the folder holding all its images. A file whose real path (symlinks resolved) is outside is refused.
    - ``thumbnail_cache_items``: rendered thumbnails kept in memory.
    - ``warm_up``: load models and indexes at start-up, not on the first request.
    - ``reload_check_s``: how often (at most, on a request) to look whether a collection changed on disk; the
      next request then gets the new version (None: serve the start-up version until restarted).
    """

    api_key: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_image_pixels: int = 64_000_000
    max_query_chars: int = 1000
    max_k: int = 1000
    worker_threads: int = 4
    faiss_threads: int = 1
    torch_threads: int | None = 1
    media_roots: tuple[Path, ...] | None = None
    thumbnail_cache_items: int = 1024
    max_media_bytes: int = 256 * 1024 * 1024
    warm_up: bool = True
    reload_check_s: float | None = 2.0

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_image_pixels", "max_query_chars", "max_k", "worker_threads",
                     "faiss_threads", "max_media_bytes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, not {getattr(self, name)!r}")
        if self.torch_threads is not None and (not isinstance(self.torch_threads, int) or self.torch_threads < 1):
            raise ConfigError(f"torch_threads must be a positive integer or None, not {self.torch_threads!r}")
        if self.reload_check_s is not None and not self.reload_check_s >= 0:
            raise ConfigError(f"reload_check_s must be >= 0 seconds or None, not {self.reload_check_s!r}")
        if self.thumbnail_cache_items < 0:
            raise ConfigError("thumbnail_cache_items must be >= 0")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("api_key is empty; give a real key or None for no key")
        if self.media_roots is not None:
            object.__setattr__(self, "media_roots", tuple(Path(p).expanduser().resolve() for p in self.media_roots))
