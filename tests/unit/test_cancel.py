"""Cancelling a job: the ingress's route and token, the steward's decisions, the workers' stop, the page."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from packager.adapters.kafka_log import InMemoryEventLog, Topics
from packager.adapters.resolver import system_resolver
from packager.adapters.store import FileStore, PublishedFile
from packager.core.settings import Settings, load_settings
from packager.dev.ckan_server import SyntheticTable, serve_ckan
from packager.domain.emails import render_cancelled
from packager.domain.events import (
    CancelRequested,
    Envelope,
    Event,
    PackageCancelled,
    PackageCompleted,
    PackageQueued,
    PackageRequested,
    encode,
    envelope,
)
from packager.http import cancel
from packager.http.cancel import cancel_token
from packager.http.ingress import create_app
from packager.http.job_texts import display
from packager.service.packaging import JobContext, run_job
from projections import jobs
from streams.build_stops import CancelledJobs, cancelled_job, stop_builds
from streams.builds import BuildPool
from streams.cancels import Cancels, partition_of
from tests.unit.samples import SECRET, attach_views, completed, fill_views

pytestmark = pytest.mark.features

JOB = "0b5b3c9e-1f0e-4c1a-9d6e-2a7f1c3e5d70"
OTHER = "1c6c4dAf-2f1f-4d2b-8e7f-3b8f2d4f6e81".lower()
PARTITIONS = 4


def request(email: str = "ann@example.org", cache_key: str = "ck") -> PackageRequested:
    return PackageRequested(
        kind="url", cache_key=cache_key, resource_id="r1", email=email, ckan_host="h", request={}
    )


@pytest.fixture
def settings(store_dir: Path) -> Settings:
    return load_settings({}, secret=SECRET, store_directory=str(store_dir), partitions=PARTITIONS)


@pytest.fixture
def log() -> InMemoryEventLog:
    return InMemoryEventLog()


@pytest.fixture
async def client(
    settings: Settings, log: InMemoryEventLog, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[TestClient]:
    monkeypatch.setattr(cancel, "OUTCOME_WITHIN", 0.3)
    monkeypatch.setattr(cancel, "KNOWN_WITHIN", 0.3)
    app = create_app(settings, event_log=log, resolver=system_resolver, read_views=False)
    attach_views(app, settings)
    async with TestClient(TestServer(app)) as c:
        yield c


def cancels_asked(log: InMemoryEventLog, settings: Settings) -> list[Envelope]:
    return [e for _, e in log.records.get(Topics(settings.topic_prefix).events, [])]


def queued(settings: Settings, job_id: str = JOB) -> None:
    fill_views(
        settings,
        [
            ("t.requests", 0, 0, envelope(job_id, request())),
            ("t.events", 0, 0, envelope(job_id, PackageQueued(cache_key="ck", lane="fast", attempt=1))),
        ],
    )


# --- the route ------------------------------------------------------------------------------------------


async def test_the_accept_answer_carries_a_cancel_token_for_that_job_only(
    client: TestClient, settings: Settings
) -> None:
    resp = await client.post(
        "/package_url",
        data={
            "secret": SECRET,
            "resource_id": "r1",
            "resource_url": "https://93.184.215.14/a.csv",
            "email": "a@example.org",
        },
    )
    body = await resp.json()
    assert body["cancel_token"] == cancel_token(settings.secret, body["job_id"])
    assert body["cancel_url"].endswith(f"/jobs/{body['job_id']}/cancel")
    assert cancel_token(settings.secret, OTHER) != body["cancel_token"]


async def test_a_requester_cancels_with_the_token_on_every_partition(
    client: TestClient, settings: Settings, log: InMemoryEventLog
) -> None:
    queued(settings)
    resp = await client.post(f"/jobs/{JOB}/cancel", data={"token": cancel_token(settings.secret, JOB)})
    body = await resp.json()
    assert resp.status == 202, body  # no steward here: the outcome is not in the views yet
    assert body["state"] == "queued"
    assert body["status_url"] == f"{settings.status_base}/{JOB}"  # where the outcome will show
    asked = cancels_asked(log, settings)
    assert [(e.job_id, e.payload) for e in asked] == [
        (JOB, CancelRequested(cache_key="*", partition=p, by="requester")) for p in range(PARTITIONS)
    ]


async def test_the_answer_says_cancelled_once_the_views_show_it(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cancel, "OUTCOME_WITHIN", 10.0)
    queued(settings)

    async def steward() -> None:
        await asyncio.sleep(0.3)
        ended = PackageCancelled("ck", "r1", "h", "fast", "operator", "ann@example.org")
        fill_views(settings, [("t.events", 0, 1, envelope(JOB, ended))])

    task = asyncio.create_task(steward())
    resp = await client.post(f"/jobs/{JOB}/cancel", data={"secret": SECRET})
    await task
    body = await resp.json()
    assert (resp.status, body["state"], body["success"]) == (200, "cancelled", True)


async def test_a_finished_job_is_a_409_and_nothing_is_appended(
    client: TestClient, settings: Settings, log: InMemoryEventLog
) -> None:
    queued(settings)
    fill_views(settings, [("t.events", 0, 1, envelope(JOB, completed()))])
    resp = await client.post(f"/jobs/{JOB}/cancel", data={"secret": SECRET})
    body = await resp.json()
    assert (resp.status, body["state"], body["error"]) == (409, "completed", "ConflictError")
    assert "already finished" in body["message"]
    assert body["status_url"] == f"{settings.status_base}/{JOB}"
    assert cancels_asked(log, settings) == []


async def test_unknown_jobs_are_404_and_wrong_credentials_401(
    client: TestClient, settings: Settings, log: InMemoryEventLog
) -> None:
    queued(settings)
    assert (await client.post(f"/jobs/{OTHER}/cancel", data={"secret": SECRET})).status == 404
    token_of_another = cancel_token(settings.secret, OTHER)
    for data in ({"secret": "wrong-secret-0123456789"}, {}, {"token": token_of_another}, {"token": "x"}):
        resp = await client.post(f"/jobs/{JOB}/cancel", data=data)
        assert resp.status == 401, data
        assert (await resp.json())["error"] == "NotAuthorizedError"
    assert cancels_asked(log, settings) == []


# --- the steward's decisions ------------------------------------------------------------------------------


class Steward:
    """The tables and effects `Cancels` works with, as plain dicts and lists."""

    def __init__(self, store_dir: Path) -> None:
        from packager.adapters.store import FileStore

        self.leases: dict[str, Any] = {}
        self.kept: dict[str, Any] = {}
        self.waiting: dict[str, Any] = {}
        self.inflight: dict[str, Any] = {}
        self.ending: dict[str, Any] = {}
        self.pending: dict[str, Any] = {}
        self.ended: list[tuple[str, Event]] = []
        self.dispatched: list[tuple[str, str, int, str]] = []
        self.store = FileStore(store_dir, store_dir / ".partial")

        async def end_once(job_id: str, key: str, terminal: Event, partition: int) -> None:
            self.ended.append((job_id, terminal))

        async def dispatch(job_id: str, key: str, lane: str, attempt: int, record: str) -> None:
            self.dispatched.append((job_id, lane, attempt, record))

        self.cancels = Cancels(
            partitions=PARTITIONS,
            leases=self.leases,
            kept=self.kept,
            waiting=self.waiting,
            inflight=self.inflight,
            ending=self.ending,
            pending=self.pending,
            end_once=end_once,
            dispatch=dispatch,
            store=self.store,
        )

    async def cancel(self, job_id: str, partition: int, by: str = "operator") -> bool:
        return await self.cancels.requested(envelope(job_id, CancelRequested("*", partition, by)), partition)


KEY = "ck"
HOME = partition_of(KEY, PARTITIONS)


def record(job_id: str, email: str) -> str:
    return encode(envelope(job_id, request(email))).decode()


async def test_a_build_is_cancelled_by_its_own_partition_only(store_dir: Path) -> None:
    s = Steward(store_dir)
    s.kept[JOB] = record(JOB, "ann@example.org")
    s.leases[JOB] = {"key": KEY, "partition": HOME, "lane": "slow", "attempt": 1, "state": "building"}
    elsewhere = (HOME + 1) % PARTITIONS
    assert await s.cancel(JOB, elsewhere) is True  # its copy, but not the job's partition
    assert s.ended == []
    assert await s.cancel(JOB, HOME, "requester")
    [(job_id, ended)] = s.ended
    assert job_id == JOB and isinstance(ended, PackageCancelled)
    assert (ended.lane, ended.by, ended.email, ended.resource_id) == (
        "slow",
        "requester",
        "ann@example.org",
        "r1",
    )


async def test_an_ended_or_ending_job_is_left_alone(store_dir: Path) -> None:
    s = Steward(store_dir)
    s.kept[JOB] = record(JOB, "ann@example.org")
    s.leases[JOB] = {"key": KEY, "partition": HOME, "lane": "fast", "attempt": 1, "state": "built"}
    s.ending[JOB] = {"since": 10, "at": 0.0}  # the completion is on its way: it won
    await s.cancel(JOB, HOME)
    assert s.ended == [] and s.pending == {}


async def test_a_waiter_alone_is_cancelled_and_the_build_goes_on(store_dir: Path) -> None:
    s = Steward(store_dir)
    s.inflight[KEY] = "builder"
    s.waiting[KEY] = [{"job_id": JOB, "resource_id": "r1", "ckan_host": "h", "email": "w@example.org"}]
    await s.cancel(JOB, HOME)
    assert s.waiting[KEY] == [] and s.inflight[KEY] == "builder"
    [(job_id, ended)] = s.ended
    assert job_id == JOB and isinstance(ended, PackageCancelled) and ended.email == "w@example.org"


async def test_a_cancel_before_planning_is_kept_for_the_planner(store_dir: Path) -> None:
    s = Steward(store_dir)
    await s.cancel(JOB, HOME)
    assert s.ended == [] and s.pending[JOB]["by"] == "operator"
    ended = s.cancels.before_planning(envelope(JOB, request("late@example.org")))
    assert isinstance(ended, PackageCancelled) and ended.email == "late@example.org"
    assert s.cancels.before_planning(envelope(OTHER, request())) is None


async def test_the_waiters_of_a_cancelled_build_get_a_build_of_their_own(store_dir: Path) -> None:
    s = Steward(store_dir)
    builder_record = record(JOB, "ann@example.org")
    s.inflight[KEY] = JOB
    first = {"job_id": OTHER, "resource_id": "r1", "ckan_host": "h", "email": "b@example.org"}  # no record
    second = {"job_id": "c", "record": record("c", "c@example.org")}
    s.waiting[KEY] = [first, second]
    ended = envelope(JOB, PackageCancelled(KEY, "r1", "h", "fast", "operator", "ann@example.org"))
    await s.cancels.replan(ended, HOME, builder_record)
    [(job_id, lane, attempt, rebuilt)] = s.dispatched
    assert (job_id, lane, attempt) == (OTHER, "fast", 1)
    assert '"job_id":"' + OTHER in rebuilt and "b@example.org" in rebuilt and "ann@" not in rebuilt
    assert s.inflight[KEY] == OTHER and s.waiting[KEY] == [second] and s.kept[OTHER] == rebuilt
    assert s.ended == []  # nobody but the cancelled job ends


async def test_a_cancelled_build_without_waiters_frees_its_cache_key(store_dir: Path) -> None:
    s = Steward(store_dir)
    s.inflight[KEY] = JOB
    ended = envelope(JOB, PackageCancelled(KEY, "r1", "h", "fast", "operator"))
    await s.cancels.replan(ended, HOME, None)
    assert KEY not in s.inflight and s.dispatched == []


async def test_a_zip_built_just_before_the_cancellation_is_removed(store_dir: Path) -> None:
    s = Steward(store_dir)
    (store_dir / "late.zip").write_bytes(b"PK")
    s.leases[JOB] = {"key": KEY, "partition": HOME, "state": "built", "zip": "late.zip", "attempt": 1}
    s.kept[JOB] = record(JOB, "ann@example.org")
    kept = await s.cancels.before_fold(envelope(JOB, PackageCancelled(KEY, "r1", "h", "fast", "operator")))
    assert kept == s.kept[JOB] and not (store_dir / "late.zip").exists()


# --- the workers' side ------------------------------------------------------------------------------------


def test_only_cancellation_records_are_picked_from_the_events_topic() -> None:
    cancelled = encode(envelope(JOB, PackageCancelled(KEY, "r1", "h", "fast", "operator")))
    asked = encode(envelope(JOB, CancelRequested("*", 0, "operator")))
    assert cancelled_job(cancelled) == JOB
    assert cancelled_job(asked) is None and cancelled_job(b"not json") is None and cancelled_job(None) is None


def test_stopping_remembers_the_job_and_stops_its_builds_in_every_pool() -> None:
    class Pool:
        def __init__(self) -> None:
            self.stopped: list[str] = []

        def stop(self, job_id: str) -> int:
            self.stopped.append(job_id)
            return 1

    pools, known = [Pool(), Pool()], CancelledJobs(limit=2)
    assert stop_builds(JOB, pools, known) == 2  # type: ignore[arg-type]
    assert [p.stopped for p in pools] == [[JOB], [JOB]] and JOB in known
    known.add("b")
    known.add("c")
    assert JOB not in known and "c" in known  # bounded: the oldest goes first


async def test_a_lane_record_of_a_cancelled_job_starts_no_build() -> None:
    emitted: list[Event] = []

    async def emit(request: Envelope, payload: Event) -> None:
        emitted.append(payload)

    def no_context(*_: Any) -> Any:
        raise AssertionError("no build may start")

    pool = BuildPool("fast", 1, 1.0, "w", emit, no_context, lambda: None, cancelled={JOB})  # type: ignore[arg-type, return-value]
    await asyncio.wait_for(pool.start(envelope(JOB, request()), 1), 1.0)
    assert emitted == [] and pool.running == 0


async def test_a_job_cancelled_while_its_record_waits_for_a_slot_is_not_built() -> None:
    async def emit(request: Envelope, payload: Event) -> None:
        raise AssertionError("nothing may be appended")

    def no_context(*_: Any) -> Any:
        raise AssertionError("no build may start")

    cancelled: set[str] = set()
    pool = BuildPool("fast", 1, 1.0, "w", emit, no_context, lambda: None, cancelled=cancelled)  # type: ignore[arg-type, return-value]
    await pool._slots.acquire()  # the one slot is busy with another build
    waiting = asyncio.create_task(pool.start(envelope(JOB, request()), 1))
    await asyncio.sleep(0)
    assert not waiting.done()
    cancelled.add(JOB)  # the cancellation is read meanwhile
    pool._slots.release()  # the other build ends
    await asyncio.wait_for(waiting, 1.0)
    assert pool.running == 0 and not pool._slots.locked()


# --- what people see ---------------------------------------------------------------------------------------


def test_the_job_view_and_page_say_cancelled_and_a_late_completion_changes_nothing() -> None:
    state = jobs.apply(None, envelope(JOB, request()))
    state = jobs.apply(state, envelope(JOB, CancelRequested("*", 0, "requester")))
    assert state.state == jobs.QUEUED
    state = jobs.apply(state, envelope(JOB, PackageCancelled(KEY, "r1", "h", "fast", "requester")))
    assert (state.state, state.terminal, state.error) == ("cancelled", True, "cancelled by the requester")
    assert jobs.apply(state, envelope(JOB, completed())).state == "cancelled"
    shown = display(state, email_expected=False)
    assert (shown["state"], shown["headline"]) == ("cancelled", "Cancelled")
    assert "cancelled by the requester" in shown["message"]
    assert shown["email"] == "No email will be sent for this request."
    assert jobs.apply(None, envelope(JOB, CancelRequested("*", 1, "operator"))) == jobs.JobState(JOB)


def test_the_cancellation_email_is_short_and_names_no_download(settings: Settings) -> None:
    message = render_cancelled(
        settings, JOB, PackageCancelled(KEY, "r1", "h", "fast", "requester", "ann@example.org")
    )
    assert message["To"] == "ann@example.org" and "cancelled" in message["Subject"]
    body = message.get_content()
    assert "cancelled by you" in body and "/downloads/" not in body


def test_a_cancelled_job_is_emailed_only_when_the_setting_says_so(store_dir: Path) -> None:
    from packager.http.read_api import email_expected

    state = jobs.JobState(JOB, state=jobs.CANCELLED)
    off = load_settings({}, secret=SECRET, store_directory=str(store_dir))
    on = load_settings({}, secret=SECRET, store_directory=str(store_dir), email_cancellations=True)
    assert (email_expected(state, off), email_expected(state, on)) == (False, True)
    assert isinstance(completed(), PackageCompleted)


# --- a build stopped while it publishes ---------------------------------------------------------------------


class HeldStore(FileStore):
    """The folder store, whose thread, once the ZIP is in place, waits until the test lets it return."""

    def __init__(self, directory: Path, partial_directory: Path) -> None:
        super().__init__(directory, partial_directory)
        self.moving, self.go, self.moved = threading.Event(), threading.Event(), threading.Event()

    def publish_now(self, partial: Path, name: str) -> PublishedFile:
        try:
            published = super().publish_now(partial, name)
            self.moving.set()
            self.go.wait(10)
            return published
        finally:
            self.moved.set()


async def test_a_build_stopped_while_its_zip_moves_into_the_store_leaves_no_zip(tmp_path: Path) -> None:
    """The move runs in a thread that a cancellation does not stop: a cancellation that arrives while that
    thread ends would leave the ZIP under its final name, for a job that has no package."""
    store_dir = tmp_path / "store"
    settings = load_settings({}, secret=SECRET, store_directory=str(store_dir), allow_private_urls=True)
    store = HeldStore(store_dir, settings.partial_directory)
    table = SyntheticTable("birds", 50, seed=1)

    async def emit(event: Event) -> None:
        pass

    async def loopback(host: str) -> list[str]:
        return ["127.0.0.1"]

    async with serve_ckan({"birds": table}) as api_url, aiohttp.ClientSession() as session:
        req = PackageRequested(
            kind="datastore",
            cache_key="ck",
            resource_id="birds",
            email="ann@example.org",
            ckan_host="127.0.0.1",
            request={"api_url": api_url, "resource_id": "birds", "format": "csv", "key_sealed": ""},
        )
        ctx = JobContext(
            settings=settings, session=session, store=store, resolve=loopback, emit=emit, worker="w"
        )
        build = asyncio.create_task(run_job(envelope(JOB, req), "fast", ctx))
        deadline = asyncio.get_running_loop().time() + 30
        while not store.moving.is_set():
            assert asyncio.get_running_loop().time() < deadline and not build.done(), "never published"
            await asyncio.sleep(0.01)
        build.cancel()  # the job is cancelled while its ZIP moves into the store
        await asyncio.sleep(0)
        store.go.set()
        with pytest.raises(asyncio.CancelledError):
            await build
    assert await asyncio.to_thread(store.moved.wait, 10), "the move never ended"
    assert stored(store_dir) == [], "a stopped build left its ZIP"
    assert stored(settings.partial_directory) == [], "a stopped build left a partial file"


def stored(folder: Path) -> list[str]:
    """The files in `folder` (the partial area is a folder inside the store's)."""
    return sorted(p.name for p in folder.iterdir() if p.is_file())
