"""The chaos campaign in its quick form: every fault kind thrown at the real stack, nothing lost or doubled.

The multi-node test of issue 17: it starts its own 3-node cluster (replication 3, min.insync.replicas=2),
2 ingresses, 3 workers, SMTP and CKAN servers and the S3 store (an s3proxy bucket; each process keeps only its
partial files on its own disk), see `benchmarks/chaos.py`, and runs for at most 5 minutes: jobs spread over
the 3 workers, any ingress serves any download, and no kill (of a worker or of a broker) loses a request.
It is part of the default run (so of CI); `-m 'not chaos'` leaves it out. A failing run keeps its folder
(logs, the bucket's objects) and names it in the report's `details.kept`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from benchmarks.chaos import FAULT_KINDS
from tests.integration.support import ROOT

pytestmark = pytest.mark.chaos


def run_campaign(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run `benchmarks.chaos` to its end; stopped any other way, it is asked to stop its stack first.

    `subprocess.run` would SIGKILL the campaign on a timeout or a Ctrl-C, leaving its brokers, workers and
    servers running; SIGTERM makes it stop everything it started on the way out.
    """
    command = [sys.executable, "-m", "benchmarks.chaos", *args]
    pipe = subprocess.PIPE
    with subprocess.Popen(command, cwd=ROOT, stdout=pipe, stderr=pipe, text=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            raise
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def test_quick_campaign_on_s3_loses_no_job_and_ends_none_twice() -> None:
    # The campaign keeps to 5 minutes; the margin covers a slow start of the JVMs on a loaded machine.
    done = run_campaign(["--quick", "--json", "--store", "s3"], timeout=480)
    assert done.stdout.strip(), f"no report (exit {done.returncode}):\n{done.stderr[-5000:]}"
    result = json.loads(done.stdout)
    summary = {k: v for k, v in result.items() if k != "details"}
    details = json.dumps(result["details"], indent=1)[:8000]
    print(json.dumps(summary))  # the run's figures, shown by `pytest -rP` on a pass
    assert result["accepted"] >= 150, summary
    assert {kind: n for kind, n in result["faults"].items() if n < 1} == {}, summary
    assert set(result["faults"]) == set(FAULT_KINDS)
    assert result["lost"] == 0, f"{summary}\n{details}"
    assert result["duplicate_terminal"] == 0, f"{summary}\n{details}"
    assert result["terminal_once"] == result["accepted"]
    assert result["zip_ok"] is True, f"{summary}\n{details}"
    assert result["downloads_ok"] is True, f"{summary}\n{details}"  # any ingress serves any download
    assert result["store"] == "s3"
    # Jobs spread over the workers: each of the 3 built some (a restarted worker keeps its name).
    spread = result["jobs_per_worker"]
    assert sorted(spread) == ["worker-1", "worker-2", "worker-3"], summary
    assert min(spread.values()) >= 1, summary
    assert done.returncode == 0, done.stderr[-3000:]
