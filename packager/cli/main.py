"""The `packager` command: run the ingress or a worker, and the development stack.

packager ingress                      serve the HTTP API
packager worker [--lanes fast,slow]   run a Faust worker (planner, mailer, webhooks and the given lanes)
packager projector [--until-caught-up] [--metrics-port N] [--processes K | --share I/K]
                                      fold the log into the views database (jobs, statistics)
packager replay verify|rebuild|stats|history
                                      audit: rebuild the views from the log and compare (docs/cli.md)
packager dev kafka start|stop|status  a local KRaft broker (or --nodes 3: a cluster) from Maven Central
packager dev postgres start|stop|status      a throwaway PostgreSQL cluster from Debian's packages
packager dev real-ckan start|stop|status     a real CKAN 2.12 (PyPI) with its datastore, for tests
packager dev s3 start|stop|status     an S3-compatible server (s3proxy from Maven Central) on a folder
packager dev mailsink                 a local SMTP sink that writes .eml files
packager dev mail                     show the newest message in the local mail sink
packager dev ckan                     a CKAN-compatible datastore_search server (tests, benchmarks)
packager dev up                       broker + mail sink + ingress + projector + worker, until Ctrl-C
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from packager.core.errors import ConfigurationError
from packager.core.settings import Settings, load_settings


def _settings_or_exit(**overrides: Any) -> Settings:
    from packager.domain.dwc import config_from_settings
    from packager.domain.dwc.eml import load_eml_template
    from packager.domain.emails import load_templates

    try:
        settings = load_settings(**overrides)
        settings.require_secret()
        # Checked at start-up, so a bad template or DwC definition stops the service, not a job.
        load_templates(settings)
        config_from_settings(settings).schema()
        load_eml_template(settings)
    except ConfigurationError as exc:
        _refuse_to_start(exc)
    return settings


def _refuse_to_start(exc: ConfigurationError) -> NoReturn:
    """Stop with the one-line message of a configuration error (exit status 2)."""
    print(f"packager: configuration error: {exc.message}", file=sys.stderr)
    raise SystemExit(2) from None


def cmd_ingress(_: argparse.Namespace) -> int:
    """Serve the HTTP ingress."""
    from packager.core.logs import configure_logging
    from packager.http.ingress import run

    settings = _settings_or_exit()
    configure_logging(settings)
    run(settings)
    return 0


def cmd_projector(args: argparse.Namespace) -> int:
    """Fold the log into the views database until stopped (or, with --until-caught-up, its end)."""
    from packager.cli.projector_processes import cmd_projector as run

    return run(args, _settings_or_exit)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a Faust worker serving the planner, the mailer, the webhook sender and the chosen lanes."""
    from packager.adapters.kafka_log import Topics, ensure_topics
    from packager.core.logs import configure_logging, faust_logging_config, log_handler
    from streams.app import build_pools, changelog_topics, create_app, roles_for
    from streams.mailer import Mailer
    from streams.ops import OpsServer
    from streams.webhook_sender import WebhookSender
    from streams.worker import Worker

    overrides: dict[str, object] = {}
    if args.lanes:
        overrides["worker_lanes"] = tuple(x.strip() for x in args.lanes.split(",") if x.strip())
    settings = _settings_or_exit(**overrides)
    try:
        # Refuses a faust-streaming version the offset guard was not tested with, and guarded agents
        # with more than one actor (streams/offsets.py).
        app = create_app(settings, roles_for(settings.worker_lanes))
    except ConfigurationError as exc:
        _refuse_to_start(exc)
    # Until Faust sets up its logging, lines (a retried topic creation on a slow broker) go through ours:
    # Python's last-resort handler would write them as plain text where every line must be JSON.
    configure_logging(settings)
    # Every topic, table changelogs included, exists before the worker subscribes: a changelog created
    # after the first assignment makes Faust's co-partitioning check fail once at start-up.
    asyncio.run(
        ensure_topics(
            settings.kafka_bootstrap_servers,
            Topics(settings.topic_prefix),
            settings.partitions,
            compacted=changelog_topics(app),
            replication_factor=settings.replication_factor,
        )
    )
    # Faust's own handler is replaced by ours: the same line format, job ids and redaction as the ingress.
    app.conf.loghandlers = [log_handler(settings)]
    roles = roles_for(settings.worker_lanes)
    # The webhook sender serves where the mailer does: both follow the events topic in groups of their own.
    effects = [Mailer(settings), WebhookSender(settings)] if "mailer" in roles else []
    services = [OpsServer(app, settings), *effects]
    worker = Worker(
        app,
        *services,
        pools=build_pools(app),
        loglevel=settings.log_level.lower(),
        logging_config=faust_logging_config(settings),
        # Faust's start-up banner is not a log line; leave it out where lines must be JSON.
        quiet=settings.log_format == "json",
    )
    worker.execute_from_commandline()
    return 0


def cmd_dev_kafka(args: argparse.Namespace) -> int:
    """Manage the local development broker."""
    from packager.dev import kafka

    return kafka.main(args.rest)


def cmd_dev_mailsink(args: argparse.Namespace) -> int:
    """Run the local mail sink."""
    from packager.dev.mailsink import serve

    serve(Path(args.dir), port=args.port)
    return 0


def cmd_dev_ckan(args: argparse.Namespace) -> int:
    """Run the CKAN-compatible datastore server used by tests and benchmarks."""
    from packager.dev import ckan_server

    return int(ckan_server.main(args.rest) or 0)


def cmd_dev_mail(args: argparse.Namespace) -> int:
    """Show the newest message the local mail sink received."""
    from packager.dev.mailsink import show_latest

    return show_latest(Path(args.dir))


def cmd_dev_up(args: argparse.Namespace) -> int:
    """Start broker, mail sink, ingress and worker; stop them all on Ctrl-C or SIGTERM."""
    from packager.dev import kafka, stack_guard
    from packager.dev.readiness import StackAddresses, StackNotReady, stack_problem, wait_for_stack
    from packager.dev.stack_stop import Child, StopRequests, stop_children

    var = Path(args.var).resolve()
    var.mkdir(parents=True, exist_ok=True)
    try:
        held = stack_guard.hold_state_folder(var)  # noqa: F841 - released when this process ends
    except stack_guard.StackBusy as exc:
        print(f"packager: {exc}", file=sys.stderr)
        return 2
    secret = os.environ.get("PACKAGER_SECRET")
    if not secret:
        secret_file = var / "secret"
        if not secret_file.exists():
            secret_file.write_text(secrets.token_urlsafe(24))
            secret_file.chmod(0o600)
        secret = secret_file.read_text().strip()

    env = dict(os.environ)
    env.update(
        {
            "PACKAGER_SECRET": secret,
            "PACKAGER_SMTP_HOST": "127.0.0.1",
            "PACKAGER_SMTP_PORT": str(args.mail_port),
            "PACKAGER_STORE_DIRECTORY": env.get("PACKAGER_STORE_DIRECTORY", str(var / "store")),
            # The local stack may package files served from this machine (the README's example does).
            "PACKAGER_ALLOW_PRIVATE_URLS": env.get("PACKAGER_ALLOW_PRIVATE_URLS", "true"),
        }
    )
    # A bad setting, or a port in use, stops the stack here, before a broker starts that nothing would stop.
    early = load_settings({"PACKAGER_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092", **env})
    try:
        stack_guard.check_ports_free(
            {"ingress": (early.host, early.port), "mail sink": ("127.0.0.1", args.mail_port)}
        )
    except stack_guard.StackBusy as exc:
        print(f"packager: {exc}", file=sys.stderr)
        return 2

    started_broker = False
    bootstrap = os.environ.get("PACKAGER_KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        # A broker already running in var/kafka (started by hand) is used and left running at the end.
        already_running = kafka.status(var / "kafka") is not None
        try:
            # The broker's data outlives the stack (halted below, resumed here), so the jobs, statistics
            # and ZIP links of an earlier run stay true; `packager dev kafka stop --wipe` empties it.
            broker, _ = kafka.start_or_resume(var / "kafka", log=lambda m: print(m, flush=True))
        except kafka.BrokerError as exc:
            print(f"packager: cannot start Kafka: {exc}", file=sys.stderr)
            return 2
        bootstrap, started_broker = broker.bootstrap_servers, not already_running

    env["PACKAGER_KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    settings = load_settings(env)
    _write_stack_settings(var / "stack.toml", env)
    python = sys.executable
    children: list[subprocess.Popen[bytes]] = []
    names: list[str] = []  # children's names, in the same order
    logs = var / "logs"
    logs.mkdir(exist_ok=True)

    def spawn(name: str, *argv: str) -> None:
        out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the child's lifetime
        # A session of its own: Ctrl-C reaches this process only, which stops the children in order below
        # (a worker that got the terminal's SIGINT and then our SIGTERM would skip its drain).
        children.append(
            subprocess.Popen(
                [python, "-m", "packager", *argv],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        names.append(name)

    # Counted, not acted on, in the handler: the loops below read the count (stack_stop says what a Ctrl-C
    # during the stop does).
    stops = StopRequests()
    signal.signal(signal.SIGTERM, stops.handle)
    signal.signal(signal.SIGINT, stops.handle)

    def exited() -> str | None:
        """The first child that ended, with the end of its log."""
        for name, child in zip(names, children, strict=True):
            if child.poll() is not None:
                tail = (logs / f"{name}.log").read_text(errors="replace").splitlines()[-5:]
                return f"the {name} exited with status {child.returncode}; the end of its log:\n" + "\n".join(
                    tail
                )
        return None

    try:
        for name, *argv in (
            ("mailsink", "dev", "mailsink", "--dir", str(var / "mail"), "--port", str(args.mail_port)),
            ("projector", "projector"),
            ("ingress", "ingress"),
            ("worker", "worker"),
        ):
            spawn(name, *argv)
        print(
            "Starting the projector, the ingress and the worker (it joins Kafka's consumer group)...",
            flush=True,
        )
        stack = StackAddresses(
            ingress=f"http://{settings.host}:{settings.port}",
            secret=secret,
            worker_health=(
                f"http://{settings.metrics_host}:{settings.metrics_port}/health/ready"
                if settings.metrics_port
                else None
            ),
            mail_port=args.mail_port,
        )
        try:
            # "up" means a request would succeed now, not merely that ports are open.
            wait_for_stack(
                lambda: stack_problem(stack),
                # Ctrl-C while starting ends the wait; the stop below stops what started.
                lambda: "stopped by Ctrl-C or SIGTERM" if stops.requested else exited(),
                timeout=args.ready_timeout,
                say=lambda m: print(f"  {m}", flush=True),
            )
        except StackNotReady as exc:
            if stops.requested:
                return 0
            print(f"packager: the stack did not come up: {exc}\nSee {logs}/", file=sys.stderr)
            return 1
        print(
            "\nckanpackager is up\n"
            f"  ingress    http://{settings.host}:{settings.port}\n"
            f"  secret     {var / 'secret'} (or $PACKAGER_SECRET)\n"
            f"  kafka      {bootstrap}\n"
            f"  mail sink  {var / 'mail'}/ (SMTP 127.0.0.1:{args.mail_port})\n"
            f"  zips       {env['PACKAGER_STORE_DIRECTORY']}/\n"
            f"  logs       {logs}/\n"
            "Press Ctrl-C to stop.",
            flush=True,
        )
        while not stops.requested:
            if (ended := exited()) is not None:
                print(f"packager: {ended}\nSee {logs}/", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        # Projector, ingress and worker first (the worker drains its builds for up to DRAIN_TIMEOUT and
        # sends their emails), the mail sink after them, the broker last.
        if stops.requested:
            print(
                "Stopping: builds still running get up to "
                f"{settings.drain_timeout:g} s (DRAIN_TIMEOUT) to finish; the rest are built again at the "
                "next start...",
                flush=True,
            )
        named = [Child(name, child) for name, child in zip(names, children, strict=True)]
        stop_children(
            [c for c in named if c.name != "mailsink"],
            next((c for c in named if c.name == "mailsink"), None),
            stops,
            drain_timeout=settings.drain_timeout,
            lease_time=settings.lease_time,
            say=lambda m: print(m, flush=True),
        )
        if started_broker:
            print(f"Stopping Kafka (its data stays in {var / 'kafka'})...", flush=True)
            kafka.halt(var / "kafka")
        print("ckanpackager stopped", flush=True)


def _write_stack_settings(path: Path, env: dict[str, str]) -> None:
    """Record the settings the stack's processes get, so that `packager replay` run later in the same
    folder uses them without anything exported by hand. Readable by the owner only: it holds the secret."""
    known = {field.name for field in dataclasses.fields(Settings)}
    lines = ["# Written by `packager dev up`: the settings of the local stack's processes."]
    for name, value in sorted(env.items()):
        setting = name.removeprefix("PACKAGER_").lower()
        if name.startswith("PACKAGER_") and setting in known:
            lines.append(f"{setting} = {json.dumps(value)}")
    path.touch(mode=0o600)
    path.write_text("\n".join(lines) + "\n")


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar."""
    parser = argparse.ArgumentParser(
        prog="packager", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ingress", help="serve the HTTP API").set_defaults(func=cmd_ingress)
    projector = sub.add_parser("projector", help="fold the log into the views database")
    projector.add_argument(
        "--until-caught-up", action="store_true", help="stop at the end of the log as it was at start"
    )
    projector.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve the projector's Prometheus metrics on METRICS_HOST and this port (default: not served;"
        " with --processes K, K ports from this one)",
    )
    projector.add_argument(
        "--share",
        help="read only share I of K of the log's partitions, e.g. 1/2 (run K projectors for all of them)",
    )
    projector.add_argument(
        "--processes",
        type=int,
        help="run K projector processes, one per share (--share i/K), to fold on K cores",
    )
    projector.set_defaults(func=cmd_projector)
    worker = sub.add_parser("worker", help="run a Faust worker")
    worker.add_argument("--lanes", help="comma-separated lanes to serve (default: PACKAGER_WORKER_LANES)")
    worker.set_defaults(func=cmd_worker)
    # Dispatched before parsing (its own parser, `packager replay --help`); listed here for `--help`.
    sub.add_parser(
        "replay", help="audit: verify|rebuild|stats|history of the views from the log", add_help=False
    ).add_argument("rest", nargs=argparse.REMAINDER)

    dev = sub.add_parser("dev", help="development helpers").add_subparsers(dest="dev", required=True)
    kafka_cmd = dev.add_parser(
        "kafka", help="local KRaft broker or cluster: start|stop|status", add_help=False
    )
    kafka_cmd.add_argument("rest", nargs=argparse.REMAINDER)
    kafka_cmd.set_defaults(func=cmd_dev_kafka)
    for name, text in (
        ("postgres", "throwaway PostgreSQL cluster: start|stop|status"),
        ("real-ckan", "real CKAN 2.12 with its datastore: start|stop|status"),
        ("s3", "S3-compatible server (s3proxy) on a folder: start|stop|status"),
    ):
        dev.add_parser(name, help=text, add_help=False).add_argument("rest", nargs=argparse.REMAINDER)
    sink = dev.add_parser("mailsink", help="local SMTP sink writing .eml files")
    sink.add_argument("--dir", default="var/mail", help="folder for the .eml files (default var/mail)")
    sink.add_argument("--port", type=int, default=8025, help="SMTP port on 127.0.0.1 (default 8025)")
    sink.set_defaults(func=cmd_dev_mailsink)
    ckan = dev.add_parser(
        "ckan", help="CKAN-compatible datastore_search server (tests, benchmarks)", add_help=False
    )
    ckan.add_argument("rest", nargs=argparse.REMAINDER)
    ckan.set_defaults(func=cmd_dev_ckan)
    mail = dev.add_parser("mail", help="show the newest message in the local mail sink")
    mail.add_argument("--dir", default="var/mail", help="the mail sink's folder (default var/mail)")
    mail.set_defaults(func=cmd_dev_mail)
    up = dev.add_parser("up", help="start the whole stack locally until Ctrl-C")
    up.add_argument("--var", default="var", help="folder for state, mail, zips and logs")
    up.add_argument("--mail-port", type=int, default=8025, help="the mail sink's SMTP port (default 8025)")
    up.add_argument(
        "--ready-timeout",
        type=float,
        default=180.0,
        help="seconds to wait for the stack to answer requests (default 180)",
    )
    up.set_defaults(func=cmd_dev_up)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `packager` command."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _dispatch(argv)
    except ConfigurationError as exc:  # any command (replay, dev up) stops on bad settings in one line
        _refuse_to_start(exc)


def _dispatch(argv: list[str]) -> int:
    # These two hand their options to their own parsers (argparse's REMAINDER drops leading `--x` options).
    if argv[:2] == ["dev", "ckan"]:
        from packager.dev import ckan_server

        return int(ckan_server.main(argv[2:]) or 0)
    if argv[:1] == ["replay"]:
        from packager.cli import replay

        return replay.main(argv[1:])
    if argv[:2] == ["dev", "kafka"]:
        from packager.dev import kafka

        return kafka.main(argv[2:])
    if argv[:2] == ["dev", "postgres"]:
        from packager.dev import postgres

        return postgres.main(argv[2:])
    if argv[:2] == ["dev", "s3"]:
        from packager.dev import s3proxy

        return s3proxy.main(argv[2:])
    if argv[:2] == ["dev", "real-ckan"]:
        from packager.dev import real_ckan

        return real_ckan.main(argv[2:])
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
