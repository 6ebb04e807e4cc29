"""The nemesis of the chaos campaign: which faults exist, and how each is injected and healed.

Two lanes run side by side: process faults (`sigterm`, `kill9`, `sigstop` of a worker, `broker_kill` of the
node leading most partitions of the requests topic) one at a time, so at most one worker or one node is down
at once; and effect faults (`smtp_outage`, `ckan_5xx`). Each lane first injects every kind once in a random
order, then random kinds until the client stops. Every fault heals itself (in a `finally`, so also when the
campaign is interrupted), and `heal()` puts back whatever an interruption left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from packager.adapters.kafka_log import Topics
from packager.dev import kafka as dev_kafka

from .chaos_stack import Proc, Stack, blocking, log

FAULT_KINDS = ("sigterm", "kill9", "sigstop", "broker_kill", "smtp_outage", "ckan_5xx")
PROCESS_FAULTS = ("sigterm", "kill9", "sigstop", "broker_kill")
EFFECT_FAULTS = ("smtp_outage", "ckan_5xx")
SMTP_OUTAGE = 30.0


@dataclass
class Plan:
    """How long and how hard a campaign runs."""

    duration: float  # seconds the client submits for
    jobs: int  # submissions spread over `duration`
    drain: float  # seconds to wait for outstanding jobs afterwards
    quick: bool
    seed: int
    gap: tuple[float, float]  # seconds between two faults of one nemesis lane


@dataclass
class Nemesis:
    """Injects faults at random; every fault heals itself before the next of its lane starts."""

    stack: Stack
    rng: random.Random
    plan: Plan
    # Worker pid -> builds it has started and not ended, from the events read so far.
    building: Callable[[], Counter[int]]
    counts: Counter[str] = field(default_factory=Counter)
    record: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    async def run(self, stop_at: float) -> None:
        """Run both lanes: each kind once in a random order, then random kinds until `stop_at`."""
        await asyncio.gather(self._lane(PROCESS_FAULTS, stop_at), self._lane(EFFECT_FAULTS, stop_at))

    async def _lane(self, kinds: tuple[str, ...], stop_at: float) -> None:
        first_round = list(kinds)
        self.rng.shuffle(first_round)
        await asyncio.sleep(self.rng.uniform(*self.plan.gap))
        while first_round or time.monotonic() + 40 < stop_at:
            kind = first_round.pop() if first_round else self.rng.choice(kinds)
            began = time.monotonic()
            try:
                detail = await self._inject(kind)
            except Exception as exc:  # recorded, not counted: the campaign goes on
                detail = f"NOT injected: {exc!r}"
            else:
                self.counts[kind] += 1
            self.record.append(
                {
                    "kind": kind,
                    "at_s": round(began - self.started, 1),
                    "took_s": round(time.monotonic() - began, 1),
                    "detail": detail,
                }
            )
            log(f"fault {kind}: {detail} ({time.monotonic() - began:.1f}s)")
            await asyncio.sleep(self.rng.uniform(*self.plan.gap))

    async def _worker(self) -> tuple[Proc, int]:
        """A live worker: three times in four one seen building something (waiting up to 10 s for one: the
        faults that matter hit work in progress), else any. Returns it and how many builds it holds."""
        want_busy = self.rng.random() < 0.75
        deadline = time.monotonic() + 10
        while True:
            live = [w for w in self.stack.workers if w.alive() and not w.stopped]
            holding = self.building()
            busy = [w for w in live if holding.get(w.pid)]
            if busy or not want_busy or time.monotonic() > deadline:
                worker = self.rng.choice(busy or live)
                return worker, holding.get(worker.pid, 0)
            await asyncio.sleep(0.1)

    async def _inject(self, kind: str) -> str:
        stack, c = self.stack, self.stack.config
        if kind == "sigterm":
            w, held_jobs = await self._worker()
            w.signal(signal.SIGTERM)
            ended = await w.wait_exit(c.drain_timeout + 30)
            if not ended:
                w.signal(signal.SIGKILL)
                await w.wait_exit(10)
            await stack.restart_worker(w)
            return f"{w.name} ({held_jobs} builds) {'exited' if ended else 'did not exit; killed'}, restarted"
        if kind == "kill9":
            w, held_jobs = await self._worker()
            w.signal(signal.SIGKILL)
            await w.wait_exit(10)
            await asyncio.sleep(self.rng.uniform(1, 5))
            await stack.restart_worker(w)
            return f"{w.name} ({held_jobs} builds) killed, restarted"
        if kind == "sigstop":
            w, held_jobs = await self._worker()
            held = c.session_timeout + self.rng.uniform(3, 8)
            w.signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(held)
            finally:
                w.signal(signal.SIGCONT)
            return f"{w.name} ({held_jobs} builds) stopped {held:.1f}s"
        if kind == "broker_kill":
            node = await blocking(stack.requests_leader, Topics(stack.prefix).requests)
            await blocking(dev_kafka.kill_node, stack.kafka_dir, node)
            down = self.rng.uniform(8, 15) if self.plan.quick else self.rng.uniform(10, 40)
            try:
                await asyncio.sleep(down)
            finally:
                await blocking(dev_kafka.restart_node, stack.kafka_dir, node)
            return f"node {node} (leading the requests topic) down {down:.1f}s"
        if kind == "smtp_outage":
            stack.smtp.stop()
            try:
                await asyncio.sleep(SMTP_OUTAGE)
            finally:
                stack.smtp.start()
            return f"SMTP down {SMTP_OUTAGE:.0f}s"
        if kind == "ckan_5xx":
            burst = self.rng.uniform(6, 12) if self.plan.quick else self.rng.uniform(5, 30)
            await stack.set_ckan_faults(error_rate=0.6, seed=self.rng.randrange(10**6))
            try:
                await asyncio.sleep(burst)
            finally:
                await stack.set_ckan_faults()
            return f"CKAN 5xx on 60% of calls for {burst:.1f}s"
        raise ValueError(kind)


async def heal(stack: Stack) -> None:
    """Undo whatever a fault interrupted left behind: every process up, SMTP and CKAN healthy."""
    stack.smtp.start()
    with contextlib.suppress(Exception):
        await stack.set_ckan_faults()
    cluster = dev_kafka.cluster_status(stack.kafka_dir)
    for node in cluster.nodes if cluster else ():
        await blocking(dev_kafka.restart_node, stack.kafka_dir, node.node_id)  # no-op when it runs
    for w in stack.workers:
        w.signal(signal.SIGCONT)
        if not w.alive():
            await stack.restart_worker(w)
