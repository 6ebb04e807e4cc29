"""Projector throughput: how fast the log is folded into a fresh views database (the replay tool's rebuild).

    python -m benchmarks.replay --events 1000000 --bootstrap 127.0.0.1:9092 [--database-url URL]

Writes a synthetic history (jobs of six events each: requested, queued, started, progress, completed or
failed, emailed; several requesters and resources) under a fresh topic prefix, then times the projector
(`packager.adapters.projector.run_projector --until-caught-up`) folding it into a fresh SQLite file (or
the empty database `--database-url` names: its views are dropped first). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer

from packager.adapters.kafka_log import Topics, ensure_topics
from packager.adapters.projector import run_projector
from packager.adapters.viewdb import ViewDatabase
from packager.core.settings import load_settings
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

PER_JOB = 6


def job_events(n: int) -> list[tuple[str, bytes, bytes]]:
    """The six records of job number `n`: (topic suffix, key, value)."""
    job_id = str(uuid.UUID(int=n))
    key = f"ck{n % 5000}"
    resource_id = f"res-{n % 200}"
    email = f"user{n % 3000}@example.org"
    records = [
        (
            "requests",
            PackageRequested(
                kind="datastore",
                cache_key=key,
                resource_id=resource_id,
                email=email,
                ckan_host="data.example.org",
                request={"resource_id": resource_id},
            ),
        ),
        ("events", PackageQueued(cache_key=key, lane="fast", attempt=1)),
        ("events", PackageStarted(cache_key=key, lane="fast", worker="w1", attempt=1, lease_until="")),
        (
            "events",
            PackageProgress(
                cache_key=key, rows_done=500, rows_total=1000, bytes_done=9000, bytes_total=None, attempt=1
            ),
        ),
    ]
    if n % 10 == 9:
        records.append(
            (
                "events",
                PackageFailed(
                    cache_key=key,
                    resource_id=resource_id,
                    email=email,
                    ckan_host="data.example.org",
                    error="CKAN refused the query",
                    error_type="CkanError",
                ),
            )
        )
        about = "PackageFailed"
    else:
        records.append(
            (
                "events",
                PackageCompleted(
                    cache_key=key,
                    resource_id=resource_id,
                    email=email,
                    ckan_host="data.example.org",
                    doi="",
                    lane="fast",
                    zip_file_name=f"{job_id}.zip",
                    size=123456,
                    sha256="0" * 64,
                    rows=1000,
                    started_at="2026-11-26T00:00:00.000Z",
                    finished_at="2026-11-26T00:00:01.000Z",
                ),
            )
        )
        about = "PackageCompleted"
    records.append(("events", EmailSent(cache_key=key, about=about, message_id="<m@x>", attempts=1)))
    return [(topic, key.encode(), encode(envelope(job_id, payload))) for topic, payload in records]


_JOBS_AT_ONCE = 200


async def produce(bootstrap: str, topics: Topics, events: int, partitions: int) -> float:
    """Write the history; returns seconds taken."""
    await ensure_topics(bootstrap, topics, partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=1_048_576, compression_type=None
    )
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        jobs = events // PER_JOB
        for first in range(0, jobs, _JOBS_AT_ONCE):
            made = [job_events(n) for n in range(first, min(first + _JOBS_AT_ONCE, jobs))]
            # The requests first, stored before their jobs' events are sent, as in the service (the worker
            # acts on a request it read): the requests topic keeps the broker's append time, the events
            # topic the sender's, and a projector reading the two in step by time meets each job whole.
            records = [record for job in made for record in job]
            requests = [
                await producer.send(topics.requests, value=v, key=k) for s, k, v in records if s == "requests"
            ]
            await asyncio.gather(*requests)
            for suffix, key, value in records:
                if suffix != "requests":
                    pending.append(await producer.send(topics.events, value=value, key=key))
            if len(pending) > 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main() -> None:
    """Produce, then replay and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--database-url", default="", help="default: a fresh SQLite file")
    args = parser.parse_args()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        {}, kafka_bootstrap_servers=args.bootstrap, topic_prefix=prefix, partitions=args.partitions
    )
    produce_seconds = await produce(args.bootstrap, Topics(prefix), args.events, args.partitions)
    with tempfile.TemporaryDirectory() as scratch:
        url = args.database_url or f"sqlite:///{Path(scratch) / 'views.sqlite3'}"
        db = ViewDatabase(url)
        await asyncio.to_thread(db.reset)
        started, cpu = time.perf_counter(), _cpu_seconds()
        folded = await run_projector(settings, until_caught_up=True, url=url)
        seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
        conn = db.connect()
        try:
            jobs = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
            totals = db.totals(conn, "*")["*"]
        finally:
            conn.close()
    print(
        json.dumps(
            {
                "events": folded,
                "jobs": jobs,
                "database": db.dialect,
                "projector_seconds": round(seconds, 2),
                "events_per_s": round(folded / seconds),
                # Per second of this process's CPU (all threads): what the rate would be on an idle core.
                "events_per_cpu_s": round(folded / cpu),
                "produce_seconds": round(produce_seconds, 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "totals_all": totals,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
