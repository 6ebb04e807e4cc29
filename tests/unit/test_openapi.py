"""The OpenAPI description: valid OpenAPI 3, and exactly the routes the ingress and a worker serve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faust
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from packager.adapters.kafka_log import InMemoryEventLog
from packager.core.settings import load_settings
from packager.http.ingress import create_app
from packager.http.openapi import spec
from streams.ops import OpsServer

SECRET = "unit-test-secret-0123456789"
METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route; aiohttp's automatic HEAD for each GET is left out."""
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


def described(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method, path) for path, item in document["paths"].items() for method in item if method in METHODS
    }


def ingress_app(store_dir: Path) -> web.Application:
    settings = load_settings({}, secret=SECRET, store_directory=str(store_dir))
    return create_app(settings, event_log=InMemoryEventLog())


def worker_ops_app(store_dir: Path) -> web.Application:
    settings = load_settings({}, secret=SECRET, store_directory=str(store_dir))
    server = OpsServer(faust.App("openapi-test", broker="kafka://127.0.0.1:1"), settings)
    return server.web_app()


def test_the_description_is_valid_openapi_3() -> None:
    document = spec()
    assert document["openapi"].startswith("3.")
    validate(document)  # raises on any violation of the OpenAPI 3 schema


def test_every_route_is_described_and_every_described_route_exists(store_dir: Path) -> None:
    served = routes_of(ingress_app(store_dir))
    document = described(spec())
    assert served - document == set(), "routes the ingress serves but the description lacks"
    assert document - served == set(), "routes described but not served by the ingress"


def test_the_worker_ops_server_serves_a_described_subset(store_dir: Path) -> None:
    served = routes_of(worker_ops_app(store_dir))
    assert served == {("get", "/metrics"), ("get", "/health/live"), ("get", "/health/ready")}
    assert served <= described(spec())


def test_post_bodies_are_described_as_form_and_json() -> None:
    document = spec()
    for path, item in document["paths"].items():
        if "post" in item:
            content = item["post"]["requestBody"]["content"]
            assert {"application/x-www-form-urlencoded", "application/json"} <= set(content), path


def test_package_parameters_match_the_http_api_doc() -> None:
    schemas = spec()["components"]["schemas"]
    url = schemas["UrlRequest"]
    assert set(url["required"]) == {"secret", "resource_id", "resource_url", "email"}
    assert set(url["properties"]) == {"secret", "resource_id", "resource_url", "email", "key", "callback_url"}
    datastore = schemas["DatastoreRequest"]
    assert set(datastore["required"]) == {"secret", "api_url", "resource_id", "email"}
    assert set(datastore["properties"]) == {
        *("secret", "api_url", "resource_id", "email", "filters", "q", "plain", "language"),
        *("fields", "sort", "offset", "limit", "format", "doi", "key", "callback_url"),
    }
    dwc = schemas["DwcArchiveRequest"]
    assert set(dwc["properties"]) == set(datastore["properties"]) - {"format"} | {"eml", "for_gbif"}


async def test_the_ingress_serves_the_description(store_dir: Path) -> None:
    async with TestClient(TestServer(ingress_app(store_dir))) as client:
        resp = await client.get("/openapi.json")
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert await resp.json() == spec()
