"""The webhook sender: a signed JSON POST about every finished job, on a Kafka consumer group of its own.

It is the mailer's machinery (streams/mailer.py) in group `<prefix>-webhooks`, so a slow or failing
receiver holds webhooks only, never emails, builds or cache hits, and hands over partitions as carefully:
- the group's offset never passes a terminal event whose webhook outcomes are not acknowledged;
- on (re)assignment it reads ahead and skips jobs whose `WebhookDelivered`/`WebhookFailed` is in the log;
- a terminal event read while its partition is being revoked starts no send.

Where the webhook goes: the request's `callback_url` travels sealed under SECRET in PackageRequested's
`request` and is copied into the terminal event (`callback_sealed`), as the requester's sealed address is
for the mailer; WEBHOOK_URL (the operator's) gets every finished job. A job with both is sent to each in
turn, then both outcomes are recorded: a crash before the second record sends both again (at least once).
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from packager.adapters.http_client import http_session
from packager.adapters.webhook_client import WebhookPolicy, WebhookResult, post_webhook, receiver_host
from packager.core.errors import PackagingError
from packager.core.settings import Settings
from packager.domain.events import (
    Envelope,
    Event,
    PackageCancelled,
    PackageCompleted,
    PackageFailed,
    WebhookDelivered,
    WebhookFailed,
)
from packager.domain.secrets import unseal
from packager.domain.webhooks import WEBHOOK_STATES, webhook_body
from streams.mailer import Mailer

log = logging.getLogger(__name__)

CALLBACK, SERVICE = "callback", "service"  # the two kinds of receiver (`target` in the outcome events)
UNREADABLE_CALLBACK = (
    "The request's callback_url cannot be read (the service's SECRET changed since it was accepted)."
)


class WebhookSender(Mailer):
    """Consumes the events topic in group `<prefix>-webhooks` and POSTs one webhook per finished job."""

    NAME = "webhooks"
    NOUN = "webhook"
    TRIGGERS = frozenset(WEBHOOK_STATES)
    OUTCOMES = frozenset({WebhookDelivered.TYPE, WebhookFailed.TYPE})

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._session: aiohttp.ClientSession | None = None
        self._policy = WebhookPolicy(
            secret=settings.webhook_secret,
            timeout=settings.webhook_timeout,
            retry_for=settings.webhook_retry_for,
            max_delay=settings.webhook_retry_max_delay,
        )

    async def on_start(self) -> None:
        """Open the HTTP client (private addresses refused at connect time), then consume."""
        self._session = http_session(self.settings)
        await super().on_start()

    async def on_stop(self) -> None:
        """Stop consuming as the mailer does, then close the HTTP client."""
        await super().on_stop()
        if self._session is not None:
            await self._session.close()

    def slots(self) -> int:
        """Webhooks talking to receivers at once (WEBHOOK_CONCURRENCY)."""
        return self.settings.webhook_concurrency

    def wants(self, env: Envelope) -> bool:
        """A finished job gets a webhook when it named a callback or WEBHOOK_URL is set (and a key is)."""
        payload = env.payload
        assert isinstance(payload, PackageCompleted | PackageFailed | PackageCancelled)
        if not self.settings.webhook_secret:
            return False  # the ingress refuses callbacks then; an older event's callback has no key to sign
        return bool(self.settings.webhook_url or payload.callback_sealed)

    async def _deliver(self, env: Envelope) -> None:
        assert self._session is not None
        body = webhook_body(
            env, download_base=self.settings.download_base, status_base=self.settings.status_base
        )
        outcomes: list[Event] = []
        for target, url in self._receivers(env, outcomes):
            result = await post_webhook(
                self._session,
                url,
                body,
                event=env.type,
                delivery_id=env.event_id,
                policy=self._policy,
                slot=self._smtp,  # the mailer's name for the gate: here, the slots to receivers
            )
            host = receiver_host(url)
            if result.ok:
                log.info("webhook delivered to %s (%s)", host, target, extra={"job_id": env.job_id})
            else:
                log.error("webhook to %s failed: %s", host, result.error, extra={"job_id": env.job_id})
            outcomes.append(_outcome(env, target, host, result))
        # Recorded only once every receiver was tried: a crash in between repeats them all, loses none.
        for outcome in outcomes:
            await self._record(env, outcome)

    def _receivers(self, env: Envelope, outcomes: list[Event]) -> list[tuple[str, str]]:
        """(target, url) of each receiver; a callback that cannot be opened is recorded as failed."""
        payload = env.payload
        assert isinstance(payload, PackageCompleted | PackageFailed | PackageCancelled)
        receivers: list[tuple[str, str]] = []
        if payload.callback_sealed:
            try:
                receivers.append((CALLBACK, unseal(self.settings.secret, payload.callback_sealed)))
            except PackagingError:
                log.error("webhook not sent: %s", UNREADABLE_CALLBACK, extra={"job_id": env.job_id})
                unread = WebhookResult(ok=False, attempts=0, error=UNREADABLE_CALLBACK)
                outcomes.append(_outcome(env, CALLBACK, "", unread))
        if self.settings.webhook_url:
            receivers.append((SERVICE, self.settings.webhook_url))
        return receivers


def _outcome(env: Envelope, target: str, host: str, result: WebhookResult) -> Event:
    """The event recording how a receiver answered: WebhookDelivered, or WebhookFailed."""
    if result.ok:
        return WebhookDelivered(
            cache_key=env.cache_key,
            about=env.type,
            target=target,
            host=host,
            status=result.status,
            attempts=result.attempts,
        )
    return WebhookFailed(
        cache_key=env.cache_key,
        about=env.type,
        target=target,
        host=host,
        error=result.error,
        attempts=result.attempts,
    )
