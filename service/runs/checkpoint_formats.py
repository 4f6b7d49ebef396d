"""The checkpoint of a finished step of a batch run: its outputs as bytes, and back.

A step's outputs (a tuple, one value per output) are stored in a row of the run store, so
that a resumed run loads them instead of running the step again. Each value is written in
the first of these formats that holds it faithfully, so that a resumed run gets equal values
of the same types as a fresh one:

- ``json`` (orjson): None, bool, int within signed 64 bits, finite float, str, and lists
  and dicts with str keys of these, exactly those types (no tuple, no subclass).
- ``npy`` (``numpy.save``, without pickle): a numpy array whose dtype holds no Python
  objects.
- ``parquet`` (pyarrow): a pandas DataFrame, when pyarrow is installed and the frame is
  made only of dtypes, indexes and labels that parquet reads back the same.
- ``pickle`` (highest protocol): anything else that pickles.

Pickle is for trusted data only: loading a pickle runs code. The run store is trusted, since
whoever can write it can already run code in the pipeline's deployment. Where that is not
wanted, a step opts out of checkpoints with ``@step(checkpoint=False)``, and a server with
the setting ``checkpoint_pickle=False`` never writes pickle: then a value with no
pickle-free form is not checkpointed (``encode`` returns None), and its step simply runs
again on resume.

numpy, pandas and pyarrow are imported only for their own values: the module works without
them, and a run of plain values never pays for their import.
"""

from __future__ import annotations

import importlib.util
import io
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import orjson

if TYPE_CHECKING:
    import pandas

__all__ = ["FORMATS", "CheckpointUnreadable", "Encoded", "Format", "decode", "encode"]

Format = Literal["json", "npy", "parquet", "pickle"]
FORMATS: tuple[Format, ...] = get_args(Format)

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
# orjson refuses nesting deeper than 255; stopping well before it also ends the walk of a
# list or dict that contains itself (pickle keeps such cycles).
_JSON_MAX_DEPTH = 128

# Parquet has no seconds unit for timestamps: datetime64[s] comes back as [ms].
_PARQUET_TIME_UNITS = frozenset({"ms", "us", "ns"})
# pandas' nullable (masked) dtypes, by name: parquet keeps their missing values and width.
_PARQUET_MASKED_DTYPES = frozenset(
    {
        *(f"{sign}Int{bits}" for sign in ("", "U") for bits in (8, 16, 32, 64)),
        "Float32",
        "Float64",
        "boolean",
    }
)


class CheckpointUnreadable(ValueError):
    """A stored checkpoint that does not load: its step runs again instead."""


@dataclass(frozen=True, slots=True)
class Encoded:
    """The checkpoint of a step's outputs: a format and a byte length per value, and the
    values' parts concatenated in order (one column of bytes, rather than a row per value)."""

    formats: tuple[Format, ...]
    sizes: tuple[int, ...]
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


def encode(values: tuple[Any, ...], *, allow_pickle: bool = True) -> Encoded | None:
    """The checkpoint of `values`, or None when some value has no allowed form (pickle
    refused, or pickling fails): a partial checkpoint could not resume the step anyway."""
    formats: list[Format] = []
    parts: list[bytes] = []
    for value in values:
        encoded = _encode_value(value, allow_pickle=allow_pickle)
        if encoded is None:
            return None
        formats.append(encoded[0])
        parts.append(encoded[1])
    return Encoded(
        formats=tuple(formats), sizes=tuple(len(part) for part in parts), data=b"".join(parts)
    )


def least_size(values: tuple[Any, ...]) -> int:
    """Bytes that encoding `values` takes at least, known without encoding them: the raw
    size of numpy arrays, bytes and strings (every form stores those whole). So a value
    far beyond a size limit is refused before it is serialized, never after."""
    total = 0
    for value in values:
        if isinstance(value, bytes | bytearray | str):
            total += len(value)
        elif _in_package(type(value).__module__, "numpy"):
            total += int(getattr(value, "nbytes", 0))
    return total


def decode(formats: Sequence[str], sizes: Sequence[int], data: bytes) -> tuple[Any, ...]:
    """The values of a checkpoint written by `encode`.

    Raises CheckpointUnreadable on an unknown format, sizes that do not match the formats or
    do not sum to ``len(data)``, or a part that does not load (a library missing, corrupt
    bytes, a pickled class that no longer exists).
    """
    if len(formats) != len(sizes):
        raise CheckpointUnreadable(f"{len(formats)} formats but {len(sizes)} sizes")
    unknown = sorted({fmt for fmt in formats if fmt not in FORMATS})
    if unknown:
        raise CheckpointUnreadable(f"unknown checkpoint format(s): {', '.join(unknown)}")
    if any(type(size) is not int or size < 0 for size in sizes):
        raise CheckpointUnreadable(f"invalid part sizes: {list(sizes)}")
    if sum(sizes) != len(data):
        raise CheckpointUnreadable(f"part sizes sum to {sum(sizes)}, but data is {len(data)} bytes")
    view = memoryview(data)
    values: list[Any] = []
    offset = 0
    for index, (fmt, size) in enumerate(zip(formats, sizes, strict=True)):
        part = view[offset : offset + size]
        offset += size
        try:
            values.append(_decode_value(fmt, part))
        except Exception as exc:
            # Any failure means the same to the caller: this checkpoint cannot be used and
            # the step runs again; the cause stays chained for the log.
            raise CheckpointUnreadable(
                f"output {index} ({fmt}) does not load: {type(exc).__name__}: {exc}"
            ) from exc
    return tuple(values)


def _encode_value(value: object, *, allow_pickle: bool) -> tuple[Format, bytes] | None:
    if _is_json_native(value):
        try:
            return "json", orjson.dumps(value)
        except orjson.JSONEncodeError:
            pass  # a str with a lone surrogate is not UTF-8: pickle keeps it
    module = type(value).__module__
    if _in_package(module, "numpy"):
        npy = _npy_bytes(value)
        if npy is not None:
            return "npy", npy
    elif _in_package(module, "pandas"):
        parquet = _parquet_bytes(value)
        if parquet is not None:
            return "parquet", parquet
    if not allow_pickle:
        return None
    try:
        return "pickle", pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        # Beyond PicklingError, a __reduce__ may raise anything (a lock's TypeError, a
        # RecursionError on deep nesting): all mean the value cannot be checkpointed.
        return None


def _decode_value(fmt: str, part: memoryview) -> Any:
    if fmt == "json":
        return orjson.loads(part)
    if fmt == "npy":
        import numpy

        array = numpy.load(io.BytesIO(part), allow_pickle=False)
        # numpy.load also opens .npz archives; an npy part must be one array.
        if not isinstance(array, numpy.ndarray):
            raise ValueError(f"not an npy array but {type(array).__name__}")
        return array
    if fmt == "parquet":
        import pandas

        return pandas.read_parquet(io.BytesIO(part), engine="pyarrow")
    return pickle.loads(part)


def _in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _is_json_native(value: object, depth: int = 0) -> bool:
    # Exact types, not isinstance: JSON would turn a bool subclass, an IntEnum, an
    # OrderedDict or a tuple into its plain base type, not the value the step returned.
    if value is None or type(value) is bool or type(value) is str:
        return True
    if type(value) is int:
        return _INT64_MIN <= value <= _INT64_MAX
    if type(value) is float:
        return math.isfinite(value)
    if depth >= _JSON_MAX_DEPTH:
        return False
    if type(value) is list:
        return all(_is_json_native(item, depth + 1) for item in value)
    if type(value) is dict:
        return all(
            type(key) is str and _is_json_native(item, depth + 1) for key, item in value.items()
        )
    return False


def _npy_bytes(value: object) -> bytes | None:
    import numpy

    # Exactly ndarray: npy would load a masked array without its mask, a matrix as an array.
    if type(value) is not numpy.ndarray or value.dtype.hasobject:
        return None
    buffer = io.BytesIO()
    try:
        numpy.save(buffer, value, allow_pickle=False)
    except ValueError:
        return None  # a dtype npy cannot hold without pickle (numpy 2's StringDType)
    return buffer.getvalue()


def _parquet_bytes(value: object) -> bytes | None:
    import pandas

    if type(value) is not pandas.DataFrame:
        return None
    # pandas imports its parquet engine itself, on the first write.
    if importlib.util.find_spec("pyarrow") is None:
        return None
    if not _parquet_faithful(value):
        return None
    buffer = io.BytesIO()
    try:
        value.to_parquet(buffer, engine="pyarrow")
    except Exception:
        # pandas and pyarrow refuse some frames with ValueError, TypeError or one of
        # pyarrow's own errors (an object column of mixed types): pickle keeps those.
        return None
    return buffer.getvalue()


def _parquet_faithful(frame: pandas.DataFrame) -> bool:
    """Whether parquet reads `frame` back the same, judged from its dtypes and labels.

    to_parquet writes many frames without an error that do not come back the same: object
    columns of ints, bools or strs come back typed (and their lists as arrays), categories
    of non-strs as their plain values, datetime64[s] as [ms], non-str labels and index names
    as strs, and an index's freq and the frame's flags are lost. Checking what is known to
    round-trip costs nothing next to writing the frame twice to compare.
    """
    import pandas

    if not frame.flags.allows_duplicate_labels or not _is_json_native(frame.attrs):
        return False
    columns = frame.columns
    if isinstance(columns, pandas.MultiIndex) or not all(type(name) is str for name in columns):
        return False
    # The labels come back in the dtype pandas gives strs by default (str or object, by
    # version), so only labels that already have it stay the same. (A frame without columns
    # is left to pickle: its empty labels have no dtype to infer.)
    if columns.empty or columns.dtype != pandas.Index(columns.tolist()).dtype:
        return False
    index = frame.index
    if getattr(index, "freq", None) is not None:
        return False
    if not all(name is None or type(name) is str for name in [*index.names, *columns.names]):
        return False
    if not isinstance(index, pandas.RangeIndex):
        levels = index.levels if isinstance(index, pandas.MultiIndex) else [index]
        if not all(_parquet_dtype(level.dtype) for level in levels):
            return False
    return all(_parquet_dtype(dtype) for dtype in frame.dtypes)


def _parquet_dtype(dtype: object) -> bool:
    import numpy
    import pandas

    if isinstance(dtype, numpy.dtype):
        if dtype.kind in "biuf":
            return True
        if dtype.kind in "mM":
            return numpy.datetime_data(dtype)[0] in _PARQUET_TIME_UNITS
        return False  # object, complex, bytes, structured
    if isinstance(dtype, pandas.DatetimeTZDtype):
        return dtype.unit in _PARQUET_TIME_UNITS
    if isinstance(dtype, pandas.StringDtype):
        return dtype.storage == "pyarrow"  # the python storage comes back as pyarrow's
    if isinstance(dtype, pandas.CategoricalDtype):
        # Only categories of strs stay categories.
        return _parquet_dtype(dtype.categories.dtype) and isinstance(
            dtype.categories.dtype, pandas.StringDtype
        )
    return isinstance(dtype, pandas.api.extensions.ExtensionDtype) and (
        dtype.name in _PARQUET_MASKED_DTYPES
    )
