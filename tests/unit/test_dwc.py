"""Darwin Core Archives: term matching, meta.xml that describes the files as written, extension rows, EML,
and a 100,000-row archive read back with python-dwca-reader."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import orjson
import pytest
from dwca.read import DwCAReader

from packager.core.errors import ConfigurationError, PackagingError
from packager.dev.ckan_server import SyntheticTable
from packager.domain import dwc
from packager.domain.dwc import (
    DwcArchiveBuilder,
    DwcConfig,
    DwcSummary,
    camel_case,
    extension_file_name,
    load_extension,
    plan_archive,
)
from packager.domain.numbers import loads_exact
from packager.domain.writers import text_of

DWC = "http://rs.tdwg.org/dwc/terms/"
DC = "http://purl.org/dc/terms/"
TEXT_NS = "{http://rs.tdwg.org/dwc/text/}"
OCCURRENCE = "http://rs.tdwg.org/dwc/terms/Occurrence"
MULTIMEDIA = "http://rs.gbif.org/terms/1.0/Multimedia"
MEASUREMENT = "http://rs.tdwg.org/dwc/terms/MeasurementOrFact"
MEDIA_DEFAULTS = {
    DC + "type": "StillImage",
    DC + "format": "image/jpeg",
    DC + "identifier": "",
    DC + "title": "",
    DC + "license": "http://creativecommons.org/licenses/by/4.0/",
    DC + "rightsHolder": "",
}

EML = """<?xml version="1.0" encoding="UTF-8"?>
<eml:eml xmlns:eml="https://eml.ecoinformatics.org/eml-2.2.0" packageId="p1" system="ckan">
  <dataset><title>Specimens &amp; observations — Zoë</title></dataset>
</eml:eml>
"""


# --- helpers -----------------------------------------------------------------------------------------------


def build(
    tmp_path: Path,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    config: DwcConfig | None = None,
    eml: str | None = None,
    page_size: int = 1000,
) -> tuple[Path, DwcSummary]:
    """Build an archive page by page; checks that no spool file is left behind."""
    path = tmp_path / "archive.zip"
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        builder = DwcArchiveBuilder(zf, columns, config or DwcConfig.default(), spool_dir=spool)
        for start in range(0, len(rows), page_size):
            builder.write_rows(rows[start : start + page_size])
        summary = builder.finish(eml)
    assert list(spool.iterdir()) == []
    return path, summary


def read_archive(path: Path) -> dict[str, list[dict[str, str]]]:
    """Every data file read as meta.xml describes it, checking the description against the file.

    Returns {rowType: [record as {"id" or "coreid" or term URI: value}]}.
    """
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        meta = ElementTree.fromstring(zf.read("meta.xml"))
        assert meta.tag == TEXT_NS + "archive"
        sections = list(meta)
        assert [section.tag for section in sections[:1]] == [TEXT_NS + "core"]
        assert all(section.tag == TEXT_NS + "extension" for section in sections[1:])
        result: dict[str, list[dict[str, str]]] = {}
        for section in sections:
            is_core = section.tag == TEXT_NS + "core"
            location = section.find(f"{TEXT_NS}files/{TEXT_NS}location")
            assert location is not None and location.text in names
            encoding = section.get("encoding")
            assert encoding == "UTF-8"
            delimiter = section.get("fieldsTerminatedBy", "").encode().decode("unicode_escape")
            terminator = section.get("linesTerminatedBy", "").encode().decode("unicode_escape")
            quote = section.get("fieldsEnclosedBy", "").encode().decode("unicode_escape")
            assert (delimiter, terminator, quote) == (",", "\n", '"')
            header_lines = int(section.get("ignoreHeaderLines", "0"))
            assert header_lines == 1
            text = zf.read(location.text).decode(encoding)
            assert text.endswith(terminator)
            assert not text.startswith("\ufeff")
            assert "\r\n" not in text
            parsed = list(
                csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quotechar=quote, strict=True)
            )
            # Re-writing the parsed records with the declared settings gives back the file byte for byte:
            # the declaration describes exactly how it is written.
            rewritten = io.StringIO()
            csv.writer(rewritten, delimiter=delimiter, quotechar=quote, lineterminator=terminator).writerows(
                parsed
            )
            assert rewritten.getvalue() == text
            header, records = parsed[:header_lines][0], parsed[header_lines:]
            key = section.find(TEXT_NS + ("id" if is_core else "coreid"))
            assert key is not None and key.get("index") == "0"
            assert header[0] == ("id" if is_core else "coreid")
            fields = section.findall(TEXT_NS + "field")
            indexes = [int(item.get("index", "-1")) for item in fields]
            assert indexes == list(range(1, len(header)))
            terms = [item.get("term", "") for item in fields]
            assert [term.rstrip("/").rsplit("/", 1)[-1] for term in terms] == header[1:]
            keys = ["id" if is_core else "coreid", *terms]
            assert all(len(record) == len(header) for record in records)
            row_type = section.get("rowType", "")
            assert row_type not in result
            result[row_type] = [dict(zip(keys, record, strict=True)) for record in records]
        described = {section.find(f"{TEXT_NS}files/{TEXT_NS}location").text for section in sections}  # type: ignore[union-attr]
        assert names - described <= {"meta.xml", "eml.xml"}
    return result


def media_config(**options: Any) -> DwcConfig:
    """The default configuration with extra options for the associatedMedia field."""
    fields = dict(DwcConfig.default().extension_fields)
    fields["associatedMedia"] = {**fields["associatedMedia"], **options}
    return DwcConfig(extension_fields=fields)


# --- term matching -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("Event date", "eventDate"),
        ("Taxon resource ID", "taxonResourceID"),
        ("scientificName", "scientificname"),
        ("event_date", "eventDate"),
        ("  Decimal   latitude ", "decimalLatitude"),
        ("Coordinate uncertainty in meters", "coordinateUncertaintyInMeters"),
        ("Verbatim SRS", "verbatimSRS"),
        ("", ""),
    ],
)
def test_camel_case(column: str, expected: str) -> None:
    assert camel_case(column) == expected


@pytest.mark.parametrize(
    ("name", "file_name"),
    [
        ("Occurrence", "occurrence.csv"),
        ("Multimedia", "multimedia.csv"),
        ("MeasurementOrFact", "measurement_or_fact.csv"),
        ("DNADerivedData", "dna_derived_data.csv"),
    ],
)
def test_extension_file_names(name: str, file_name: str) -> None:
    assert extension_file_name(name) == file_name


def test_columns_map_to_terms_by_name_or_camel_case() -> None:
    columns = [
        "_id",
        "scientificName",
        "Event date",
        "decimal_latitude",
        "colour",
        "weight",
        "associatedMedia",
    ]
    layout = plan_archive(columns, DwcConfig.default().schema())
    assert dict(layout.targets) == {
        "_id": ("occurrence.csv", "id"),
        "scientificName": ("occurrence.csv", "scientificName"),
        "Event date": ("occurrence.csv", "eventDate"),
        "decimal_latitude": ("occurrence.csv", "decimalLatitude"),
        "colour": ("occurrence.csv", "dynamicProperties"),
        "weight": ("occurrence.csv", "dynamicProperties"),
        "associatedMedia": ("multimedia.csv", "*"),
    }
    assert layout.unmatched == ("colour", "weight")
    # The core's columns follow the Occurrence definition's term order.
    assert layout.core.header == ("id", "dynamicProperties", "eventDate", "decimalLatitude", "scientificName")


def test_unmatched_columns_become_dynamic_properties_json(tmp_path: Path) -> None:
    columns = ["_id", "scientificName", "colour", "weight", "extra", "flags"]
    rows: list[list[Any]] = [
        [1, "Puma concolor", "tawny", 61.5, '{"a": [1, 2]}', [True, None]],
        [2, "Lynx lynx", None, None, None, None],
        [3, None, "", 0, "{not json", {"k": "v"}],
    ]
    path, _ = build(tmp_path, columns, rows)
    core = read_archive(path)[OCCURRENCE]
    assert [record["id"] for record in core] == ["1", "2", "3"]
    assert [record[DWC + "scientificName"] for record in core] == ["Puma concolor", "Lynx lynx", ""]
    dynamic = [record[DWC + "dynamicProperties"] for record in core]
    # Compact JSON, null values left out, JSON held in strings decoded, an empty object an empty field.
    assert dynamic[0] == '{"colour":"tawny","weight":61.5,"extra":{"a":[1,2]},"flags":[true,null]}'
    assert dynamic[1] == ""
    assert json.loads(dynamic[2]) == {"colour": "", "weight": 0, "extra": "{not json", "flags": {"k": "v"}}


def test_several_columns_on_one_term_become_a_json_object(tmp_path: Path) -> None:
    columns = ["_id", "eventDate", "Event date", "country"]
    rows: list[list[Any]] = [
        [1, "2020-01-02", "2 Jan 2020", "Kenya"],
        [2, None, "yesterday", "Peru"],
        [3, None, None, None],
    ]
    path, _ = build(tmp_path, columns, rows)
    core = read_archive(path)[OCCURRENCE]
    assert [json.loads(r[DWC + "eventDate"]) if r[DWC + "eventDate"] else None for r in core] == [
        {"eventDate": "2020-01-02", "Event date": "2 Jan 2020"},
        {"Event date": "yesterday"},
        None,
    ]
    assert [r[DWC + "country"] for r in core] == ["Kenya", "Peru", ""]
    assert DWC + "dynamicProperties" not in core[0]


def test_values_are_written_as_the_other_formats_write_them(tmp_path: Path) -> None:
    values: list[Any] = [
        None,
        "",
        True,
        False,
        0,
        -42,
        12345678901234567890,
        0.1,
        1e-300,
        ["a", 1],
        {"k": [None, 1.5]},
        'say "hi", then\nleave',
        "Zoë 東京 \U0001f600",
    ]
    rows = [[number, value] for number, value in enumerate(values, start=1)]
    path, _ = build(tmp_path, ["_id", "scientificName"], rows)
    core = read_archive(path)[OCCURRENCE]
    assert [record[DWC + "scientificName"] for record in core] == [text_of(value) for value in values]


def test_numbers_are_written_exactly_as_ckan_sent_them(tmp_path: Path) -> None:
    rows = loads_exact(
        b'[[1, 12345678901234567890.123456789, 123456789012345678901234567890, 1.50, {"depth": 1.10}],'
        b" [2, 1e+15, -5, 0.1, null]]"
    )
    path, _ = build(
        tmp_path, ["_id", "decimalLatitude", "individualCount", "decimalLongitude", "extra"], rows
    )
    core = read_archive(path)[OCCURRENCE]
    assert [
        (r[DWC + "decimalLatitude"], r[DWC + "individualCount"], r[DWC + "decimalLongitude"]) for r in core
    ] == [
        ("12345678901234567890.123456789", "123456789012345678901234567890", "1.50"),
        ("1e+15", "-5", "0.1"),
    ]
    assert '"depth":1.10' in core[0][DWC + "dynamicProperties"]


def test_additional_extension_terms_and_skipped_empty_rows(tmp_path: Path) -> None:
    definition = tmp_path / "taxon_resource.xml"
    definition.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<?xml-stylesheet type="text/xsl" href="/style/human.xsl"?>\n'
        '<extension xmlns="http://rs.gbif.org/extension/" xmlns:dc="http://purl.org/dc/terms/"\n'
        '    dc:title="Taxon resources" name="TaxonResource" namespace="http://example.org/terms/"\n'
        '    rowType="http://example.org/terms/TaxonResource">\n'
        '  <property name="taxonResourceID" namespace="http://example.org/terms/"\n'
        '      qualName="http://example.org/terms/taxonResourceID" required="false"/>\n'
        '  <property name="resourceNote" namespace="http://example.org/terms/"/>\n'
        "</extension>\n",
        encoding="utf-8",
    )
    config = DwcConfig(additional_extensions=(definition,))
    columns = ["_id", "Taxon resource ID", "Resource note", "scientificName"]
    rows: list[list[Any]] = [[10, "tr-1", None, "A a"], [11, None, None, "B b"], [12, None, "noted", None]]
    path, summary = build(tmp_path, columns, rows, config=config)
    archive = read_archive(path)
    assert archive["http://example.org/terms/TaxonResource"] == [
        {
            "coreid": "10",
            "http://example.org/terms/taxonResourceID": "tr-1",
            "http://example.org/terms/resourceNote": "",
        },
        {
            "coreid": "12",
            "http://example.org/terms/taxonResourceID": "",
            "http://example.org/terms/resourceNote": "noted",
        },
    ]
    taxon_file = summary.file("taxon_resource.csv")
    assert taxon_file is not None and taxon_file.rows == 2
    assert DWC + "dynamicProperties" not in archive[OCCURRENCE][0]


# --- meta.xml ----------------------------------------------------------------------------------------------


def test_meta_xml_is_exactly_the_documented_form(tmp_path: Path) -> None:
    columns = ["_id", "scientificName", "colour", "associatedMedia"]
    rows = [[1, "Puma concolor", "tawny", {"identifier": "http://example.org/1.jpg"}]]
    path, _ = build(tmp_path, columns, rows, eml=EML)
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["occurrence.csv", "multimedia.csv", "meta.xml", "eml.xml"]
        meta = zf.read("meta.xml").decode("utf-8")
    section = (
        'encoding="UTF-8" fieldsTerminatedBy="," linesTerminatedBy="\\n" fieldsEnclosedBy="&quot;" '
        'ignoreHeaderLines="1"'
    )
    assert meta == (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="eml.xml">\n'
        f'  <core {section} rowType="http://rs.tdwg.org/dwc/terms/Occurrence">\n'
        "    <files>\n"
        "      <location>occurrence.csv</location>\n"
        "    </files>\n"
        '    <id index="0"/>\n'
        '    <field index="1" term="http://rs.tdwg.org/dwc/terms/dynamicProperties"/>\n'
        '    <field index="2" term="http://rs.tdwg.org/dwc/terms/scientificName"/>\n'
        "  </core>\n"
        f'  <extension {section} rowType="http://rs.gbif.org/terms/1.0/Multimedia">\n'
        "    <files>\n"
        "      <location>multimedia.csv</location>\n"
        "    </files>\n"
        '    <coreid index="0"/>\n'
        '    <field index="1" term="http://purl.org/dc/terms/type"/>\n'
        '    <field index="2" term="http://purl.org/dc/terms/format"/>\n'
        '    <field index="3" term="http://purl.org/dc/terms/identifier"/>\n'
        '    <field index="4" term="http://purl.org/dc/terms/title"/>\n'
        '    <field index="5" term="http://purl.org/dc/terms/license"/>\n'
        '    <field index="6" term="http://purl.org/dc/terms/rightsHolder"/>\n'
        "  </extension>\n"
        "</archive>\n"
    )
    # The attribute holds the two characters backslash and n, which readers decode to a line feed.
    element = ElementTree.fromstring(meta.encode())[0]
    assert element.get("linesTerminatedBy") == "\\n"
    assert element.get("fieldsEnclosedBy") == '"'


def test_meta_xml_describes_every_file_as_written(tmp_path: Path) -> None:
    config = DwcConfig(
        extension_fields={
            **DwcConfig.default().extension_fields,
            "measurements": {
                "extension": dwc.MEASUREMENT_OR_FACT_EXTENSION,
                "fields": {"measurementType": "", "measurementValue": "", "measurementUnit": ""},
                "mappings": {"unit": "measurementUnit"},
            },
        }
    )
    columns = ["_id", "Scientific name", "notes", "associatedMedia", "measurements", "year"]
    rows: list[list[Any]] = [
        [1, "Puma concolor", 'quote " and, comma', [{"identifier": "http://e.org/1"}], None, 2001],
        [
            2,
            "Lynx, lynx",
            "two\nlines",
            None,
            [{"measurementType": "mass", "measurementValue": 3, "unit": "kg"}],
            None,
        ],
        [3, None, None, "[]", '{"measurementType": "length", "measurementValue": "1,5"}', 1999],
    ]
    path, summary = build(tmp_path, columns, rows, config=config)
    archive = read_archive(path)
    assert set(archive) == {OCCURRENCE, MULTIMEDIA, MEASUREMENT}
    assert archive[MEASUREMENT] == [
        {
            "coreid": "2",
            DWC + "measurementType": "mass",
            DWC + "measurementValue": "3",
            DWC + "measurementUnit": "kg",
        },
        {
            "coreid": "3",
            DWC + "measurementType": "length",
            DWC + "measurementValue": "1,5",
            DWC + "measurementUnit": "",
        },
    ]
    assert archive[OCCURRENCE][1][DWC + "dynamicProperties"] == '{"notes":"two\\nlines"}'
    assert [item.name for item in summary.files] == [
        "occurrence.csv",
        "multimedia.csv",
        "measurement_or_fact.csv",
        "meta.xml",
    ]
    assert summary.core_rows == 3
    with zipfile.ZipFile(path) as zf:
        for item in summary.files:
            data = zf.read(item.name)
            assert len(data) == item.bytes
            assert hashlib.sha256(data).hexdigest() == item.sha256


def test_every_extension_row_points_at_a_core_row(tmp_path: Path) -> None:
    rows = [
        [n, f"sp {n}", [{"identifier": f"http://e.org/{n}/{k}"} for k in range(n % 3)]] for n in range(1, 50)
    ]
    path, _ = build(tmp_path, ["_id", "scientificName", "associatedMedia"], rows, page_size=7)
    archive = read_archive(path)
    core_ids = {record["id"] for record in archive[OCCURRENCE]}
    media = archive[MULTIMEDIA]
    assert len(media) == sum(n % 3 for n in range(1, 50))
    assert {record["coreid"] for record in media} <= core_ids


def test_empty_extension_files_are_left_out(tmp_path: Path) -> None:
    rows = [[1, "A a", None], [2, "B b", []], [3, "C c", ""]]
    path, summary = build(tmp_path, ["_id", "scientificName", "associatedMedia"], rows)
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["occurrence.csv", "meta.xml"]
        meta = ElementTree.fromstring(zf.read("meta.xml"))
    assert meta.findall(TEXT_NS + "extension") == []
    assert meta.get("metadata") is None
    assert [item.name for item in summary.files] == ["occurrence.csv", "meta.xml"]
    # The extension field column is not written to the core either.
    assert read_archive(path)[OCCURRENCE][0] == {"id": "1", DWC + "scientificName": "A a"}


# --- extension fields --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, []),
        ("", []),
        ("   ", []),
        ([], []),
        ("[]", []),
        ({}, []),
        ([None, {}, ""], []),
        ({"identifier": "http://e.org/a.jpg"}, [{DC + "identifier": "http://e.org/a.jpg"}]),
        ('{"identifier": "http://e.org/a.jpg"}', [{DC + "identifier": "http://e.org/a.jpg"}]),
        (
            '[{"identifier": "http://e.org/a.jpg", "title": "A"}, {"identifier": "http://e.org/b.png", '
            '"format": "image/png", "unknown": 1}]',
            [
                {DC + "identifier": "http://e.org/a.jpg", DC + "title": "A"},
                {DC + "identifier": "http://e.org/b.png", DC + "format": "image/png"},
            ],
        ),
        (
            [
                {"identifier": "http://e.org/a.jpg", "license": None},
                {"identifier": "http://e.org/b", "type": ""},
            ],
            [{DC + "identifier": "http://e.org/a.jpg"}, {DC + "identifier": "http://e.org/b"}],
        ),
        (
            ["http://e.org/a.jpg", '{"title": "B"}'],
            [{DC + "identifier": "http://e.org/a.jpg"}, {DC + "title": "B"}],
        ),
        (
            "http://e.org/a.jpg | http://e.org/b.jpg",
            [{DC + "identifier": "http://e.org/a.jpg"}, {DC + "identifier": "http://e.org/b.jpg"}],
        ),
        ({"rightsHolder": {"name": "NHM"}}, [{DC + "rightsHolder": '{"name":"NHM"}'}]),
    ],
)
def test_associated_media_values(tmp_path: Path, value: Any, expected: list[dict[str, str]]) -> None:
    path, _ = build(tmp_path, ["_id", "associatedMedia"], [[7, value]])
    media = read_archive(path).get(MULTIMEDIA, [])
    assert media == [{"coreid": "7", **MEDIA_DEFAULTS, **row} for row in expected]


def test_extension_field_mappings_and_dropped_values(tmp_path: Path) -> None:
    config = media_config(mappings={"url": "identifier", "mime": "format"}, text_field=None)
    rows = [
        [1, [{"url": "http://e.org/1", "mime": "image/png", "colour": "red"}]],
        [2, "http://e.org/plain-text-without-a-text-field"],
        [3, [{"colour": "red"}, 42, [1]]],
    ]
    path, summary = build(tmp_path, ["_id", "associatedMedia"], rows, config=config)
    assert read_archive(path)[MULTIMEDIA] == [
        {"coreid": "1", **MEDIA_DEFAULTS, DC + "identifier": "http://e.org/1", DC + "format": "image/png"}
    ]
    assert dict(summary.dropped_values) == {"associatedMedia": 4}


# --- EML ---------------------------------------------------------------------------------------------------


def test_eml_is_stored_as_given(tmp_path: Path) -> None:
    path, summary = build(tmp_path, ["_id", "scientificName"], [[1, "A a"]], eml=EML)
    with zipfile.ZipFile(path) as zf:
        assert zf.read("eml.xml") == EML.encode("utf-8")
        assert ElementTree.fromstring(zf.read("meta.xml")).get("metadata") == "eml.xml"
    eml_file = summary.file("eml.xml")
    assert eml_file is not None and eml_file.bytes == len(EML.encode("utf-8"))


@pytest.mark.parametrize(
    ("eml", "message"),
    [
        ("<eml><dataset></eml>", "not well-formed XML"),
        ("not xml at all", "not well-formed XML"),
        ("<eml/><eml/>", "not well-formed XML"),
        (
            '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
            "<eml>&lol2;</eml>",
            "DOCTYPE",
        ),
        ('<!DOCTYPE eml SYSTEM "file:///etc/passwd"><eml/>', "DOCTYPE"),
        ('<?xml version="1.0" encoding="ISO-8859-1"?><eml/>', "encoding"),
    ],
)
def test_eml_that_is_not_well_formed_is_refused(tmp_path: Path, eml: str, message: str) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        builder = DwcArchiveBuilder(zf, ["_id", "associatedMedia"], DwcConfig.default(), spool_dir=spool)
        builder.write_rows([[1, "http://e.org/a.jpg"]])
        assert len(list(spool.iterdir())) == 1  # the multimedia rows are spooled
        with pytest.raises(PackagingError, match=message):
            builder.finish(eml)
        builder.abort()
    assert list(spool.iterdir()) == []


# --- errors and the builder's life cycle -------------------------------------------------------------------


def test_rows_need_the_id_column_and_an_id(tmp_path: Path) -> None:
    spool = tmp_path
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        with pytest.raises(PackagingError, match="no column '_id'"):
            DwcArchiveBuilder(zf, ["scientificName"], DwcConfig.default(), spool_dir=spool)
        with pytest.raises(PackagingError, match="duplicate"):
            plan_archive(["_id", "a", "a"], DwcConfig.default().schema())
        builder = DwcArchiveBuilder(zf, ["_id", "scientificName"], DwcConfig.default(), spool_dir=spool)
        builder.write_rows([[1, "A a"]])
        with pytest.raises(PackagingError, match="Row 3 has no value in '_id'"):
            builder.write_rows([[2, "B b"], [None, "C c"]])
        with pytest.raises(PackagingError, match="Row 2 has 1 values but the resource has 2 columns"):
            builder.write_rows([[2]])
        builder.abort()
        with pytest.raises(ValueError, match="finished or aborted"):
            builder.write_rows([[3, "D d"]])


def test_a_custom_id_field(tmp_path: Path) -> None:
    config = DwcConfig(id_field="catalogNumber")
    path, _ = build(
        tmp_path, ["_id", "catalogNumber", "scientificName"], [[1, "NHM-1", "A a"]], config=config
    )
    core = read_archive(path)[OCCURRENCE]
    assert core == [{"id": "NHM-1", DWC + "dynamicProperties": '{"_id":1}', DWC + "scientificName": "A a"}]


def test_progress_counters(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        builder = DwcArchiveBuilder(zf, ["_id", "associatedMedia"], DwcConfig.default(), spool_dir=tmp_path)
        header = len("id\n")
        assert (builder.rows_written, builder.bytes_written) == (0, header)
        builder.write_rows([[1, None], [2, "http://e.org/x"]])
        assert builder.rows_written == 2
        summary = builder.finish(None)
    assert builder.bytes_written == sum(item.bytes for item in summary.files if item.rows is not None)


# --- configuration and extension definitions ---------------------------------------------------------------


def test_shipped_extension_definitions() -> None:
    core = load_extension(dwc.OCCURRENCE_EXTENSION)
    assert (core.name, core.row_type, core.file_name) == ("Occurrence", OCCURRENCE, "occurrence.csv")
    names = [term.name for term in core.terms]
    dcterms = ["type", "modified", "language", "license", "rightsHolder", "accessRights"]
    dcterms += ["bibliographicCitation", "references"]
    assert names[:8] == dcterms
    assert all(core.term(name).qual_name == DC + name for name in dcterms)  # type: ignore[union-attr]
    for name in ["occurrenceID", "basisOfRecord", "eventDate", "scientificName", "decimalLatitude"]:
        assert core.term(name) == dwc.Term(name, DWC + name)
    assert len(names) == len(set(names)) > 150

    media = load_extension(dwc.MULTIMEDIA_EXTENSION)
    assert (media.name, media.row_type, media.file_name) == ("Multimedia", MULTIMEDIA, "multimedia.csv")
    assert [term.qual_name for term in media.terms][-1] == DWC + "datasetID"
    assert len(media.terms) == 15

    facts = load_extension(dwc.MEASUREMENT_OR_FACT_EXTENSION)
    assert (facts.row_type, facts.file_name) == (MEASUREMENT, "measurement_or_fact.csv")
    assert [term.name for term in facts.terms] == [
        "measurementID",
        "measurementType",
        "measurementValue",
        "measurementAccuracy",
        "measurementUnit",
        "measurementDeterminedBy",
        "measurementDeterminedDate",
        "measurementMethod",
        "measurementRemarks",
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><extension name="X" rowType="u:X"/>',
            "DOCTYPE",
        ),
        ("<extension", "not well-formed"),
        ('<other name="X" rowType="u:X"/>', "root element"),
        ('<extension name="X" rowType="u:X"/>', "no <property>"),
        ('<extension rowType="u:X"><property name="a" qualName="u:a"/></extension>', "name attribute"),
        ('<extension name="X" rowType="u:X"><property name="a"/></extension>', "qualName"),
        (
            '<extension name="X" rowType="u:X"><property name="a" qualName="u:a"/>'
            '<property name="a" qualName="u:b"/></extension>',
            "twice",
        ),
    ],
)
def test_unusable_extension_definitions_are_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "extension.xml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigurationError, match=message):
        load_extension(path)


def test_unusable_configuration_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="Cannot read"):
        DwcConfig(core_extension=tmp_path / "missing.xml").schema()
    with pytest.raises(ConfigurationError, match="DWC_DYNAMIC_TERM"):
        DwcConfig(dynamic_term="noSuchTerm").schema()
    with pytest.raises(ConfigurationError, match="'colour' is not a term"):
        media_config(fields={"colour": "red"}).schema()
    with pytest.raises(ConfigurationError, match="mappings"):
        media_config(mappings={"url": "nowhere"}).schema()
    with pytest.raises(ConfigurationError, match="core's row type"):
        DwcConfig(
            extension_fields={"x": {"extension": dwc.OCCURRENCE_EXTENSION, "fields": {"type": ""}}}
        ).schema()
    # Without a dynamic term, unmatched columns are left out.
    layout = plan_archive(["_id", "colour"], DwcConfig(dynamic_term=None).schema())
    assert layout.core.terms == () and layout.unmatched == ("colour",)


# --- a large archive read back with python-dwca-reader ---------------------------------------------------


def media_value(i: int) -> Any:
    """A varied associatedMedia value for row i."""
    kind = i % 6
    if kind == 0:
        return None
    if kind == 1:
        return []
    if kind == 2:
        return {"identifier": f"http://e.org/{i}.jpg", "title": f"Specimen {i}"}
    if kind == 3:
        return [
            {"identifier": f"http://e.org/{i}/a.jpg"},
            {"identifier": f"http://e.org/{i}/b.png", "format": "image/png"},
        ]
    if kind == 4:
        return orjson.dumps([{"identifier": f"http://e.org/{i}.tif", "rightsHolder": "NHM, London"}]).decode()
    return ""


def test_a_100k_row_archive_reads_back_with_python_dwca_reader(tmp_path: Path) -> None:
    table = SyntheticTable("t", 100_000)
    columns = [*table.names, "associatedMedia"]
    assert table.names[0] == "_id"
    path = tmp_path / "big.zip"
    spool = tmp_path / "spool"
    spool.mkdir()
    page_size = 5000
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        builder = DwcArchiveBuilder(zf, columns, DwcConfig.default(), spool_dir=spool)
        for start in range(0, table.rows, page_size):
            builder.write_rows([[*table.values(i), media_value(i)] for i in range(start, start + page_size)])
        summary = builder.finish(EML)
    assert summary.core_rows == 100_000
    assert list(spool.iterdir()) == []

    dynamic_columns = [name for name in table.names if name not in ("_id", "country", "year")]
    with DwCAReader(str(path)) as reader:
        assert reader.descriptor is not None
        assert reader.descriptor.core.type == OCCURRENCE
        assert reader.metadata is not None
        count = 0
        for i, row in enumerate(reader):
            values = dict(zip(table.names, table.values(i), strict=True))
            assert row.id == str(i + 1)
            assert row.data[DWC + "country"] == values["country"]
            assert row.data[DWC + "year"] == str(values["year"])
            expected = {name: values[name] for name in dynamic_columns if values[name] is not None}
            assert loads_exact(row.data[DWC + "dynamicProperties"]) == expected
            count += 1
        assert count == 100_000

        [media_file] = reader.extension_files
        assert media_file.file_descriptor.type == MULTIMEDIA
        actual = [(row.core_id, row.data) for row in media_file.iter_rows()]
    expected_media = []
    for i in range(table.rows):
        value = media_value(i)
        if isinstance(value, str) and value:
            value = json.loads(value)
        items = value if isinstance(value, list) else [value] if value else []
        for item in items:
            data = {**MEDIA_DEFAULTS, **{DC + key: text for key, text in item.items()}}
            expected_media.append((str(i + 1), data))
    assert actual == expected_media
    media_summary = summary.file("multimedia.csv")
    assert media_summary is not None and media_summary.rows == len(expected_media)
