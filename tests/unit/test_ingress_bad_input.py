"""Bad input the fuzz suite found answered with a 500: each is now a 4xx that appends nothing to the log."""

from __future__ import annotations

import gc
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from packager.adapters.kafka_log import InMemoryEventLog
from packager.adapters.resolver import system_resolver
from packager.core.errors import BadRequestError
from packager.core.settings import load_settings
from packager.domain.validation import parse_url_request
from packager.http.ingress import create_app
from tests.unit.samples import SECRET, URL_REQUEST, attach_views, fill_views

GOOD = URL_REQUEST
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def resolver(host: str) -> list[str]:
    if host == "data.example.org":
        return ["93.184.216.34"]
    return await system_resolver(host)  # only reached by names that fail before any DNS query


@pytest.fixture
def log() -> InMemoryEventLog:
    return InMemoryEventLog()


@pytest.fixture
async def client(store_dir: Path, log: InMemoryEventLog) -> AsyncIterator[TestClient]:
    settings = load_settings({}, secret=SECRET, store_directory=str(store_dir), max_body_size=16_384)
    app = create_app(settings, event_log=log, resolver=resolver, read_views=False)
    fill_views(settings, [])  # empty views, as a projector leaves them on an empty log
    attach_views(app, settings)
    async with TestClient(TestServer(app)) as c:
        yield c


def appended(log: InMemoryEventLog) -> int:
    return sum(len(v) for v in log.records.values())


async def test_percent_escapes_that_are_not_utf8_are_a_400(client: TestClient, log: InMemoryEventLog) -> None:
    for body in (b"%80", b"resource_id=%ff%fe", b"secret=x&email=a%ed%a0%80b"):
        resp = await client.post("/package_url", data=body, headers=FORM)
        assert resp.status == 400, body
        assert "not valid UTF-8" in (await resp.json())["message"]
    assert appended(log) == 0


MULTIPART = {"Content-Type": "multipart/form-data; boundary=B"}


def part(name: str, value: str, filename: str = "") -> bytes:
    file = f'; filename="{filename}"' if filename else ""
    return f'--B\r\nContent-Disposition: form-data; name="{name}"{file}\r\n\r\n{value}\r\n'.encode()


@pytest.mark.parametrize(
    "body",
    [
        b"--B\r\nContent-Disposition: form-data;",  # a part without a name, cut short
        part("secret", SECRET) + b'--B\r\nContent-Disposition: form-data; name="\x1f"\r\n\r\n\r\n--B--\r\n',
        part("secret", SECRET) + part("resource_id", "r1")[:-10],  # ends inside a part
        part("secret", SECRET) + b"--B\r\nContent-Type: text/plain; charset=no-such-charset\r\n"
        b'Content-Disposition: form-data; name="email"\r\n\r\na@example.org\r\n--B--\r\n',
    ],
)
async def test_malformed_multipart_bodies_are_a_400(
    client: TestClient, log: InMemoryEventLog, body: bytes
) -> None:
    resp = await client.post("/package_url", data=body, headers=MULTIPART)
    assert resp.status == 400, await resp.text()
    assert "multipart" in (await resp.json())["message"]
    assert appended(log) == 0


async def test_multipart_file_parts_are_ignored_and_leave_no_open_file(
    client: TestClient, log: InMemoryEventLog
) -> None:
    fields = b"".join(part(k, v) for k, v in GOOD.items())
    body = part("secret", "from-a-file", filename="secret.txt") + fields + b"--B--\r\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        resp = await client.post("/package_url", data=body, headers=MULTIPART)
        gc.collect()
    assert resp.status == 200, await resp.text()  # the file part named "secret" was not the secret
    assert appended(log) == 1


async def test_a_chunked_multipart_body_over_the_limit_is_a_413(
    client: TestClient, log: InMemoryEventLog
) -> None:
    async def stream() -> AsyncIterator[bytes]:
        yield b"".join(part(k, v) for k, v in GOOD.items())
        for _ in range(40):
            yield part("pad", "p" * 1000)
        yield b"--B--\r\n"

    resp = await client.post("/package_url", data=stream(), headers=MULTIPART)
    assert resp.status == 413
    assert appended(log) == 0


@pytest.mark.parametrize("depth", [255, 300, 1000])
async def test_a_json_parameter_nested_deeper_than_orjson_writes_is_a_400(
    client: TestClient, log: InMemoryEventLog, depth: int
) -> None:
    body = orjson.dumps(GOOD)[:-1] + b',"filters":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"
    resp = await client.post("/package_datastore", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert "nested" in (await resp.json())["message"]
    assert appended(log) == 0


@pytest.mark.parametrize(
    "url",
    [
        "https://xn--/f.csv",  # not a valid IDNA label: yarl fails only when the host is read
        "https://" + "a" * 64 + ".example.org/f.csv",  # a label over 63 characters: getaddrinfo fails
        "https://data.example.org:99999/f.csv",  # the port is checked only when read
    ],
)
async def test_urls_that_fail_late_in_parsing_or_resolving_are_a_400(
    client: TestClient, log: InMemoryEventLog, url: str
) -> None:
    resp = await client.post("/package_url", data={**GOOD, "resource_url": url})
    assert resp.status == 400, await resp.text()
    assert "resource_url" in (await resp.json())["message"]
    assert appended(log) == 0


async def test_the_system_resolver_path_turns_an_overlong_label_into_a_bad_request() -> None:
    with pytest.raises(BadRequestError, match="cannot be resolved"):
        await parse_url_request(
            {**GOOD, "resource_url": f"https://{'a' * 64}.example.org/f.csv"},
            resolve=system_resolver,
            allow_private=False,
        )


@pytest.mark.parametrize("value", ["\u00b2", "9" * 5000, "\uff11", "-1", "1e3"])
@pytest.mark.parametrize("name", ["offset", "limit"])
async def test_statistics_listings_refuse_offsets_that_are_not_plain_digits(
    client: TestClient, name: str, value: str
) -> None:
    resp = await client.post("/statistics/requests", data={"secret": SECRET, name: value})
    assert resp.status == 400
    assert f"{name} must be a non-negative integer" in (await resp.json())["message"]
