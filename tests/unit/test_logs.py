"""Log lines: JSON or text, the job they are about, the configured level, and no secret in clear."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
from collections.abc import Iterator

import orjson
import pytest

from packager.core.errors import ConfigurationError
from packager.core.logs import REDACTED, Redactor, bind_job, configure_logging, job_context
from packager.core.settings import Settings, load_settings

SECRET = "unit-test-secret-0123456789"
SMTP_PASSWORD = "smtp-pass-9876"


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def capture(settings: Settings) -> io.StringIO:
    out = io.StringIO()
    configure_logging(settings, stream=out)
    return out


def json_lines(out: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def test_json_is_the_default_format_and_each_line_is_one_object(restore_root_logging: None) -> None:
    out = capture(load_settings({}, secret=SECRET))
    log = logging.getLogger("packager.test")
    log.info("first %s", "line")
    log.warning("second\nwith a newline", extra={"rows": 12})
    first, second = json_lines(out)
    assert first["msg"] == "first line" and first["level"] == "INFO" and first["logger"] == "packager.test"
    assert str(first["ts"]).endswith("Z")
    assert second["msg"] == "second\nwith a newline" and second["rows"] == 12
    assert "job_id" not in first


def test_lines_about_a_job_carry_its_id_from_the_context(restore_root_logging: None) -> None:
    out = capture(load_settings({}, secret=SECRET))
    log = logging.getLogger("packager.test")
    with job_context("job-1"):
        log.info("inside")
        log.info("explicit", extra={"job_id": "job-2"})
    log.info("outside")
    inside, explicit, outside = json_lines(out)
    assert inside["job_id"] == "job-1"
    assert explicit["job_id"] == "job-2"
    assert "job_id" not in outside


async def test_each_task_keeps_its_own_job_id(restore_root_logging: None) -> None:
    out = capture(load_settings({}, secret=SECRET))
    log = logging.getLogger("packager.test")

    async def agent(job_id: str, started: asyncio.Event, other: asyncio.Event) -> None:
        bind_job(job_id)
        started.set()
        await other.wait()  # the other task has bound its own job meanwhile
        log.info("done")

    a, b = asyncio.Event(), asyncio.Event()
    await asyncio.gather(agent("job-a", a, b), agent("job-b", b, a))
    assert sorted(str(line["job_id"]) for line in json_lines(out)) == ["job-a", "job-b"]


def test_level_comes_from_the_settings(restore_root_logging: None) -> None:
    out = capture(load_settings({"PACKAGER_LOG_LEVEL": "warning"}, secret=SECRET))
    log = logging.getLogger("packager.test")
    log.info("hidden")
    log.warning("shown")
    assert [line["msg"] for line in json_lines(out)] == ["shown"]


def test_text_format_is_one_readable_line_with_the_job(restore_root_logging: None) -> None:
    out = capture(load_settings({"PACKAGER_LOG_FORMAT": "text"}, secret=SECRET))
    with job_context("job-7"):
        logging.getLogger("packager.test").info("hello secret=%s", SECRET)
    line = out.getvalue().strip()
    assert " INFO packager.test [job job-7]: hello secret=" in line
    assert SECRET not in line and REDACTED in line


def test_unknown_format_or_level_stops_the_service() -> None:
    with pytest.raises(ConfigurationError, match="LOG_FORMAT"):
        load_settings({"PACKAGER_LOG_FORMAT": "xml"})
    with pytest.raises(ConfigurationError, match="LOG_LEVEL"):
        load_settings({"PACKAGER_LOG_LEVEL": "chatty"})


@pytest.mark.parametrize(
    "text",
    [
        f"body was secret={SECRET}&email=a@example.org",
        "secret=another-secret-value&resource_id=r1",
        "params {'secret': 'not-the-configured-one', 'resource_id': 'r1'}",
        '{"key": "ckan-api-key-123", "resource_id": "r1"}',
        "GET /status?secret=abc123def456 HTTP/1.1",
        "headers {'Authorization': 'ckan-api-key-123'}",
        "Authorization: Bearer abc.def.ghi",
        "login failed with password=hunter22",
        "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl leaked",
        f"SMTP said no to {SMTP_PASSWORD}",
        # Names in any case, also where case-insensitive matching pairs a non-ASCII letter with an ASCII one
        # (the Kelvin sign with k, the long s with s): lines skip the patterns only when plainly free of them.
        "GET /x?API_KEY=ckan-api-key-123",
        "retrying with \u212aey=ckan-api-key-123",
        "\u017fecret=another-secret-value",
    ],
)
def test_secrets_are_redacted(text: str) -> None:
    redact = Redactor([SECRET, SMTP_PASSWORD])
    redacted = redact(text)
    for leaked in (
        SECRET,
        SMTP_PASSWORD,
        "another-secret-value",
        "not-the-configured-one",
        "ckan-api-key-123",
        "abc123def456",
        "abc.def.ghi",
        "hunter22",
        "c2lnbmF0dXJl",
    ):
        assert leaked not in redacted
    assert REDACTED in redacted


def test_redaction_keeps_what_is_not_secret() -> None:
    redact = Redactor([SECRET])
    text = "accepted url job 0232e797 cache_key=ab12cd resource_id=r1 email=a@example.org"
    assert redact(text) == text


def test_exceptions_and_extra_fields_are_redacted_too(restore_root_logging: None) -> None:
    s3_key = "s3-secret-access-key-0123456789"
    settings = load_settings({}, secret=SECRET, smtp_password=SMTP_PASSWORD, s3_secret_access_key=s3_key)
    out = capture(settings)
    logging.getLogger("packager.test").warning("the store refused %s", s3_key)
    try:
        raise RuntimeError(f"could not log in with {SMTP_PASSWORD}")
    except RuntimeError:
        logging.getLogger("packager.test").exception(
            "failed", extra={"request": {"secret": SECRET, "key": "ckan-key-1", "resource_id": "r1"}}
        )
    text = out.getvalue()
    assert SECRET not in text and SMTP_PASSWORD not in text and "ckan-key-1" not in text
    assert s3_key not in text
    _, line = json_lines(out)
    assert line["request"] == {"secret": REDACTED, "key": REDACTED, "resource_id": "r1"}
    assert "RuntimeError" in str(line["exc"])


def test_the_ingress_access_line_is_short_and_names_the_job(restore_root_logging: None) -> None:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from packager.http.ingress import AccessLog

    out = capture(load_settings({}, secret=SECRET))
    request = make_mocked_request("POST", "/package_url?secret=" + SECRET)
    response = web.Response(body=b'{"success": true}', status=200)
    with job_context("job-42"):
        AccessLog(logging.getLogger("aiohttp.access"), "").log(request, response, 0.0123)
    [line] = json_lines(out)
    assert line["logger"] == "aiohttp.access"
    assert re.fullmatch(r"\S+ POST /package_url\?secret=\[REDACTED\] 200 \d+ 12\.3ms", str(line["msg"]))
    assert SECRET not in str(line)
    assert (line["job_id"], line["status"], line["duration_ms"]) == ("job-42", 200, 12.3)


@pytest.mark.parametrize(
    "query",
    [f"password={SMTP_PASSWORD}", f"password={SMTP_PASSWORD}tail", "password=not-a-known-one"],
)
def test_a_redacted_password_in_the_access_log_reads_exactly_redacted(
    query: str, restore_root_logging: None
) -> None:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from packager.http.ingress import AccessLog

    out = capture(load_settings({}, secret=SECRET, smtp_password=SMTP_PASSWORD))
    request = make_mocked_request("GET", f"/status?{query}&resource_id=r1")
    AccessLog(logging.getLogger("aiohttp.access"), "").log(request, web.Response(status=200), 0.01)
    [line] = json_lines(out)
    assert f"password={REDACTED}&resource_id=r1 200" in str(line["msg"])
    assert SMTP_PASSWORD not in out.getvalue() and "tail" not in out.getvalue()


def test_redacting_twice_changes_nothing() -> None:
    redact = Redactor([SECRET])
    once = redact(f"password={SECRET} secret: {SECRET} key='k-123'")
    assert redact(once) == once
    assert "]]" not in once


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_repeated_errors_are_written_once_per_interval_with_a_count() -> None:
    from packager.core.logs import RepeatFilter

    clock = FakeClock()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RepeatFilter(10.0, clock=clock))
    log = logging.getLogger("test.repeats")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        for _ in range(80):  # a second of a client that cannot reach its broker
            log.error("Unable connect to node with id %d: %s", 1, "Connect call failed")
            log.error("Unable to update metadata from [1]")
            log.info("GET /status 200")  # below WARNING: never held back
            clock.now += 0.0125
        assert out.getvalue().splitlines() == [
            "ERROR Unable connect to node with id 1: Connect call failed",
            "ERROR Unable to update metadata from [1]",
            *["INFO GET /status 200"] * 80,
        ]
        out.truncate(0), out.seek(0)
        clock.now += 10
        log.error("Unable connect to node with id %d: %s", 1, "Connect call failed")
        log.error("Unable connect to node with id %d: %s", 2, "Connect call failed")  # another message
        assert out.getvalue().splitlines() == [
            "ERROR Unable connect to node with id 1: Connect call failed (repeated 79 times)",
            "ERROR Unable connect to node with id 2: Connect call failed",
        ]
    finally:
        log.removeHandler(handler)
        log.propagate = True
        log.setLevel(logging.NOTSET)


def test_the_service_handler_holds_back_a_burst_and_says_how_many(restore_root_logging: None) -> None:
    out = capture(load_settings({}, secret=SECRET, log_repeat_interval=0.2))
    log = logging.getLogger("aiokafka")
    for _ in range(500):
        log.error("Unable to update metadata from [1]")
    first = json_lines(out)
    assert len(first) == 1 and first[0]["msg"] == "Unable to update metadata from [1]"
    deadline = time.monotonic() + 5
    while len(json_lines(out)) == 1:
        assert time.monotonic() < deadline, "the held-back line never came through"
        log.error("Unable to update metadata from [1]")
    last = json_lines(out)[-1]
    assert str(last["msg"]).startswith("Unable to update metadata from [1] (repeated ")
    assert int(last["repeated"]) >= 499  # type: ignore[call-overload]


def test_a_zero_interval_writes_every_line(restore_root_logging: None) -> None:
    out = capture(load_settings({}, secret=SECRET, log_repeat_interval=0))
    for _ in range(5):
        logging.getLogger("aiokafka").error("Unable to update metadata from [1]")
    assert len(json_lines(out)) == 5
