"""The builds one worker runs for one lane: several at once, in the background, and drained on stop.

A packer agent hands each lane record to `BuildPool.start`, which waits for a free slot
(WORKER_CONCURRENCY), takes the job's lease (PackageStarted) and returns: the build goes on in a task of
its own while the agent reads on, so a build waiting on a slow portal holds one slot, not the lane. Since
the lease is in the log before the agent moves past the record, the job is never left to the record's
consumer offset alone (see `streams.leases`).

On SIGTERM/SIGINT the worker calls `drain`: no new build starts, running ones get DRAIN_TIMEOUT to finish,
and those still running then are cancelled (their partial files removed) and released with
`PackageReleased`, so that the job's steward dispatches them again at once rather than at lease expiry.

A cancelled job's build is stopped with `stop` (its partial files removed, nothing appended: the job has
ended), and a lane record of a job known to be cancelled is skipped (see `streams.build_stops`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Container
from dataclasses import asdict

import aiohttp

from packager.adapters import metrics
from packager.core.logs import bind_job
from packager.domain.events import Envelope, Event, PackageBuilt, PackageReleased
from packager.service.packaging import Build, JobContext
from streams.cache import remove_zip

log = logging.getLogger(__name__)

Emit = Callable[[Envelope, Event], Awaitable[None]]
MakeContext = Callable[[aiohttp.ClientSession, Envelope, int], JobContext]


class BuildPool:
    """Up to `capacity` builds of one lane at once, each announcing its outcome with `PackageBuilt`."""

    def __init__(
        self,
        lane: str,
        capacity: int,
        drain_timeout: float,
        worker: str,
        emit: Emit,
        make_context: MakeContext,
        open_session: Callable[[], aiohttp.ClientSession],
        cancelled: Container[str] = frozenset(),
    ) -> None:
        self.lane = lane
        self.worker = worker
        self.drain_timeout = drain_timeout
        self._emit = emit
        self._make_context = make_context
        self._open_session = open_session
        self._slots = asyncio.Semaphore(capacity)
        self._running: dict[asyncio.Task[None], tuple[Envelope, int]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._stopped: set[asyncio.Task[None]] = set()  # builds of cancelled jobs, being stopped
        self.cancelled = cancelled  # ids of jobs known to be cancelled: their records are skipped
        self.draining = False

    @property
    def running(self) -> int:
        """Builds in progress now."""
        return len(self._running)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[BuildPool]:
        """Open the HTTP session the builds share; on exit, release what still runs and close it."""
        self._session = self._open_session()
        try:
            yield self
        finally:
            await self._release_all("the worker stopped")
            await self._session.close()
            self._session = None

    async def start(self, request: Envelope, attempt: int) -> None:
        """Take a slot and the job's lease, then build in the background. Blocks while the pool is full.

        Once draining, the record in hand is released (so its job is dispatched again) and this call
        never returns: the agent must not take more work, and its record is safe in the log either way.
        """
        if self._was_cancelled(request):
            return
        if not self.draining:
            await self._slots.acquire()
            if self._was_cancelled(request):  # while it waited for a slot
                self._slots.release()
                return
            if not self.draining:
                await self._begin(request, attempt)
                return
            self._slots.release()
        await self._emit(request, self._released(request, attempt, "the worker is stopping"))
        await asyncio.Event().wait()  # until the agent is cancelled

    def _was_cancelled(self, request: Envelope) -> bool:
        if request.job_id not in self.cancelled:
            return False
        log.info("the job was cancelled: its build is not started", extra={"job_id": request.job_id})
        return True

    async def _begin(self, request: Envelope, attempt: int) -> None:
        assert self._session is not None, "start() outside serving()"
        build = Build(request, self.lane, self._make_context(self._session, request, attempt))
        try:
            await build.start()
        except BaseException:
            self._slots.release()
            raise
        task = asyncio.create_task(self._run(build, request, attempt), name=f"build {request.job_id}")
        self._running[task] = (request, attempt)
        task.add_done_callback(self._finished)

    async def _run(self, build: Build, request: Envelope, attempt: int) -> None:
        bind_job(request.job_id)
        outcome = await metrics.observed_job(self.lane, build.run())
        proposal = PackageBuilt(
            cache_key=request.cache_key,
            attempt=attempt,
            worker=self.worker,
            outcome=outcome.TYPE,
            result=asdict(outcome),
        )
        try:
            await self._emit(request, proposal)
        except asyncio.CancelledError:
            # Stopped (its job was cancelled) with its ZIP already in the store: a proposal not appended
            # names it to no one, and nothing else would remove it (one appended is dropped by the steward,
            # which removes it too: removing twice is harmless).
            name = getattr(outcome, "zip_file_name", "")
            if name and asyncio.current_task() in self._stopped:
                await remove_zip(build.ctx.store, name)
            raise

    def stop(self, job_id: str) -> int:
        """Stop the builds of a cancelled job now; their partial files go as they unwind. How many ran."""
        found = [task for task, (request, _) in self._running.items() if request.job_id == job_id]
        for task in found:
            self._stopped.add(task)
            task.cancel()
        return len(found)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._stopped.discard(task)
        self._slots.release()
        if not task.cancelled() and (exc := task.exception()) is not None:
            # The outcome could not be recorded (the broker stayed away): the lease runs out and the job
            # is built again elsewhere.
            log.error("build outcome not recorded: %r", exc)

    async def drain(self) -> None:
        """Stop taking builds; let running ones finish within DRAIN_TIMEOUT; release the rest."""
        self.draining = True
        if self._running:
            log.info(
                "draining %d %s build(s) for up to %.0fs", len(self._running), self.lane, self.drain_timeout
            )
            await asyncio.wait(list(self._running), timeout=self.drain_timeout)
        await self._release_all(f"not finished within DRAIN_TIMEOUT ({self.drain_timeout:.0f}s)")

    async def _release_all(self, reason: str) -> None:
        self.draining = True
        unfinished = {task: job for task, job in self._running.items() if task not in self._stopped}
        for task in unfinished:
            task.cancel()
        for task, (request, attempt) in unfinished.items():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            try:
                await self._emit(request, self._released(request, attempt, reason))
            except Exception as exc:  # the lease runs out instead
                log.warning("could not release build %s: %r", request.job_id, exc)
            else:
                log.warning("build released: %s", reason, extra={"job_id": request.job_id})

    def _released(self, request: Envelope, attempt: int, reason: str) -> PackageReleased:
        return PackageReleased(
            cache_key=request.cache_key, attempt=attempt, worker=self.worker, reason=reason
        )
