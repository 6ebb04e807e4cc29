"""The row writers: every format read back with a standard reader gives exactly the values written."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import random
import re
import struct
import zipfile
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
import orjson
import pytest
from openpyxl.utils.escape import unescape

from packager.core.errors import PackagingError
from packager.domain import writers, xlsx_writer
from packager.domain.numbers import loads_exact
from packager.domain.writers import RowLimitExceeded, data_file_name, open_writer

TEXT_FORMATS = ("csv", "tsv", "jsonl")

# (value, its text in csv and tsv). Lists and dicts are compact JSON; floats are repr; None and "" are empty.
TRICKY: list[tuple[Any, str]] = [
    ("plain", "plain"),
    ("comma, inside", "comma, inside"),
    ('say "hi"', 'say "hi"'),
    ('"', '"'),
    ("line one\nline two", "line one\nline two"),
    ("windows\r\nline", "windows\r\nline"),
    ("lone\rreturn", "lone\rreturn"),
    ("tab\there", "tab\there"),
    ("back\\slash and \\t \\n not escapes", "back\\slash and \\t \\n not escapes"),
    ("ends with backslash\\", "ends with backslash\\"),
    ("Zoë 東京", "Zoë 東京"),
    ("emoji \U0001f600", "emoji \U0001f600"),
    ("  padded  ", "  padded  "),
    ("=1+1", "=1+1"),
    ("http://example.org/a?b=c", "http://example.org/a?b=c"),
    ("007", "007"),
    ("<r>a & b</r>", "<r>a & b</r>"),
    ("_x0041_", "_x0041_"),
    ("nul \x00 and unit separator \x1f", "nul \x00 and unit separator \x1f"),
    (None, ""),
    ("", ""),
    (True, "true"),
    (False, "false"),
    (0, "0"),
    (-42, "-42"),
    (12345678901234567890, "12345678901234567890"),
    (0.1, "0.1"),
    (1e-300, "1e-300"),
    (1.5e-05, "1.5e-05"),
    (1e16, "1e+16"),
    (-0.0, "-0.0"),
    (12.0, "12.0"),
    (0.30000000000000004, "0.30000000000000004"),
    ("12345678901234567890.123456789", "12345678901234567890.123456789"),
    ([], "[]"),
    (["a", 1, None, True, 'Zoë, "q"'], '["a",1,null,true,"Zoë, \\"q\\""]'),
    ({"k": {"nested": ["東京", 2.5]}, "n": None}, '{"k":{"nested":["東京",2.5]},"n":null}'),
]


def expected_text(value: Any) -> str:
    """The csv/tsv text of a value, computed independently of the module under test."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if isinstance(value, str):
        return value
    return repr(value)


def expected_xlsx(value: Any) -> Any:
    """What openpyxl should read back from the cell a value was written to."""
    if value is None or value == "":
        return None
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, float):  # xlsxwriter writes 16 significant digits (Excel shows 15)
        return float(f"{value:.16G}") if math.isfinite(value) else repr(value)
    if isinstance(value, int):
        return value if abs(value) < 10**15 else str(value)
    return expected_text(value)


def write(fmt: str, columns: Sequence[str], pages: Sequence[Sequence[Sequence[Any]]], **kw: Any) -> bytes:
    out = io.BytesIO()
    writer = open_writer(fmt, columns, out, **kw)
    for page in pages:
        writer.write_rows(page)
    writer.close()
    data = out.getvalue()
    assert writer.bytes_written == len(data)
    assert writer.sha256 == hashlib.sha256(data).hexdigest()
    assert writer.rows_written == sum(len(page) for page in pages)
    return data


_TSV_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_TSV_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def read_csv(data: bytes) -> list[list[str]]:
    assert not data.startswith(b"\xef\xbb\xbf")
    return list(csv.reader(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline="")))


def read_tsv(data: bytes) -> list[list[str]]:
    text = data.decode("utf-8")
    assert text.endswith("\n")
    return [
        [_TSV_ESCAPE.sub(lambda m: _TSV_UNESCAPES[m.group(1)], field) for field in line.split("\t")]
        for line in text[:-1].split("\n")
    ]


def read_jsonl(data: bytes) -> list[dict[str, Any]]:
    assert data.endswith(b"\n")
    return [orjson.loads(line) for line in data[:-1].split(b"\n")]


def read_xlsx(data: bytes) -> list[list[Any]]:
    workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True)
    assert workbook.sheetnames == ["Data"]
    sheet = workbook["Data"]
    width = sheet.max_column
    rows = [
        [unescape(value) if isinstance(value, str) else value for value in row] + [None] * (width - len(row))
        for row in sheet.iter_rows(values_only=True)
    ]
    workbook.close()
    return rows


def tricky_rows() -> list[list[Any]]:
    # Each tricky value alone in a mixed column, and next to itself in a column of one type only.
    return [[index, value, value] for index, (value, _) in enumerate(TRICKY)]


COLUMNS = ["value", "_id", "same"]  # not alphabetical, not _id first: the header must follow this order


def reorder(row: list[Any]) -> list[Any]:
    index, value, same = row
    return [value, index, same]


# --- the tricky table in every format ------------------------------------------------------------------


def test_the_expected_texts_are_what_the_table_says() -> None:
    for value, text in TRICKY:
        assert expected_text(value) == text, value


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_delimited_formats_read_back_value_for_value(fmt: str) -> None:
    rows = [reorder(row) for row in tricky_rows()]
    data = write(fmt, COLUMNS, [rows[:10], rows[10:]])
    read = read_csv(data) if fmt == "csv" else read_tsv(data)
    assert read[0] == COLUMNS
    assert len(read) == len(rows) + 1
    for written, back in zip(rows, read[1:], strict=True):
        assert back == [expected_text(value) for value in written], written


def test_csv_follows_rfc_4180() -> None:
    data = write("csv", ["a", "b"], [[["x,y", 'say "hi"'], ["plain", "two\nlines"], [None, ""]]])
    assert data == b'a,b\r\n"x,y","say ""hi"""\r\nplain,"two\nlines"\r\n,\r\n'


def test_tsv_escapes_instead_of_quoting() -> None:
    data = write("tsv", ["a", "b"], [[["t\tab", 'q"uote'], ["back\\slash", "cr\rlf\n"], [None, 1.5]]])
    assert data == b'a\tb\nt\\tab\tq"uote\nback\\\\slash\tcr\\rlf\\n\n\t1.5\n'


def test_json_lines_read_back_value_for_value() -> None:
    rows = [reorder(row) for row in tricky_rows()]
    data = write("jsonl", COLUMNS, [rows[:10], rows[10:]])
    objects = read_jsonl(data)
    assert len(objects) == len(rows)
    for written, back in zip(rows, objects, strict=True):
        assert list(back) == COLUMNS
        assert back == dict(zip(COLUMNS, written, strict=True))


def test_json_lines_keep_lists_and_dicts_structured() -> None:
    data = write("jsonl", ["_id", "tags"], [[[1, ["a", {"b": None}]], [2, True]]])
    assert data == b'{"_id":1,"tags":["a",{"b":null}]}\n{"_id":2,"tags":true}\n'


def test_xlsx_reads_back_value_for_value(tmp_path: Path) -> None:
    rows = [reorder(row) for row in tricky_rows()]
    spool = tmp_path / "spool"
    spool.mkdir()
    data = write("xlsx", COLUMNS, [rows[:10], rows[10:]], spool_dir=spool)
    assert data.startswith(b"PK")
    read = read_xlsx(data)
    assert read[0] == COLUMNS
    assert len(read) == len(rows) + 1
    for written, back in zip(rows, read[1:], strict=True):
        assert back == [expected_xlsx(value) for value in written], written
    assert list(spool.iterdir()) == []  # the spooled workbook and xlsxwriter's row file are gone


def test_xlsx_header_is_bold_and_strings_are_never_formulas_or_urls() -> None:
    data = write("xlsx", ["formula", "url", "number"], [[["=1+1", "http://example.org", "12"]]])
    workbook = openpyxl.load_workbook(io.BytesIO(data))
    sheet = workbook["Data"]
    assert sheet["A1"].font.b
    assert not sheet["A2"].font.b
    assert [cell.data_type for cell in sheet[2]] == ["s", "s", "s"]
    assert [cell.value for cell in sheet[2]] == ["=1+1", "http://example.org", "12"]
    assert not sheet["B2"].hyperlink
    workbook.close()


# --- number formatting, type by type ---------------------------------------------------------------------


def random_floats(count: int) -> list[float]:
    rng = random.Random(20240101)
    floats: list[float] = []
    while len(floats) < count:
        bits = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
        floats.append(bits if math.isfinite(bits) else 0.5)
        floats.append(rng.random() * 10 ** rng.randint(-12, 20))
        floats.append(rng.randint(-(10**6), 10**6) / 10 ** rng.randint(0, 9))
    return floats[:count]


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_floats_are_written_as_repr(fmt: str) -> None:
    floats = [*random_floats(30_000), 1e-05, 1e-07, 2.5e-09, 1e-10, 1e15, 1e16, 1e22, 5e-324, 100.00001]
    specials = [math.nan, math.inf, -math.inf]
    rows = [
        [value, None if index % 3 == 0 else value, specials[index % 3] if index % 50 == 0 else value]
        for index, value in enumerate(floats)
    ]
    data = write(fmt, ["float", "maybe_float", "with_nan"], [rows[:9000], rows[9000:]])
    read = read_csv(data) if fmt == "csv" else read_tsv(data)
    for written, back in zip(rows, read[1:], strict=True):
        assert back == [expected_text(value) for value in written]


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_columns_of_one_type_read_back(fmt: str) -> None:
    rows = [
        [
            index,
            None if index % 2 else index * 1000,
            index % 3 == 0,
            None if index % 4 == 0 else index % 5 == 0,
            f"text {index}",
            None if index % 3 else f"maybe {index}, with comma\tand tab",
            None,
            [index, {"i": index}],
            None if index % 2 else {"k": [index, 'Zoë, "q"\n']},
        ]
        for index in range(2000)
    ]
    columns = [
        "_id",
        "maybe_int",
        "flag",
        "maybe_flag",
        "text",
        "maybe_text",
        "always_none",
        "json",
        "maybe_json",
    ]
    data = write(fmt, columns, [rows[:700], rows[700:]])
    read = read_csv(data) if fmt == "csv" else read_tsv(data)
    assert read[0] == columns
    for written, back in zip(rows, read[1:], strict=True):
        assert back == [expected_text(value) for value in written]


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
def test_ints_beyond_64_bits_keep_every_digit(fmt: str) -> None:
    big = [2**70, -(2**80), [2**65]]
    data = write(fmt, ["a", "b", "c"], [[big]])
    if fmt == "jsonl":
        assert json.loads(data) == {"a": 2**70, "b": -(2**80), "c": [2**65]}
    else:
        read = read_csv(data) if fmt == "csv" else read_tsv(data)
        assert read[1] == [str(2**70), str(-(2**80)), f"[{2**65}]"]


@pytest.mark.parametrize("fmt", [*TEXT_FORMATS, "xlsx"])
def test_a_lone_surrogate_becomes_a_replacement_character(fmt: str) -> None:
    data = write(fmt, ["_id", "text"], [[[1, "bad \ud800 half"], [2, ["in \udfff list"]]]])
    if fmt == "xlsx":
        assert read_xlsx(data)[1:] == [[1, "bad \ufffd half"], [2, '["in \ufffd list"]']]
    elif fmt == "jsonl":
        assert read_jsonl(data) == [
            {"_id": 1, "text": "bad \ufffd half"},
            {"_id": 2, "text": ["in \ufffd list"]},
        ]
    else:
        read = read_csv(data) if fmt == "csv" else read_tsv(data)
        assert read[1:] == [["1", "bad \ufffd half"], ["2", '["in \ufffd list"]']]


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_a_single_column_of_empty_values_keeps_its_rows(fmt: str) -> None:
    data = write(fmt, ["only"], [[[None], [""], ["x"], [None]]])
    read = read_csv(data) if fmt == "csv" else read_tsv(data)
    assert read == [["only"], [""], [""], ["x"], [""]]


# Numbers as a real CKAN 2.12 sends them (PostgreSQL `numeric` and `float8` output), parsed exactly.
EXACT_NUMBERS_JSON = (
    b"[[1, 12345678901234567890.123456789, 123456789012345678901234567890, 1.50, 1e+15, -0.000001234500,"
    b' {"depth": 1.10, "ids": [98765432109876543210]}, null]]'
)
EXACT_NUMBER_TEXTS = [
    "1",
    "12345678901234567890.123456789",
    "123456789012345678901234567890",
    "1.50",
    "1e+15",
    "-0.000001234500",
    '{"depth":1.10,"ids":[98765432109876543210]}',
    "",
]
EXACT_COLUMNS = ["_id", "numeric", "big", "scaled", "float8", "small", "json", "none"]


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_numbers_reach_delimited_formats_exactly_as_ckan_sent_them(fmt: str) -> None:
    rows = loads_exact(EXACT_NUMBERS_JSON)
    data = write(fmt, EXACT_COLUMNS, [rows, rows])  # twice: a page of one row and a column of one type
    read = read_csv(data) if fmt == "csv" else read_tsv(data)
    assert read[1:] == [EXACT_NUMBER_TEXTS, EXACT_NUMBER_TEXTS]


def test_numbers_reach_json_lines_exactly_as_ckan_sent_them() -> None:
    data = write("jsonl", EXACT_COLUMNS, [loads_exact(EXACT_NUMBERS_JSON)])
    # The line's number tokens are CKAN's own texts, not re-rendered floats.
    assert data == (
        b'{"_id":1,"numeric":12345678901234567890.123456789,"big":123456789012345678901234567890,'
        b'"scaled":1.50,"float8":1e+15,"small":-0.000001234500,'
        b'"json":{"depth":1.10,"ids":[98765432109876543210]},"none":null}\n'
    )
    back = json.loads(data, parse_float=Decimal)
    assert back["numeric"] == Decimal("12345678901234567890.123456789")
    assert back["big"] == 123456789012345678901234567890


def test_xlsx_writes_numbers_a_cell_cannot_hold_as_text() -> None:
    data = write("xlsx", EXACT_COLUMNS, [loads_exact(EXACT_NUMBERS_JSON)])
    assert read_xlsx(data)[1] == [
        1,
        "12345678901234567890.123456789",  # 29 digits: a double would keep 17
        "123456789012345678901234567890",
        1.5,  # a double holds 1.50 exactly
        1e15,
        -0.0000012345,
        '{"depth":1.10,"ids":[98765432109876543210]}',
        None,
    ]


def test_xlsx_writes_big_ints_and_non_finite_floats_as_text() -> None:
    data = write("xlsx", ["a", "b", "c", "d"], [[[10**15 - 1, 10**15, math.nan, -math.inf]]])
    assert read_xlsx(data)[1] == [10**15 - 1, "1000000000000000", "nan", "-inf"]


# --- the output stream ---------------------------------------------------------------------------------


class WriteOnly:
    """A sink with write() and nothing else: no seek, no tell."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)


class Trickle(WriteOnly):
    """A raw-stream-like sink that takes at most 7 bytes per write."""

    def write(self, data: bytes) -> int:
        return super().write(bytes(data)[:7])


@pytest.mark.parametrize("fmt", [*TEXT_FORMATS, "xlsx"])
def test_writes_into_a_zip_entry_and_hashes_what_it_wrote(fmt: str, tmp_path: Path) -> None:
    rows = [reorder(row) for row in tricky_rows()]
    archive = tmp_path / "package.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open(data_file_name(fmt), "w") as entry:
            writer = open_writer(fmt, COLUMNS, entry, spool_dir=tmp_path)
            assert writer.file_name == f"resource.{fmt}"
            writer.write_rows(rows)
            writer.close()
        assert writer.rows_written == len(rows)
    with zipfile.ZipFile(archive) as zf:
        assert zf.namelist() == [f"resource.{fmt}"]
        data = zf.read(f"resource.{fmt}")
    assert writer.bytes_written == len(data)
    assert writer.sha256 == hashlib.sha256(data).hexdigest()
    if fmt == "xlsx":
        assert read_xlsx(data)[0] == COLUMNS
    else:
        assert data == write(fmt, COLUMNS, [rows])


@pytest.mark.parametrize("sink_type", [WriteOnly, Trickle])
@pytest.mark.parametrize("fmt", [*TEXT_FORMATS, "xlsx"])
def test_writes_to_a_sink_that_only_has_write(fmt: str, sink_type: type[WriteOnly]) -> None:
    sink = sink_type()
    writer = open_writer(fmt, ["_id", "name"], sink)  # type: ignore[arg-type]
    writer.write_rows([[1, "Zoë"], [2, None]])
    writer.close()
    data = b"".join(sink.chunks)
    assert writer.bytes_written == len(data)
    assert writer.sha256 == hashlib.sha256(data).hexdigest()
    if fmt == "xlsx":
        assert read_xlsx(data) == [["_id", "name"], [1, "Zoë"], [2, None]]
    else:
        assert data == write(fmt, ["_id", "name"], [[[1, "Zoë"], [2, None]]])


# --- limits and mistakes -------------------------------------------------------------------------------


def test_xlsx_refuses_more_rows_than_a_worksheet_holds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The xlsx writer reads its own module's limit; `writers` only re-exports it.
    monkeypatch.setattr(xlsx_writer, "XLSX_MAX_ROWS", 5)  # the header and four rows of data
    out = io.BytesIO()
    writer = open_writer("xlsx", ["_id"], out, spool_dir=tmp_path)
    writer.write_rows([[1], [2], [3]])
    with pytest.raises(RowLimitExceeded) as raised:
        writer.write_rows([[4], [5]])
    assert isinstance(raised.value, PackagingError)
    assert "5 rows including the header" in raised.value.message
    assert "csv" in raised.value.message
    assert writer.rows_written == 3
    writer.write_rows([[4]])  # the offending page was not written; what still fits does
    with pytest.raises(RowLimitExceeded):
        writer.write_rows([[5]])
    writer.close()
    assert read_xlsx(out.getvalue()) == [["_id"], [1], [2], [3], [4]]


def test_xlsx_refuses_a_value_longer_than_a_cell_holds(tmp_path: Path) -> None:
    writer = open_writer("xlsx", ["_id", "notes"], io.BytesIO(), spool_dir=tmp_path)
    writer.write_rows([[1, "x" * 32_767]])
    with pytest.raises(PackagingError) as raised:
        writer.write_rows([[2, "x" * 32_768]])
    assert "'notes' in row 2" in raised.value.message
    assert "32,767" in raised.value.message
    writer.abort()
    assert list(tmp_path.iterdir()) == []  # nothing left in the spool directory


def test_xlsx_counts_characters_as_excel_does() -> None:
    writer = open_writer("xlsx", ["emoji"], io.BytesIO())
    with pytest.raises(PackagingError):
        writer.write_rows([["\U0001f600" * 16_384]])  # 16,384 characters, 32,768 UTF-16 units
    writer.abort()


def test_a_failed_writer_used_as_a_context_manager_leaves_no_spool_files(tmp_path: Path) -> None:
    with pytest.raises(PackagingError), open_writer("xlsx", ["a"], io.BytesIO(), spool_dir=tmp_path) as w:
        w.write_rows([["y" * 40_000]])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", [*TEXT_FORMATS, "xlsx"])
def test_a_row_of_the_wrong_length_is_refused(fmt: str) -> None:
    writer = open_writer(fmt, ["a", "b"], io.BytesIO())
    writer.write_rows([[1, 2]])
    with pytest.raises(PackagingError, match="Row 3 has 1 values but the resource has 2 columns"):
        writer.write_rows([[1, 2], [3]])
    writer.abort()


def test_columns_must_be_distinct_non_empty_ids() -> None:
    for columns in ([], ["a", "a"], ["a", ""]):
        with pytest.raises(PackagingError):
            open_writer("csv", columns, io.BytesIO())


def test_formats_and_file_names() -> None:
    assert [data_file_name(fmt) for fmt in writers.FORMATS] == [
        "resource.csv",
        "resource.tsv",
        "resource.jsonl",
        "resource.xlsx",
    ]
    with pytest.raises(ValueError, match="Unknown data format 'xls'"):
        open_writer("xls", ["a"], io.BytesIO())


@pytest.mark.parametrize("fmt", [*TEXT_FORMATS, "xlsx"])
def test_no_rows_gives_a_file_with_only_the_header(fmt: str) -> None:
    data = write(fmt, ["_id", "name"], [])
    if fmt == "csv":
        assert data == b"_id,name\r\n"
    elif fmt == "tsv":
        assert data == b"_id\tname\n"
    elif fmt == "jsonl":
        assert data == b""
    else:
        assert read_xlsx(data) == [["_id", "name"]]


def test_writing_after_close_is_refused() -> None:
    writer = open_writer("csv", ["a"], io.BytesIO())
    writer.close()
    writer.close()  # closing twice is harmless
    with pytest.raises(ValueError, match="closed"):
        writer.write_rows([[1]])
