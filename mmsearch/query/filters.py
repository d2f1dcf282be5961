"""Metadata filters, compiled to pyarrow expressions over a modality's metadata columns.

They are applied before ranking (FAISS id selectors), so a filtered query still returns k results when
k items match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

from ..errors import QueryError

_RANGES = {  # field prefix -> column
    "mtime": "mtime", "bytes": "bytes", "width": "width", "height": "height",
}


@dataclass(frozen=True)
class Filter:
    """Conditions an item must meet; all given conditions must hold (AND).

    ``path_glob`` / ``path_prefix`` match the image path (images) or the source (texts). A glob without a
    ``/`` matches the file name (``flag_*``); one starting with ``/`` the whole absolute path; any other one
    with a ``/`` the end of the path from a folder boundary on (``2024/*.jpg``: ``2024`` is a folder of the
    path, e.g. under the collection's common root). See :func:`path_glob_regex`.
    ``caption_contains`` matches the caption (images) or the text (texts), case-insensitively;
    ``where`` maps any column to a value (equality) or to a list of values (membership).
    ``labels`` (images) keeps items whose stored labels (the model's top concepts, docs/labels.md) match one of
    the names: equal to it or holding it as whole words, ignoring case (``cat`` matches "tabby cat"), at a
    confidence of at least ``label_min_confidence``.
    """

    path_glob: str | None = None
    path_prefix: str | None = None
    caption_contains: str | None = None
    mtime_min: float | None = None
    mtime_max: float | None = None
    bytes_min: int | None = None
    bytes_max: int | None = None
    width_min: int | None = None
    width_max: int | None = None
    height_min: int | None = None
    height_max: int | None = None
    where: Mapping[str, Any] = field(default_factory=dict)
    labels: Sequence[str] = ()
    label_min_confidence: float = 0.05

    def __post_init__(self) -> None:
        if not 0 <= float(self.label_min_confidence) <= 1:
            raise QueryError(f"label_min_confidence must be in [0, 1], not {self.label_min_confidence!r}")
        if isinstance(self.labels, str):
            object.__setattr__(self, "labels", (self.labels,))
        elif not all(isinstance(name, str) for name in self.labels):
            raise QueryError(f"labels must be names (strings), not {list(self.labels)!r}")
        else:
            object.__setattr__(self, "labels", tuple(self.labels))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Filter:
        """Build from a JSON-style dict; unknown keys are an error naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise QueryError(f"unknown filter field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(data))

    def is_empty(self) -> bool:
        """True when no condition is set."""
        return not any(getattr(self, f.name) for f in fields(self) if f.name not in ("where", "label_min_confidence")) \
            and not self.where

    def has_metadata_conditions(self) -> bool:
        """True when a condition needs the metadata columns (every one but ``labels``, read from its own file)."""
        skip = ("where", "labels", "label_min_confidence")
        return any(getattr(self, f.name) for f in fields(self) if f.name not in skip) or bool(self.where)

    def expression(self, modality: str, columns: list[str]) -> Any:
        """The pyarrow expression for ``modality`` ("images" or "texts") with these columns (``labels`` is not
        in it: the labels live in their own file, see :func:`mmsearch.query.labels.match_labels`)."""
        import pyarrow.compute as pc

        path_col = "uri" if modality == "images" else "source"
        text_col = "caption" if modality == "images" else "text"
        parts = []
        if self.path_glob:
            regex = path_glob_regex(self.path_glob)
            parts.append(pc.match_substring_regex(pc.field(path_col), regex))
        if self.path_prefix:
            parts.append(pc.starts_with(pc.field(path_col), self.path_prefix))
        if self.caption_contains:
            parts.append(pc.match_substring(pc.field(text_col), self.caption_contains, ignore_case=True))
        parts += self._range_parts(modality, columns)
        for name, value in self.where.items():
            _need(name, columns)
            parts.append(pc.field(name).isin(list(value)) if isinstance(value, (list, tuple, set)) else pc.field(name) == value)
        if not parts:
            return None
        expr = parts[0]
        for p in parts[1:]:
            expr = expr & p
        return expr

    def _range_parts(self, modality: str, columns: list[str]) -> list[Any]:
        import pyarrow.compute as pc

        parts = []
        for prefix, column in _RANGES.items():
            low, high = getattr(self, f"{prefix}_min"), getattr(self, f"{prefix}_max")
            if low is None and high is None:
                continue
            if modality != "images":
                raise QueryError(f"{prefix}_min/{prefix}_max filter images only (texts have no {column})")
            _need(column, columns)
            if low is not None:
                parts.append(pc.field(column) >= low)
            if high is not None:
                parts.append(pc.field(column) <= high)
        return parts


def _need(column: str, columns: list[str]) -> None:
    if column not in columns:
        raise QueryError(f"no column {column!r} to filter on; columns: {', '.join(columns)}")


def path_glob_regex(pattern: str) -> str:
    """The regex a ``path_glob`` matches stored (absolute) paths with.

    - no ``/`` (``flag_*``, ``*.png``): the file name, the last part of the path (``*`` and ``?`` stay
      within it);
    - starting with ``/``: the whole absolute path (``*`` crosses ``/``);
    - any other ``/`` (``nested/*.png``, ``2024/*``): the path's end, starting at a folder boundary, i.e. the
      path relative to the collection's common root or to any folder below it (``*`` crosses ``/``).

    A pattern starting with ``*`` (``*/2024/*``, the old advice) matches as it always did.
    """
    if "/" not in pattern:
        return "^(?:.*/)?" + glob_to_regex(pattern, star="[^/]*", one="[^/]")[1:]
    if pattern.startswith("/"):
        return glob_to_regex(pattern)
    return "^(?:.*/)?" + glob_to_regex(pattern)[1:]


def glob_to_regex(pattern: str, *, star: str = ".*", one: str = ".") -> str:
    """An anchored RE2 regex with fnmatch semantics (``*`` matches any run, ``/`` included; ``?`` one
    character; ``[...]`` a class). fnmatch.translate's output uses constructs RE2 lacks. ``star`` / ``one``
    replace what ``*`` / ``?`` become (``[^/]*`` keeps them inside one path part)."""
    out, i = ["^"], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(star)
        elif c == "?":
            out.append(one)
        elif c == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out) + "$"
