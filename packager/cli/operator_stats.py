"""`ckanpackager stats`: the statistics endpoints as tables (see `operator` for the command line)."""

from __future__ import annotations

import argparse
from typing import Any, Protocol

from packager.cli.operator_http import Service
from packager.cli.operator_output import Output, table, when

STATS_KINDS = ("totals", "requests", "errors", "daily")


class Target(Protocol):
    """Where the command talks to: the service's address and its secret."""

    host: str
    secret: str | None


def stats_request(kind: str, args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """The endpoint and parameters (without the secret) of a statistics query."""
    if kind == "totals":
        return "/statistics", {"resource_id": args.resource} if args.resource else {}
    if kind == "daily":
        return "/statistics/daily", {
            "days": str(args.days),
            **({"resource_id": args.resource} if args.resource else {}),
        }
    params = {"offset": str(args.offset), "limit": str(args.limit)}
    if args.resource:
        params["resource_id"] = args.resource
    if args.email:
        params["email"] = args.email
    return f"/statistics/{kind}", params


def cmd_stats(args: argparse.Namespace, target: Target, out: Output) -> int:
    """Totals, requests or errors, as the service's statistics endpoints give them."""
    kind = args.kind or "totals"
    path, params = stats_request(kind, args)
    body = Service(target.host).post(path, {**params, **({"secret": target.secret} if target.secret else {})})
    out.document(body)
    if kind == "totals":
        totals: dict[str, dict[str, Any]] = body.get("totals") or {}
        order = sorted(totals, key=lambda r: (r != "*", r))
        rows = [
            (r, totals[r].get("requests"), totals[r].get("errors"), totals[r].get("emails")) for r in order
        ]
        header: tuple[str, ...] = ("resource", "requests", "errors", "emails")
        has_errors = any(row[2] for row in rows)
    elif kind == "requests":
        entries = body.get("requests") or []
        rows = [
            (when(e.get("timestamp")), e.get("resource_id"), e.get("email"), e.get("count")) for e in entries
        ]
        header = ("time (UTC)", "resource", "email", "count")
        has_errors = False
    elif kind == "daily":
        days = body.get("days") or []
        rows = [(d.get("date"), d.get("requests"), d.get("errors"), d.get("requesters")) for d in days]
        header = ("day (UTC)", "requests", "errors", "requesters")
        has_errors = any(row[2] for row in rows)
    else:
        entries = body.get("errors") or []
        rows = [
            (when(e.get("timestamp")), e.get("resource_id"), e.get("email"), e.get("message"))
            for e in entries
        ]
        header = ("time (UTC)", "resource", "email", "message")
        has_errors = bool(rows)
    if rows:
        for line in table(rows, header):
            out.text(line)
    else:
        out.text("no requests" if kind != "errors" else "no errors")
    return 1 if args.exit_on_errors and has_errors else 0


def non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(text)


def add_stats_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("statistics options")
    group.add_argument("-o", "--offset", type=non_negative, default=default(0), help="entries to skip (0)")
    group.add_argument("-l", "--limit", type=non_negative, default=default(100), help="entries to show (100)")
    group.add_argument("-r", "--resource", metavar="RESOURCE_ID", default=default(None), help="one resource")
    group.add_argument("-e", "--email", default=default(None), help="one requester (requests, errors)")
    group.add_argument("--days", type=non_negative, default=default(30), help="days to show (daily; 30)")
    group.add_argument(
        "-x",
        dest="exit_on_errors",
        action="store_true",
        default=default(False),
        help="exit 1 when the statistics show errors",
    )
