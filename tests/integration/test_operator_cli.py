"""The `ckanpackager` operator command against the running service (ingress and worker as processes).

Every verb is run as an operator would, as a separate process: status, clear-cache and cc, stats totals,
requests and errors with their options, erase, queue (with a defaults file, and with --watch), watch on a job
that completes and on one that fails, the replay pass-through, and the errors an operator meets: nothing
listening, a wrong secret, an unknown task, a malformed PARAM:VALUE, a parameter the service requires.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from packager.dev.kafka import free_port
from packager.domain.requesters import pseudonym
from tests.integration.conftest import SECRET
from tests.integration.support import ROOT, SmtpSink, service, wait_for_port

pytestmark = pytest.mark.kafka


@dataclass
class Run:
    """A finished `ckanpackager` process."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def ckanpackager(*argv: str, env: dict[str, str] | None = None) -> Run:
    """Run `python -m packager.cli.operator ARGV` from this checkout, without blocking the test's servers."""
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    full_env.pop("CKANPACKAGER_SECRET", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "packager.cli.operator",
        *argv,
        env=full_env,
        cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"ckanpackager {' '.join(argv)} did not finish")
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def one_error_line(run: Run) -> str:
    """The single line a failing command printed on stderr (and no traceback)."""
    assert "Traceback" not in run.err, run.err
    lines = run.err.splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("ckanpackager: ")
    return lines[0]


async def test_nothing_listening_is_one_line_and_exit_1() -> None:
    port = free_port()
    run = await ckanpackager("-D", "-p", f"http://127.0.0.1:{port}", "-s", SECRET, "status")
    assert run.code == 1
    assert one_error_line(run) == (
        f"ckanpackager: cannot reach the service at http://127.0.0.1:{port}: Connection refused"
    )


async def test_every_verb_against_the_running_service(
    service_env: dict[str, str],
    smtp: SmtpSink,
    file_server: tuple[str, Path],
    store_dir: Path,
    tmp_path: Path,
) -> None:
    base_url, folder = file_server
    (folder / "specimens.csv").write_bytes(b"id,name\n" + b"1,Quercus robur\n" * 50_000)
    port = int(service_env["PACKAGER_PORT"])
    host = f"http://127.0.0.1:{port}"
    defaults = tmp_path / "ckanpackager-cli.json"
    defaults.write_text(json.dumps({"host": host, "secret": SECRET, "email": "ops@example.org"}))
    d = ("-d", str(defaults))

    with (
        service(["worker"], service_env, tmp_path / "logs") as worker,
        service(["projector"], service_env, tmp_path / "logs"),
        service(["ingress"], service_env, tmp_path / "logs") as ingress,
    ):
        wait_for_port(port)

        # queue with the defaults file (host, secret, email), then watch the job to its end.
        run = await ckanpackager(
            *d,
            "--json",
            "queue",
            "package_url",
            "resource_id:res-cli",
            f"resource_url:{base_url}/specimens.csv",
        )
        assert run.code == 0, run.err
        accepted = run.json()
        assert accepted["success"] is True
        job_id = accepted["job_id"]

        run = await ckanpackager(*d, "watch", job_id)
        assert run.code == 0, f"{run.err}\nworker log:\n{worker.log()}\ningress log:\n{ingress.log()}"
        assert run.out.startswith(f"completed: {host}/downloads/{job_id}.zip (")
        assert run.err.splitlines()[-1].endswith("completed"), run.err
        [message] = await smtp.wait_for(1)
        assert message["To"] == "ops@example.org"

        # The same job again, by its status URL, with --json: one document per state, the last completed.
        run = await ckanpackager(*d, "--json", "watch", accepted["status_url"])
        assert run.code == 0
        states = [json.loads(line) for line in run.out.splitlines()]
        assert states[-1]["state"] == "completed" and states[-1]["job_id"] == job_id

        # queue --watch on a file that is not there: the job fails, the command says why and exits 1.
        run = await ckanpackager(
            *d, "queue", "--watch", "package_url", "resource_id:res-bad", f"resource_url:{base_url}/gone.csv"
        )
        assert run.code == 1
        assert run.out.startswith("Queued package_url job ")
        assert "failed: " in run.err.splitlines()[-1]

        # status, human and JSON: the worker, nothing queued, both jobs processed; the one package built is
        # in the worker's cache index, no build is in flight.
        run = await ckanpackager(*d, "status")
        assert run.code == 0, run.err
        assert "workers             1" in run.out.splitlines()
        assert "cached packages     1" in run.out.splitlines()
        assert "builds in flight    0 (0 waiting)" in run.out.splitlines()
        run = await ckanpackager(*d, "status", "--json")
        body = run.json()
        assert (body["worker_count"], body["queue_length"], body["processed_requests"]) == (1, 0, 2)
        assert (body["cache_entries"], body["builds_in_flight"], body["waiters"]) == (1, 0, 0)

        # stats totals: one line per resource and the grand total.
        run = await ckanpackager(*d, "stats")
        assert run.code == 0, run.err
        assert [line.split() for line in run.out.splitlines()] == [
            ["resource", "requests", "errors", "emails"],
            ["*", "2", "1", "1"],
            ["res-bad", "1", "1", "1"],
            ["res-cli", "1", "0", "1"],
        ]
        run = await ckanpackager(*d, "--json", "stats", "totals", "-r", "res-cli")
        assert run.json()["totals"] == {"res-cli": {"requests": 1, "errors": 0, "emails": 1}}

        # stats requests: newest first; offset and limit page; resource and email filter.
        run = await ckanpackager(*d, "--json", "stats", "requests")
        assert [r["resource_id"] for r in run.json()["requests"]] == ["res-bad", "res-cli"]
        run = await ckanpackager(*d, "--json", "-o", "1", "-l", "1", "stats", "requests")
        assert [r["resource_id"] for r in run.json()["requests"]] == ["res-cli"]
        run = await ckanpackager(
            *d, "stats", "requests", "--resource", "res-cli", "--email", "ops@example.org"
        )
        assert run.code == 0
        [header, row] = run.out.splitlines()
        assert header.split() == ["time", "(UTC)", "resource", "email", "count"]
        # The requester as a pseudonym (ANONYMIZE_EMAILS is on by default); the filter takes the address.
        assert row.split()[1:] == ["res-cli", pseudonym(SECRET, "ops@example.org"), "1"]
        run = await ckanpackager(*d, "stats", "requests", "-e", "nobody@example.org")
        assert run.out == "no requests\n"

        # stats errors: the failed job, with its message; -x turns errors into exit status 1.
        run = await ckanpackager(*d, "stats", "errors")
        assert run.code == 0
        [_, row] = run.out.splitlines()
        assert row.split()[1:3] == ["res-bad", pseudonym(SECRET, "ops@example.org")]
        run = await ckanpackager(*d, "stats", "errors", "-x", "-q")
        assert (run.code, run.out) == (1, "")
        run = await ckanpackager(*d, "stats", "errors", "-x", "-r", "res-cli")
        assert (run.code, run.out) == (0, "no errors\n")

        # erase: the requester's one key goes (both jobs were sealed under it); the address is not printed.
        run = await ckanpackager(*d, "erase", "ops@example.org")
        assert run.code == 0, run.err
        assert run.out.endswith("erased: 1 data key(s) destroyed.\n") and "ops@" not in run.out
        run = await ckanpackager(*d, "--json", "erase", "ops@example.org")
        assert (run.code, run.json()["keys_destroyed"]) == (0, 0)

        # The error cases an operator meets, each one line on stderr.
        run = await ckanpackager(*d, "-s", "not-the-secret", "status")
        assert run.code == 1
        assert "refused the secret, or its absence (Wrong/missing secret)" in one_error_line(run)
        run = await ckanpackager(*d, "queue", "package_zip", "resource_id:x")
        assert run.code == 2
        assert "unknown task 'package_zip'" in one_error_line(run)
        run = await ckanpackager(*d, "queue", "package_url", "resource_id=x")
        assert run.code == 2
        assert "malformed parameter 'resource_id=x'" in one_error_line(run)
        run = await ckanpackager("-D", "-p", host, "-s", SECRET, "queue", "package_url", "resource_id:x")
        assert run.code == 1
        assert (
            one_error_line(run)
            == f"ckanpackager: {host} rejected the request: Parameter resource_url is required"
        )
        run = await ckanpackager(
            "-D", "-p", host, "-s", SECRET, "watch", "0232e797-71da-4658-8d92-52080d82db79"
        )
        assert run.code == 1
        assert "knows no job" in one_error_line(run)

        # clear-cache and its alias cc: the built ZIP leaves the store.
        zip_path = store_dir / f"{job_id}.zip"
        assert zip_path.exists()
        run = await ckanpackager(*d, "clear-cache")
        assert run.code == 0, run.err
        assert run.out.startswith("Cache clearing requested")
        deadline = time.monotonic() + 60
        while zip_path.exists():
            if time.monotonic() > deadline:
                pytest.fail(f"clear-cache left {zip_path.name} in the store\nworker log:\n{worker.log()}")
            await asyncio.sleep(0.3)
        run = await ckanpackager(*d, "--json", "cc")
        assert (run.code, run.json()["message"]) == (0, "Done.")

    # replay is the audit tool, reading the service's settings from the environment.
    run = await ckanpackager("replay", "history", "--job", job_id, env=service_env)
    assert run.code == 0, run.err
    types = [json.loads(line)["type"] for line in run.out.splitlines()]
    assert types[0] == "PackageRequested" and "PackageCompleted" in types and "EmailSent" in types
