"""The ingress's access log never holds the shared secret or a CKAN key given in a query string."""

from __future__ import annotations

import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from packager.http.ingress import AccessLog


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/status?secret=s3cr3t-value", "GET /status?secret=*** 200"),
        ("/status?SECRET=s3cr3t-value&x=1", "GET /status?SECRET=***&x=1 200"),
        ("/status?s%65cret=s3cr3t-value", "GET /status?secret=*** 200"),
        ("/status?key=s3cr3t-value&secret=s3cr3t-value", "GET /status?key=***&secret=*** 200"),
        ("/jobs/abc", "GET /jobs/abc 200"),
    ],
)
def test_secrets_in_query_strings_are_redacted(
    path: str, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("test.access")
    access = AccessLog(logger, "")
    with caplog.at_level(logging.INFO, logger="test.access"):
        access.log(make_mocked_request("GET", path), web.Response(status=200), 0.01)
    [line] = [r.getMessage() for r in caplog.records]
    assert "s3cr3t-value" not in line
    assert expected in line
