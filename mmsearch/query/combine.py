"""Weighted query arithmetic: several positive and negative queries of any kind, one vector."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np

from ..errors import QueryError


@dataclass(frozen=True)
class Q:
    """One weighted query term: exactly one of text / image / vector / id."""

    text: str | None = None
    image: Any = None  # path, bytes, PIL image or HxWx3 array
    vector: Any = None
    id: int | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        given = [n for n in ("text", "image", "vector", "id") if getattr(self, n) is not None]
        if len(given) != 1:
            raise QueryError(f"a Q term needs exactly one of text=, image=, vector=, id= (got {', '.join(given) or 'none'})")
        if not np.isfinite(self.weight) or self.weight <= 0:
            raise QueryError(f"a Q term's weight must be a positive number, not {self.weight!r}")


Term = Union[Q, str, Path]


def as_term(term: Term) -> Q:
    """A plain string is a text term; a Path is an image term."""
    if isinstance(term, Q):
        return term
    if isinstance(term, str):
        return Q(text=term)
    if isinstance(term, Path):
        return Q(image=term)
    raise QueryError(f"a query term must be a str (text), a Path (image) or mmsearch.Q, not {type(term).__name__}")


def combine(positive: Sequence[Term], negative: Sequence[Term], embed: Callable[[Q], np.ndarray]) -> np.ndarray:
    """normalise(sum w*v over positives - sum w*v over negatives); ``embed`` gives a term's unit vector."""
    if not positive:
        raise QueryError("query arithmetic needs at least one positive term")
    total = sum(t.weight * embed(t) for t in map(as_term, positive))
    total = total - sum((t.weight * embed(t) for t in map(as_term, negative)), np.zeros_like(total))
    norm = float(np.linalg.norm(total))
    if not np.isfinite(norm) or norm < 1e-6:
        raise QueryError("the positive and negative terms cancel out: nothing left to search for")
    return (total / norm).astype(np.float32)
