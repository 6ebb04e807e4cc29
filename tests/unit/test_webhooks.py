"""Webhooks without a broker: signing and its check, the body, the callback at the ingress, retries."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import TopicPartition

from packager.adapters.http_client import http_session
from packager.adapters.kafka_log import InMemoryEventLog
from packager.adapters.webhook_client import WebhookPolicy, post_webhook, receiver_host
from packager.core.errors import ConfigurationError
from packager.core.settings import Settings, load_settings
from packager.domain.events import (
    PackageCancelled,
    PackageFailed,
    PackageRequested,
    decode,
    encode,
    envelope,
    requester_fields,
)
from packager.domain.secrets import seal, unseal
from packager.domain.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    signature_header,
    verify,
    webhook_body,
)
from packager.http.ingress import create_app
from streams.webhook_sender import WebhookSender
from tests.unit.samples import SECRET, URL_REQUEST, completed

pytestmark = pytest.mark.features

HOOK_SECRET = "webhook-secret-0123456789"
CALLBACK = "https://hooks.example.org/packager?token=tok-abc-123"


# -- signing ---------------------------------------------------------------------------------------------


def test_a_signature_verifies_with_the_documented_recipe() -> None:
    body = b'{"job_id":"j1"}'
    header = signature_header(HOOK_SECRET, body, timestamp=1_796_212_860)
    t, v1 = (part.split("=", 1)[1] for part in header.split(","))
    # The recipe of docs/http-api.md#webhooks, written without this package.
    expected = hmac.new(HOOK_SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert v1 == expected
    assert verify(HOOK_SECRET, body, header, now=1_796_212_860 + 10)


@pytest.mark.parametrize(
    "change",
    ["body", "secret", "old", "future", "no-timestamp", "no-signature"],
)
def test_a_signature_does_not_verify_when_anything_differs(change: str) -> None:
    body, now = b'{"job_id":"j1"}', 1_796_212_860
    header = signature_header(HOOK_SECRET, body, timestamp=now)
    checked_body, secret, at = body, HOOK_SECRET, now
    if change == "body":
        checked_body = b'{"job_id":"j2"}'
    elif change == "secret":
        secret = "another-secret-0123456789"
    elif change == "old":
        at = now + 301
    elif change == "future":
        at = now - 301
    elif change == "no-timestamp":
        header = header.split(",", 1)[1]
    else:
        header = header.split(",", 1)[0]
    assert not verify(secret, checked_body, header, now=at)


def test_a_signature_under_either_of_two_secrets_verifies() -> None:
    body, now = b"{}", int(time.time())
    old = signature_header("old-secret-0123456789", body, timestamp=now)
    new = signature_header(HOOK_SECRET, body, timestamp=now)
    both = f"{new},{old.split(',', 1)[1]}"
    assert verify(HOOK_SECRET, body, both) and verify("old-secret-0123456789", body, both)


# -- the body ----------------------------------------------------------------------------------------------


def test_the_body_of_a_completed_job_has_its_download_link() -> None:
    env = envelope("job-1", completed(zip_file_name="job-1.zip", rows=12, callback_sealed="sealed"))
    body = orjson.loads(
        webhook_body(env, download_base="https://p.org/downloads", status_base="https://p.org/jobs")
    )
    assert body == {
        "event_id": env.event_id,
        "event": "PackageCompleted",
        "job_id": "job-1",
        "state": "completed",
        "resource_id": "r1",
        "ckan_host": "data.example.org",
        "occurred_at": env.occurred_at,
        "status_url": "https://p.org/jobs/job-1",
        "download_url": "https://p.org/downloads/job-1.zip",
        "size": 2048,
        "sha256": "0" * 64,
        "rows": 12,
        "doi": "",
    }
    assert "email" not in body and "sealed" not in str(body), "no requester field leaves in a webhook"


def test_the_body_of_a_failed_job_says_why() -> None:
    failed = PackageFailed(
        cache_key="ck",
        resource_id="r1",
        email="",
        ckan_host="h",
        error="CKAN said no",
        error_type="CkanError",
    )
    body = orjson.loads(webhook_body(envelope("job-2", failed), download_base="d", status_base="s"))
    assert body["state"] == "failed" and body["error"] == "CKAN said no"
    assert body["error_type"] == "CkanError" and "download_url" not in body


# -- events and settings -------------------------------------------------------------------------------------


def test_the_callback_travels_from_the_request_to_its_terminal_event() -> None:
    request = PackageRequested(
        kind="url",
        cache_key="ck",
        resource_id="r1",
        email="",
        ckan_host="h",
        request={"resource_url": "https://h/f", "callback_sealed": "SEALED"},
    )
    terminal = completed(**requester_fields(request))
    assert terminal.callback_sealed == "SEALED"
    assert decode(encode(envelope("j", terminal))).payload == terminal


def test_a_stored_completion_from_before_webhooks_decodes_without_a_callback() -> None:
    fields = dataclasses.asdict(completed())
    del fields["callback_sealed"]
    raw = orjson.dumps(
        {
            "event_id": "e1",
            "type": "PackageCompleted",
            "schema_version": 3,
            "job_id": "j1",
            "occurred_at": "2026-11-26T14:21:00.123Z",
            "payload": fields,
        }
    )
    assert decode(raw).payload == completed()


def test_webhook_url_needs_a_secret() -> None:
    with pytest.raises(ConfigurationError, match="WEBHOOK_URL needs WEBHOOK_SECRET"):
        load_settings({}, secret=SECRET, webhook_url="https://hooks.example.org/x")
    with pytest.raises(ConfigurationError, match="WEBHOOK_SECRET is shorter"):
        load_settings({}, secret=SECRET, webhook_secret="short")
    with pytest.raises(ConfigurationError, match="WEBHOOK_URL"):
        load_settings({}, secret=SECRET, webhook_url="ftp://x", webhook_secret=HOOK_SECRET)


# -- the ingress ---------------------------------------------------------------------------------------------


async def resolver(host: str) -> list[str]:
    return {
        "data.example.org": ["93.184.216.34"],
        "hooks.example.org": ["93.184.216.35"],
        "inside.example.org": ["10.0.0.7"],
    }[host]


@pytest.fixture
def log() -> InMemoryEventLog:
    return InMemoryEventLog()


async def ingress(settings: Settings, log: InMemoryEventLog) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(settings, event_log=log, resolver=resolver))) as c:
        yield c


@pytest.fixture
async def client(store_dir: Path, log: InMemoryEventLog) -> AsyncIterator[TestClient]:
    settings = load_settings({}, secret=SECRET, store_directory=str(store_dir), webhook_secret=HOOK_SECRET)
    async for c in ingress(settings, log):
        yield c


async def test_a_callback_url_is_accepted_and_travels_sealed(
    client: TestClient, log: InMemoryEventLog
) -> None:
    resp = await client.post("/package_url", data={**URL_REQUEST, "callback_url": CALLBACK})
    assert resp.status == 200
    [(_, event)] = log.records["packager.requests"]
    assert isinstance(event.payload, PackageRequested)
    assert unseal(SECRET, event.payload.request["callback_sealed"]) == CALLBACK
    assert b"tok-abc-123" not in encode(event), "the callback's token never travels in clear"


@pytest.mark.parametrize(
    "callback",
    ["https://inside.example.org/hook", "http://127.0.0.1:8080/hook", "http://169.254.169.254/latest"],
)
async def test_a_callback_to_a_private_address_is_refused(
    client: TestClient, log: InMemoryEventLog, callback: str
) -> None:
    for path, extra in (
        ("/package_url", {}),
        ("/package_datastore", {"api_url": "https://data.example.org/api/3/action/datastore_search"}),
    ):
        resp = await client.post(path, data={**URL_REQUEST, **extra, "callback_url": callback})
        body = await resp.json()
        assert resp.status == 400, body
        assert "callback_url" in body["message"] and "private" in body["message"]
    assert not log.records.get("packager.requests"), "a refused request leaves nothing in the log"


@pytest.mark.parametrize(
    ("callback", "words"),
    [("ftp://hooks.example.org/x", "http or https"), ("https://u:p@hooks.example.org/x", "credentials")],
)
async def test_a_malformed_callback_is_refused(client: TestClient, callback: str, words: str) -> None:
    resp = await client.post("/package_url", data={**URL_REQUEST, "callback_url": callback})
    assert resp.status == 400 and words in (await resp.json())["message"]


async def test_a_callback_is_refused_when_the_service_sends_no_webhooks(
    store_dir: Path, log: InMemoryEventLog
) -> None:
    settings = load_settings({}, secret=SECRET, store_directory=str(store_dir))
    async for c in ingress(settings, log):
        resp = await c.post("/package_url", data={**URL_REQUEST, "callback_url": CALLBACK})
        assert resp.status == 400 and "WEBHOOK_SECRET" in (await resp.json())["message"]
        assert (await c.post("/package_url", data=URL_REQUEST)).status == 200, "no callback: accepted"


# -- the POST and its retries ------------------------------------------------------------------------------


async def test_a_webhook_is_retried_until_the_receiver_takes_it() -> None:
    received: list[tuple[bytes, dict[str, str]]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.read(), dict(request.headers)))
        return web.Response(status=503 if len(received) == 1 else 204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with (
        TestServer(app, host="127.0.0.1") as server,
        TestClient[web.Request, web.Application](server) as client,
    ):
        policy = WebhookPolicy(secret=HOOK_SECRET, timeout=5, retry_for=30, max_delay=1, first_delay=0.05)
        result = await post_webhook(
            client.session,
            str(server.make_url("/hook")),
            b'{"a":1}',
            event="PackageCompleted",
            delivery_id="e1",
            policy=policy,
        )
    assert result.ok and result.status == 204 and result.attempts == 2
    for body, headers in received:
        assert body == b'{"a":1}' and verify(HOOK_SECRET, body, headers[SIGNATURE_HEADER])
        assert headers[EVENT_HEADER] == "PackageCompleted" and headers[DELIVERY_HEADER] == "e1"


async def test_a_webhook_gives_up_after_its_retry_window() -> None:
    async def hook(request: web.Request) -> web.Response:
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with (
        TestServer(app, host="127.0.0.1") as server,
        TestClient[web.Request, web.Application](server) as client,
    ):
        policy = WebhookPolicy(secret=HOOK_SECRET, timeout=5, retry_for=0.3, max_delay=0.1, first_delay=0.05)
        result = await post_webhook(
            client.session,
            str(server.make_url("/hook?token=t0k")),
            b"{}",
            event="PackageFailed",
            delivery_id="e2",
            policy=policy,
        )
    assert not result.ok and result.attempts >= 2
    assert "answered HTTP 500" in result.error and "t0k" not in result.error, "the URL's token is not told"


def test_only_the_receivers_host_is_named() -> None:
    assert receiver_host("https://hooks.example.org/p?token=x") == "hooks.example.org"
    assert receiver_host("http://127.0.0.1:8123/p") == "127.0.0.1:8123"


# -- the sender ------------------------------------------------------------------------------------------


def sender_settings(**overrides: object) -> Settings:
    return load_settings({}, secret=SECRET, store_directory=".", webhook_secret=HOOK_SECRET, **overrides)


def test_the_sender_posts_only_for_jobs_with_a_receiver() -> None:
    with_callback = envelope("j1", completed(callback_sealed=seal(SECRET, CALLBACK)))
    without = envelope("j2", completed())
    assert WebhookSender(sender_settings()).wants(with_callback)
    assert not WebhookSender(sender_settings()).wants(without)
    assert WebhookSender(sender_settings(webhook_url="https://hooks.example.org/all")).wants(without)
    no_key = load_settings({}, secret=SECRET, store_directory=".")
    assert not WebhookSender(no_key).wants(with_callback), "nothing to sign with: nothing sent"
    assert WebhookSender(no_key).NAME == "webhooks", "its own consumer group, not the mailer's"


def test_a_cancelled_job_with_a_callback_gets_a_webhook_saying_so() -> None:
    """Every terminal event a requester could hear of gets a webhook, a cancellation too (it once stopped
    the sender's loop on its partition for good)."""
    cancelled = PackageCancelled("ck", "r1", "h", "fast", "requester", callback_sealed=seal(SECRET, CALLBACK))
    env = envelope("j3", cancelled)
    sender = WebhookSender(sender_settings())
    assert env.type in sender.TRIGGERS and sender.wants(env)
    assert not sender.wants(envelope("j4", PackageCancelled("ck", "r1", "h", "fast", "operator")))
    body = orjson.loads(webhook_body(env, download_base="https://d", status_base="https://s"))
    assert (body["state"], body["cancelled_by"], body["job_id"]) == ("cancelled", "requester", "j3")


class CommitsSeen:
    """Stands in for the consumer: keeps what the sender commits."""

    def __init__(self) -> None:
        self.committed: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.append(dict(offsets))


async def test_a_finished_job_read_while_its_partition_is_being_revoked_is_left_to_the_next_owner() -> None:
    """The mailer's hand-over rule holds for webhooks: no send starts for a partition being revoked."""
    sender = WebhookSender(sender_settings(webhook_url="https://hooks.example.org/all"))
    tp = TopicPartition("events", 0)
    consumer = CommitsSeen()
    sender._consumer = consumer
    may_end, talking, started = asyncio.Event(), asyncio.Event(), []

    async def being_sent() -> None:
        async with sender._smtp:
            talking.set()
            await may_end.wait()

    async def send(env: object) -> None:
        started.append(env)

    sender._send = send  # type: ignore[method-assign]
    sender._sends[tp] = {1: asyncio.create_task(being_sent())}
    sender._settled[tp], sender._next[tp] = set(), 2
    sender._scanned.add(tp)
    await talking.wait()
    revoking = asyncio.create_task(sender.on_partitions_revoked([tp]))
    await asyncio.sleep(0)  # the revocation now waits for the webhook being sent

    await sender._handle(tp, 5, encode(envelope("job-5", completed())))
    may_end.set()
    await asyncio.wait_for(revoking, timeout=5)
    assert started == [], "a send was started for a partition being revoked"
    assert consumer.committed and consumer.committed[-1][tp] <= 5, "committed past the unsent webhook"


async def test_a_webhook_to_a_private_address_is_refused_when_connecting() -> None:
    """A name that resolved to a public address at the ingress may point inside later (DNS rebinding)."""

    async def hook(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with TestServer(app, host="127.0.0.1") as server:
        session = http_session(load_settings({}, secret=SECRET, store_directory="."))
        try:
            policy = WebhookPolicy(secret=HOOK_SECRET, timeout=5, retry_for=30, max_delay=1)
            result = await post_webhook(
                session, str(server.make_url("/hook")), b"{}", event="e", delivery_id="d", policy=policy
            )
        finally:
            await session.close()
    assert not result.ok and "private" in result.error
    assert result.attempts == 1, "refused at once, not retried"
