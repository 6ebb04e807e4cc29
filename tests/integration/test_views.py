"""The projector and its views on real Kafka, on SQLite and on PostgreSQL (a server the session starts).

A synthetic history (jobs of six events: requested, queued, started, progress, completed or failed,
emailed) is written to the topics; the projector folds it. Checked: the numbers it implies, resuming where
the views end, a projector killed mid-batch and restarted (no event lost, none counted twice), `replay
verify` catching a row changed by hand, `replay rebuild --into` making an identical copy, `replay stats
--until`, a rebuild stopping each partition at given positions, two projector processes sharing the
partitions, partitions added under a following projector, and two ingress processes on one PostgreSQL
answering alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from packager.adapters.kafka_log import Topics, ensure_topics
from packager.adapters.projector import Progress, run_projector
from packager.adapters.projector_shares import Share
from packager.adapters.viewdb import ViewDatabase
from packager.adapters.viewreads import log_end_offsets
from packager.cli import replay
from packager.core.settings import Settings, load_settings
from packager.dev.processes import alive
from packager.domain.events import (
    EmailSent,
    PackageCompleted,
    PackageFailed,
    PackageProgress,
    PackageQueued,
    PackageRequested,
    PackageStarted,
    encode,
    envelope,
)
from packager.domain.requesters import pseudonym
from projections.view_schema import LOG_IDENTITY
from tests.integration.conftest import SECRET
from tests.integration.support import ROOT, ServiceProcess, service, wait_for_port

pytestmark = pytest.mark.kafka


def job_records(n: int) -> list[tuple[str, bytes, bytes]]:
    """The six records of job `n`: (topic suffix, key, value); every tenth job fails."""
    job_id = str(uuid.UUID(int=n + 1))
    key, resource_id, email = f"ck{n % 50}", f"res-{n % 7}", f"user{n % 13}@example.org"
    at = f"2026-11-26T10:{n // 600 % 60:02d}:{n // 10 % 60:02d}.{n % 1000:03d}Z"
    payloads: list[tuple[str, Any]] = [
        (
            "requests",
            PackageRequested("datastore", key, resource_id, email, "h", {"resource_id": resource_id}),
        ),
        ("events", PackageQueued(cache_key=key, lane="fast", attempt=1)),
        ("events", PackageStarted(cache_key=key, lane="fast", worker="w", attempt=1, lease_until="")),
        ("events", PackageProgress(key, 5, 10, 90, None, 1)),
    ]
    if n % 10 == 9:
        payloads.append(("events", PackageFailed(key, resource_id, email, "h", "CKAN said no", "CkanError")))
    else:
        payloads.append(
            (
                "events",
                PackageCompleted(
                    key, resource_id, email, "h", "", "fast", f"{job_id}.zip", 9, "0" * 64, 10, "a", "b"
                ),
            )
        )
    payloads.append(("events", EmailSent(cache_key=key, about="x", message_id="<m>", attempts=1)))
    return [(topic, key.encode(), encode(envelope(job_id, p, occurred_at=at))) for topic, p in payloads]


async def write_history(settings: Settings, first: int, jobs: int) -> None:
    """Append jobs `first` .. `first + jobs - 1` to the settings' topics."""
    topics = Topics(settings.topic_prefix)
    await ensure_topics(settings.kafka_bootstrap_servers, topics, settings.partitions)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, linger_ms=20)
    await producer.start()
    try:
        sent = []
        for n in range(first, first + jobs):
            for suffix, key, value in job_records(n):
                topic = topics.requests if suffix == "requests" else topics.events
                sent.append(await producer.send(topic, value=value, key=key))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def settings_for(kafka_bootstrap: str, topic_prefix: str, url: str) -> Settings:
    return load_settings(
        {},
        secret=SECRET,
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        partitions=3,
        database_url=url,
    )


def read(url: str, work: Any) -> Any:
    db = ViewDatabase(url)
    conn = db.connect()
    try:
        return work(db, conn)
    finally:
        conn.close()


async def test_the_projector_folds_the_log_and_resumes_where_the_views_end(
    kafka_bootstrap: str, topic_prefix: str, views_url: str
) -> None:
    settings = settings_for(kafka_bootstrap, topic_prefix, views_url)
    await write_history(settings, 0, 100)
    assert await run_projector(settings, until_caught_up=True) == 600
    totals = read(views_url, lambda db, c: db.totals(c))
    assert totals["*"] == {"requests": 100, "errors": 10, "emails": 13}
    assert read(views_url, lambda db, c: db.counters(c)) == (100, 100)

    await write_history(settings, 100, 20)
    assert await run_projector(settings, until_caught_up=True) == 120  # only the new records
    assert read(views_url, lambda db, c: db.totals(c, "*"))["*"] == {
        "requests": 120,
        "errors": 12,
        "emails": 13,
    }
    newest = read(views_url, lambda db, c: db.listing(c, "requests", limit=1))[0]
    assert newest["email"] == pseudonym(settings.pseudonym_key, f"user{119 % 13}@example.org")
    job = read(views_url, lambda db, c: db.job(c, str(uuid.UUID(int=120))))
    assert (job.state, job.emailed, job.rows_done) == ("failed", True, 5)
    assert await replay.verify(settings) == 0


async def test_a_rebuild_up_to_given_positions_stops_each_partition_exactly_there(
    kafka_bootstrap: str, topic_prefix: str, views_url: str
) -> None:
    # Replay's `stop_at`: one partition stopped after a few records (and paused there) while the others are
    # read to their end, one not named at all (not read). Each ends exactly at its limit.
    settings = settings_for(kafka_bootstrap, topic_prefix, views_url)
    await write_history(settings, 0, 300)
    topics = Topics(topic_prefix)
    stop_at = await log_end_offsets(settings)
    stop_at[(topics.events, 0)] = 7
    del stop_at[(topics.events, 1)]
    assert await run_projector(settings, stop_at=stop_at) == sum(stop_at.values())
    assert read(views_url, lambda db, c: db.positions(c)) == stop_at


async def test_a_projector_killed_mid_batch_and_restarted_gives_exactly_the_same_views(
    kafka_bootstrap: str, topic_prefix: str, views_url: str, tmp_path: Path
) -> None:
    settings = settings_for(kafka_bootstrap, topic_prefix, views_url)
    jobs = 10_000
    await write_history(settings, 0, jobs)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PACKAGER_SECRET": SECRET,
        "PACKAGER_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PACKAGER_TOPIC_PREFIX": topic_prefix,
        "PACKAGER_DATABASE_URL": views_url,
    }
    kills = 0
    for _ in range(3):  # killed up to three times, each time part-way through the history
        start = await asyncio.to_thread(read_positions, views_url)
        if start >= jobs * 6:
            break
        with service(["projector"], env, tmp_path / "logs") as projector:
            deadline = time.monotonic() + 60
            while (applied := await asyncio.to_thread(read_positions, views_url)) <= start:
                assert time.monotonic() < deadline, projector.log()
                await asyncio.sleep(0.01)
            if applied < jobs * 6:
                # Part-way: SIGKILL lands wherever the projector is, a transaction open or not.
                await asyncio.sleep(0.05)
                projector.stop(sig_kill=True)
                assert projector.proc.returncode == -signal.SIGKILL
                kills += 1
    assert kills >= 1, "the projector finished before it could be killed"
    finish = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "packager", "projector", "--until-caught-up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert finish.returncode == 0, finish.stderr
    # No event lost and none applied twice: the counts are the history's, and a rebuild equals the views.
    assert read(views_url, lambda db, c: db.totals(c, "*"))["*"] == {
        "requests": jobs,
        "errors": jobs // 10,
        "emails": 13,
    }
    assert read(views_url, lambda db, c: db.counters(c)) == (jobs, jobs)
    assert await replay.verify(settings) == 0


async def test_two_projector_processes_sharing_the_log_give_the_views_one_projector_gives(
    kafka_bootstrap: str, topic_prefix: str, views_url: str, tmp_path: Path
) -> None:
    # `packager projector --processes 2`: each child folds its share of the partitions into the one
    # database; requesters and resources are common to the shares (user0..12 and res-0..6 over 50 keys).
    settings = settings_for(kafka_bootstrap, topic_prefix, views_url)
    await write_history(settings, 0, 60)
    env = {
        "PACKAGER_SECRET": SECRET,
        "PACKAGER_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PACKAGER_TOPIC_PREFIX": topic_prefix,
        "PACKAGER_DATABASE_URL": views_url,
    }
    children: list[int] = []
    try:
        with service(["projector", "--processes", "2"], env, tmp_path / "logs") as projector:
            await until_counted(views_url, (60, 60), projector)
            children = [int(pid) for pid in child_pids(projector.proc.pid)]
            assert len(children) == 2, projector.log()
            await write_history(settings, 60, 30)  # read while the shares follow the log
            await until_counted(views_url, (90, 90), projector)
            projector.stop()
            assert projector.proc.returncode == 0, projector.log()
        assert not [pid for pid in children if alive(pid)], "a share outlived the command"
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert read(views_url, lambda db, c: db.totals(c, "*"))["*"] == {
        "requests": 90,
        "errors": 9,
        "emails": 13,
    }
    assert await replay.verify(settings) == 0  # one projector's rebuild, compared row by row


async def test_shares_that_find_the_views_from_another_log_drop_them_once(
    kafka_bootstrap: str, topic_prefix: str, views_url: str
) -> None:
    settings = settings_for(kafka_bootstrap, topic_prefix, views_url)
    await write_history(settings, 0, 30)
    await run_projector(settings, until_caught_up=True)
    db = ViewDatabase(views_url)
    built = orjson.loads(read(views_url, lambda db, c: db.meta(c, LOG_IDENTITY)))
    other = orjson.dumps({**built, "cluster_id": "another-cluster"}, option=orjson.OPT_SORT_KEYS).decode()
    read(views_url, lambda db, c: db.set_meta(c, LOG_IDENTITY, other))  # as if the broker had been wiped
    progress = [Progress(), Progress()]
    await asyncio.gather(
        *(
            run_projector(settings, until_caught_up=True, share=Share(i, 2), progress=progress[i])
            for i in (0, 1)
        )
    )
    assert sum(p.rebuilds for p in progress) == 1  # the first share dropped them, the other did not again
    assert read(views_url, lambda db, c: db.totals(c, "*"))["*"]["requests"] == 30
    assert await replay.verify(settings) == 0

    # The check and the drop in one write transaction: a share that decided on the other log's views, and
    # comes to drop them after another share has rebuilt them for this log, leaves them.
    now = read(views_url, lambda db, c: db.meta(c, LOG_IDENTITY))
    positions = read(views_url, lambda db, c: db.positions(c))
    assert positions and db.reset(now) is False
    assert read(views_url, lambda db, c: db.positions(c)) == positions
    assert db.reset(other) is True  # views of another log than the one named: dropped
    assert read(views_url, lambda db, c: (db.positions(c), db.meta(c, LOG_IDENTITY))) == ({}, other)


async def test_verify_says_what_a_share_not_running_left_unfolded(
    kafka_bootstrap: str, topic_prefix: str, views_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(kafka_bootstrap, topic_prefix, views_url)
    await write_history(settings, 0, 30)
    await run_projector(settings, until_caught_up=True, share=Share.parse("1/2"))
    assert await replay.verify(settings) == 0  # what the views hold is right...
    out = capsys.readouterr().out
    assert "identical" in out and "note: the live views have not folded" in out, out  # ...and it is not all
    await run_projector(settings, until_caught_up=True, share=Share.parse("2/2"))
    assert await replay.verify(settings) == 0
    assert "note:" not in capsys.readouterr().out


def child_pids(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


async def until_counted(url: str, expected: tuple[int, int], running: ServiceProcess) -> None:
    """Wait until the views at `url` count `expected` (accepted, finished) jobs, while `running` runs."""
    deadline = time.monotonic() + 60
    while await asyncio.to_thread(read_counters, url) != expected:
        assert running.proc.poll() is None, running.log()
        assert time.monotonic() < deadline, f"the views never counted {expected} jobs:\n{running.log()}"
        await asyncio.sleep(0.2)


async def test_a_following_projector_reads_partitions_added_while_it_runs(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'views.sqlite3'}"
    settings = load_settings(
        {},
        secret=SECRET,
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        partitions=1,
        database_url=url,
    )
    await write_history(settings, 0, 20)
    following = asyncio.create_task(run_projector(settings))
    try:
        await counted(url, (20, 20), following)
        # An operator adds partitions (kafka-topics --alter); new jobs' keys land on all three.
        topics = Topics(topic_prefix)
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_partitions({t: NewPartitions(3) for t in (topics.requests, topics.events)})
        finally:
            await admin.close()
        await write_history(settings, 20, 30)
        await counted(url, (50, 50), following)
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following


async def test_a_following_projector_whose_views_are_dropped_under_it_folds_the_whole_log_again(
    kafka_bootstrap: str, topic_prefix: str, views_url: str
) -> None:
    settings = settings_for(kafka_bootstrap, topic_prefix, views_url)
    await write_history(settings, 0, 20)
    following = asyncio.create_task(run_projector(settings))
    try:
        await counted(views_url, (20, 20), following)
        # Another projector (a newer version, say) drops the views to rebuild them; before it has folded
        # anything, more jobs arrive. Folding them from where this projector had read would leave the
        # first 20 jobs out of the views for good.
        await asyncio.to_thread(ViewDatabase(views_url).reset)
        await write_history(settings, 20, 30)
        await counted(views_url, (50, 50), following)
        assert read(views_url, lambda db, c: db.totals(c, "*"))["*"]["requests"] == 50
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
    assert await replay.verify(settings) == 0


async def counted(url: str, expected: tuple[int, int], following: asyncio.Task[int]) -> None:
    """Wait until the views at `url` count `expected` (accepted, finished) jobs, while `following` runs."""
    deadline = time.monotonic() + 60
    while await asyncio.to_thread(read_counters, url) != expected:
        assert not following.done(), following
        assert time.monotonic() < deadline, f"the views never counted {expected} jobs"
        await asyncio.sleep(0.2)


def read_counters(url: str) -> tuple[int, int] | None:
    try:
        return read(url, lambda db, c: db.counters(c))
    except Exception:  # the projector has not created the tables yet
        return None


def read_positions(url: str) -> int:
    try:
        return sum(read(url, lambda db, c: db.positions(c)).values())
    except Exception:  # the projector has not created the tables yet
        return 0


async def test_replay_verify_catches_a_row_changed_by_hand_and_rebuild_makes_a_copy(
    kafka_bootstrap: str,
    topic_prefix: str,
    views_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = settings_for(kafka_bootstrap, topic_prefix, views_url)
    await write_history(settings, 0, 30)
    await run_projector(settings, until_caught_up=True)
    assert await replay.verify(settings) == 0
    capsys.readouterr()
    # Statistics as they stood at a moment: jobs 0 to 19 were requested by then, 9 and 19 had failed.
    assert await replay.stats_until(settings, "2026-11-26T10:00:01.999Z") == 0
    then = orjson.loads(capsys.readouterr().out)
    assert then["totals"]["*"] == {"requests": 20, "errors": 2, "emails": 13}

    def tamper(db: ViewDatabase, conn: Any) -> None:
        conn.execute(
            "UPDATE jobs SET state = 'completed' WHERE job_id = ?".replace("?", db.mark),
            (str(uuid.UUID(int=10)),),
        )

    read(views_url, tamper)
    assert await replay.verify(settings) == 1
    out = capsys.readouterr()
    assert f"jobs job_id='{uuid.UUID(int=10)}': state live 'completed' != rebuilt 'failed'" in out.out
    assert "DIFFERENT" in out.out

    copy = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    assert await replay.rebuild_copy(settings, copy) == 0
    assert read(copy, lambda db, c: db.job(c, str(uuid.UUID(int=10)))).state == "failed"
    assert read(copy, lambda db, c: db.totals(c)) == read(views_url, lambda db, c: db.totals(c))
    assert await replay.rebuild_copy(settings, views_url) == 2  # never over the live views


async def test_two_ingress_processes_on_one_postgresql_answer_alike(
    kafka_bootstrap: str, topic_prefix: str, postgres_server: str, service_env: dict[str, str], tmp_path: Path
) -> None:
    url = postgres_server  # the server's own database: shared by the projector and both ingresses
    settings = settings_for(kafka_bootstrap, topic_prefix, url)
    await asyncio.to_thread(ViewDatabase(url).reset)
    await write_history(settings, 0, 40)
    ports = [int(service_env["PACKAGER_PORT"]), free_port_of(service_env)]
    env = {**service_env, "PACKAGER_DATABASE_URL": url, "PACKAGER_PARTITIONS": "3"}
    logs = tmp_path / "logs"
    with (
        service(["projector"], env, logs),
        service(["ingress"], {**env, "PACKAGER_PORT": str(ports[0])}, logs),
        service(["ingress"], {**env, "PACKAGER_PORT": str(ports[1])}, logs),
    ):
        for port in ports:
            wait_for_port(port)
        deadline = time.monotonic() + 60
        while (await answers(ports[0]))["status"].get("processed_requests") != 40:
            assert time.monotonic() < deadline, "the projector never folded the history"
            await asyncio.sleep(0.3)
        first, second = await answers(ports[0]), await answers(ports[1])
    assert first == second
    assert first["totals"]["*"] == {"requests": 40, "errors": 4, "emails": 13}
    assert first["job"]["state"] == "failed" and len(first["requests"]) == 5


def free_port_of(env: dict[str, str]) -> int:
    from packager.dev.kafka import free_port

    port = free_port()
    while str(port) == env["PACKAGER_PORT"]:
        port = free_port()
    return port


async def answers(port: int) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession() as http:
        for name, path, params in (
            ("status", "/status", {}),
            ("totals", "/statistics", {}),
            ("requests", "/statistics/requests", {"limit": "5", "offset": "3"}),
            ("errors", "/statistics/errors", {"resource_id": "res-2"}),
        ):
            async with http.post(base + path, data={"secret": SECRET, **params}) as resp:
                out[name] = await resp.json() if resp.status == 200 else {"status": resp.status}
        out["totals"] = out["totals"].get("totals", {})
        out["requests"] = out["requests"].get("requests", [])
        async with http.get(f"{base}/jobs/{uuid.UUID(int=10)}") as resp:
            out["job"] = await resp.json()
    return out
