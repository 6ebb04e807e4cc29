"""When the local stack (`packager dev up`) can take a request: every part asked over HTTP, with a deadline.

Listening ports are not enough: the ingress listens seconds before Kafka's group coordinator answers, and
until then `/status` is a 503. The stack is up once the ingress is ready (`/health/ready`: broker reachable,
read model caught up), `/status` answers with at least one worker in the group, the worker is ready (its
own `/health/ready`: tables recovered, partitions assigned) and the mail sink accepts connections.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from packager.dev.processes import port_open

PROBE_TIMEOUT = 3.0  # seconds one HTTP probe may take
REPORT_EVERY = 10.0  # seconds between "still waiting" lines


class StackNotReady(RuntimeError):
    """The stack did not become ready in time, or one of its processes ended; the message says which."""


@dataclass(frozen=True, slots=True)
class StackAddresses:
    """Where the parts of a local stack answer."""

    ingress: str  # base URL, e.g. http://127.0.0.1:8765
    secret: str
    worker_health: str | None  # the worker's /health/ready URL; None when its port is picked at random
    mail_port: int


def _get(url: str) -> tuple[int, dict[str, object]]:
    """Status and JSON body of a GET (status 0 with the reason when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (OSError, ValueError) as exc:
        return 0, {"message": f"no answer ({type(exc).__name__})"}
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    return status, body if isinstance(body, dict) else {}


def _why(body: dict[str, object]) -> str:
    return str(body.get("reason") or body.get("message") or body.get("msg") or "no reason given")


def stack_problem(stack: StackAddresses) -> str | None:
    """Why a request would not succeed yet, or None when every part is ready."""
    status, body = _get(f"{stack.ingress}/health/ready")
    if status != 200:
        return f"ingress not ready: {_why(body)}"
    query = urllib.parse.urlencode({"secret": stack.secret})
    status, body = _get(f"{stack.ingress}/status?{query}")
    if status != 200:
        return f"ingress /status answers {status}: {_why(body)}"
    workers = body.get("worker_count")
    if not isinstance(workers, int) or workers < 1:
        return "no worker has joined the consumer group yet"
    if stack.worker_health is not None:
        status, body = _get(stack.worker_health)
        if status != 200:
            return f"worker not ready: {_why(body)}"
    if not port_open(stack.mail_port):
        return f"the mail sink does not accept connections on port {stack.mail_port} yet"
    return None


def wait_for_stack(
    problem: Callable[[], str | None],
    exited: Callable[[], str | None],
    *,
    timeout: float,
    say: Callable[[str], None],
    poll: float = 0.5,
) -> None:
    """Return once `problem()` is None; raise StackNotReady if `exited()` names a process or time runs out.

    Says what it waits for every `REPORT_EVERY` seconds (and whenever the reason changes), so a slow first
    start is never silent.
    """
    started = time.monotonic()
    deadline = started + timeout
    last_said, last_reason = started, ""
    while True:
        ended = exited()
        if ended is not None:
            raise StackNotReady(ended)
        reason = problem()
        if reason is None:
            return
        now = time.monotonic()
        if now >= deadline:
            raise StackNotReady(f"not ready within {timeout:.0f}s: {reason}")
        if reason != last_reason or now - last_said >= REPORT_EVERY:
            say(f"waiting ({now - started:.0f}s): {reason}")
            last_said, last_reason = now, reason
        time.sleep(poll)
