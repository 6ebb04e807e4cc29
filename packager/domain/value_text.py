"""Value text: how the row writers render one value, or a whole column of them, as text or JSON.

It owns the rules the module docstring of `packager.domain.writers` lists for every text format (None empty,
numbers as given, booleans `true`/`false`, lists and dicts as compact JSON, lone surrogates as U+FFFD), and
the fast paths that apply them a column at a time: a column of numbers through one orjson call
(`number_texts`), a column of lists and dicts through another (`json_texts`), `column_texts` picking one. The
csv, tsv, JSON lines and xlsx writers all use it, so a value is written alike in every format.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from decimal import Decimal
from itertools import chain, repeat
from typing import Any, Final

import orjson

from packager.domain.numbers import NumberText

NONE_TYPE: Final = type(None)
TEXT_OR_NONE: Final = frozenset({str, NONE_TYPE})
NUMBER_OR_NONE: Final = frozenset({int, float, bool, NONE_TYPE})
JSON_OR_NONE: Final = frozenset({list, dict, tuple, NONE_TYPE})
SURROGATE = re.compile("[\ud800-\udfff]")
# Put between the items of a list given to orjson: orjson writes a Fragment as it is and never writes a raw
# newline anywhere else (it escapes the ones in strings), so ",\n," in its output is exactly where one item
# ends and the next begins. This lets one orjson call serialise a whole page or column.
ROW_BREAK: Final = orjson.Fragment(b"\n")


def replace_lone_surrogates(text: str) -> str:
    """The text with each unpaired surrogate replaced by U+FFFD (and split pairs joined)."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return replace_lone_surrogates(text).encode("utf-8")


def json_default(value: Any) -> Any:
    """orjson's fallback for types it does not know: finite Decimals stay numbers, the rest become text."""
    if type(value) is NumberText:
        return orjson.Fragment(value.text)
    if isinstance(value, Decimal) and value.is_finite():
        return orjson.Fragment(str(value))
    if isinstance(value, (set, frozenset)):
        return list(value)
    return str(value)


def _jsonable(value: Any) -> Any:
    """A copy orjson can encode: ints beyond 64 bits as raw number text, lone surrogates replaced."""
    if isinstance(value, str):
        return replace_lone_surrogates(value) if SURROGATE.search(value) else value
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else orjson.Fragment(int.__repr__(value))
    if isinstance(value, dict):
        return {_jsonable(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def json_bytes(value: Any, option: int = 0) -> bytes:
    try:
        return orjson.dumps(value, default=json_default, option=option)
    except TypeError:  # ints beyond 64 bits, lone surrogates, non-str keys: rare, so fixed up only then
        return orjson.dumps(_jsonable(value), default=json_default, option=option | orjson.OPT_NON_STR_KEYS)


def _json_text(value: Any) -> str:
    return json_bytes(value).decode("utf-8")


def _text_of_other(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return float.__repr__(value)
    if isinstance(value, NumberText):
        return value.text
    if isinstance(value, (list, tuple, dict)):
        return _json_text(value)
    isoformat = getattr(value, "isoformat", None)  # dates and times, as orjson writes them in JSON lines
    if callable(isoformat):
        return str(isoformat())
    return str(value)


_TEXT_BY_TYPE: Final[dict[type, Callable[[Any], str]]] = {
    str: str,
    NONE_TYPE: lambda _value: "",
    bool: lambda value: "true" if value else "false",
    int: int.__repr__,
    float: float.__repr__,
    NumberText: lambda value: value.text,
    list: _json_text,
    dict: _json_text,
    tuple: _json_text,
}


def text_of(value: Any) -> str:
    """The text form of one value in the csv and tsv formats (before any quoting or escaping)."""
    convert = _TEXT_BY_TYPE.get(type(value))
    return convert(value) if convert is not None else _text_of_other(value)


def _orjson_formats_floats_like_repr() -> bool:
    """Whether this orjson writes floats as `repr` does, apart from the cases `number_texts` redoes."""
    samples = [0.0, -0.0, 1.0, 0.1, 2.5, 100.0, 123.456, 1e15, 1e16, 1.5e16, 1e22, 0.0001, 0.0001234, 1e-10]
    samples += [1e-300, 5e-324, 1.7976931348623157e308, 123456789012345678.0, 9007199254740993.0, 1 / 3]
    return orjson.dumps(samples) == ("[" + ",".join(map(float.__repr__, samples)) + "]").encode()


# orjson formats a float as repr does (same shortest digits, same notation), except that it writes exponents
# -5 to -9 differently (0.00001 for 1e-05, 1e-7 for 1e-07) and NaN/infinity as null. It does so some 30 times
# faster, and a column of random floats is otherwise the slowest thing to write, so number columns go through
# orjson and only those texts are redone with repr. The probe keeps this honest should orjson ever change.
_FAST_NUMBERS: Final = _orjson_formats_floats_like_repr()


def number_texts(column: Sequence[Any], types: set[type]) -> Sequence[str]:
    """The texts of a column of ints, floats, booleans and Nones."""
    if types == {NONE_TYPE}:
        return [""] * len(column)
    if not _FAST_NUMBERS:
        return list(map(text_of, column))
    try:
        data = orjson.dumps(column)  # a JSON array: numbers, true, false and null, all ASCII
    except TypeError:  # an int beyond 64 bits
        return list(map(text_of, column))
    texts = data[1:-1].decode("ascii")
    has_null = b"null" in data
    if has_null and data.count(b"null") == column.count(None):  # every null is a None, none a NaN
        texts, has_null = texts.replace("null", ""), False
    split = texts.split(",")
    if has_null or (float in types and (b"e-" in data or b"0.0000" in data)):
        return [
            text_of(value) if text == "null" or "e-" in text or "0.0000" in text else text
            for text, value in zip(split, column, strict=True)
        ]
    return split


def column_texts(column: Sequence[Any]) -> Sequence[str]:
    """The texts of a column of values in the csv and tsv formats, before any quoting or escaping."""
    types = set(map(type, column))
    if types <= NUMBER_OR_NONE:
        return number_texts(column, types)
    if types <= TEXT_OR_NONE:
        return ["" if value is None else value for value in column] if NONE_TYPE in types else column
    if types <= JSON_OR_NONE:
        return json_texts(column)
    return list(map(text_of, column))


def json_texts(column: Sequence[Any]) -> Sequence[str]:
    """The compact JSON texts of a column of lists, dicts and Nones (None is empty)."""
    items = list(chain.from_iterable(zip(column, repeat(ROW_BREAK))))
    items.pop()
    try:
        data = orjson.dumps(items, default=json_default)
    except TypeError:  # see json_bytes
        return list(map(text_of, column))
    # A list or dict never becomes "null", so each "null" here was a None.
    return ["" if text == "null" else text for text in data[1:-1].decode("utf-8").split(",\n,")]
