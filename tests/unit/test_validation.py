"""Request validation and the cache key."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from packager.core.errors import BadRequestError
from packager.domain.validation import (
    cache_key_for,
    check_email,
    check_url,
    is_public_address,
    parse_datastore_request,
    parse_url_request,
)

SECRET = "unit-test-secret-0123456789"


def resolver(table: dict[str, list[str]]) -> Callable[[str], Awaitable[list[str]]]:
    async def resolve(host: str) -> list[str]:
        if host not in table:
            raise OSError("no such host")
        return table[host]

    return resolve


PUBLIC = resolver({"data.example.org": ["93.184.216.34"], "inside.example.org": ["10.1.2.3"]})


@pytest.mark.parametrize("address", ["a@example.org", "first.last+tag@sub.example.co.uk"])
def test_plain_addresses_are_accepted(address: str) -> None:
    assert check_email(address) == address


@pytest.mark.parametrize(
    "address", ["", "nobody", "a@b", "a@@example.org", "a b@example.org", "Name <a@example.org>", "a@-x.org"]
)
def test_malformed_addresses_are_refused(address: str) -> None:
    with pytest.raises(BadRequestError, match="email"):
        check_email(address)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("10.0.0.1", False),
        ("127.0.0.1", False),
        ("169.254.169.254", False),
        ("192.168.1.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("::ffff:127.0.0.1", False),
        ("0.0.0.0", False),
        ("2606:4700::1111", True),
    ],
)
def test_address_classification(address: str, public: bool) -> None:
    assert is_public_address(address) is public


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://data.example.org/f.csv", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("https://user:pw@data.example.org/f.csv", "credentials"),
        ("https://inside.example.org/f.csv", "private"),
        ("http://127.0.0.1:8080/f.csv", "private"),
        ("http://[::1]/f.csv", "private"),
        ("https://nowhere.invalid/f.csv", "cannot be resolved"),
    ],
)
async def test_urls_outside_public_http_space_are_refused(url: str, reason: str) -> None:
    with pytest.raises(BadRequestError, match=reason):
        await check_url("resource_url", url, resolve=PUBLIC, allow_private=False)


async def test_private_hosts_are_allowed_when_configured() -> None:
    url = await check_url("resource_url", "http://127.0.0.1:8080/f.csv", resolve=PUBLIC, allow_private=True)
    assert url.port == 8080


async def test_missing_parameters_are_named() -> None:
    with pytest.raises(BadRequestError, match="Parameter resource_url is required"):
        await parse_url_request(
            {"resource_id": "r", "email": "a@example.org"}, resolve=PUBLIC, allow_private=False
        )


async def test_control_characters_never_reach_a_header() -> None:
    with pytest.raises(BadRequestError, match="control character"):
        await parse_url_request(
            {
                "resource_id": "r",
                "email": "a@example.org\r\nBcc: victim@example.org",
                "resource_url": "https://data.example.org/f.csv",
            },
            resolve=PUBLIC,
            allow_private=False,
        )


def test_cache_key_ignores_email_and_order_and_hides_the_key() -> None:
    a = cache_key_for("url", {"resource_id": "r", "resource_url": "u", "key": "k1"}, SECRET)
    b = cache_key_for("url", {"key": "k1", "resource_url": "u", "resource_id": "r"}, SECRET)
    c = cache_key_for("url", {"resource_id": "r", "resource_url": "u", "key": "k2"}, SECRET)
    d = cache_key_for("url", {"resource_id": "r", "resource_url": "u", "key": "k1"}, "other-secret-0123456")
    assert a == b
    assert a != c  # a different CKAN key may see different data
    assert a != d  # the key enters only as an HMAC under the server's secret
    assert "k1" not in a


@pytest.mark.parametrize(
    ("eml", "message"),
    [
        ("<eml><dataset></eml>", "not well-formed XML"),
        ('<!DOCTYPE eml SYSTEM "file:///etc/passwd"><eml/>', "DOCTYPE"),
        ('<?xml version="1.0"?><!DOCTYPE l [<!ENTITY l "l">]><eml>&l;</eml>', "DOCTYPE"),
        ('<?xml version="1.0" encoding="ISO-8859-1"?><eml/>', "encoding"),
    ],
)
async def test_an_eml_the_archive_could_not_store_is_refused_at_once(eml: str, message: str) -> None:
    params = {"resource_id": "r", "api_url": "https://data.example.org/api/3/action/datastore_search"}
    params |= {"email": "a@example.org", "eml": eml}
    with pytest.raises(BadRequestError, match=f"Parameter eml: .*{message}"):
        await parse_datastore_request(params, resolve=PUBLIC, allow_private=False, dwc=True)


async def test_a_well_formed_eml_is_kept_as_given() -> None:
    eml = '<?xml version="1.0" encoding="UTF-8"?><eml:eml xmlns:eml="https://eml.ecoinformatics.org/eml-2.2.0"/>'
    params = {"resource_id": "r", "api_url": "https://data.example.org/api/3/action/datastore_search"}
    params |= {"email": "a@example.org", "eml": eml}
    request = await parse_datastore_request(params, resolve=PUBLIC, allow_private=False, dwc=True)
    assert request.eml == eml
