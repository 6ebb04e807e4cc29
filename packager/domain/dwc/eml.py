"""The EML document of a GBIF-ready archive, built from the dataset's CKAN metadata through a template.

A `for_gbif` request without `eml` gets an `eml.xml` made from CKAN's `package_show` of the resource's dataset
(title, description, licence, contact, DOI): `DatasetMetadata.from_ckan` picks the values, `render_eml` puts
them, XML-escaped, into a `string.Template` (the shipped `dwc_data/eml.xml`, or the operator's
`EML_TEMPLATE_FILE`). Values are escaped for element text and attributes alike and stripped of the
characters XML 1.0 cannot hold, so no value can change the document's structure; the result is checked as a
requester's `eml` is (`layout.eml_bytes`). `load_eml_template` checks a template when the service starts.
"""

from __future__ import annotations

import functools
import re
import string
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeGuard
from xml.sax.saxutils import escape

from packager.core.errors import ConfigurationError, PackagingError
from packager.core.settings import Settings
from packager.domain.dwc.extensions import DATA_DIRECTORY
from packager.domain.dwc.layout import eml_bytes

DEFAULT_EML_TEMPLATE: Final = DATA_DIRECTORY / "eml.xml"
# Characters XML 1.0 cannot hold at all (even escaped): C0 controls but tab, LF, CR; surrogates; U+FFFE/F.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ATTRIBUTE_ENTITIES: Final = {'"': "&quot;", "'": "&apos;", "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"}
_DOI = re.compile(r"^(?:https?://(?:dx\.)?doi\.org/|doi:)?(10\.\S+/\S+)$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class DatasetMetadata:
    """What the EML says of a dataset; every field is plain text, "" when CKAN has no value."""

    title: str = ""
    description: str = ""
    license_id: str = ""
    license_title: str = ""
    license_url: str = ""
    contact_name: str = ""
    contact_email: str = ""
    organization: str = ""
    doi: str = ""
    dataset_id: str = ""
    dataset_name: str = ""
    dataset_url: str = ""
    resource_id: str = ""
    resource_name: str = ""

    @classmethod
    def from_ckan(
        cls,
        package: Mapping[str, Any],
        resource: Mapping[str, Any],
        *,
        portal_url: str = "",
        fallback_doi: str = "",
    ) -> DatasetMetadata:
        """The metadata of CKAN's `package_show` and `resource_show` answers (their `result`s).

        The contact is the maintainer, else the author, else the organisation; the DOI is the dataset's (a
        top-level `doi`, as ckanext-doi adds it, or an extra named `doi`), else `fallback_doi`.
        """
        organization = package.get("organization")
        org_title = (
            _text(organization.get("title") or organization.get("name")) if _is_map(organization) else ""
        )
        maintainer, author = _text(package.get("maintainer")), _text(package.get("author"))
        maintainer_email, author_email = (
            _text(package.get("maintainer_email")),
            _text(package.get("author_email")),
        )
        if maintainer or maintainer_email:
            contact_name, contact_email = maintainer, maintainer_email
        else:
            contact_name, contact_email = author, author_email
        name = _text(package.get("name"))
        return cls(
            title=_text(package.get("title"))
            or name
            or _text(resource.get("name"))
            or _text(resource.get("id")),
            description=_text(package.get("notes")) or _text(resource.get("description")),
            license_id=_text(package.get("license_id")),
            license_title=_text(package.get("license_title")) or _text(package.get("license_id")),
            license_url=_text(package.get("license_url")),
            contact_name=contact_name or org_title,
            contact_email=contact_email,
            organization=org_title,
            doi=_doi(package) or _bare_doi(fallback_doi),
            dataset_id=_text(package.get("id")),
            dataset_name=name,
            dataset_url=f"{portal_url.rstrip('/')}/dataset/{name}" if portal_url and name else "",
            resource_id=_text(resource.get("id")),
            resource_name=_text(resource.get("name")),
        )


def _is_map(value: Any) -> TypeGuard[Mapping[str, Any]]:
    return isinstance(value, Mapping)


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _bare_doi(value: str) -> str:
    """`10.x/y` from a DOI written bare, as `doi:10.x/y` or as a doi.org URL; "" if it is none of them."""
    found = _DOI.match(value.strip())
    return found.group(1) if found else ""


def _doi(package: Mapping[str, Any]) -> str:
    doi = _bare_doi(_text(package.get("doi")))
    if doi:
        return doi
    extras = package.get("extras")
    for extra in extras if isinstance(extras, list) else ():
        if _is_map(extra) and _text(extra.get("key")).lower() == "doi":
            return _bare_doi(_text(extra.get("value")))
    return ""


PLACEHOLDERS: Final = frozenset(
    {*DatasetMetadata.__dataclass_fields__, "doi_url", "package_id", "pub_date", "date_stamp"}
)


def _escaped(value: str) -> str:
    """Text safe in XML element content and in a quoted attribute value."""
    return escape(_NOT_XML.sub("", value), _ATTRIBUTE_ENTITIES)


def template_values(metadata: DatasetMetadata, *, now: datetime, package_id: str) -> dict[str, str]:
    """Every placeholder's value, not yet escaped."""
    return {
        **asdict(metadata),
        "doi_url": f"https://doi.org/{metadata.doi}" if metadata.doi else "",
        # The original's three placeholders of a requester's EML, with the same meaning.
        "package_id": package_id,
        "pub_date": now.astimezone(UTC).strftime("%Y-%m-%d"),
        "date_stamp": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def render_eml(
    template: string.Template,
    metadata: DatasetMetadata,
    *,
    now: datetime | None = None,
    package_id: str | None = None,
) -> str:
    """The EML document of `metadata`: the template with every value XML-escaped; PackagingError if the
    result is not well-formed XML (a template checked by `load_eml_template` always gives one)."""
    values = template_values(
        metadata, now=now or datetime.now(UTC), package_id=package_id or str(uuid.uuid4())
    )
    text = template.substitute({name: _escaped(value) for name, value in values.items()})
    eml_bytes(text)
    return text


@functools.lru_cache(maxsize=4)
def _template(path: str) -> string.Template:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"EML_TEMPLATE_FILE {path} cannot be read: {exc}") from None
    template = string.Template(text)
    if not template.is_valid():
        raise ConfigurationError(f"EML_TEMPLATE_FILE {path} has a malformed $placeholder")
    if unknown := set(template.get_identifiers()) - PLACEHOLDERS:
        raise ConfigurationError(
            f"EML_TEMPLATE_FILE {path} uses unknown placeholder(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(PLACEHOLDERS))}"
        )
    # Filled with awkward values, it must still be a well-formed EML document: checked now, not in a job.
    sample = DatasetMetadata(
        **{name: f'<{name}> & "{name}"' for name in DatasetMetadata.__dataclass_fields__}
    )
    try:
        render_eml(template, sample, now=datetime(2000, 1, 1, tzinfo=UTC), package_id="x")
    except PackagingError as exc:
        raise ConfigurationError(f"EML_TEMPLATE_FILE {path}: {exc.message}") from None
    return template


def load_eml_template(settings: Settings) -> string.Template:
    """The EML template (the operator's file or the shipped one), checked; a bad one stops the service."""
    return _template(settings.eml_template_file or str(DEFAULT_EML_TEMPLATE))
