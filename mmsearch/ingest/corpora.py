"""Reading text corpora (.txt, .jsonl, .csv, .parquet), caption manifests and pairs tables, streamed row by row.

:func:`iter_rows` is the one table reader of ingest, evaluation and training; :func:`iter_image_texts` the one
reading of a table of image paths and texts (caption manifests, and the pairs of ``mmsearch eval`` / ``train``).

A corpus row becomes a :class:`TextRecord` whose ``key`` identifies it within its file across runs:
``id:<value>`` when the corpus has an id column, else a hash of the text. The text column is the one
named, else the first of ``text``, ``caption``, ``content`` that the file has.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError

log = logging.getLogger(__name__)
TEXT_CORPUS_EXTENSIONS = frozenset({".txt", ".jsonl", ".csv", ".parquet"})
TABLE_EXTENSIONS = frozenset({".jsonl", ".csv", ".parquet"})
TEXT_FIELDS = ("text", "caption", "content")
PATH_FIELDS = ("path", "image", "image_path", "file", "filepath", "filename", "uri")
ID_FIELD = "id"
_PARQUET_BATCH_ROWS = 8192
_warned: set[tuple[str, str]] = set()  # (file, what): each warning once per file and process


@dataclass(frozen=True)
class TextRecord:
    """One text of a corpus; ``key`` identifies it within its source across runs."""

    key: str
    text: str


def iter_text_records(path: Path, *, text_column: str | None = None, id_column: str | None = None) -> Iterator[TextRecord]:
    """Texts of a corpus, streamed, without repeated keys: one per non-empty line of a .txt, one per row else."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        yield from _unique(_txt_records(path))
    elif suffix in TABLE_EXTENSIONS:
        yield from _unique(_table_records(path, text_column, id_column))
    else:
        raise ConfigError(f"{str(path)!r} is not a text corpus ({', '.join(sorted(TEXT_CORPUS_EXTENSIONS))})")


def read_caption_manifest(path: Path, *, text_column: str | None = None, path_column: str | None = None) -> dict[str, str]:
    """{absolute image path: caption} from a .jsonl / .csv / .parquet manifest (img2dataset style).

    Relative image paths are taken relative to the manifest's folder. Rows with an empty caption are skipped.
    """
    path = Path(path).expanduser().absolute()
    if path.suffix.lower() not in TABLE_EXTENSIONS:
        raise ConfigError(f"caption manifest {str(path)!r} must be .jsonl, .csv or .parquet")
    captions: dict[str, str] = {}
    first = True
    for _, image, text, row in iter_image_texts(path, text_column=text_column, path_column=path_column, what="caption"):
        if first:
            _warn_ignored(path, row, [_used(row, path_column, PATH_FIELDS), _used(row, text_column, TEXT_FIELDS)],
                          level=logging.INFO)  # manifests (img2dataset's) carry many columns by design
            first = False
        captions[image] = text
    return captions


def iter_image_texts(path: Path, *, text_column: str | None = None, path_column: str | None = None,
                     what: str = "text") -> Iterator[tuple[int, str, str, dict[str, Any]]]:
    """(row number, image path, text, the row) of each row of a .jsonl / .csv / .parquet table of image paths and
    texts: a caption manifest, the pairs of ``mmsearch eval`` and ``mmsearch train``. The one reader of such tables.

    The columns are the ones named, else the first of :data:`PATH_FIELDS` / :data:`TEXT_FIELDS` the table has
    (ConfigError naming the row when there is none). Relative image paths are taken relative to the table's folder
    (the path returned is absolute and normalised); rows with an empty path or text are skipped.
    """
    path = Path(path).expanduser().absolute()
    if path.suffix.lower() not in TABLE_EXTENSIONS:
        raise ConfigError(f"{str(path)!r}: a table of image paths and texts must be .jsonl, .csv or .parquet")
    for lineno, row in iter_rows(path):
        image = str(_field(row, path_column, PATH_FIELDS, path, lineno, "image path")).strip()
        text = str(_field(row, text_column, TEXT_FIELDS, path, lineno, what)).strip()
        if image and text:
            yield lineno, os.path.normpath(os.path.join(path.parent, image)), text, row


def iter_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, row) of a .jsonl / .csv / .parquet file, streamed; raises ConfigError on unreadable rows."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl_rows(path)
    elif suffix == ".csv":
        yield from _csv_rows(path)
    else:
        yield from _parquet_rows(path)


def text_key(text: str) -> str:
    """The key of a text without an id: a hash of the text."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _txt_records(path: Path) -> Iterator[TextRecord]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            text = line.strip()
            if text:
                yield TextRecord(key=text_key(text), text=text)


def _table_records(path: Path, text_column: str | None, id_column: str | None) -> Iterator[TextRecord]:
    first = True
    for lineno, row in iter_rows(path):
        text = str(_field(row, text_column, TEXT_FIELDS, path, lineno, "text")).strip()
        ident = row.get(id_column or ID_FIELD)
        if id_column and id_column not in row:
            raise ConfigError(f"{path}:{lineno}: no id column {id_column!r} (columns: {', '.join(map(str, row))})")
        if first:
            _warn_ignored(path, row, [_used(row, text_column, TEXT_FIELDS), id_column or ID_FIELD])
            first = False
        yield TextRecord(key=f"id:{ident}" if ident is not None else text_key(text), text=text)


def _used(row: dict[str, Any], name: str | None, defaults: tuple[str, ...]) -> str | None:
    """The column :func:`_field` reads."""
    return next((c for c in ((name,) if name else defaults) if c in row), None)


def _warn_ignored(path: Path, row: dict[str, Any], used: list[str | None], *, level: int = logging.WARNING) -> None:
    """Say once per file which of its columns are not used (a corpus: only the text and the id are stored)."""
    ignored = [str(c) for c in row if c not in used]
    key = (os.path.abspath(path), "columns")
    if ignored and key not in _warned:
        _warned.add(key)
        log.log(level, "%s: using column(s) %s; ignoring %s (only those are stored; choose others with "
                "--text-column / --id-column / --path-column)", path,
                    ", ".join(repr(c) for c in used if c and c in row), ", ".join(repr(c) for c in ignored))


def _field(row: dict[str, Any], name: str | None, defaults: tuple[str, ...], path: Path, lineno: int, what: str) -> Any:
    """The value of column ``name`` (else the first of ``defaults`` present); ConfigError naming the row."""
    names = (name,) if name else defaults
    for candidate in names:
        if candidate in row:
            return row[candidate] if row[candidate] is not None else ""
    raise ConfigError(
        f"{path}:{lineno}: no {what} column ({' / '.join(names)}); columns are: {', '.join(map(str, row)) or 'none'}"
        + ("" if name else f" — choose one with --{'text' if what in ('text', 'caption') else 'path'}-column")
    )


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({exc.msg}); each line must be a JSON object") from exc
            if not isinstance(obj, dict):
                raise ConfigError(f"{path}:{lineno}: each line must be a JSON object, not {type(obj).__name__}")
            yield lineno, obj


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                if None in row and (os.path.abspath(path), "extra") not in _warned:  # None: values past the header
                    _warned.add((os.path.abspath(path), "extra"))
                    log.warning("%s:%d: more values than the header has columns; the extra values are ignored",
                                path, reader.line_num)
                yield reader.line_num, {k: v for k, v in row.items() if k is not None}
        except csv.Error as exc:
            raise ConfigError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from exc


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"{path}: not a readable Parquet file ({exc})") from exc
    lineno = 0
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
        for row in batch.to_pylist():
            lineno += 1
            yield lineno, row


def _unique(records: Iterator[TextRecord]) -> Iterator[TextRecord]:
    seen: set[str] = set()
    for rec in records:
        if rec.key not in seen and rec.text:
            seen.add(rec.key)
            yield rec
