"""Where every datastore column goes in the archive, and the archive's two XML files.

`plan_archive` maps the columns onto the core and extension files from the column ids alone, so every header
is known before the first row arrives (that is what makes streaming possible). `meta_xml` describes the
files written; `eml_bytes` checks and encodes the EML metadata.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final
from xml.parsers import expat

from packager.core.errors import PackagingError
from packager.domain.dwc.config import DwcSchema, ExtensionFieldSpec
from packager.domain.dwc.extensions import Extension, Term, XmlRefused, camel_case, check_xml

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


# --- XML ----------------------------------------------------------------------------------------------------


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
        declared = check_xml(data)
    except XmlRefused as exc:
        raise PackagingError(f"The EML metadata holds {exc}, which is not accepted.") from None
    except expat.ExpatError as exc:
        raise PackagingError(f"The EML metadata is not well-formed XML ({exc}).") from None
    if declared is not None and declared.lower().replace("-", "") != "utf8":
        raise PackagingError(
            f"The EML metadata declares the encoding {declared!r}; it is stored as UTF-8, so it must "
            'declare encoding="UTF-8" or none.'
        )
    return data
