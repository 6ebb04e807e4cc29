"""The operator command's verbs that change a job or the statistics: `cancel` and `reset`.

`cancel JOB` asks the service to cancel a job (`POST /jobs/{id}/cancel`) with the shared secret, or with
the job's cancel token (`--token`, from the answer that accepted it). `reset (requests|errors)` is the
original command line's `reset` (listed in its usage, never implemented there): it appends a
`StatisticsReset` (`POST /statistics/reset`), after which the statistics list and count only what
occurred later. The log keeps everything, so a reset is never a loss of history; it asks for
confirmation all the same (`--yes` to skip it, required when no one is at a terminal).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from typing import Any, Protocol

from packager.cli.operator_http import Service, UsageError
from packager.cli.operator_output import Output


class Target(Protocol):
    """Where the command sends requests (`operator.Target`)."""

    host: str
    secret: str | None


_JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
RESET_KINDS = ("requests", "errors")
# How the command asks for confirmation; tests replace it.
ask: Callable[[str], str] = input


def cmd_cancel(args: argparse.Namespace, target: Target, out: Output) -> int:
    """Cancel a job: exit 0 when cancelled or being cancelled, 1 when it had finished (409) or is unknown."""
    job_id = job_id_of(args.job)
    params = {"token": args.token} if args.token else ({"secret": target.secret} if target.secret else {})
    body = Service(target.host).post(f"/jobs/{job_id}/cancel", params)
    out.document(body)
    state = body.get("state")
    if state == "cancelled":
        out.text(f"Job {job_id} is cancelled.")
    else:
        out.text(f"Job {job_id} is being cancelled: {body.get('message') or ''}".rstrip())
    return 0


def job_id_of(job: str) -> str:
    """The job id in a job id or a job's status URL."""
    text = job.strip().rstrip("/")
    if "/" in text:
        text = text.rsplit("/", 1)[1]
    if not _JOB_ID.match(text):
        raise UsageError(f"not a job id: {job!r} (expected the job_id a queued task answered with)")
    return text


def confirmed(which: str, host: str, *, yes: bool) -> bool:
    """True when the operator confirmed the reset (`--yes`, or `yes` typed at a terminal)."""
    if yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError(f"reset {which} changes the statistics of {host}: confirm it with --yes")
    answer = ask(
        f"Reset the {which} statistics of {host}? They will list and count only what occurs from now on "
        "(the log keeps every entry). Type yes to go on: "
    )
    return answer.strip().lower() == "yes"


def cmd_reset(args: argparse.Namespace, target: Target, out: Output) -> int:
    """Reset the requests or errors statistics from now on (after confirmation)."""
    if not confirmed(args.which, target.host, yes=args.yes):
        out.text("Nothing was reset.")
        return 1
    params = {"which": args.which, **({"secret": target.secret} if target.secret else {})}
    body = Service(target.host).post("/statistics/reset", params)
    out.document(body)
    out.text(f"The {args.which} statistics count from {body.get('since')} on.")
    return 0


def add_verbs(verb: Callable[[str, str], Any]) -> None:
    """Register `cancel` and `reset` with the command's `verb(name, help)` factory."""
    cancel = verb("cancel", "cancel a job not finished yet (its build stops; never emailed as completed)")
    cancel.add_argument("job", metavar="JOB_ID", help="a job id, or a job's status URL")
    cancel.add_argument(
        "-t", "--token", help="the job's cancel_token (from its accept answer) instead of the secret"
    )
    cancel.set_defaults(func=cmd_cancel)
    reset = verb("reset", "reset the requests or errors statistics from now on (the log keeps every entry)")
    reset.add_argument("which", choices=RESET_KINDS, help="which statistics to reset")
    reset.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    reset.set_defaults(func=cmd_reset)
