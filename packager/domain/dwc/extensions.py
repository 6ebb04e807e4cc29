"""Darwin Core extension definitions: GBIF's extension XML read into terms, and the definitions shipped.

A definition (`<extension name=... rowType=...>` holding `<property name=... qualName=.../>`) is read by
`load_extension`, cached per path and modification time. XML with a DOCTYPE or an entity declaration is
refused (`check_xml`), so no entity is ever expanded. The Occurrence core, Simple Multimedia and
MeasurementOrFact definitions ship in `packager/domain/dwc_data/`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from xml.etree import ElementTree
from xml.parsers import expat

from packager.core.errors import ConfigurationError

DATA_DIRECTORY: Final = Path(__file__).parents[1] / "dwc_data"
OCCURRENCE_EXTENSION: Final = DATA_DIRECTORY / "dwc_occurrence.xml"
MULTIMEDIA_EXTENSION: Final = DATA_DIRECTORY / "multimedia.xml"
MEASUREMENT_OR_FACT_EXTENSION: Final = DATA_DIRECTORY / "measurements_or_facts.xml"

_WORD_SEPARATORS = re.compile(r"[\s_]+")
_FILE_NAME_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_TERM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_URI_LIKE = re.compile(r"[^\s\x00-\x1f\x7f]+")


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


class XmlRefused(Exception):
    """The XML holds a construct this module does not parse (a DOCTYPE or an entity declaration)."""


def check_xml(data: bytes) -> str | None:
    """Check that `data` is well-formed XML without DOCTYPE; return the encoding its declaration names."""
    parser = expat.ParserCreate()
    declared: list[str | None] = [None]

    def on_xml_declaration(_version: str | None, encoding: str | None, _standalone: int) -> None:
        declared[0] = encoding

    def refuse_doctype(*_args: Any) -> None:
        raise XmlRefused("a DOCTYPE declaration")

    def refuse_entity(*_args: Any) -> None:
        raise XmlRefused("an entity declaration")

    parser.XmlDeclHandler = on_xml_declaration
    parser.StartDoctypeDeclHandler = refuse_doctype
    parser.EntityDeclHandler = refuse_entity
    parser.Parse(data, True)
    return declared[0]


def _parse_xml(data: bytes) -> ElementTree.Element:
    """Parse XML that has no DOCTYPE (so no entity can be expanded); raises ExpatError or XmlRefused."""
    check_xml(data)
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
    except XmlRefused as exc:
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
