"""Example downstream consumer: a running summary of the analytics topic, in its own consumer group.

    python examples/analytics_summary.py --bootstrap 127.0.0.1:9092 [--prefix packager] [--max-seconds N]

Prints one line every few seconds: events by type, jobs completed and failed, distinct requesters and the
busiest requester domains. Records are deduplicated by `event_id` (delivery is at least once).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter

import orjson
from aiokafka import AIOKafkaConsumer


async def summarise(bootstrap: str, prefix: str, max_seconds: float | None, every: float) -> Counter[str]:
    """Consume until stopped (or `max_seconds`), printing the running summary; returns the type counts."""
    consumer = AIOKafkaConsumer(
        f"{prefix}.analytics",
        bootstrap_servers=bootstrap,
        group_id=f"{prefix}-analytics-example",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    seen: set[str] = set()
    types: Counter[str] = Counter()
    domains: Counter[str] = Counter()
    requesters: set[str] = set()
    started = last_print = time.monotonic()
    try:
        while max_seconds is None or time.monotonic() - started < max_seconds:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    event = orjson.loads(record.value)
                    if event["event_id"] in seen:
                        continue
                    seen.add(event["event_id"])
                    types[event["type"]] += 1
                    payload = event["payload"]
                    if event["type"] == "PackageRequested":
                        requesters.add(payload["requester"])
                        domains[payload["requester_domain"]] += 1
            if time.monotonic() - last_print >= every:
                last_print = time.monotonic()
                print(line(types, requesters, domains), flush=True)
        print(line(types, requesters, domains), flush=True)
    finally:
        await consumer.stop()
    return types


def line(types: Counter[str], requesters: set[str], domains: Counter[str]) -> str:
    """One summary line."""
    top = ", ".join(f"{d} {n}" for d, n in domains.most_common(3)) or "-"
    return (
        f"requests {types['PackageRequested']}  completed {types['PackageCompleted']}  "
        f"failed {types['PackageFailed']}  emails {types['EmailSent']}  requesters {len(requesters)}  "
        f"top domains: {top}"
    )


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", default="packager")
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--every", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(summarise(args.bootstrap, args.prefix, args.max_seconds, args.every))


if __name__ == "__main__":
    main()
