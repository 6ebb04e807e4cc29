"""The service's features are where a user looks for them: every route of the ingress in the HTTP API doc,
every parameter a POST route reads in its OpenAPI request schema (and nothing described that it ignores),
and the README and `ckanpackager --help` naming the routes, parameters and verbs beyond the original's; the
webhook check the HTTP API doc gives its readers verifies what the service signs."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from packager.adapters.kafka_log import InMemoryEventLog
from packager.core.settings import Settings, load_settings
from packager.domain.webhooks import signature_header
from packager.http import cancel, ingress
from packager.http.ingress import create_app
from packager.http.openapi import spec
from tests.unit.samples import SECRET, attach_views, fill_views
from tests.unit.test_openapi import routes_of

pytestmark = pytest.mark.features

ROOT = Path(__file__).resolve().parents[2]
JOB = "0b5b3c9e-1f0e-4c1a-9d6e-2a7f1c3e5d70"


def test_every_route_of_the_ingress_is_in_the_http_api_doc(store_dir: Path) -> None:
    settings = load_settings({}, secret=SECRET, store_directory=str(store_dir))
    doc = (ROOT / "docs" / "http-api.md").read_text(encoding="utf-8")
    paths = {path for _, path in routes_of(create_app(settings, event_log=InMemoryEventLog()))}
    assert {path for path in paths if f"`{path}" not in doc and f" {path}`" not in doc} == set()


class Reads(dict[str, str]):
    """A request's parameters that remember which ones the route asked for (a walk over all is not asking)."""

    asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        Reads.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        Reads.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        Reads.asked.add(str(key))
        return super().__contains__(key)


@pytest.fixture
def settings(store_dir: Path) -> Settings:
    return load_settings(
        {}, secret=SECRET, store_directory=str(store_dir), webhook_secret="webhook-secret-0123456789"
    )


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """The names of the parameters the routes read, for the requests a test sends."""
    for module in (ingress, cancel):
        real = module.read_params

        async def recorded(request: web.Request, real: Any = real) -> Reads:
            return Reads(await real(request))

        monkeypatch.setattr(module, "read_params", recorded)
    Reads.asked = set()
    yield Reads.asked


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient]:
    async def public(host: str) -> list[str]:
        return ["93.184.216.34"]

    app = create_app(settings, event_log=InMemoryEventLog(), resolver=public, read_views=False)
    fill_views(settings, [])
    attach_views(app, settings)
    async with TestClient(TestServer(app)) as c:
        yield c


def described(path: str) -> set[str]:
    """The parameters the OpenAPI description gives a POST route's body (all its schemas')."""
    schemas = spec()["components"]["schemas"]
    ref = spec()["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    options = ref.get("oneOf", [ref])
    return {name for option in options for name in schemas[option["$ref"].rsplit("/", 1)[1]]["properties"]}


# Every parameter each route could read, with a value it accepts (the secret's name is read by every route).
EVERYTHING = {
    "secret": SECRET,
    "token": "",
    "resource_id": "r1",
    "resource_url": "https://data.example.org/a.csv",
    "api_url": "https://data.example.org/api/3/action/datastore_search",
    "email": "a@example.org",
    "filters": "{}",
    "q": "",
    "plain": "",
    "language": "",
    "fields": "",
    "sort": "",
    "offset": "0",
    "limit": "10",
    "format": "csv",
    "doi": "",
    "key": "",
    "eml": "",
    "for_gbif": "true",
    "callback_url": "https://hooks.example.org/done",
    "which": "requests",
}


@pytest.mark.parametrize(
    "path", ["/package_url", "/package_datastore", "/package_dwc_archive", "/statistics/reset"]
)
async def test_a_post_route_reads_what_its_openapi_schema_describes(
    client: TestClient, reads: set[str], path: str
) -> None:
    resp = await client.post(path, data=EVERYTHING)
    assert resp.status == 200, await resp.text()
    assert reads - {"token"} == described(path), "read but not described, or described but not read"


async def test_the_cancel_route_reads_the_secret_or_the_token(client: TestClient, reads: set[str]) -> None:
    resp = await client.post(f"/jobs/{JOB}/cancel", data={"secret": SECRET, "token": "t"})
    assert resp.status == 401  # a wrong token is refused before the job is looked up
    await client.post(f"/jobs/{JOB}/cancel", data={"secret": SECRET})
    assert reads == {"secret", "token"} == described("/jobs/{job_id}/cancel")


def help_of(*verb: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "packager.cli.operator", *verb, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(ROOT),
        check=True,
    )
    return done.stdout


def test_the_command_line_help_names_the_new_verbs_and_parameters() -> None:
    overview = help_of()
    for verb in ("cancel JOB_ID [--token TOKEN]", "reset (requests|errors) [--yes]", "stats daily", "watch"):
        assert verb in overview
    assert "--token TOKEN" in help_of("cancel") and "cancel_token" in help_of("cancel")
    assert "{requests,errors}" in help_of("reset") and "--yes" in help_of("reset")
    queue = " ".join(help_of("queue").split())
    assert "for_gbif:true" in queue and "callback_url:URL" in queue


LIMITS = (
    "MAX_ACTIVE_JOBS_PER_REQUESTER",
    "MAX_REQUESTS_PER_HOUR_PER_REQUESTER",
    "MAX_ACTIVE_JOBS_PER_RESOURCE",
)


def test_the_readme_and_the_http_api_doc_name_the_new_routes_parameters_settings_and_verbs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    http_api = (ROOT / "docs" / "http-api.md").read_text(encoding="utf-8")
    for name in (
        *("POST /jobs/{job_id}/cancel", "cancel_token", "ckanpackager cancel", "POST /statistics/reset"),
        *("ckanpackager reset", "callback_url", "WEBHOOK_URL", "for_gbif", "docs/http-api.md#webhooks"),
        *(
            "MAX_ACTIVE_JOBS_PER_REQUESTER",
            "MAX_REQUESTS_PER_HOUR_PER_REQUESTER",
            "MAX_ACTIVE_JOBS_PER_RESOURCE",
        ),
        *("docs/http-api.md#fair-limits", "EXPIRY_NOTICE_BEFORE", "GET /statistics/page", "docs/grafana/"),
    ):
        assert name in readme, name
    for name in (
        *(
            "`POST /jobs/{job_id}/cancel`",
            "`token`",
            "`secret`",
            "409",
            "EMAIL_CANCELLATIONS",
            "callback_url",
        ),
        *("WEBHOOK_URL", "WEBHOOK_SECRET", "X-Packager-Signature", "X-Packager-Delivery", "at least once"),
        *("WebhookDelivered", "WebhookFailed", "for_gbif", "eml", "DOCTYPE", "gbif_checks", "Retry-After"),
        *(
            "MAX_ACTIVE_JOBS_PER_REQUESTER",
            "MAX_REQUESTS_PER_HOUR_PER_REQUESTER",
            "MAX_ACTIVE_JOBS_PER_RESOURCE",
        ),
        *("`POST /statistics/reset`", "EXPIRY_NOTICE_BEFORE", "/statistics/daily", "PackageCancelled"),
    ):
        assert name in http_api, name


def test_the_documented_webhook_check_verifies_what_the_service_signs() -> None:
    http_api = (ROOT / "docs" / "http-api.md").read_text(encoding="utf-8")
    webhooks = http_api[http_api.index("## Webhooks") :]
    snippet = webhooks[webhooks.index("```python\n") + len("```python\n") :]
    namespace: dict[str, Any] = {}
    exec(snippet[: snippet.index("```")], namespace)  # the reader's copy, as written in the doc
    body, secret = b'{"job_id":"j1","state":"completed"}', "webhook-secret-0123456789"
    header = signature_header(secret, body, timestamp=int(time.time()))
    assert namespace["verify"](secret, body, header)
    assert not namespace["verify"](secret, body + b" ", header)
    assert not namespace["verify"]("another-secret-0123456789", body, header)
    old = signature_header(secret, body, timestamp=int(time.time()) - 3600)
    assert not namespace["verify"](secret, body, old)
