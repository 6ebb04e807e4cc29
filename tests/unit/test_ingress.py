"""The ingress over HTTP with an in-memory log: answers, error shapes, and nothing logged when rejected."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from packager.adapters.kafka_log import InMemoryEventLog
from packager.core.settings import Settings, load_settings
from packager.domain.events import PackageRequested, encode
from packager.http.ingress import create_app
from tests.unit.samples import SECRET, URL_REQUEST

GOOD = {**URL_REQUEST, "key": "ckan-key-abcdef"}


async def public_resolver(host: str) -> list[str]:
    return {"data.example.org": ["93.184.216.34"], "inside.example.org": ["10.0.0.7"]}[host]


@pytest.fixture
def settings(store_dir: Path) -> Settings:
    return load_settings({}, secret=SECRET, store_directory=str(store_dir), max_body_size=4096)


@pytest.fixture
def log() -> InMemoryEventLog:
    return InMemoryEventLog()


@pytest.fixture
async def client(settings: Settings, log: InMemoryEventLog) -> AsyncIterator[TestClient]:
    app = create_app(settings, event_log=log, resolver=public_resolver)
    async with TestClient(TestServer(app)) as c:
        yield c


def appended(log: InMemoryEventLog) -> int:
    return sum(len(v) for v in log.records.values())


async def test_form_request_is_accepted_with_original_and_extension_keys(
    client: TestClient, log: InMemoryEventLog
) -> None:
    resp = await client.post("/package_url", data=GOOD)
    body = await resp.json()
    assert resp.status == 200
    assert body["success"] is True and body["status"] == "success"
    assert body["msg"] == body["message"] and "a@example.org" in body["message"]
    [(key, event)] = log.records["packager.requests"]
    assert event.job_id == body["job_id"]
    assert isinstance(event.payload, PackageRequested)
    assert key == event.payload.cache_key
    assert event.payload.request["resource_url"] == GOOD["resource_url"]


async def test_json_request_is_accepted(client: TestClient, log: InMemoryEventLog) -> None:
    resp = await client.post("/package_url", json=GOOD)
    assert resp.status == 200
    assert appended(log) == 1


async def test_secrets_do_not_reach_the_log(client: TestClient, log: InMemoryEventLog) -> None:
    await client.post("/package_url", data=GOOD)
    [(_, event)] = log.records["packager.requests"]
    wire = encode(event)
    assert SECRET.encode() not in wire
    assert GOOD["key"].encode() not in wire


REJECTIONS = [
    ({**GOOD, "secret": "wrong-secret-0123456789"}, 401, "NotAuthorizedError", "Wrong/missing secret"),
    ({k: v for k, v in GOOD.items() if k != "secret"}, 401, "NotAuthorizedError", "secret"),
    ({k: v for k, v in GOOD.items() if k != "email"}, 400, "BadRequestError", "Parameter email is required"),
    (
        {k: v for k, v in GOOD.items() if k != "resource_id"},
        400,
        "BadRequestError",
        "resource_id is required",
    ),
    ({**GOOD, "email": "not-an-address"}, 400, "BadRequestError", "valid email"),
    ({**GOOD, "resource_url": "file:///etc/passwd"}, 400, "BadRequestError", "http or https"),
    ({**GOOD, "resource_url": "https://inside.example.org/x"}, 400, "BadRequestError", "private"),
    ({**GOOD, "resource_url": "http://169.254.169.254/latest"}, 400, "BadRequestError", "private"),
    ({**GOOD, "email": "a@example.org\nBcc: b@example.org"}, 400, "BadRequestError", "control character"),
]


@pytest.mark.parametrize(("params", "status", "error", "message"), REJECTIONS)
async def test_rejected_requests_get_the_original_error_shape_and_log_nothing(
    client: TestClient, log: InMemoryEventLog, params: dict[str, str], status: int, error: str, message: str
) -> None:
    resp = await client.post("/package_url", data=params)
    body = await resp.json()
    assert resp.status == status
    assert body["status"] == "failed" and body["success"] is False
    assert body["error"] == error
    assert message in body["message"] and body["msg"] == body["message"]
    assert appended(log) == 0


async def test_oversized_bodies_get_413_and_log_nothing(client: TestClient, log: InMemoryEventLog) -> None:
    resp = await client.post("/package_url", data={**GOOD, "padding": "x" * 10_000})
    assert resp.status == 413
    assert (await resp.json())["status"] == "failed"
    assert appended(log) == 0


async def test_invalid_utf8_and_bad_json_are_400(client: TestClient, log: InMemoryEventLog) -> None:
    resp = await client.post(
        "/package_url", data=b"secret=\xff\xfe", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert resp.status == 400
    resp = await client.post("/package_url", data=b"{nope", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    resp = await client.post("/package_url", data=b"[1]", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert appended(log) == 0


async def test_unreachable_log_is_a_503_json_error(client: TestClient, log: InMemoryEventLog) -> None:
    log.available = False
    resp = await client.post("/package_url", data=GOOD)
    assert resp.status == 503
    assert resp.content_type == "application/json"
    assert (await resp.json())["status"] == "failed"


async def test_unknown_routes_and_methods_answer_json(client: TestClient) -> None:
    resp = await client.get("/package_url")
    assert resp.status == 405
    assert (await resp.json())["status"] == "failed"
    resp = await client.post("/nope")
    assert resp.status == 404


async def test_downloads_serve_only_zip_names_inside_the_store(client: TestClient, store_dir: Path) -> None:
    (store_dir / "job.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    resp = await client.get("/downloads/job.zip")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/zip"
    assert await resp.read() == (store_dir / "job.zip").read_bytes()
    for name in ("..%2F..%2Fetc%2Fpasswd", ".partial", "job.txt", "missing.zip"):
        resp = await client.get(f"/downloads/{name}")
        assert resp.status == 404, name


async def test_ranged_download_returns_the_requested_bytes(client: TestClient, store_dir: Path) -> None:
    payload = bytes(range(256)) * 40
    (store_dir / "r.zip").write_bytes(payload)
    resp = await client.get("/downloads/r.zip", headers={"Range": "bytes=100-199"})
    assert resp.status == 206
    assert await resp.read() == payload[100:200]


def test_the_ingress_refuses_to_start_without_a_secret(store_dir: Path) -> None:
    from packager.core.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        create_app(load_settings({}, store_directory=str(store_dir)), event_log=InMemoryEventLog())


def test_success_body_is_json_serialisable() -> None:
    from packager.http.ingress import accepted_body

    assert orjson.loads(orjson.dumps(accepted_body("j", "m")))["job_id"] == "j"


DATASTORE = {
    "secret": SECRET,
    "api_url": "https://data.example.org/api/3/action/datastore_search",
    "resource_id": "res-ds",
    "email": "a@example.org",
    "filters": '{"country": ["Kenya"]}',
    "q": "beetle",
    "limit": "1000",
    "offset": "10",
    "format": "tsv",
    "key": "ckan-key-abcdef",
}


async def test_datastore_request_is_accepted_with_its_query(
    client: TestClient, log: InMemoryEventLog
) -> None:
    resp = await client.post("/package_datastore", data=DATASTORE)
    body = await resp.json()
    assert resp.status == 200, body
    [(_, event)] = log.records["packager.requests"]
    payload = event.payload
    assert isinstance(payload, PackageRequested) and payload.kind == "datastore"
    assert payload.request["filters"] == {"country": ["Kenya"]}
    assert (payload.request["offset"], payload.request["limit"], payload.request["format"]) == (
        10,
        1000,
        "tsv",
    )
    assert payload.ckan_host == "data.example.org"
    assert DATASTORE["key"].encode() not in encode(event)


async def test_datastore_defaults_to_csv_and_all_rows(client: TestClient, log: InMemoryEventLog) -> None:
    params = {k: v for k, v in DATASTORE.items() if k not in ("format", "limit", "offset", "filters")}
    assert (await client.post("/package_datastore", data=params)).status == 200
    [(_, event)] = log.records["packager.requests"]
    request = event.payload.request  # type: ignore[attr-defined]
    assert (request["format"], request["limit"], request["offset"], request["filters"]) == (
        "csv",
        None,
        0,
        {},
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"filters": "[1, 2]"}, "filters must be a JSON object"),
        ({"filters": "{not json"}, "filters must be a JSON object"),
        ({"filters": "[" * 1000 + "]" * 1000}, "filters must be a JSON object"),
        ({"filters": '{"a":' * 300 + "1" + "}" * 300}, "nested more than 8 levels"),
        ({"offset": "-1"}, "offset must be a non-negative integer"),
        ({"limit": "ten"}, "limit must be a non-negative integer"),
        ({"limit": "1.5"}, "limit must be a non-negative integer"),
        ({"format": "parquet"}, "format must be one of csv, tsv, jsonl, xlsx"),
        ({"api_url": "ftp://data.example.org/api"}, "http or https"),
        ({"api_url": "http://inside.example.org/api/3/action/datastore_search"}, "private"),
        ({"api_url": ""}, "Parameter api_url is required"),
        ({"plain": "maybe"}, "plain must be true or false"),
    ],
)
async def test_bad_datastore_parameters_are_400_and_log_nothing(
    client: TestClient, log: InMemoryEventLog, change: dict[str, str], message: str
) -> None:
    resp = await client.post("/package_datastore", json={**DATASTORE, **change})
    body = await resp.json()
    assert resp.status == 400, body
    assert message in body["message"]
    assert appended(log) == 0


async def test_api_url_must_be_on_an_allowed_host_when_a_list_is_set(store_dir: Path) -> None:
    settings = load_settings(
        {}, secret=SECRET, store_directory=str(store_dir), allowed_api_hosts=("portal.example.org",)
    )
    log = InMemoryEventLog()
    async with TestClient(TestServer(create_app(settings, event_log=log, resolver=public_resolver))) as c:
        resp = await c.post("/package_datastore", data=DATASTORE)
        assert resp.status == 400
        assert "not one this service may query" in (await resp.json())["message"]
    assert appended(log) == 0


async def test_expired_downloads_answer_410(client: TestClient, store_dir: Path, settings: Settings) -> None:
    import os
    import time

    old = store_dir / "old.zip"
    old.write_bytes(b"PK")
    stale = time.time() - settings.cache_time - 60
    os.utime(old, (stale, stale))
    resp = await client.get("/downloads/old.zip")
    assert resp.status == 410
    assert "expired" in (await resp.json())["message"]


async def test_a_zip_downloaded_in_ranges_reassembles_to_the_same_bytes(
    client: TestClient, store_dir: Path
) -> None:
    import io
    import os
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("resource.csv", os.urandom(300_000))
    (store_dir / "big.zip").write_bytes(buffer.getvalue())
    size = len(buffer.getvalue())
    pieces = []
    for start in range(0, size, 65_536):
        end = min(start + 65_535, size - 1)
        resp = await client.get("/downloads/big.zip", headers={"Range": f"bytes={start}-{end}"})
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes {start}-{end}/{size}"
        pieces.append(await resp.read())
    assert b"".join(pieces) == buffer.getvalue()
    resp = await client.get("/downloads/big.zip")
    assert resp.headers["Content-Disposition"] == 'attachment; filename="big.zip"'
    assert resp.headers["Accept-Ranges"] == "bytes"


async def test_a_removed_download_answers_410_and_an_unknown_one_404(
    settings: Settings, log: InMemoryEventLog, store_dir: Path
) -> None:
    from packager.domain.events import envelope
    from tests.unit.samples import attach_views, completed, fill_views

    app = create_app(settings, event_log=log, resolver=public_resolver)
    fill_views(settings, [("t.events", 0, 0, envelope("job-1", completed(zip_file_name="built.zip")))])
    attach_views(app, settings)
    (store_dir / "built.zip").write_bytes(b"PK")
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/downloads/built.zip")).status == 200
        (store_dir / "built.zip").unlink()  # what clear_caches and the janitor do
        gone = await client.get("/downloads/built.zip")
        assert gone.status == 410
        assert "request the data again" in (await gone.json())["message"]
        assert (await client.get("/downloads/never-built.zip")).status == 404
