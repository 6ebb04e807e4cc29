"""The `ckanpackager` operator command: the original service's command line, against this service's HTTP API.

ckanpackager [options] status                          workers, queue length, jobs processed
ckanpackager [options] clear-cache | cc                empty the cache of built ZIPs
ckanpackager [options] stats [totals|requests|errors]  statistics (-o OFFSET -l LIMIT -r RESOURCE -e EMAIL)
ckanpackager [options] stats daily                     per UTC day: requests, errors, requesters (--days N)
ckanpackager [options] queue TASK [PARAM:VALUE ...]    queue a job, e.g. queue package_url email:a@b.org ...
ckanpackager [options] watch JOB_ID                    follow a job live until it completes or fails
ckanpackager [options] erase EMAIL                     erase a requester (docs/privacy.md)
ckanpackager [options] cancel JOB_ID [--token TOKEN]   cancel a job not finished yet
ckanpackager [options] reset (requests|errors) [--yes] list and count statistics from now on only
ckanpackager replay verify|rebuild|stats|history ...   the audit tool (same as `packager replay`)

Run from the folder a Quickstart stack was started in (`packager dev up`), it reaches that stack with the
secret and address in its `var/stack.toml` unless options, $CKANPACKAGER_SECRET or a defaults file say
otherwise. Options may come before or after the verb. Exit status: 0 done, 1 failed (the service refused
or could not be reached, a watched job failed, `-x` found errors), 2 the command line, defaults file or
stack file is wrong.
The HTTP side lives in `operator_http`, what is printed in `operator_output`, `stats` in `operator_stats`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from packager.cli.operator_http import (
    SECRET_ENVIRONMENT_VARIABLE,
    CliError,
    RefusedError,
    Service,
    UsageError,
)
from packager.cli.operator_jobs import add_verbs, job_id_of
from packager.cli.operator_output import Output, ProgressDisplay, human_size
from packager.cli.operator_stats import (
    STATS_KINDS,
    add_stats_options,
    cmd_stats,
)
from packager.cli.stack_file import STACK_SETTINGS, ingress_url, stack_file_in_use, stack_settings
from packager.core.errors import ConfigurationError

PROG = "ckanpackager"
DEFAULT_HOST = "http://127.0.0.1:8765"
DEFAULT_DEFAULTS_FILE = Path("/etc/ckanpackager/ckanpackager-cli.json")
TASKS = ("package_datastore", "package_dwc_archive", "package_url")
EVENTS_RECONNECTS = 5
# A job just accepted appears on the read side within a second or so; wait this long before saying
# there is no such job.
JOB_APPEAR_TIMEOUT = 15.0
TERMINAL_STATES = ("completed", "failed", "abandoned", "cancelled")


# --- Defaults file and parameters --------------------------------------------------------------------


@dataclass(frozen=True)
class Defaults:
    """What a defaults file holds: the service's address and parameters sent with every queued task."""

    host: str | None = None
    params: dict[str, str] = field(default_factory=dict)

    @property
    def secret(self) -> str | None:
        """The shared secret the file gives, if any."""
        return self.params.get("secret")


def _as_param(value: Any) -> str:
    """A JSON value as a form parameter: strings as they are, anything else as JSON text (e.g. filters)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def load_defaults(path: Path | None, *, use_file: bool = True) -> Defaults:
    """Read the defaults file: `path` must exist when given; the standard one is used only if present."""
    if not use_file:
        return Defaults()
    explicit = path is not None
    path = path if path is not None else DEFAULT_DEFAULTS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise UsageError(f"no such defaults file: {path}") from None
        return Defaults()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read defaults file {path}: {exc}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"defaults file {path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"defaults file {path} must hold a JSON object")
    host = doc.pop("host", None)
    if host is not None and not isinstance(host, str):
        raise UsageError(f"defaults file {path}: host must be a string")
    return Defaults(host=host or None, params={str(k): _as_param(v) for k, v in doc.items() if v is not None})


def parse_param(text: str) -> tuple[str, str]:
    """`PARAM:VALUE` as (param, value); the value may itself hold colons (URLs do)."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise UsageError(
            f"malformed parameter {text!r}: expected PARAM:VALUE, e.g. email:someone@example.org"
        )
    return name.strip(), value


def task_path(task: str) -> str:
    """The endpoint of a task name, refusing names the service does not serve."""
    name = task.strip().strip("/")
    if name not in TASKS:
        raise UsageError(f"unknown task {task!r}: the service knows {', '.join(TASKS)}")
    return f"/{name}"


def normalise_host(host: str) -> str:
    """The service's base URL, `http://` assumed when no scheme is given, without a trailing slash."""
    host = host.strip()
    if "://" not in host:
        host = f"http://{host}"
    parts = urllib.parse.urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"not a service address: {host!r} (expected e.g. {DEFAULT_HOST})")
    return host.rstrip("/")


@dataclass(frozen=True)
class Target:
    """Where to send requests and with which secret, once options, environment and defaults are merged."""

    host: str
    secret: str | None
    defaults: Defaults


def resolve_target(args: argparse.Namespace, environ: Mapping[str, str]) -> Target:
    """Merge, highest first: options, the environment (secret only), the defaults file, the Quickstart
    stack's `var/stack.toml` in the current folder, built-in defaults.

    The stack's secret is sent only to the stack's own ingress: with another host chosen it stays home.
    """
    defaults = load_defaults(Path(args.defaults) if args.defaults else None, use_file=not args.no_defaults)
    chosen = args.host or defaults.host
    secret = args.secret or environ.get(SECRET_ENVIRONMENT_VARIABLE) or defaults.secret
    stack = local_stack(environ) if not (chosen and secret) else None
    host = normalise_host(chosen or (stack[0] if stack else DEFAULT_HOST))
    if not secret and stack is not None and host == stack[0]:
        secret = stack[1] or None
    return Target(host=host, secret=secret, defaults=defaults)


def local_stack(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(ingress URL, secret) of the Quickstart stack started from this folder, read from its
    `var/stack.toml` as `packager replay` reads it (PACKAGER_* variables win); None without that file."""
    if not stack_file_in_use(environ):
        return None
    try:
        settings = stack_settings(environ)
    except (ConfigurationError, OSError) as exc:
        raise UsageError(f"cannot use the stack's settings in {STACK_SETTINGS.resolve()}: {exc}") from None
    return normalise_host(ingress_url(settings)), settings.secret


def queue_params(target: Target, pairs: Sequence[str]) -> dict[str, str]:
    """A task's parameters: the defaults file's, the secret, then PARAM:VALUE pairs (which win)."""
    params = dict(target.defaults.params)
    if target.secret:
        params["secret"] = target.secret
    for text in pairs:
        name, value = parse_param(text)
        params[name] = value
    return params


# --- Verbs --------------------------------------------------------------------------------------------


def _with_secret(target: Target, params: Mapping[str, str] | None = None) -> dict[str, str]:
    merged = dict(params or {})
    if target.secret:
        merged["secret"] = target.secret
    return merged


def cmd_status(args: argparse.Namespace, target: Target, out: Output) -> int:
    """Workers in the consumer group, jobs not finished, jobs finished, the cache index and builds."""
    body = Service(target.host).post("/status", _with_secret(target))
    out.document(body)
    out.text(f"service             {target.host}")
    out.text(f"workers             {body.get('worker_count')}")
    out.text(f"queue length        {body.get('queue_length')}")
    out.text(f"processed requests  {body.get('processed_requests')}")
    if "cache_entries" in body:  # a service older than the worker's views does not say
        out.text(f"cached packages     {body.get('cache_entries')}")
        out.text(f"builds in flight    {body.get('builds_in_flight')} ({body.get('waiters')} waiting)")
    return 0


def cmd_clear_cache(args: argparse.Namespace, target: Target, out: Output) -> int:
    """Ask the workers to empty the cache of built ZIPs."""
    body = Service(target.host).post("/clear_caches", _with_secret(target))
    out.document(body)
    out.text(f"Cache clearing requested: {body.get('message') or body.get('msg') or 'Done.'}")
    return 0


def cmd_erase(args: argparse.Namespace, target: Target, out: Output) -> int:
    """Erase a requester: their data keys are destroyed, so their sealed addresses can never be read."""
    body = Service(target.host).post("/requesters/erase", _with_secret(target, {"email": args.email}))
    out.document(body)
    # The address is not printed back: terminal scrollback and shell logs keep what they are shown.
    out.text(f"Requester {body.get('requester')} erased: {body.get('keys_destroyed')} data key(s) destroyed.")
    return 0


def cmd_queue(args: argparse.Namespace, target: Target, out: Output) -> int:
    """Queue a task with the defaults file's parameters, the secret and PARAM:VALUE pairs."""
    path = task_path(args.task)
    params = queue_params(target, args.params)
    body = Service(target.host).post(path, params)
    out.document(body)
    job_id = body.get("job_id")
    out.text(
        f"Queued {path.lstrip('/')} job {job_id}: {body.get('message') or body.get('msg') or ''}".rstrip()
    )
    if args.watch and job_id:
        return watch(Service(target.host), str(job_id), out)
    if body.get("status_url"):
        out.text(f"Follow it: {PROG} watch {job_id}  (or {body['status_url']})")
    return 0


def job_events_path(job: str) -> tuple[str, str]:
    """(job id, events path) from a job id or a job's status URL."""
    job_id = job_id_of(job)
    return job_id, f"/jobs/{job_id}/events"


def cmd_watch(args: argparse.Namespace, target: Target, out: Output) -> int:
    """Follow a job live until it completes (exit 0) or fails (exit 1)."""
    return watch(Service(target.host), args.job, out)


def _wait_for_job(service: Service, job_id: str) -> None:
    """Return once the service knows the job; a job just accepted takes a moment to appear."""
    deadline = time.monotonic() + JOB_APPEAR_TIMEOUT
    while True:
        try:
            service.get(f"/jobs/{job_id}")
            return
        except RefusedError as exc:
            if exc.status != 404:
                raise
            if time.monotonic() > deadline:
                raise CliError(f"{service.host} knows no job {job_id}") from None
        time.sleep(0.5)


def watch(service: Service, job: str, out: Output) -> int:
    """Draw the job's progress from its events stream; the exit status says how it ended."""
    job_id, path = job_events_path(job)
    _wait_for_job(service, job_id)
    bar = ProgressDisplay(out)
    last: dict[str, Any] = {}
    failures = 0
    try:
        while last.get("state") not in TERMINAL_STATES:
            error: CliError | None = None
            try:
                for event, data in service.events(path):
                    if event == "job" and isinstance(state := json.loads(data), dict):
                        last, failures = state, 0
                        out.json_line(state)
                        bar.show(state)
                    if event == "end" or last.get("state") in TERMINAL_STATES:
                        break
            except TimeoutError:
                # A quiet stream (the job waits in its lane): reconnect; the service repeats the state.
                continue
            except CliError as exc:
                error = exc
            except (OSError, http.client.HTTPException, json.JSONDecodeError):
                pass  # the connection dropped: reconnect
            if last.get("state") in TERMINAL_STATES:
                break
            failures += 1
            if failures > EVENTS_RECONNECTS:
                raise error or CliError(f"lost the events of job {job_id} at {service.host}")
            time.sleep(1.0)
    finally:
        bar.close()
    return _report_end(last, out)


def _report_end(job: Mapping[str, Any], out: Output) -> int:
    if job.get("state") == "completed":
        out.text(f"completed: {job.get('download_url')} (ZIP of {human_size(job.get('size'))})")
        return 0
    if not out.quiet:
        verb = {"abandoned": "was abandoned", "cancelled": "was cancelled"}.get(
            str(job.get("state")), "failed"
        )
        reason = job.get("error") or "no reason given"
        print(f"{PROG}: job {job.get('job_id')} {verb}: {reason}", file=out.err)
    return 1


# --- Command line -------------------------------------------------------------------------------------


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every verb takes; on verbs they default to SUPPRESS so the top-level values stand."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("service options")
    group.add_argument(
        "-p",
        "--host",
        metavar="HOST",
        default=default(None),
        help=f"default: the Quickstart stack's ingress when {STACK_SETTINGS} is here, else {DEFAULT_HOST}",
    )
    group.add_argument(
        "-d",
        "--defaults",
        metavar="FILE",
        default=default(None),
        help=f"JSON file of defaults: host, secret and task parameters (default {DEFAULT_DEFAULTS_FILE}, "
        "used when present)",
    )
    group.add_argument(
        "-D", "--no-defaults", action="store_true", default=default(False), help="read no defaults file"
    )
    group.add_argument(
        "-s",
        "--secret",
        metavar="SECRET",
        default=default(None),
        help=f"the shared secret (beats ${SECRET_ENVIRONMENT_VARIABLE}, the defaults file, {STACK_SETTINGS})",
    )
    group.add_argument(
        "-q", "--quiet", action="store_true", default=default(False), help="print nothing but errors"
    )
    group.add_argument("--json", action="store_true", default=default(False), help="print JSON for machines")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ckanpackager")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    _add_global_options(parser, suppress=False)
    add_stats_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_text: str, aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, aliases=list(aliases), description=help_text)
        _add_global_options(p, suppress=True)
        return p

    verb("status", "workers, queue length and jobs processed").set_defaults(func=cmd_status)
    verb("clear-cache", "empty the cache of built ZIPs", aliases=["cc"]).set_defaults(func=cmd_clear_cache)
    stats = verb("stats", "totals, requests, errors, or per day", aliases=["statistics"])
    stats.add_argument("kind", nargs="?", choices=STATS_KINDS, help="what to show (default: totals)")
    add_stats_options(stats, suppress=True)
    stats.set_defaults(func=cmd_stats)
    queue = verb("queue", f"queue a task ({', '.join(TASKS)})")
    queue.add_argument("task", metavar="TASK", help=", ".join(TASKS))
    queue.add_argument(
        "params",
        metavar="PARAM:VALUE",
        nargs="*",
        help="task parameters, e.g. email:a@b.org (for_gbif:true for a GBIF-ready archive; callback_url:URL "
        "asks for a signed webhook when it ends)",
    )
    queue.add_argument("-w", "--watch", action="store_true", help="then follow the job until it ends")
    queue.set_defaults(func=cmd_queue)
    watch_cmd = verb("watch", "follow a job's progress until it completes or fails")
    watch_cmd.add_argument("job", metavar="JOB_ID", help="a job id, or a job's status URL")
    watch_cmd.set_defaults(func=cmd_watch)
    erase = verb("erase", "erase a requester: destroy their data keys (docs/privacy.md)")
    erase.add_argument("email", metavar="EMAIL", help="the requester's address")
    erase.set_defaults(func=cmd_erase)
    add_verbs(verb)
    replay_cmd = sub.add_parser(
        "replay",
        help="the audit tool: verify|rebuild|stats|history (see `ckanpackager replay -h`)",
        add_help=False,
    )
    replay_cmd.add_argument("rest", nargs=argparse.REMAINDER)
    replay_cmd.set_defaults(func=None)
    return parser


def fail(message: str, exit_code: int) -> NoReturn:
    """Leave with one line on stderr."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(exit_code)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of the `ckanpackager` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    if argv[:1] == ["replay"]:
        from packager.cli import replay

        return replay.main(argv[1:], prog="ckanpackager replay")
    args = build_parser().parse_args(argv)
    if args.verb == "replay":
        from packager.cli import replay

        return replay.main(args.rest, prog="ckanpackager replay")
    out = Output(quiet=args.quiet, as_json=args.json)
    try:
        target = resolve_target(args, environ)
        return int(args.func(args, target, out))
    except CliError as exc:
        fail(exc.message, exc.exit_code)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
