"""The chaos campaign's count of jobs per worker: the worker whose build became the job's terminal event."""

from __future__ import annotations

from benchmarks.chaos_check import jobs_per_worker
from packager.domain.events import Envelope, PackageBuilt, PackageFailed, envelope


def built(job_id: str, worker: str, attempt: int = 1) -> Envelope:
    return envelope(job_id, PackageBuilt("ck", attempt, worker, "PackageFailed", {}))


def failed(job_id: str) -> Envelope:
    return envelope(job_id, PackageFailed("ck", "res", "a@example.org", "h", "boom", "CkanError"))


NAMES = {101: "worker-1", 102: "worker-2", 202: "worker-2", 103: "worker-3"}


def test_each_job_counts_for_the_worker_whose_build_ended_it() -> None:
    events = [
        built("a", "host:101"),
        failed("a"),
        built("b", "host:102"),  # its builder lost the lease: attempt 2 on worker-3 ended the job
        built("b", "host:103", attempt=2),
        failed("b"),
        built("c", "host:202"),  # worker-2 after a restart: a new pid, the same worker
        failed("c"),
    ]
    assert jobs_per_worker(["a", "b", "c"], events, NAMES) == {"worker-1": 1, "worker-2": 1, "worker-3": 1}


def test_a_build_after_the_terminal_event_and_jobs_without_a_build_count_for_no_worker() -> None:
    events = [
        built("a", "host:101"),
        failed("a"),
        built("a", "host:103", attempt=2),  # a late duplicate build: the job had already ended
        failed("cache-hit"),  # ended without a build of its own
        built("unfinished", "host:102"),
        built("not-accepted", "host:102"),
        failed("not-accepted"),
    ]
    counts = jobs_per_worker(["a", "cache-hit", "unfinished"], events, NAMES)
    assert counts == {"worker-1": 1, "worker-2": 0, "worker-3": 0}  # every worker named, idle ones too


def test_a_pid_no_worker_ran_under_is_counted_as_unknown() -> None:
    events = [built("a", "elsewhere:999"), failed("a"), built("b", "no-pid"), failed("b")]
    assert jobs_per_worker(["a", "b"], events, {101: "worker-1"}) == {"worker-1": 0, "unknown": 2}
