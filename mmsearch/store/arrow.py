"""Arrow arrays from Python lists and NumPy arrays, built from their buffers.

``pyarrow.array`` asks pandas whether its input is a pandas object, and so imports pandas on its first call
(pyarrow 26): 0.18-0.3 s of every process that writes a shard, a deletion file or the labels, about a quarter of
indexing one new image (`benchmarks/README.md`, cold start). :func:`array` builds the types the store writes
(integers, floats, booleans, strings, lists of strings or floats; nulls as None) from their buffers with
``pyarrow.Array.from_buffers``, which asks nothing, and hands any other type to ``pyarrow.array``.
:func:`int64_values` is the way back for id columns, for the same reason.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa

_NUMPY = {pa.int64(): np.int64, pa.int32(): np.int32, pa.float64(): np.float64, pa.float32(): np.float32,
          pa.float16(): np.float16}
_INT32_MAX = 2**31 - 1


def array(values: Sequence[Any] | np.ndarray, type: pa.DataType) -> pa.Array:  # noqa: A002 - pyarrow's name
    """``pyarrow.array(values, type)`` without importing pandas, for the types the store writes."""
    if type in _NUMPY:
        return _primitive(values, type)
    if type == pa.bool_():
        return _booleans(values)
    if type == pa.string():
        return _strings(values)
    if pa.types.is_list(type) and (type.value_type == pa.string() or type.value_type in _NUMPY):
        return _lists(values, type)
    return pa.array(values, type=type)


def _validity(values: Sequence[Any] | np.ndarray) -> tuple[pa.Buffer | None, np.ndarray | None]:
    """The validity bitmap of ``values`` (None where nothing is null) and the mask of the nulls."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        return None, None
    nulls = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    if not nulls.any():
        return None, None
    return pa.py_buffer(np.packbits(~nulls, bitorder="little")), nulls


def _primitive(values: Sequence[Any] | np.ndarray, type: pa.DataType) -> pa.Array:  # noqa: A002
    validity, nulls = _validity(values)
    if nulls is not None:
        values = [0 if v is None else v for v in values]
    data = np.ascontiguousarray(np.asarray(values, dtype=_NUMPY[type]).reshape(-1))
    return pa.Array.from_buffers(type, len(data), [validity, pa.py_buffer(data)],
                                 null_count=int(nulls.sum()) if nulls is not None else 0)


def _booleans(values: Sequence[Any] | np.ndarray) -> pa.Array:
    validity, nulls = _validity(values)
    if nulls is not None:
        values = [False if v is None else v for v in values]
    flags = np.asarray(values, dtype=bool).reshape(-1)
    return pa.Array.from_buffers(pa.bool_(), len(flags), [validity, pa.py_buffer(np.packbits(flags, bitorder="little"))],
                                 null_count=int(nulls.sum()) if nulls is not None else 0)


def _offsets(lengths: np.ndarray) -> pa.Buffer:
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > _INT32_MAX:
        raise OverflowError("more than 2 GiB in one column chunk")
    return pa.py_buffer(offsets.astype(np.int32))


def _strings(values: Sequence[Any] | np.ndarray) -> pa.Array:
    validity, nulls = _validity(values)
    try:
        encoded = [b"" if v is None else v.encode("utf-8") for v in values]
    except AttributeError:  # not all str: pyarrow's own conversion (and its error)
        return pa.array(values, type=pa.string())
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    try:
        offsets = _offsets(lengths)
    except OverflowError:
        return pa.array(values, type=pa.string())
    return pa.Array.from_buffers(pa.string(), len(encoded), [validity, offsets, pa.py_buffer(b"".join(encoded))],
                                 null_count=int(nulls.sum()) if nulls is not None else 0)


def _lists(values: Sequence[Any], type: pa.ListType) -> pa.Array:  # noqa: A002
    validity, nulls = _validity(values)
    rows = [() if v is None else v for v in values]
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    flat = [item for row in rows for item in row]
    children = array(flat if type.value_type == pa.string() else np.asarray(flat, dtype=_NUMPY[type.value_type]),
                     type.value_type)
    return pa.Array.from_buffers(type, len(rows), [validity, _offsets(lengths)],
                                     null_count=int(nulls.sum()) if nulls is not None else 0, children=[children])


def int64_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A non-null int64 column as NumPy, read from its buffers (``ChunkedArray.to_numpy`` imports pandas)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = [np.frombuffer(chunk.buffers()[1], dtype=np.int64)[chunk.offset:chunk.offset + len(chunk)]
             for chunk in chunks if len(chunk)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def scalar(value: Any, type: pa.DataType) -> pa.Scalar:  # noqa: A002 - pyarrow's name
    """``pyarrow.scalar(value, type)`` without importing pandas (e.g. for a ``pyarrow.compute`` comparison)."""
    return array([value], type)[0]
