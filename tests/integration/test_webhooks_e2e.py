"""Webhooks on real components: a request naming a `callback_url`, a worker, and receivers on 127.0.0.1.

A completed job: the callback receiver fails its first attempt and takes the second; WEBHOOK_URL's receiver
takes the first. Each gets one signed body about the job, and the log records one `WebhookDelivered` per
receiver. A failed job and a cancelled one are posted too, each body saying how its job ended; a callback
receiver that never takes its webhook is given up after WEBHOOK_RETRY_FOR, recorded as `WebhookFailed`; with
EMAIL_CANCELLATIONS off (the default) the cancelled job's requester gets no email at all.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from packager.adapters.kafka_log import Topics
from packager.dev.kafka import free_port
from packager.domain.emails import JOB_HEADER
from packager.domain.events import Envelope, PackageCompleted, WebhookDelivered, WebhookFailed
from packager.domain.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, verify
from tests.integration.conftest import SECRET
from tests.integration.support import (
    SmtpSink,
    job_events,
    post_form,
    read_events,
    running_stack,
    submit,
    trickle,
    wait_for_event,
    wait_until_group_caught_up,
)

pytestmark = [pytest.mark.kafka, pytest.mark.features]

HOOK_SECRET = "integration-webhook-secret-0123"


@dataclass
class Receiver:
    """What the receivers were sent: (path, body, headers), and how many times each path refused."""

    base: str
    calls: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    refuse_first: set[str] = field(default_factory=lambda: {"/callback"})
    always_refuse: set[str] = field(default_factory=lambda: {"/down"})

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append((request.path, await request.read(), dict(request.headers)))
        if request.path in self.always_refuse:
            return web.Response(status=500, text="broken")
        if request.path in self.refuse_first:
            self.refuse_first.discard(request.path)
            return web.Response(status=503, text="not now")
        return web.Response(status=204)

    def received(self, path: str) -> list[tuple[bytes, dict[str, str]]]:
        return [(body, headers) for p, body, headers in self.calls if p == path]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    port = free_port()
    hooks = Receiver(base=f"http://127.0.0.1:{port}")
    app = web.Application()
    app.router.add_post("/{name}", hooks.handle)
    app.router.add_get("/slow.csv", trickle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield hooks
    finally:
        await runner.cleanup()


async def test_a_finished_job_is_posted_signed_to_its_callback_and_to_webhook_url(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    file_server: tuple[str, Path],
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    base_url, folder = file_server
    (folder / "data.csv").write_bytes(b"a,b\n1,2\n")
    env = {
        **service_env,
        "PACKAGER_WEBHOOK_SECRET": HOOK_SECRET,
        "PACKAGER_WEBHOOK_URL": f"{receiver.base}/service",
        "PACKAGER_WEBHOOK_RETRY_FOR": "120",
        "PACKAGER_WEBHOOK_RETRY_MAX_DELAY": "2",
        "PACKAGER_DOWNLOAD_URL_BASE": "https://portal.example.org/downloads",
    }
    port = int(env["PACKAGER_PORT"])
    with running_stack(env, tmp_path / "logs") as stack:
        job_id = await submit(
            port,
            "package_url",
            SECRET,
            resource_id="res-hook",
            resource_url=f"{base_url}/data.csv",
            email="requester@example.org",
            callback_url=f"{receiver.base}/callback?token=tok-9",
        )

        def delivered(to: str) -> Callable[[Envelope], bool]:
            def matches(e: Envelope) -> bool:
                payload = e.payload
                return e.job_id == job_id and isinstance(payload, WebhookDelivered) and payload.target == to

            return matches

        try:
            for target in ("callback", "service"):
                await wait_for_event(kafka_bootstrap, topic_prefix, delivered(target), within=120)
            # Nothing is left for the webhooks sender to send: a second delivery would be on the log by now.
            await wait_until_group_caught_up(
                kafka_bootstrap, Topics(topic_prefix).events, f"{topic_prefix}-webhooks"
            )
        except TimeoutError:
            pytest.fail(f"no webhook recorded.\n{stack.diagnostics()}")

    events = await job_events(kafka_bootstrap, topic_prefix, job_id)
    outcomes = [e.payload for e in events if isinstance(e.payload, WebhookDelivered | WebhookFailed)]
    assert sorted((type(o).__name__, o.target) for o in outcomes) == [
        ("WebhookDelivered", "callback"),
        ("WebhookDelivered", "service"),
    ], "one WebhookDelivered per receiver, no failure"
    by_target = {o.target: o for o in outcomes if isinstance(o, WebhookDelivered)}
    assert by_target["callback"].attempts == 2 and by_target["callback"].host == receiver.base[7:]
    assert by_target["service"].attempts == 1
    assert not any(b"tok-9" in orjson.dumps(e.payload) for e in events), "the token never travels in clear"

    [completed] = [e for e in events if isinstance(e.payload, PackageCompleted)]
    assert isinstance(completed.payload, PackageCompleted)
    callback_calls = receiver.received("/callback")
    assert len(callback_calls) == 2, "refused once, taken once"
    assert len(receiver.received("/service")) == 1, "taken at once, sent once"
    for path in ("/callback", "/service"):
        body, headers = receiver.received(path)[-1]
        assert verify(HOOK_SECRET, body, headers[SIGNATURE_HEADER]), "the signature verifies"
        assert headers[DELIVERY_HEADER] == completed.event_id
        sent = orjson.loads(body)
        assert sent["job_id"] == job_id and sent["state"] == "completed"
        assert sent["resource_id"] == "res-hook" and sent["occurred_at"] == completed.occurred_at
        zip_name = completed.payload.zip_file_name
        assert sent["download_url"] == f"https://portal.example.org/downloads/{zip_name}"
    assert callback_calls[0][0] == callback_calls[1][0], "a retry sends the same body"


async def test_failed_and_cancelled_jobs_are_posted_and_a_receiver_that_never_takes_one_is_recorded(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    file_server: tuple[str, Path],
    receiver: Receiver,
    smtp: SmtpSink,
    tmp_path: Path,
) -> None:
    base_url, _ = file_server
    env = {
        **service_env,
        "PACKAGER_WEBHOOK_SECRET": HOOK_SECRET,
        "PACKAGER_WEBHOOK_URL": f"{receiver.base}/service",
        "PACKAGER_WEBHOOK_RETRY_FOR": "3",
        "PACKAGER_WEBHOOK_RETRY_MAX_DELAY": "1",
    }
    port = int(env["PACKAGER_PORT"])
    with running_stack(env, tmp_path / "logs", projector=True) as stack:
        failing = await submit(
            port,
            "package_url",
            SECRET,
            resource_id="res-missing",
            resource_url=f"{base_url}/no-such-file.csv",
            email="requester@example.org",
            callback_url=f"{receiver.base}/down",
        )
        status, slow = await post_form(
            port,
            "/package_url",
            secret=SECRET,
            resource_id="res-slow",
            resource_url=f"{receiver.base}/slow.csv",
            email="requester@example.org",
        )
        assert status == 200, slow
        cancelled = slow["job_id"]
        try:
            await wait_for_event(
                kafka_bootstrap, topic_prefix, lambda e: e.job_id == cancelled and e.type == "PackageStarted"
            )
            # The token proves the job was accepted: the route waits for the views to know it.
            status, answer = await post_form(port, f"/jobs/{cancelled}/cancel", token=slow["cancel_token"])
            assert status in (200, 202), answer
            for job_id, outcome, target in (
                (failing, WebhookFailed, "callback"),
                (failing, WebhookDelivered, "service"),
                (cancelled, WebhookDelivered, "service"),
            ):
                await wait_for_event(
                    kafka_bootstrap,
                    topic_prefix,
                    functools.partial(_webhook_event, job_id, outcome, target),
                    within=120,
                )
            # Nothing is left for the webhooks sender or the mailer to send.
            for group in ("webhooks", "mailer"):
                await wait_until_group_caught_up(
                    kafka_bootstrap, Topics(topic_prefix).events, f"{topic_prefix}-{group}"
                )
        except TimeoutError:
            pytest.fail(stack.diagnostics())

    events = [e for e in await read_events(kafka_bootstrap, Topics(topic_prefix).events)]
    outcomes = sorted(
        (e.job_id == failing, type(e.payload).__name__, e.payload.target)
        for e in events
        if isinstance(e.payload, WebhookDelivered | WebhookFailed)
    )
    assert outcomes == [
        (False, "WebhookDelivered", "service"),
        (True, "WebhookDelivered", "service"),
        (True, "WebhookFailed", "callback"),
    ], "one outcome per receiver of each job"
    [gave_up] = [e.payload for e in events if isinstance(e.payload, WebhookFailed)]
    assert gave_up.attempts >= 2 and "500" in gave_up.error and gave_up.about == "PackageFailed"
    assert len(receiver.received("/down")) == gave_up.attempts, "each attempt recorded"
    posted = {}
    for body, headers in receiver.received("/service"):
        assert verify(HOOK_SECRET, body, headers[SIGNATURE_HEADER]), "the signature verifies"
        sent = orjson.loads(body)
        posted[sent["job_id"]] = sent
    assert posted[failing]["state"] == "failed" and posted[failing]["error"]
    assert "download_url" not in posted[failing]
    assert (posted[cancelled]["state"], posted[cancelled]["cancelled_by"]) == ("cancelled", "requester")
    assert "download_url" not in posted[cancelled]
    # EMAIL_CANCELLATIONS is off (the default): the failed job's requester is told, the cancelled one's not.
    assert sorted(str(m[JOB_HEADER]) for m in smtp.messages) == [failing]


def _webhook_event(
    job_id: str, outcome: type[WebhookDelivered | WebhookFailed], target: str, e: Envelope
) -> bool:
    """True for the job's webhook event of kind `outcome` sent to `target`."""
    return e.job_id == job_id and isinstance(e.payload, outcome) and e.payload.target == target
