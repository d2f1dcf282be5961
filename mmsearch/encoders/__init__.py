"""Model backends behind one :class:`Encoder` protocol, resolved from spec strings."""

from .base import Encoder, embed_pil_images
from .registry import BUILTIN_SPEC, ModelSpec, canonical_spec, load_encoder, parse_spec, register_scheme

__all__ = [
    "BUILTIN_SPEC",
    "Encoder",
    "ModelSpec",
    "canonical_spec",
    "embed_pil_images",
    "load_encoder",
    "parse_spec",
    "register_scheme",
]
