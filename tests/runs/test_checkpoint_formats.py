"""Checkpoint formats: each kind of step output in its format, and back equal, in-process."""

from __future__ import annotations

import datetime
import enum
import subprocess
import sys
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from service.runs.checkpoint_formats import (
    FORMATS,
    CheckpointUnreadable,
    Encoded,
    Format,
    decode,
    encode,
    least_size,
)


def round_trip(*values: Any, allow_pickle: bool = True) -> tuple[Encoded, tuple[Any, ...]]:
    encoded = encode(values, allow_pickle=allow_pickle)
    assert encoded is not None
    assert len(encoded.formats) == len(encoded.sizes) == len(values)
    assert sum(encoded.sizes) == encoded.size == len(encoded.data)
    return encoded, decode(encoded.formats, encoded.sizes, encoded.data)


def only_format(value: Any) -> tuple[Format, Any]:
    encoded, decoded = round_trip(value)
    return encoded.formats[0], decoded[0]


def same_types(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same_types, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_types(a[k], b[k]) for k in a)
    return True


def test_formats_are_the_literal() -> None:
    assert FORMATS == ("json", "npy", "parquet", "pickle")


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(2**63),
        2**63 - 1,
        1.0,
        -0.0,
        1e300,
        "",
        "héllo ✓",
        [],
        {},
        [1, 2.5, "x", None, False],
        {"a": [1, {"b": [2.0, None, {"c": "d"}]}], "e": True, "f": {}},
    ],
)
def test_json_native_values_round_trip_as_json(value: Any) -> None:
    fmt, decoded = only_format(value)
    assert fmt == "json"
    assert decoded == value
    assert same_types(decoded, value)


class Color(enum.IntEnum):
    RED = 1


class Flag(int):
    pass


@pytest.mark.parametrize(
    "value",
    [
        (1, 2),
        {1, 2, 3},
        frozenset({"a"}),
        datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC),
        {1: "int keys"},
        {"nested": (1, 2)},
        [1, {2: 3}],
        2**63,
        -(2**63) - 1,
        float("nan"),
        float("inf"),
        Color.RED,
        Flag(3),
        OrderedDict(a=1),
        b"bytes",
        1 + 2j,
        "lone \ud800 surrogate",
        np.float64(1.5),
        np.int32(7),
    ],
    ids=repr,
)
def test_values_json_would_change_go_to_pickle(value: Any) -> None:
    fmt, decoded = only_format(value)
    assert fmt == "pickle"
    assert type(decoded) is type(value)
    if value != value:  # nan
        assert decoded != decoded
    else:
        assert decoded == value


def test_deep_and_cyclic_lists_go_to_pickle() -> None:
    deep: list[Any] = []
    for _ in range(200):
        deep = [deep]
    fmt, decoded = only_format(deep)
    assert fmt == "pickle"
    assert decoded == deep

    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    fmt, decoded = only_format(cyclic)
    assert fmt == "pickle"
    assert decoded[0] == 1 and decoded[1] is decoded


@pytest.mark.parametrize(
    "array",
    [
        np.linspace(0.0, 1.0, 11),
        np.arange(12, dtype=np.int16).reshape(3, 4),
        np.asfortranarray(np.arange(6, dtype=np.uint64).reshape(2, 3)),
        np.array(["2024-01-01", "2024-02-01"], dtype="datetime64[D]"),
        np.array([True, False]),
        np.array(3.5),
        np.zeros((0, 3)),
        np.array([(1, 2.0)], dtype=[("a", "<i4"), ("b", ">f8")]),
    ],
    ids=lambda a: f"{a.dtype}{a.shape}",
)
def test_numpy_arrays_round_trip_as_npy(array: np.ndarray[Any, Any]) -> None:
    fmt, decoded = only_format(array)
    assert fmt == "npy"
    assert type(decoded) is np.ndarray
    assert decoded.dtype == array.dtype
    assert decoded.shape == array.shape
    assert np.array_equal(decoded, array)


def test_object_and_subclassed_arrays_go_to_pickle() -> None:
    objects = np.array([{"a": 1}, None, "x"], dtype=object)
    fmt, decoded = only_format(objects)
    assert fmt == "pickle"
    assert decoded.dtype == object and list(decoded) == list(objects)

    masked = np.ma.masked_array([1, 2, 3], mask=[False, True, False])
    fmt, decoded = only_format(masked)
    assert fmt == "pickle"
    assert type(decoded) is np.ma.MaskedArray
    assert np.ma.getmaskarray(decoded).tolist() == [False, True, False]


def mixed_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "int": np.array([1, 2, 3, 4], dtype=np.int64),
            "small": np.array([1, -2, 3, -4], dtype=np.int8),
            "float": [1.5, np.nan, -0.25, 1e10],
            "str": ["a", "b", None, "d"],
            "when": pd.date_range("2024-01-01", periods=4, freq="h"),
            "zoned": pd.date_range("2024-03-30", periods=4, freq="D", tz="Europe/Paris"),
            "color": pd.Categorical(["red", "blue", "red", "green"]),
            "level": pd.Categorical(
                ["lo", "hi", "lo", "lo"], categories=["lo", "hi"], ordered=True
            ),
            "maybe": pd.array([1, None, 3, None], dtype="Int64"),
            "flag": [True, False, True, True],
        },
        index=pd.Index(["w", "x", "y", "z"], name="key"),
    )


def test_mixed_dataframe_round_trips_as_parquet() -> None:
    frame = mixed_frame()
    fmt, decoded = only_format(frame)
    assert fmt == "parquet"
    pd.testing.assert_frame_equal(decoded, frame)


@pytest.mark.parametrize(
    "index",
    [
        pd.RangeIndex(10, 18, 2),
        pd.Index([5, 7, 9, 11], name="n"),
        pd.MultiIndex.from_arrays(
            [["a", "a", "b", "b"], pd.to_datetime(["2024-01-01"] * 2 + ["2024-01-02"] * 2)],
            names=["group", "day"],
        ),
    ],
    ids=["range", "int", "multi"],
)
def test_dataframe_indexes_round_trip_as_parquet(index: pd.Index[Any]) -> None:
    frame = mixed_frame().set_axis(index, axis="index")
    fmt, decoded = only_format(frame)
    assert fmt == "parquet"
    pd.testing.assert_frame_equal(decoded, frame)


def with_attrs(frame: pd.DataFrame, attrs: dict[str, Any]) -> pd.DataFrame:
    frame.attrs.update(attrs)
    return frame


@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame({0: [1, 2], 1: [3.0, 4.0]}),
        pd.DataFrame([[1, 2]], columns=["a", 1]),
        pd.DataFrame({"a": pd.Series([1, 2], dtype=object)}),
        pd.DataFrame({"a": pd.Series([1, "x"], dtype=object)}),
        pd.DataFrame({"a": [[1], [2, 3]]}),
        pd.DataFrame({"a": pd.Categorical([3, 1, 3])}),
        pd.DataFrame({"a": pd.Series(pd.to_datetime(["2024-01-01"])).astype("datetime64[s]")}),
        pd.DataFrame({"a": [1, 2]}, index=pd.date_range("2024-01-01", periods=2, freq="D")),
        pd.DataFrame({"a": [1, 2]}, index=pd.Index([3, 4], name=7)),
        pd.DataFrame({"a": [1]}).set_flags(allows_duplicate_labels=False),
        with_attrs(pd.DataFrame({"a": [1]}), {"shape": (1, 1)}),
        pd.DataFrame([[1, 2]], columns=["a", "a"]),
        pd.DataFrame({"a": [1 + 2j]}),
        pd.DataFrame(),
    ],
    ids=[
        "int-labels",
        "mixed-labels",
        "object-ints",
        "object-mixed",
        "object-lists",
        "int-categories",
        "seconds",
        "index-freq",
        "int-index-name",
        "flags",
        "tuple-attrs",
        "duplicate-labels",
        "complex",
        "empty",
    ],
)
def test_dataframes_parquet_would_change_go_to_pickle(frame: pd.DataFrame) -> None:
    fmt, decoded = only_format(frame)
    assert fmt == "pickle"
    pd.testing.assert_frame_equal(decoded, frame)
    assert decoded.attrs == frame.attrs


def test_fitted_model_round_trips_as_pickle() -> None:
    iris = load_iris()
    model = LogisticRegression(max_iter=1000).fit(iris.data, iris.target)
    fmt, decoded = only_format(model)
    assert fmt == "pickle"
    assert type(decoded) is LogisticRegression
    assert np.array_equal(decoded.predict(iris.data), model.predict(iris.data))


def test_several_outputs_decode_to_the_same_tuple() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    values = ({"n": 3, "names": ["a", "b"]}, array, {1, 2}, mixed_frame(), None)
    encoded, decoded = round_trip(*values)
    assert encoded.formats == ("json", "npy", "pickle", "parquet", "json")
    assert len(decoded) == len(values)
    assert decoded[0] == values[0]
    assert np.array_equal(decoded[1], array) and decoded[1].dtype == array.dtype
    assert decoded[2] == {1, 2}
    pd.testing.assert_frame_equal(decoded[3], values[3])
    assert decoded[4] is None


def test_no_outputs() -> None:
    encoded, decoded = round_trip()
    assert encoded == Encoded(formats=(), sizes=(), data=b"")
    assert decoded == ()


def test_without_pickle_only_pickle_free_values_are_checkpointed() -> None:
    assert encode(({1, 2},), allow_pickle=False) is None
    assert encode(([1, 2], {3}), allow_pickle=False) is None
    assert encode((pd.DataFrame({0: [1]}),), allow_pickle=False) is None
    encoded, decoded = round_trip(
        {"a": [1, 2.5]}, np.ones(3), mixed_frame(), "s", allow_pickle=False
    )
    assert encoded.formats == ("json", "npy", "parquet", "json")
    assert decoded[0] == {"a": [1, 2.5]} and decoded[3] == "s"


@pytest.mark.parametrize(
    "unpicklable",
    [lambda x: x, threading.Lock(), (1, lambda: None)],
    ids=["lambda", "lock", "inside-tuple"],
)
def test_unpicklable_value_is_not_checkpointed(unpicklable: Any) -> None:
    assert encode((1, unpicklable)) is None


def test_decode_refuses_what_it_cannot_read() -> None:
    encoded = encode(({"a": 1}, np.arange(4), mixed_frame(), {1}))
    assert encoded is not None
    formats, sizes, data = encoded.formats, encoded.sizes, encoded.data

    with pytest.raises(CheckpointUnreadable, match="unknown"):
        decode(["json", "npy", "parquet", "yaml"], sizes, data)
    with pytest.raises(CheckpointUnreadable, match="sum"):
        decode(formats, sizes, data + b"x")
    with pytest.raises(CheckpointUnreadable, match="sum"):
        decode(formats, (*sizes[:-1], sizes[-1] - 1), data)
    with pytest.raises(CheckpointUnreadable, match="sizes"):
        decode(formats, sizes[:-1], data[: -sizes[-1]])
    with pytest.raises(CheckpointUnreadable, match="sizes"):
        decode(["json", "json"], [sizes[0] + 1, -1], data[: sizes[0]])
    # A boundary moved: each part is cut or carries its neighbour's bytes.
    with pytest.raises(CheckpointUnreadable, match=r"output 0 \(json\)"):
        decode(formats, (sizes[0] - 1, sizes[1] + 1, *sizes[2:]), data)
    # Every format with its bytes overwritten in the middle.
    for index, fmt in enumerate(formats):
        start = sum(sizes[:index])
        middle = start + sizes[index] // 2
        corrupt = data[:start] + b"\xff" * (middle - start) + data[middle:]
        with pytest.raises(CheckpointUnreadable, match=rf"output {index} \({fmt}\)") as caught:
            decode(formats, sizes, corrupt)
        assert caught.value.__cause__ is not None
    # A format that names the wrong loader.
    with pytest.raises(CheckpointUnreadable, match=r"output 0 \(npy\)"):
        decode(["npy", *formats[1:]], sizes, data)
    assert issubclass(CheckpointUnreadable, ValueError)


def test_import_does_not_load_numpy_or_pandas() -> None:
    code = (
        "import sys\n"
        "from service.runs.checkpoint_formats import decode, encode\n"
        "e = encode(({'a': [1]}, {1, 2}))\n"
        "assert decode(e.formats, e.sizes, e.data) == ({'a': [1]}, {1, 2})\n"
        "loaded = {'numpy', 'pandas', 'pyarrow'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_least_size_is_a_lower_bound_known_without_encoding() -> None:
    array = np.zeros((100, 100))
    values = (array, b"abc", "héllo", {"not": "counted"})
    least = least_size(values)
    assert least == array.nbytes + 3 + 5
    encoded = encode(values)
    assert encoded is not None and encoded.size >= least
