"""A trained adapter on disk, and :class:`AdapterEncoder`: a base encoder with the adapter's heads applied.

On disk an adapter is a folder::

    adapter.json          format version, base model spec, head kind, dims, seed, date, metrics before/after
    adapter.safetensors   the head weights and the learned temperature
    test_pairs.jsonl      the held-out pairs (``mmsearch eval test_pairs.jsonl --model adapter:DIR``)
    cache/                the frozen base features the heads were trained on
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..encoders.base import embed_pil_images
from ..errors import ConfigError, EncoderError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from .heads import AdapterHeads

FORMAT_VERSION = 1
META_NAME = "adapter.json"
WEIGHTS_NAME = "adapter.safetensors"
SCHEME = "adapter"


class AdapterExistsError(ConfigError):
    """An adapter is already saved where training would write; pass ``force=True`` to replace it."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"an adapter already exists at {path!r}; choose another --out or pass --force to replace it")


def adapter_exists(path: Path) -> bool:
    """Whether ``path`` holds a saved adapter."""
    return (path / META_NAME).exists() or (path / WEIGHTS_NAME).exists()


def save_adapter(path: Path, heads: AdapterHeads, meta: dict[str, Any]) -> None:
    """Write weights then metadata, each atomically (the metadata last: it marks a complete adapter)."""
    from safetensors.torch import save_file

    from ..store.atomic import write_bytes_atomic, write_with_atomic

    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in heads.state_dict().items()}
    write_with_atomic(path / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp)))
    write_bytes_atomic(path / META_NAME, json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2).encode())


def read_meta(path: str | Path) -> dict[str, Any]:
    """The adapter's metadata; :class:`ConfigError` when ``path`` holds no adapter."""
    meta_path = Path(path).expanduser() / META_NAME
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"no adapter at {str(path)!r} ({META_NAME} missing); train one with `mmsearch train`") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{meta_path} is not valid JSON; retrain the adapter") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"adapter format {meta.get('format_version')!r} at {str(path)!r} is not supported "
                          f"(this mmsearch reads {FORMAT_VERSION}); retrain it")
    return meta


def load_heads(path: str | Path) -> tuple[AdapterHeads, dict[str, Any]]:
    """The trained heads (eval mode) and metadata of the adapter at ``path``."""
    from safetensors.torch import load_file

    from .heads import AdapterHeads

    meta = read_meta(path)
    heads = AdapterHeads(meta["dim"], meta["head"], meta.get("hidden_dim", 0))
    try:
        heads.load_state_dict(load_file(str(Path(path).expanduser() / WEIGHTS_NAME)))
    except (OSError, RuntimeError) as exc:
        raise EncoderError(f"cannot load adapter weights from {str(path)!r}: {exc}; retrain the adapter") from exc
    return heads.eval(), meta


class AdapterEncoder:
    """The base encoder with an adapter's heads on top; an :class:`~mmsearch.encoders.Encoder` itself."""

    def __init__(self, base: Any, heads: AdapterHeads, path: Path) -> None:
        self.base = base
        self.heads = heads
        self.path = path
        self.spec = f"{SCHEME}:{path}"
        self.dim = base.dim
        self.preprocess_id = base.preprocess_id

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> AdapterEncoder:
        """Load the adapter at ``path`` and its base model (by the spec it recorded)."""
        path = Path(path).expanduser().resolve()
        heads, meta = load_heads(path)
        return cls(_base_encoder(meta["base_model"], device), heads, path)

    @property
    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The base model's transform (the adapter works on embeddings, not pixels)."""
        return self.base.image_transform

    @property
    def numpy_input(self) -> bool:
        """Whether the base model takes NumPy batches (then ingest keeps its uint8 cut and stacks no tensors)."""
        return bool(getattr(self.base, "numpy_input", False))

    def embed_pil_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Query images through the base model's own path (ONNX Runtime where it has one), then the image head."""
        return self.project_images(embed_pil_images(self.base, images))

    def encode_images(self, batch: torch.Tensor) -> np.ndarray:
        """Base image embeddings projected by the image head."""
        return self.project_images(self.base.encode_images(batch))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Base text embeddings projected by the text head."""
        return self.project_texts(self.base.encode_texts(texts))

    def project_images(self, base_vecs: np.ndarray) -> np.ndarray:
        """Apply the image head to stored base image embeddings (no re-decoding)."""
        return apply_head(self.heads.image, base_vecs)

    def project_texts(self, base_vecs: np.ndarray) -> np.ndarray:
        """Apply the text head to stored base text embeddings."""
        return apply_head(self.heads.text, base_vecs)


def apply_head(head: torch.nn.Module, vecs: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = head(torch.from_numpy(np.array(vecs, dtype=np.float32)))  # a copy: stored vectors may be read-only
    return out.numpy().astype(np.float32)


def _base_encoder(spec: str, device: str | None) -> Any:
    """The base model, through the registry (its lock is re-entrant: this runs while an ``adapter:`` spec loads)."""
    from ..encoders.registry import load_encoder, parse_spec

    parsed = parse_spec(spec)
    if parsed.scheme == SCHEME:
        raise ConfigError(f"adapter base model {spec!r} is itself an adapter; stacking adapters is not supported")
    return load_encoder(str(parsed), device=device)


def encoder_factory(spec: Any, device: str | None) -> AdapterEncoder:
    """The ``adapter`` model scheme: ``adapter:DIR`` -> the adapter saved in DIR on its base model. Named by the
    ``mmsearch.schemes`` entry point in pyproject.toml, so the registry finds it without importing this layer."""
    return AdapterEncoder.load(spec.arch, device=device)


def register() -> None:
    """Make ``adapter:/path/to/adapter`` model specs resolve (idempotent; the entry point does it on first use)."""
    from ..encoders.registry import register_scheme, registered_schemes

    if SCHEME not in registered_schemes():
        register_scheme(SCHEME, encoder_factory)
