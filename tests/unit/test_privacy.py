"""Requesters' privacy without a broker: sealed addresses, erasure, pseudonymous statistics, key rotation.

The ingress runs over HTTP with an in-memory log and key store; the views are SQLite; the mailer's
`notify` is called as the mailer calls it. The same story on a real broker, with the search of every
segment file, is `tests/integration/test_privacy_e2e.py`.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from packager.adapters import projector
from packager.adapters.kafka_log import InMemoryEventLog, LogIdentity
from packager.adapters.projector_shares import WHOLE
from packager.adapters.requester_keys import InMemoryRequesterKeys
from packager.adapters.viewdb import ViewDatabase, database_url
from packager.core.errors import ConfigurationError
from packager.core.settings import Settings, load_settings
from packager.domain import requesters
from packager.domain.events import (
    EmailFailed,
    Envelope,
    PackageCompleted,
    PackageRequested,
    RequesterErased,
    encode,
    envelope,
    requester_fields,
)
from packager.domain.requesters import DataKey, SealError
from packager.http.ingress import create_app
from projections.analytics import pseudonymise
from projections.view_schema import SCHEMA_VERSION
from streams.handlers import ERASED_REQUESTER, UNREADABLE_KEY, notify
from tests import privacy_search as search
from tests.unit.samples import SECRET, URL_REQUEST, attach_views, completed, fill_views

pytestmark = pytest.mark.privacy

EMAIL = "Ann.Example@Example.org"


def leaks(blob: bytes, email: str = EMAIL) -> list[bytes]:
    """The forms of the address (clear, hex, base64; either case) found in `blob`."""
    return search.leaks(blob, email)


def test_the_search_finds_an_address_in_every_form_it_looks_for() -> None:
    for prefix in (b"", b"x", b"xy"):
        hidden = prefix + EMAIL.encode()
        assert leaks(hidden) and leaks(hidden.hex().encode()) and leaks(base64.b64encode(hidden))
        assert leaks(base64.urlsafe_b64encode(hidden + b"tail"))
    assert not leaks(b"someone-else@example.net")


def test_a_sealed_address_opens_only_with_its_requesters_key() -> None:
    who = requesters.pseudonym(SECRET, EMAIL)
    key = DataKey.new(who)
    token = requesters.seal_email(key, EMAIL)
    assert not leaks(token.encode())
    assert requesters.open_email(key, token) == EMAIL
    assert requesters.key_id_of(token) == key.key_id
    with pytest.raises(SealError):
        requesters.open_email(DataKey(who, key.key_id, DataKey.new(who).secret), token)  # another key
    with pytest.raises(SealError):  # bound to the pseudonym: not movable to another requester
        requesters.open_email(DataKey("other", key.key_id, key.secret), token)


def test_pseudonyms_are_keyed_and_normalised() -> None:
    one = requesters.pseudonym(SECRET, EMAIL)
    assert one == requesters.pseudonym(SECRET, f"  {EMAIL.lower()} ")
    assert one != requesters.pseudonym("another-secret-0123456789", EMAIL)
    assert requesters.domain_of(EMAIL) == "example.org"
    assert requesters.pseudonyms(SECRET, [SECRET, "old-secret-0123456789"], EMAIL) == [
        one,
        requesters.pseudonym("old-secret-0123456789", EMAIL),
    ]


def test_a_sealing_secret_rotation_keeps_old_keys_readable_while_the_old_secret_is_listed() -> None:
    key = DataKey.new("who")
    stored = requesters.wrap_key("old-sealing-secret-0123", key)
    assert not any(key.secret in bytes(v, "ascii") for v in stored.values())
    assert requesters.unwrap_key(["new-sealing-secret-0123", "old-sealing-secret-0123"], stored) == key
    with pytest.raises(SealError):
        requesters.unwrap_key(["new-sealing-secret-0123"], stored)
    tampered = {**stored, "requester": "someone-else"}
    with pytest.raises(SealError):
        requesters.unwrap_key(["old-sealing-secret-0123"], tampered)


async def public_resolver(host: str) -> list[str]:
    return ["93.184.216.34"]


@pytest.fixture
def settings(store_dir: Path) -> Settings:
    return load_settings({}, secret=SECRET, store_directory=str(store_dir))


@pytest.fixture
def log() -> InMemoryEventLog:
    return InMemoryEventLog()


@pytest.fixture
def keys() -> InMemoryRequesterKeys:
    return InMemoryRequesterKeys()


@contextlib.asynccontextmanager
async def client_for(
    settings: Settings, log: InMemoryEventLog, keys: InMemoryRequesterKeys
) -> AsyncIterator[TestClient]:
    app = create_app(settings, event_log=log, resolver=public_resolver, read_views=False, requester_keys=keys)
    attach_views(app, settings)
    async with TestClient(TestServer(app)) as c:
        yield c


@pytest.fixture
async def client(
    settings: Settings, log: InMemoryEventLog, keys: InMemoryRequesterKeys
) -> AsyncIterator[TestClient]:
    async with client_for(settings, log, keys) as c:
        yield c


async def request(client: TestClient, email: str = EMAIL, resource_id: str = "r1") -> str:
    resp = await client.post("/package_url", data={**URL_REQUEST, "email": email, "resource_id": resource_id})
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["job_id"])


def records_of(log: InMemoryEventLog) -> list[tuple[str, int, int, Envelope]]:
    """The log as the projector reads it: (topic, partition, offset, event)."""
    return [
        (topic, 0, offset, event)
        for topic, items in sorted(log.records.items())
        for offset, (_, event) in enumerate(items)
    ]


def completion_of(event: Envelope) -> Envelope:
    """The completion a worker would append for a logged request (its requester fields copied along)."""
    p = event.payload
    assert isinstance(p, PackageRequested)
    done = completed(cache_key=p.cache_key, zip_file_name=f"{event.job_id}.zip", **requester_fields(p))
    return envelope(event.job_id, done)


async def test_a_request_logs_a_pseudonym_a_domain_and_the_address_sealed(
    client: TestClient, log: InMemoryEventLog, keys: InMemoryRequesterKeys
) -> None:
    await request(client)
    [(_, event)] = log.records["packager.requests"]
    p = event.payload
    assert isinstance(p, PackageRequested)
    assert p.email == "" and p.requester == requesters.pseudonym(SECRET, EMAIL)
    assert p.requester_domain == "example.org"
    assert not leaks(encode(event))
    assert await keys.open(p.requester, p.email_sealed) == EMAIL
    # Analytics consumers get the pseudonym and the domain; nothing sealed, nothing in clear.
    analytics = orjson.loads(pseudonymise(encode(event), SECRET))["payload"]
    assert (
        analytics["requester"] == p.requester and "email_sealed" not in analytics and "email" not in analytics
    )


async def test_erasure_stops_pending_emails_keeps_statistics_and_a_new_request_gets_a_new_key(
    client: TestClient, settings: Settings, log: InMemoryEventLog, keys: InMemoryRequesterKeys
) -> None:
    first = await request(client)
    await request(client, "bob@example.net", "r2")
    fill_views(settings, records_of(log))
    stats_before = await (await client.post("/statistics", data={"secret": SECRET})).json()
    [requested_event, _] = [e for _, e in log.records["packager.requests"]]
    pending = completion_of(requested_event)

    resp = await client.post("/requesters/erase", data={"secret": SECRET, "email": EMAIL.upper()})
    body = await resp.json()
    assert resp.status == 200 and body["keys_destroyed"] == 1, body
    assert not leaks(orjson.dumps(body))
    [(key, erased)] = log.records["packager.events"]
    assert isinstance(erased.payload, RequesterErased) and key == requesters.pseudonym(SECRET, EMAIL)
    assert not leaks(encode(erased))
    # A second erasure finds nothing left to destroy; a wrong secret erases nothing.
    again = await (await client.post("/requesters/erase", data={"secret": SECRET, "email": EMAIL})).json()
    assert again["keys_destroyed"] == 0
    refused = await client.post("/requesters/erase", data={"secret": "wrong-secret-0123456", "email": EMAIL})
    assert refused.status == 401

    # The mailer cannot open the address any more: nothing is sent, and the job says why.
    outcome = await notify(settings, pending, keys=keys)
    assert isinstance(outcome, EmailFailed) and outcome.error == ERASED_REQUESTER and outcome.attempts == 0

    fill_views(settings, records_of(log))
    stats_after = await (await client.post("/statistics", data={"secret": SECRET})).json()
    assert stats_after == stats_before
    page = await (await client.get(f"/jobs/{first}")).json()
    assert page["requester_erased"] is True and not leaks(orjson.dumps(page))

    # The same address asks again: a new key, a new sealed address, still the same pseudonym.
    later = await request(client, resource_id="r3")
    latest = log.records["packager.requests"][-1][1].payload
    assert isinstance(latest, PackageRequested)
    assert requesters.key_id_of(latest.email_sealed) != requesters.key_id_of(pending.payload.email_sealed)  # type: ignore[attr-defined]
    assert await keys.open(latest.requester, latest.email_sealed) == EMAIL
    fill_views(settings, records_of(log))
    assert (await (await client.get(f"/jobs/{later}")).json())["requester_erased"] is False


async def test_clear_addresses_are_shown_only_when_turned_on_and_never_for_an_erased_requester(
    store_dir: Path, log: InMemoryEventLog, keys: InMemoryRequesterKeys
) -> None:
    clear = load_settings(
        {"PACKAGER_ANONYMIZE_EMAILS": "false"}, secret=SECRET, store_directory=str(store_dir)
    )
    async with client_for(clear, log, keys) as client:
        await request(client)
        await request(client, "bob@example.net", "r2")
        fill_views(clear, records_of(log))

        async def listed(client: TestClient = client) -> list[Any]:
            answer = await (await client.post("/statistics/requests", data={"secret": SECRET})).json()
            return sorted(entry["email"] for entry in answer["requests"])

        assert await listed() == sorted([EMAIL, "bob@example.net"])
        await client.post("/requesters/erase", data={"secret": SECRET, "email": EMAIL})
        assert await listed() == sorted([requesters.pseudonym(SECRET, EMAIL), "bob@example.net"])
    # The views themselves never held an address, in either mode.
    db = ViewDatabase(database_url(clear))
    conn = db.connect()
    try:
        for table in ("stat_requests", "requesters", "requester_resources", "jobs"):
            assert not leaks(orjson.dumps(conn.execute(f"SELECT * FROM {table}").fetchall()))
    finally:
        conn.close()


def test_statistics_do_not_depend_on_the_current_pseudonym_secret(tmp_path: Path) -> None:
    """Rotating PSEUDONYM_SECRET: events keep the pseudonym they were written with, so a replay under the
    new secret gives the same statistics; only later requests of a person get the new pseudonym."""
    who = requesters.pseudonym(SECRET, EMAIL)
    sealed = {"requester": who, "requester_domain": "example.org", "email_sealed": "v1.k.x", "email": ""}
    events = [
        (
            "t.requests",
            0,
            i,
            envelope(
                f"job-{i}",
                PackageRequested(
                    kind="url", cache_key="ck", resource_id=f"r{i}", ckan_host="h", request={}, **sealed
                ),
            ),
        )
        for i in range(3)
    ]
    views = []
    for secret in (SECRET, "rotated-secret-0123456789"):
        settings = load_settings({}, secret=secret, store_directory=str(tmp_path / secret))
        db = fill_views(settings, events)
        conn = db.connect()
        try:
            views.append((db.totals(conn), db.listing(conn, "requests")))
        finally:
            conn.close()
    assert views[0] == views[1]
    assert views[0][0]["*"] == {"requests": 3, "errors": 0, "emails": 1}


def test_a_completion_proposed_before_the_upgrade_still_names_its_requester() -> None:
    # A build result (PackageBuilt.result) written by an older worker has the address in clear only.
    old = dataclasses.asdict(completed())
    for name in ("requester", "requester_domain", "email_sealed"):
        del old[name]
    rebuilt = PackageCompleted(**old)
    assert rebuilt.email == "a@example.org" and rebuilt.email_sealed == ""


async def test_a_pseudonym_secret_rotation_counts_a_later_request_anew_and_erasure_finds_both_pseudonyms(
    store_dir: Path, log: InMemoryEventLog, keys: InMemoryRequesterKeys
) -> None:
    old_secret, new_secret = "old-pseudonym-secret-0123", "new-pseudonym-secret-0123"
    before = load_settings({}, secret=SECRET, store_directory=str(store_dir), pseudonym_secret=old_secret)
    after = dataclasses.replace(before, pseudonym_secret=new_secret, previous_pseudonym_secrets=(old_secret,))
    async with client_for(before, log, keys) as client:
        first = await request(client)
        fill_views(before, records_of(log))
        totals = (await (await client.post("/statistics", data={"secret": SECRET})).json())["totals"]
    async with client_for(after, log, keys) as client:
        # Statistics of the events already written do not move: they keep the pseudonym they carry.
        assert (await (await client.post("/statistics", data={"secret": SECRET})).json())["totals"] == totals
        second = await request(client, resource_id="r1")
        fill_views(after, records_of(log))
        now = (await (await client.post("/statistics", data={"secret": SECRET})).json())["totals"]
        # The same person under the new secret is a new pseudonym: one more unique requester.
        assert now["*"] == {"requests": 2, "errors": 0, "emails": 2}
        # Erasure looks the address up under the new and the previous secret: both keys go.
        body = await (await client.post("/requesters/erase", data={"secret": SECRET, "email": EMAIL})).json()
        assert body["keys_destroyed"] == 2
        fill_views(after, records_of(log))
        for job in (first, second):
            assert (await (await client.get(f"/jobs/{job}")).json())["requester_erased"] is True
        [(_, erased)] = [
            r for r in log.records["packager.events"] if isinstance(r[1].payload, RequesterErased)
        ]
        assert erased.payload.requesters == [  # type: ignore[attr-defined]
            requesters.pseudonym(new_secret, EMAIL),
            requesters.pseudonym(old_secret, EMAIL),
        ]


def test_the_privacy_settings_default_to_private_and_refuse_short_secrets() -> None:
    settings = load_settings({}, secret=SECRET)
    assert settings.anonymize_emails is True  # the original's default was false
    assert settings.pseudonym_key == SECRET and settings.sealing_keys == (SECRET,)
    rotated = load_settings(
        {
            "PACKAGER_KEY_SEALING_SECRET": "new-sealing-secret-0123",
            "PACKAGER_PREVIOUS_KEY_SEALING_SECRETS": "a,b",
        },
        secret=SECRET,
    )
    assert rotated.sealing_keys == ("new-sealing-secret-0123", "a", "b")
    for name in ("PACKAGER_PSEUDONYM_SECRET", "PACKAGER_KEY_SEALING_SECRET"):
        with pytest.raises(ConfigurationError, match=name.removeprefix("PACKAGER_")):
            load_settings({name: "too-short"}, secret=SECRET)


class UnreadableKeys(InMemoryRequesterKeys):
    """A key store whose key is wrapped under a sealing secret no longer configured."""

    async def open(self, requester: str, token: str, *, fresh_within: float = 0.0) -> str | None:
        raise SealError("the data key k is wrapped under a sealing secret no longer configured")


async def test_an_address_whose_key_cannot_be_unwrapped_is_not_sent_and_the_job_says_why(
    settings: Settings,
) -> None:
    who = requesters.pseudonym(SECRET, EMAIL)
    token = requesters.seal_email(DataKey.new(who), EMAIL)
    done = completed(email="", requester=who, requester_domain="example.org", email_sealed=token)
    outcome = await notify(settings, envelope("job-1", done), keys=UnreadableKeys())
    assert isinstance(outcome, EmailFailed) and outcome.error == UNREADABLE_KEY
    assert "KEY_SEALING_SECRET" in outcome.error


async def test_views_of_the_version_that_held_addresses_are_dropped_and_rebuilt(settings: Settings) -> None:
    """Schema version 1 kept addresses (or hashes of them): later versions never go on with them."""
    db = ViewDatabase(database_url(settings))
    log_identity = LogIdentity("c1", {"packager.requests": "5" * 32})
    conn = db.connect(create=True)
    try:
        # Views as version 1 left them: an address in the statistics.
        conn.execute("INSERT INTO requesters VALUES (?)", (EMAIL.lower(),))
        conn.execute("UPDATE meta SET value = '1' WHERE name = 'schema_version'")
        progress = projector.Progress()
        conn = await projector._same_log(db, conn, log_identity, progress, WHOLE)
        assert progress.rebuilds == 1
        assert db.meta(conn, "schema_version") == SCHEMA_VERSION == "3"
        assert conn.execute("SELECT count(*) FROM requesters").fetchone() == (0,)
    finally:
        conn.close()


async def test_a_listing_with_a_key_it_cannot_unwrap_keeps_that_pseudonym_and_answers(
    store_dir: Path, log: InMemoryEventLog, keys: InMemoryRequesterKeys
) -> None:
    """Midway through a sealing-secret rotation, one unreadable key must not turn the listing into a 500."""
    clear = load_settings(
        {"PACKAGER_ANONYMIZE_EMAILS": "false"}, secret=SECRET, store_directory=str(store_dir)
    )
    async with client_for(clear, log, keys) as client:
        await request(client)
    fill_views(clear, records_of(log))
    async with client_for(clear, log, UnreadableKeys()) as client:
        resp = await client.post("/statistics/requests", data={"secret": SECRET})
        assert resp.status == 200, await resp.text()
        [entry] = (await resp.json())["requests"]
    assert entry["email"] == requesters.pseudonym(SECRET, EMAIL)
