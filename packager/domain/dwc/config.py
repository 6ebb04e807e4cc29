"""The DwC options (the original's `DWC_*` settings) and their check against the extension definitions.

`DwcConfig` holds the options as given; `DwcConfig.schema()` loads the definitions they name and resolves
every term, so a bad option stops the service at start-up rather than failing a job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson

from packager.core.errors import ConfigurationError
from packager.core.settings import Settings
from packager.domain.dwc.extensions import (
    MULTIMEDIA_EXTENSION,
    OCCURRENCE_EXTENSION,
    Extension,
    Term,
    load_extension,
)


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
