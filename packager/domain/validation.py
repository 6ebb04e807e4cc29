"""Validation and normalisation of incoming package requests, and the cache key they are partitioned by.

Everything here is pure except `check_url`, which takes the resolver it uses as an argument. A request that
fails any check raises `BadRequestError` and never reaches the log.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from yarl import URL

from packager.core.errors import BadRequestError, PackagingError
from packager.domain.dwc.layout import eml_bytes
from packager.domain.secrets import keyed_hash

Resolver = Callable[[str], Awaitable[list[str]]]

_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_WHITESPACE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Parameters that never reach a header (or a file name) and may hold line breaks and tabs.
MULTILINE_PARAMETERS = frozenset({"eml", "filters", "q", "fields", "sort"})


def require(params: Mapping[str, str], name: str) -> str:
    """Return a required, non-blank parameter, or fail naming it as the original service did."""
    value = params.get(name)
    if value is None or not str(value).strip():
        raise BadRequestError(f"Parameter {name} is required")
    return str(value).strip()


def reject_control_characters(params: Mapping[str, str]) -> None:
    """Refuse CR, LF, NUL and other control characters where a value could reach a header or a file name.

    Query text (`MULTILINE_PARAMETERS`) may hold tabs and line breaks, but never NUL or other controls.
    """
    for name, value in params.items():
        pattern = _CONTROL_BUT_WHITESPACE if name in MULTILINE_PARAMETERS else _CONTROL
        if _CONTROL.search(name) or pattern.search(str(value)):
            raise BadRequestError(f"Parameter {name} contains a control character")


def check_email(address: str) -> str:
    """Return the address if it is a plain `local@domain.tld` mailbox, else fail."""
    if len(address) > 254 or not _EMAIL.match(address):
        raise BadRequestError(f"Parameter email is not a valid email address: {address!r}")
    return address


def is_public_address(address: str) -> bool:
    """True when the IP address is globally routable (not private, loopback, link-local, reserved...)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


async def check_url(name: str, value: str, *, resolve: Resolver, allow_private: bool) -> URL:
    """Validate an http(s) URL parameter and, unless allowed, refuse hosts that resolve to private space."""
    try:
        url = URL(value)
        # yarl decodes the host (IDNA) and checks the port only when asked: ask now, while errors are 400s.
        host, _ = url.host, url.port
    except (ValueError, TypeError):  # UnicodeError (a malformed IDNA label) is a ValueError
        raise BadRequestError(f"Parameter {name} is not a valid URL") from None
    if url.scheme not in ("http", "https") or not host:
        raise BadRequestError(f"Parameter {name} must be an http or https URL")
    if url.user is not None or url.password is not None:
        raise BadRequestError(f"Parameter {name} must not carry credentials")
    if not allow_private:
        try:
            addresses = [host] if _is_ip_literal(host) else await resolve(host)
        except (OSError, UnicodeError):  # getaddrinfo raises UnicodeError for a label over 63 characters
            raise BadRequestError(f"Parameter {name}: host {url.host} cannot be resolved") from None
        if not addresses or not all(is_public_address(a) for a in addresses):
            raise BadRequestError(
                f"Parameter {name}: host {url.host} resolves to a private, loopback or link-local address"
            )
    return url


CALLBACK_URL_MAX = 2000


async def parse_callback_url(params: Mapping[str, str], *, resolve: Resolver, allow_private: bool) -> str:
    """The optional `callback_url` (the webhook's receiver), checked as `resource_url` is; "" when absent."""
    value = str(params.get("callback_url") or "").strip()
    if not value:
        return ""
    if len(value) > CALLBACK_URL_MAX:
        raise BadRequestError(f"Parameter callback_url is longer than {CALLBACK_URL_MAX} characters")
    return str(await check_url("callback_url", value, resolve=resolve, allow_private=allow_private))


@dataclass(frozen=True, slots=True)
class UrlPackageRequest:
    """A validated `/package_url` request."""

    resource_id: str
    resource_url: str
    email: str
    key: str  # the CKAN API key in clear; it only lives in memory

    @property
    def ckan_host(self) -> str:
        """Host (and port) of the resource URL, the original's `{ckan_host}` placeholder."""
        url = URL(self.resource_url)
        return url.raw_authority or (url.host or "")

    def identity(self) -> dict[str, Any]:
        """Every parameter that defines the package's content (not email, not secret, key in clear)."""
        return {"resource_id": self.resource_id, "resource_url": self.resource_url, "key": self.key}


async def parse_url_request(
    params: Mapping[str, str], *, resolve: Resolver, allow_private: bool
) -> UrlPackageRequest:
    """Validate the parameters of `/package_url`."""
    reject_control_characters(params)
    resource_id = require(params, "resource_id")
    resource_url = require(params, "resource_url")
    email = check_email(require(params, "email"))
    if len(resource_id) > 500:
        raise BadRequestError("Parameter resource_id is longer than 500 characters")
    url = await check_url("resource_url", resource_url, resolve=resolve, allow_private=allow_private)
    return UrlPackageRequest(
        resource_id=resource_id,
        resource_url=str(url),
        email=email,
        key=str(params.get("key") or "").strip(),
    )


def cache_key_for(kind: str, identity: Mapping[str, Any], secret: str) -> str:
    """Hash of the normalised request: equal for identical requests, with the CKAN key only as an HMAC."""
    normalised = dict(identity)
    key = normalised.pop("key", "")
    normalised["key_hmac"] = keyed_hash(secret, "ckan-key", key) if key else ""
    normalised["kind"] = kind
    return hashlib.sha256(orjson.dumps(normalised, option=orjson.OPT_SORT_KEYS)).hexdigest()


FORMATS = ("csv", "tsv", "jsonl", "xlsx")


@dataclass(frozen=True, slots=True)
class DatastorePackageRequest:
    """A validated `/package_datastore` request."""

    api_url: str
    resource_id: str
    email: str
    filters: dict[str, Any]
    q: str
    plain: bool | None
    language: str
    fields: list[str]
    sort: str
    offset: int
    limit: int | None
    format: str
    doi: str
    key: str
    eml: str = ""  # Darwin Core Archives only
    for_gbif: bool = False  # Darwin Core Archives only

    @property
    def ckan_host(self) -> str:
        """Host (and port) of the CKAN API, the original's `{ckan_host}` placeholder."""
        url = URL(self.api_url)
        return url.raw_authority or (url.host or "")

    def query(self) -> dict[str, Any]:
        """The query's parameters (no email, no key), as stored in events and manifests."""
        return {
            "api_url": self.api_url,
            "resource_id": self.resource_id,
            "filters": self.filters,
            "q": self.q,
            "plain": self.plain,
            "language": self.language,
            "fields": self.fields,
            "sort": self.sort,
            "offset": self.offset,
            "limit": self.limit,
            "format": self.format,
            "doi": self.doi,
            "eml": self.eml,
            "for_gbif": self.for_gbif,
        }

    def identity(self) -> dict[str, Any]:
        """Every parameter that defines the package's content (not email, not secret, key in clear)."""
        return {**self.query(), "key": self.key}


def _non_negative_int(params: Mapping[str, str], name: str) -> int | None:
    raw = str(params.get(name) or "").strip()
    if not raw:
        return None
    if not re.fullmatch(r"\+?\d{1,15}", raw):
        raise BadRequestError(f"Parameter {name} must be a non-negative integer")
    return int(raw)


def _json_object(params: Mapping[str, str], name: str) -> dict[str, Any]:
    raw = str(params.get(name) or "").strip()
    if not raw:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequestError(f"Parameter {name} must be a JSON object") from None
    if not isinstance(value, dict):
        raise BadRequestError(f"Parameter {name} must be a JSON object")
    if _depth(value) > MAX_FILTER_DEPTH:
        raise BadRequestError(f"Parameter {name} is nested more than {MAX_FILTER_DEPTH} levels deep")
    return value


# CKAN filters are {"column": value}, {"column": [values]} or {"column": {"op": value}}: a few levels at most.
MAX_FILTER_DEPTH = 8


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion (so a hostile document cannot exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def _field_list(raw: str) -> list[str]:
    raw = raw.strip()
    if not raw:
        return []
    if raw.startswith("["):
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequestError("Parameter fields must be a comma-separated list or a JSON list") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadRequestError("Parameter fields must be a list of column names")
        return [v.strip() for v in value if v.strip()]
    return [part.strip() for part in raw.split(",") if part.strip()]


def _optional_bool(params: Mapping[str, str], name: str) -> bool | None:
    raw = str(params.get(name) or "").strip().lower()
    if not raw:
        return None
    if raw in ("true", "1", "yes", "t"):
        return True
    if raw in ("false", "0", "no", "f"):
        return False
    raise BadRequestError(f"Parameter {name} must be true or false")


MAX_EML_CHARS = 256 * 1024


async def parse_datastore_request(
    params: Mapping[str, str],
    *,
    resolve: Resolver,
    allow_private: bool,
    allowed_hosts: tuple[str, ...] = (),
    dwc: bool = False,
) -> DatastorePackageRequest:
    """Validate the parameters of `/package_datastore` (or, with `dwc`, of `/package_dwc_archive`)."""
    reject_control_characters(params)
    api_url = require(params, "api_url")
    resource_id = require(params, "resource_id")
    email = check_email(require(params, "email"))
    if len(resource_id) > 500:
        raise BadRequestError("Parameter resource_id is longer than 500 characters")
    fmt = "dwc" if dwc else str(params.get("format") or "csv").strip().lower()
    if not dwc and fmt not in FORMATS:
        raise BadRequestError(f"Parameter format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    filters = _json_object(params, "filters")
    offset = _non_negative_int(params, "offset") or 0
    limit = _non_negative_int(params, "limit")
    url = await check_url("api_url", api_url, resolve=resolve, allow_private=allow_private)
    if allowed_hosts and (url.host or "").lower() not in allowed_hosts:
        raise BadRequestError(f"Parameter api_url: host {url.host} is not one this service may query")
    return DatastorePackageRequest(
        api_url=str(url),
        resource_id=resource_id,
        email=email,
        filters=filters,
        q=str(params.get("q") or "").strip(),
        plain=_optional_bool(params, "plain"),
        language=str(params.get("language") or "").strip(),
        fields=_field_list(str(params.get("fields") or "")),
        sort=str(params.get("sort") or "").strip(),
        offset=offset,
        limit=limit,
        format=fmt,
        doi=str(params.get("doi") or "").strip(),
        key=str(params.get("key") or "").strip(),
        eml=_eml(params) if dwc else "",
        for_gbif=bool(_optional_bool(params, "for_gbif")) if dwc else False,
    )


def _eml(params: Mapping[str, str]) -> str:
    """The EML metadata, checked as the archive will store it: a document that is not well-formed XML, that
    carries a DOCTYPE or that declares another encoding than UTF-8 is refused now, not by the worker later."""
    eml = str(params.get("eml") or "").strip()
    if len(eml) > MAX_EML_CHARS:
        raise BadRequestError(f"Parameter eml is longer than {MAX_EML_CHARS} characters")
    if eml:
        try:
            eml_bytes(eml)
        except PackagingError as exc:
            raise BadRequestError(f"Parameter eml: {exc}") from None
    return eml
