"""`packager dev kafka`: `stop` keeps the broker's data and `start` resumes it; `--wipe` starts empty."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from aiokafka import AIOKafkaProducer

from packager.dev import kafka as dev_kafka
from tests.integration.support import ROOT, read_topic


def dev_kafka_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `packager dev kafka ARGS` as a user would (its own process)."""
    return subprocess.run(
        [sys.executable, "-m", "packager", "dev", "kafka", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
        check=False,
    )


async def produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def test_stop_keeps_the_data_start_resumes_it_and_wipe_starts_empty(tmp_path: Path) -> None:
    state = str(tmp_path / "kafka")
    try:
        started = await asyncio.to_thread(dev_kafka_cli, "start", "--state-dir", state)
        assert started.returncode == 0, started.stderr
        bootstrap = started.stdout.strip()
        await produce(bootstrap, "kept", b"record 1")

        stopped = await asyncio.to_thread(dev_kafka_cli, "stop", "--state-dir", state)
        assert stopped.returncode == 0 and "data is kept" in stopped.stdout, stopped
        status = await asyncio.to_thread(dev_kafka_cli, "status", "--state-dir", state)
        assert status.returncode == 1 and "data kept" in status.stdout

        resumed = await asyncio.to_thread(dev_kafka_cli, "start", "--state-dir", state)
        assert resumed.returncode == 0, resumed.stderr
        assert resumed.stdout.strip() == bootstrap  # same address: clients reconnect by themselves
        assert await read_topic(bootstrap, "kept") == [(None, b"record 1")]

        wiped = await asyncio.to_thread(dev_kafka_cli, "stop", "--wipe", "--state-dir", state)
        assert wiped.returncode == 0 and "data removed" in wiped.stdout, wiped
        fresh = await asyncio.to_thread(dev_kafka_cli, "start", "--state-dir", state)
        assert fresh.returncode == 0, fresh.stderr
        assert fresh.stdout.strip() == bootstrap  # a wiped broker comes back on the same port, empty
        assert await read_topic(bootstrap, "kept") == []
    finally:
        await asyncio.to_thread(dev_kafka_cli, "stop", "--wipe", "--state-dir", state)
    assert dev_kafka.status(Path(state)) is None
