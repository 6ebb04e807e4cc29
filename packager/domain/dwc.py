"""Darwin Core Archives (DwC-A) built from CKAN datastore rows, streamed page by page with flat memory.

This module owns the `package_dwc_archive` format of the original ckanpackager:

- extension definitions in GBIF's extension XML format (`<extension name=... rowType=...>` holding
  `<property name=... qualName=.../>`), read by `load_extension`. The Occurrence core, Simple Multimedia and
  MeasurementOrFact definitions ship in `packager/domain/dwc_data/`; an operator may point the settings at
  GBIF's own files instead;
- `DwcConfig`, the original's `DWC_*` options, and `DwcConfig.schema()`, which loads and checks them;
- `plan_archive`, which maps datastore columns onto terms from the column ids alone, so every header is
  known before the first row arrives (that is what makes streaming possible);
- `DwcArchiveBuilder`, which writes the core file straight into an open `zipfile.ZipFile`, spools extension
  rows to temporary files (a ZIP has one entry open for writing at a time) and, on `finish`, copies them in,
  then adds `meta.xml` and `eml.xml`;
- `meta_xml` and `eml_bytes`, the two XML files of the archive.

Mapping, as the original did it: the id column (`DWC_ID_FIELD`, `_id`) becomes `id` (index 0) of the core
and `coreid` (index 0) of every extension file. Any other column goes to the term whose name it equals, or
else whose name equals its camel-cased form ("Event date" -> `eventDate`), looked up in the core and then in
the additional extensions (exact names in all of them first, then camel-cased ones). Columns matching no
term are gathered into the dynamic term (`dynamicProperties`) as a JSON object; several columns on one term
become a JSON object of `{column: value}` (null values left out, an empty object is an empty field). A column
named in `extension_fields` (`associatedMedia`) is not written to the core: its value (an object, a list of
objects, JSON text of either, or `|`-separated plain text for the configured `text_field`) becomes zero or
more rows of that extension's file, the configured defaults standing in for missing, null or empty keys,
unknown keys ignored, null and empty values giving no row. Rows of additional extensions fed by ordinary
columns are written only when one of their values is not empty.

Files: UTF-8 CSV, `,` between fields, a field enclosed in `"` (a `"` inside doubled) only when it holds a
comma, a quote, CR or LF, `\\n` after each record, one header line. Values are written as the other formats
write them (`packager.domain.writers.text_of`). Extension files that received no row are left out of the ZIP
and of `meta.xml`. Blocking code: run it in a thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO, Final
from xml.etree import ElementTree
from xml.parsers import expat

import orjson

from packager.core.errors import ConfigurationError, PackagingError
from packager.core.settings import Settings
from packager.domain.writers import COPY_CHUNK, text_of

DATA_DIRECTORY: Final = Path(__file__).with_name("dwc_data")
OCCURRENCE_EXTENSION: Final = DATA_DIRECTORY / "dwc_occurrence.xml"
MULTIMEDIA_EXTENSION: Final = DATA_DIRECTORY / "multimedia.xml"
MEASUREMENT_OR_FACT_EXTENSION: Final = DATA_DIRECTORY / "measurements_or_facts.xml"

DWC_TEXT_NAMESPACE: Final = "http://rs.tdwg.org/dwc/text/"
META_FILE: Final = "meta.xml"
EML_FILE: Final = "eml.xml"

# How every data file is written; meta.xml declares exactly these.
ENCODING: Final = "UTF-8"
FIELDS_TERMINATED_BY: Final = ","
LINES_TERMINATED_BY: Final = "\n"
FIELDS_ENCLOSED_BY: Final = '"'
IGNORE_HEADER_LINES: Final = 1

CORE_ID_HEADER: Final = "id"
EXTENSION_ID_HEADER: Final = "coreid"

_WORD_SEPARATORS = re.compile(r"[\s_]+")
_FILE_NAME_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_TERM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_URI_LIKE = re.compile(r"[^\s\x00-\x1f\x7f]+")
_NEEDS_QUOTES: Final = (",", '"', "\n", "\r")


# --- extension definitions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Term:
    """One term of an extension: its short name (`eventDate`) and its URI (`qualName`)."""

    name: str
    qual_name: str


@dataclass(frozen=True, slots=True)
class Extension:
    """A core or extension definition: its name, row type, file name in the archive and ordered terms."""

    name: str
    row_type: str
    file_name: str
    terms: tuple[Term, ...]
    _by_name: Mapping[str, Term] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", MappingProxyType({term.name: term for term in self.terms}))

    def term(self, name: str) -> Term | None:
        """The term with exactly this name, if the extension has one."""
        return self._by_name.get(name)

    def match(self, column: str) -> Term | None:
        """The term a column maps to: the one named as the column, else as its camel-cased form."""
        return self._by_name.get(column) or self._by_name.get(camel_case(column))


def camel_case(text: str) -> str:
    """Lower camel case of a column name: "Taxon resource ID" -> "taxonResourceID" (spaces or underscores)."""
    words = [word for word in _WORD_SEPARATORS.split(text) if word]
    if not words:
        return ""
    return words[0].lower() + "".join(word[0].upper() + word[1:] for word in words[1:])


def extension_file_name(name: str) -> str:
    """The data file name for an extension name: "MeasurementOrFact" -> "measurement_or_fact.csv"."""
    words = _FILE_NAME_WORDS.findall(name)
    return "_".join(word.lower() for word in words) + ".csv" if words else "extension.csv"


class _XmlRefused(Exception):
    """The XML holds a construct this module does not parse (a DOCTYPE or an entity declaration)."""


def _check_xml(data: bytes) -> str | None:
    """Check that `data` is well-formed XML without DOCTYPE; return the encoding its declaration names."""
    parser = expat.ParserCreate()
    declared: list[str | None] = [None]

    def on_xml_declaration(_version: str | None, encoding: str | None, _standalone: int) -> None:
        declared[0] = encoding

    def refuse_doctype(*_args: Any) -> None:
        raise _XmlRefused("a DOCTYPE declaration")

    def refuse_entity(*_args: Any) -> None:
        raise _XmlRefused("an entity declaration")

    parser.XmlDeclHandler = on_xml_declaration
    parser.StartDoctypeDeclHandler = refuse_doctype
    parser.EntityDeclHandler = refuse_entity
    parser.Parse(data, True)
    return declared[0]


def _parse_xml(data: bytes) -> ElementTree.Element:
    """Parse XML that has no DOCTYPE (so no entity can be expanded); raises ExpatError or _XmlRefused."""
    _check_xml(data)
    return ElementTree.fromstring(data)


def load_extension(path: Path | str) -> Extension:
    """Read a GBIF extension definition file (cached per path and modification time)."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConfigurationError(f"Cannot read the Darwin Core extension definition {path}: {exc}") from None
    return _load_extension(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _load_extension(path: str, _mtime_ns: int, _size: int) -> Extension:
    where = f"The Darwin Core extension definition {path}"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"Cannot read the Darwin Core extension definition {path}: {exc}") from None
    try:
        root = _parse_xml(data)
    except _XmlRefused as exc:
        raise ConfigurationError(f"{where} holds {exc}, which is refused.") from None
    except (expat.ExpatError, ElementTree.ParseError) as exc:
        raise ConfigurationError(f"{where} is not well-formed XML: {exc}") from None
    namespace, _, local = root.tag.rpartition("}")
    if local != "extension":
        raise ConfigurationError(f"{where} has a <{local}> root element, not <extension>.")
    name = root.get("name") or ""
    row_type = root.get("rowType") or ""
    if not _TERM_NAME.fullmatch(name):
        raise ConfigurationError(f"{where} has no usable name attribute (got {name!r}).")
    if not _URI_LIKE.fullmatch(row_type):
        raise ConfigurationError(f"{where} has no usable rowType attribute (got {row_type!r}).")
    terms: list[Term] = []
    seen: set[str] = set()
    for prop in root.findall(f"{namespace}}}property" if namespace else "property"):
        term_name = prop.get("name") or ""
        if not _TERM_NAME.fullmatch(term_name):
            raise ConfigurationError(f"{where} has a property with an unusable name {term_name!r}.")
        qual_name = prop.get("qualName") or ((prop.get("namespace") or "") + term_name)
        if not _URI_LIKE.fullmatch(qual_name) or qual_name == term_name:
            raise ConfigurationError(f"{where}: property {term_name!r} has no usable qualName.")
        if term_name in seen:
            raise ConfigurationError(f"{where} defines the property {term_name!r} twice.")
        seen.add(term_name)
        terms.append(Term(term_name, qual_name))
    if not terms:
        raise ConfigurationError(f"{where} defines no <property>.")
    return Extension(name=name, row_type=row_type, file_name=extension_file_name(name), terms=tuple(terms))


# --- configuration -----------------------------------------------------------------------------------------


def _default_extension_fields() -> dict[str, dict[str, Any]]:
    return {
        "associatedMedia": {
            "extension": MULTIMEDIA_EXTENSION,
            "fields": {
                "type": "StillImage",
                "format": "image/jpeg",
                "identifier": "",
                "title": "",
                "license": "http://creativecommons.org/licenses/by/4.0/",
                "rightsHolder": "",
            },
            "mappings": {},
            # A value that is plain text (not JSON) is a `|`-separated list of media URLs, as Darwin Core
            # defines associatedMedia: each becomes a row with the URL in this term.
            "text_field": "identifier",
        }
    }


@dataclass(frozen=True)
class DwcConfig:
    """The original's DWC_* options.

    `extension_fields` maps a column to {"extension": path, "fields": {term: default}, "mappings": {key in
    the objects: term}, "text_field": term}; all but "extension" are optional. "text_field" names the term a
    plain-text value (or list item) goes to, split on `|`; without it such values are dropped and counted.
    """

    id_field: str = "_id"
    core_extension: Path | str = OCCURRENCE_EXTENSION
    additional_extensions: Sequence[Path | str] = ()
    dynamic_term: str | None = "dynamicProperties"
    extension_fields: Mapping[str, Mapping[str, Any]] = field(default_factory=_default_extension_fields)

    @classmethod
    def default(cls) -> DwcConfig:
        """The original service's defaults, with the extension definitions shipped in `domain/dwc_data`."""
        return cls()

    def schema(self) -> DwcSchema:
        """Load the extension definitions and check the options; raises ConfigurationError."""
        return _compile(self)


@dataclass(frozen=True, slots=True)
class ExtensionFieldSpec:
    """A column whose value holds objects, each a row of `extension`'s file (DWC_EXTENSION_FIELDS)."""

    column: str
    extension: Extension
    terms: tuple[Term, ...]
    defaults: Mapping[str, Any]
    mappings: Mapping[str, str]
    text_field: str | None
    names: frozenset[str]
    """The term names an object may fill: the configured fields, the mapping targets and the text field."""


@dataclass(frozen=True, slots=True)
class DwcSchema:
    """A checked configuration with its extension definitions loaded."""

    id_field: str
    core: Extension
    additional: tuple[Extension, ...]
    dynamic_term: Term | None
    extension_fields: Mapping[str, ExtensionFieldSpec]


def _resolve_term(extension: Extension, name: Any, what: str) -> Term:
    term = extension.match(name) if isinstance(name, str) else None
    if term is None:
        raise ConfigurationError(f"{what}: {name!r} is not a term of the {extension.name} extension.")
    return term


def _compile(config: DwcConfig) -> DwcSchema:
    if not isinstance(config.id_field, str) or not config.id_field:
        raise ConfigurationError("The Darwin Core id field (DWC_ID_FIELD) must be a non-empty column name.")
    core = load_extension(config.core_extension)
    if isinstance(config.additional_extensions, (str, Path)):
        raise ConfigurationError("DWC_ADDITIONAL_EXTENSIONS must be a list of paths, not a single path.")
    additional = tuple(load_extension(path) for path in config.additional_extensions)
    dynamic_term = None
    if config.dynamic_term:
        dynamic_term = _resolve_term(core, config.dynamic_term, "DWC_DYNAMIC_TERM")
    by_row_type: dict[str, Extension] = {core.row_type: core}
    for extension in additional:
        if by_row_type.setdefault(extension.row_type, extension) != extension:
            raise ConfigurationError(f"Two Darwin Core extensions have the row type {extension.row_type}.")
    specs: dict[str, ExtensionFieldSpec] = {}
    for column, options in config.extension_fields.items():
        what = f"DWC_EXTENSION_FIELDS[{column!r}]"
        if not isinstance(column, str) or not column or column == config.id_field:
            raise ConfigurationError(f"{what}: the column must be a name other than the id field.")
        if not isinstance(options, Mapping) or "extension" not in options:
            raise ConfigurationError(f"{what} must be a mapping with an 'extension' path.")
        extension = load_extension(options["extension"])
        if extension.row_type == core.row_type:
            raise ConfigurationError(f"{what}: the extension has the core's row type {core.row_type}.")
        if by_row_type.setdefault(extension.row_type, extension) != extension:
            raise ConfigurationError(f"Two Darwin Core extensions have the row type {extension.row_type}.")
        fields = options.get("fields") or {}
        mappings = options.get("mappings") or {}
        if not isinstance(fields, Mapping) or not isinstance(mappings, Mapping):
            raise ConfigurationError(f"{what}: 'fields' and 'mappings' must be mappings.")
        defaults = {
            _resolve_term(extension, name, f"{what} fields").name: value for name, value in fields.items()
        }
        resolved_mappings: dict[str, str] = {}
        for key, target in mappings.items():
            if not isinstance(key, str):
                raise ConfigurationError(f"{what} mappings: the key {key!r} is not a string.")
            resolved_mappings[key] = _resolve_term(extension, target, f"{what} mappings").name
        text_field = options.get("text_field")
        if text_field is not None:
            text_field = _resolve_term(extension, text_field, f"{what} text_field").name
        used = {*defaults, *resolved_mappings.values(), *([text_field] if text_field else [])}
        if not used:
            raise ConfigurationError(f"{what} names no field of the {extension.name} extension.")
        specs[column] = ExtensionFieldSpec(
            column=column,
            extension=extension,
            terms=tuple(term for term in extension.terms if term.name in used),
            defaults=MappingProxyType(defaults),
            mappings=MappingProxyType(resolved_mappings),
            text_field=text_field,
            names=frozenset(used),
        )
    return DwcSchema(
        id_field=config.id_field,
        core=core,
        additional=additional,
        dynamic_term=dynamic_term,
        extension_fields=MappingProxyType(specs),
    )


# --- layout ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MappedTerm:
    """A term filled from datastore columns (their positions); several, or the dynamic term: a JSON object."""

    term: Term
    sources: tuple[int, ...]
    as_object: bool


@dataclass(frozen=True, slots=True)
class DataFileLayout:
    """The columns of one data file: the id or coreid, then `terms` (in the extension's term order)."""

    extension: Extension
    is_core: bool
    file_name: str
    terms: tuple[Term, ...]
    mapped: tuple[MappedTerm, ...]
    fields: tuple[tuple[int, ExtensionFieldSpec], ...]

    @property
    def header(self) -> tuple[str, ...]:
        """The header line's fields."""
        first = CORE_ID_HEADER if self.is_core else EXTENSION_ID_HEADER
        return (first, *(term.name for term in self.terms))


@dataclass(frozen=True, slots=True)
class ArchiveLayout:
    """Where every datastore column goes, decided from the column ids before any row is read."""

    columns: tuple[str, ...]
    id_index: int
    core: DataFileLayout
    extensions: tuple[DataFileLayout, ...]
    targets: Mapping[str, tuple[str, str]]
    """Column -> (file name, term name or "id"); an extension field column -> (its file, "*")."""
    unmatched: tuple[str, ...]
    """Columns that matched no term: in the dynamic term, or left out when there is none."""


def plan_archive(columns: Sequence[str], schema: DwcSchema) -> ArchiveLayout:
    """Map the datastore columns onto the core and extension files; PackagingError for unusable columns."""
    columns = tuple(columns)
    if not all(isinstance(column, str) and column for column in columns):
        raise PackagingError(f"Every column id must be a non-empty string, not {list(columns)!r}.")
    if len(set(columns)) != len(columns):
        raise PackagingError(f"The resource has duplicate column ids: {list(columns)!r}.")
    if schema.id_field not in columns:
        raise PackagingError(
            f"The resource has no column {schema.id_field!r}, which a Darwin Core Archive uses as the "
            "record id."
        )
    id_index = columns.index(schema.id_field)
    extensions = (schema.core, *schema.additional)
    # Sources per term, per extension (keyed by row type), in column order.
    sources: dict[str, dict[str, list[int]]] = {extension.row_type: {} for extension in extensions}
    field_columns: dict[str, list[tuple[int, ExtensionFieldSpec]]] = {}
    targets: dict[str, tuple[str, str]] = {schema.id_field: (schema.core.file_name, CORE_ID_HEADER)}
    unmatched: list[int] = []
    for index, column in enumerate(columns):
        if index == id_index:
            continue
        spec = schema.extension_fields.get(column)
        if spec is not None:
            field_columns.setdefault(spec.extension.row_type, []).append((index, spec))
            continue
        camel = camel_case(column)
        found = next(
            ((ext, term) for ext in extensions if (term := ext.term(column)) is not None), None
        ) or next(((ext, term) for ext in extensions if (term := ext.term(camel)) is not None), None)
        if found is None:
            unmatched.append(index)
            continue
        extension, term = found
        sources[extension.row_type].setdefault(term.name, []).append(index)
    dynamic = schema.dynamic_term
    if dynamic is not None and unmatched:
        sources[schema.core.row_type].setdefault(dynamic.name, []).extend(unmatched)

    file_names: set[str] = set()

    def unique_file_name(name: str) -> str:
        stem, suffix = name.rsplit(".", 1)
        candidate, number = name, 1
        while candidate in file_names or candidate in (META_FILE, EML_FILE):
            number += 1
            candidate = f"{stem}_{number}.{suffix}"
        file_names.add(candidate)
        return candidate

    def layout(extension: Extension, is_core: bool) -> DataFileLayout:
        term_sources = sources.get(extension.row_type, {})
        fields = tuple(field_columns.get(extension.row_type, ()))
        used = set(term_sources)
        for _, spec in fields:
            used.update(term.name for term in spec.terms)
        mapped = tuple(
            MappedTerm(
                term=term,
                sources=tuple(term_sources[term.name]),
                as_object=len(term_sources[term.name]) > 1
                or (dynamic is not None and is_core and term.name == dynamic.name and bool(unmatched)),
            )
            for term in extension.terms
            if term.name in term_sources
        )
        file_name = unique_file_name(extension.file_name)
        for item in mapped:
            for index in item.sources:
                targets[columns[index]] = (file_name, item.term.name)
        for index, _spec in fields:
            targets[columns[index]] = (file_name, "*")
        return DataFileLayout(
            extension=extension,
            is_core=is_core,
            file_name=file_name,
            terms=tuple(term for term in extension.terms if term.name in used),
            mapped=mapped,
            fields=fields,
        )

    core = layout(schema.core, True)
    targets[schema.id_field] = (core.file_name, CORE_ID_HEADER)
    others: list[Extension] = list(schema.additional)
    for spec in schema.extension_fields.values():
        if spec.extension not in others:
            others.append(spec.extension)
    extension_layouts = tuple(
        item for item in (layout(extension, False) for extension in others) if item.terms
    )
    return ArchiveLayout(
        columns=columns,
        id_index=id_index,
        core=core,
        extensions=extension_layouts,
        targets=MappingProxyType(targets),
        unmatched=tuple(columns[index] for index in unmatched),
    )


# --- XML ---------------------------------------------------------------------------------------------------


def _xml_attribute(value: str) -> str:
    """A quoted XML attribute value."""
    escaped = (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("\t", "&#9;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
    )
    return f'"{escaped}"'


def _xml_text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_sequence(text: str) -> str:
    """A separator as the DwC text guide writes it in meta.xml: a backslash escape (\\n, \\t) where needed."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def meta_xml(
    core: DataFileLayout, extensions: Sequence[DataFileLayout], *, metadata: str | None = None
) -> str:
    """The archive descriptor (meta.xml) for these files; `metadata` names the EML file, if any."""
    section_attributes = (
        f"encoding={_xml_attribute(ENCODING)}"
        f" fieldsTerminatedBy={_xml_attribute(_escape_sequence(FIELDS_TERMINATED_BY))}"
        f" linesTerminatedBy={_xml_attribute(_escape_sequence(LINES_TERMINATED_BY))}"
        f" fieldsEnclosedBy={_xml_attribute(_escape_sequence(FIELDS_ENCLOSED_BY))}"
        f' ignoreHeaderLines="{IGNORE_HEADER_LINES}"'
    )
    archive = f"xmlns={_xml_attribute(DWC_TEXT_NAMESPACE)}"
    if metadata:
        archive += f" metadata={_xml_attribute(metadata)}"
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', f"<archive {archive}>"]
    for layout in (core, *extensions):
        tag, id_tag = ("core", "id") if layout.is_core else ("extension", "coreid")
        lines += [
            f"  <{tag} {section_attributes} rowType={_xml_attribute(layout.extension.row_type)}>",
            "    <files>",
            f"      <location>{_xml_text(layout.file_name)}</location>",
            "    </files>",
            f'    <{id_tag} index="0"/>',
            *(
                f'    <field index="{index}" term={_xml_attribute(term.qual_name)}/>'
                for index, term in enumerate(layout.terms, start=1)
            ),
            f"  </{tag}>",
        ]
    lines.append("</archive>")
    return "\n".join(lines) + "\n"


def eml_bytes(eml: str) -> bytes:
    """The EML document as stored in the archive (UTF-8); PackagingError if it is not well-formed XML."""
    try:
        data = eml.encode("utf-8")
    except UnicodeEncodeError:
        raise PackagingError("The EML metadata holds characters that cannot be written as UTF-8.") from None
    try:
        declared = _check_xml(data)
    except _XmlRefused as exc:
        raise PackagingError(f"The EML metadata holds {exc}, which is not accepted.") from None
    except expat.ExpatError as exc:
        raise PackagingError(f"The EML metadata is not well-formed XML ({exc}).") from None
    if declared is not None and declared.lower().replace("-", "") != "utf8":
        raise PackagingError(
            f"The EML metadata declares the encoding {declared!r}; it is stored as UTF-8, so it must "
            'declare encoding="UTF-8" or none.'
        )
    return data


# --- values ------------------------------------------------------------------------------------------------


def _decoded(value: Any) -> Any:
    """The value, or the JSON it holds when it is a string starting with `{` or `[` that parses."""
    if type(value) is str and value[:1] in ("{", "["):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _object_text(row: Sequence[Any], sources: Sequence[tuple[str, int]]) -> str:
    """A JSON object of {column: value} for the non-null values, or "" when there are none."""
    values = {name: _decoded(row[index]) for name, index in sources if row[index] is not None}
    return text_of(values) if values else ""


def _quote(text: str) -> str:
    if "," in text or '"' in text or "\n" in text or "\r" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def _quote_column(texts: list[str]) -> list[str]:
    joined = "".join(texts)
    if any(mark in joined for mark in _NEEDS_QUOTES):
        return [_quote(text) for text in texts]
    return texts


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: written as U+FFFD, as packager.domain.writers does
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace").encode("utf-8")


def _blank(value: Any) -> bool:
    return value is None or (type(value) is str and not value.strip())


class _ItemCounter:
    __slots__ = ("dropped",)

    def __init__(self) -> None:
        self.dropped = 0


def _extension_items(value: Any, spec: ExtensionFieldSpec, counter: _ItemCounter) -> Iterator[dict[str, Any]]:
    """The objects an extension field's value holds, as {term name: value} with the defaults filled in."""
    if _blank(value):
        return
    if type(value) is str:
        value = _decoded(value.strip())
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if _blank(item):
            continue
        if type(item) is str:
            item = _decoded(item.strip())
        if isinstance(item, Mapping):
            row = _object_row(item, spec)
            if row is not None:
                yield row
            elif any(not _blank(v) for v in item.values()):
                counter.dropped += 1
        elif type(item) is str and spec.text_field is not None:
            for part in item.split("|"):
                if part.strip():
                    yield {**spec.defaults, spec.text_field: part.strip()}
        else:
            counter.dropped += 1


def _object_row(item: Mapping[Any, Any], spec: ExtensionFieldSpec) -> dict[str, Any] | None:
    """One object as {term name: value}: known keys (or mapped ones) over the defaults; None if none."""
    row = dict(spec.defaults)
    known = False
    for key, value in item.items():
        if not isinstance(key, str) or _blank(value):
            continue
        name = spec.mappings.get(key, key)
        if name in spec.names:
            row[name] = value
            known = True
    return row if known else None


# --- output ------------------------------------------------------------------------------------------------


class _DataFile:
    """One CSV data file being written: a header, then records; counts and hashes what it writes."""

    def __init__(
        self, layout: DataFileLayout, out: BinaryIO | None = None, *, spool_dir: Path | None = None
    ) -> None:
        self.layout = layout
        self.rows = 0
        self.bytes = 0
        self._digest = hashlib.sha256()
        self._out = out
        self._spool_dir = spool_dir
        self.spool_path: Path | None = None
        self._index = {term.name: position for position, term in enumerate(layout.terms, start=1)}
        if out is not None:
            self._write_header()

    @property
    def sha256(self) -> str:
        """Hex sha256 of everything written so far."""
        return self._digest.hexdigest()

    def _write_header(self) -> None:
        self._write(FIELDS_TERMINATED_BY.join(map(_quote, self.layout.header)) + LINES_TERMINATED_BY)

    def _write(self, text: str) -> None:
        if self._out is None:
            handle, name = tempfile.mkstemp(prefix="dwc-", suffix=".csv", dir=self._spool_dir)
            self.spool_path = Path(name)
            self._out = os.fdopen(handle, "w+b")
            self._write_header()
        data = _utf8(text)
        self._digest.update(data)
        self._out.write(data)
        self.bytes += len(data)

    def write_columns(self, columns: list[list[str]]) -> None:
        """Write records given column by column (every column already text)."""
        quoted = [_quote_column(column) for column in columns]
        end = LINES_TERMINATED_BY
        self._write(end.join(map(FIELDS_TERMINATED_BY.join, zip(*quoted, strict=True))) + end)
        self.rows += len(columns[0])

    def record(self, core_id: str, values: Mapping[str, Any]) -> list[str]:
        """A record of this file: the core id, then each term's value as text (empty where absent)."""
        fields = [core_id] + [""] * len(self.layout.terms)
        index = self._index
        for name, value in values.items():
            position = index.get(name)
            if position is not None:
                fields[position] = text_of(value)
        return fields

    def write_records(self, records: list[list[str]]) -> None:
        """Write records given row by row."""
        if records:
            end = LINES_TERMINATED_BY
            lines = (FIELDS_TERMINATED_BY.join(map(_quote, record)) for record in records)
            self._write(end.join(lines) + end)
            self.rows += len(records)

    def copy_spool(self, out: BinaryIO) -> None:
        """Copy the spooled file into `out`, a chunk at a time, and remove it."""
        assert self._out is not None
        self._out.flush()
        self._out.seek(0)
        shutil.copyfileobj(self._out, out, COPY_CHUNK)
        self.discard()

    def discard(self) -> None:
        """Close and remove the spool file, if any."""
        if self.spool_path is not None and self._out is not None:
            with contextlib.suppress(OSError):
                self._out.close()
            self.spool_path.unlink(missing_ok=True)
            self.spool_path = None


@dataclass(frozen=True, slots=True)
class DwcFile:
    """One file written into the archive; `rows` counts data rows (None for meta.xml and eml.xml)."""

    name: str
    rows: int | None
    bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class DwcSummary:
    """What `finish` wrote: every file in ZIP order (core, extensions, meta.xml, eml.xml)."""

    core_rows: int
    files: tuple[DwcFile, ...]
    dropped_values: Mapping[str, int]
    """Per extension-field column: values or objects that could not become rows (e.g. no known key)."""

    @property
    def bytes(self) -> int:
        """Uncompressed bytes of every file together."""
        return sum(item.bytes for item in self.files)

    def file(self, name: str) -> DwcFile | None:
        """The file of that name, if it was written."""
        return next((item for item in self.files if item.name == name), None)


class DwcArchiveBuilder:
    """Writes a Darwin Core Archive into an open ZipFile, one page of rows at a time.

    The core file's entry stays open on `zip_file` until `finish` or `abort`: write no other entry meanwhile.
    `finish` leaves `zip_file` open (the caller may add a manifest) and closing it is the caller's job.
    """

    def __init__(
        self, zip_file: zipfile.ZipFile, columns: Sequence[str], config: DwcConfig, *, spool_dir: Path
    ) -> None:
        self.layout = plan_archive(columns, config.schema())
        self._zip = zip_file
        self._spool_dir = spool_dir
        self._columns = self.layout.columns
        self._closed = False
        self._dropped = {
            spec.column: _ItemCounter() for layout in self.layout.extensions for _, spec in layout.fields
        }
        self._entry: BinaryIO = zip_file.open(self.layout.core.file_name, "w", force_zip64=True)
        try:
            self._core = _DataFile(self.layout.core, self._entry)
        except BaseException:
            self._entry.close()
            raise
        self._extensions = [_DataFile(layout, spool_dir=spool_dir) for layout in self.layout.extensions]
        self._core_sources = [self._sources(item) for item in self.layout.core.mapped]
        self._extension_sources = [
            [self._sources(item) for item in layout.mapped] for layout in self.layout.extensions
        ]

    def _sources(self, item: MappedTerm) -> tuple[str, int, list[tuple[str, int]] | None]:
        """A mapped term as (term name, its first column, all its (column, position) when a JSON object)."""
        objects = [(self._columns[index], index) for index in item.sources] if item.as_object else None
        return item.term.name, item.sources[0], objects

    @property
    def rows_written(self) -> int:
        """Core rows written so far."""
        return self._core.rows

    @property
    def bytes_written(self) -> int:
        """Uncompressed bytes of every data file so far (extension files counted as spooled)."""
        return self._core.bytes + sum(item.bytes for item in self._extensions)

    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        """Write one page of rows, each a sequence of values in `columns` order."""
        if self._closed:
            raise ValueError("This archive is finished or aborted.")
        if not rows:
            return
        width = len(self._columns)
        for number, row in enumerate(rows):
            if len(row) != width:
                raise PackagingError(
                    f"Row {self.rows_written + number + 1} has {len(row)} values "
                    f"but the resource has {width} columns."
                )
        id_index = self.layout.id_index
        ids = [text_of(row[id_index]) for row in rows]
        if "" in ids:
            number = self.rows_written + ids.index("") + 1
            raise PackagingError(
                f"Row {number} has no value in {self._columns[id_index]!r}, the column used as the "
                "Darwin Core record id."
            )
        columns = [ids]
        for _name, index, objects in self._core_sources:
            if objects is None:
                columns.append([text_of(row[index]) for row in rows])
            else:
                columns.append([_object_text(row, objects) for row in rows])
        self._core.write_columns(columns)
        for data_file, sources in zip(self._extensions, self._extension_sources, strict=True):
            self._write_extension_rows(data_file, sources, rows, ids)

    def _write_extension_rows(
        self,
        data_file: _DataFile,
        sources: list[tuple[str, int, list[tuple[str, int]] | None]],
        rows: Sequence[Sequence[Any]],
        ids: list[str],
    ) -> None:
        records: list[list[str]] = []
        for row, core_id in zip(rows, ids, strict=True):
            if sources:
                values = {
                    name: row[index] if objects is None else _object_text(row, objects)
                    for name, index, objects in sources
                }
                if any(not _blank(value) for value in values.values()):
                    records.append(data_file.record(core_id, values))
            for index, spec in data_file.layout.fields:
                counter = self._dropped[spec.column]
                records.extend(
                    data_file.record(core_id, item) for item in _extension_items(row[index], spec, counter)
                )
        data_file.write_records(records)

    def finish(self, eml: str | None) -> DwcSummary:
        """Write the extension files, meta.xml and eml.xml (unless `eml` is None or blank) into the ZIP."""
        if self._closed:
            raise ValueError("This archive is finished or aborted.")
        eml_data = eml_bytes(eml) if eml is not None and eml.strip() else None
        self._closed = True
        self._entry.close()
        files = [DwcFile(self._core.layout.file_name, self._core.rows, self._core.bytes, self._core.sha256)]
        written: list[DataFileLayout] = []
        for data_file in self._extensions:
            if data_file.rows == 0:
                continue
            with self._zip.open(data_file.layout.file_name, "w", force_zip64=True) as entry:
                data_file.copy_spool(entry)
            written.append(data_file.layout)
            files.append(
                DwcFile(data_file.layout.file_name, data_file.rows, data_file.bytes, data_file.sha256)
            )
        meta = meta_xml(self.layout.core, written, metadata=EML_FILE if eml_data is not None else None)
        for name, data in ((META_FILE, meta.encode("utf-8")), (EML_FILE, eml_data)):
            if data is not None:
                self._zip.writestr(name, data)
                files.append(DwcFile(name, None, len(data), hashlib.sha256(data).hexdigest()))
        return DwcSummary(
            core_rows=self._core.rows,
            files=tuple(files),
            dropped_values=MappingProxyType({column: item.dropped for column, item in self._dropped.items()}),
        )

    def abort(self) -> None:
        """Give up: close the core entry and remove the spool files (the ZIP itself is the caller's)."""
        self._closed = True
        with contextlib.suppress(Exception):
            self._entry.close()
        for data_file in self._extensions:
            data_file.discard()


def config_from_settings(settings: Settings) -> DwcConfig:
    """The DwC options of the service's settings (`DWC_*`), shipped definitions where a path is empty."""
    extension_fields: Mapping[str, Mapping[str, Any]] | None = None
    if settings.dwc_extension_fields.strip():
        try:
            parsed = orjson.loads(settings.dwc_extension_fields)
        except orjson.JSONDecodeError as exc:
            raise ConfigurationError(f"DWC_EXTENSION_FIELDS is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ConfigurationError("DWC_EXTENSION_FIELDS must be a JSON object")
        extension_fields = parsed
    config = DwcConfig(
        id_field=settings.dwc_id_field,
        core_extension=settings.dwc_core_extension or OCCURRENCE_EXTENSION,
        additional_extensions=tuple(settings.dwc_additional_extensions),
        dynamic_term=settings.dwc_dynamic_term or None,
    )
    if extension_fields is not None:
        config = dataclasses.replace(config, extension_fields=extension_fields)
    return config
