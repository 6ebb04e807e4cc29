"""A CKAN-compatible `datastore_search` server over synthetic tables, for tests and benchmarks.

It is made of five modules: this one (the aiohttp app, fault injection, `serve_ckan` and the command line),
`ckan_table` (the synthetic tables), `ckan_params` (parameter checks), `ckan_query` (filters, `q`, `sort`,
selection) and `ckan_records` (the four `records_format`s). What it offers:

- `SyntheticTable`: a table of any size whose rows are computed from the row index and a seed, so millions of
  rows cost no memory; its columns cover every CKAN value the packager must write out (numbers, nulls, text
  with commas, quotes, newlines, tabs and non-ASCII characters, booleans, arrays, JSON objects, timestamps).
- `create_ckan_app`: an aiohttp app answering `datastore_search` the way CKAN 2.12 does
  (see shared/reference/ckan-datastore-facts.md): filters, `q`, `fields`, `sort`, offset and keyset paging,
  `rows_max` capping, the four `records_format`s, CKAN's error shapes and raw-token authorisation; plus the
  paging of two other datastore backends (a Solr-style `cursor`, the versioned datastore's `after`).
- `resource_show` and `package_show` of a dataset per table, shaped as CKAN 2.12's (`ckan_packages`).
- `Faults`: deterministic fault injection (5xx answers, slow answers, bodies cut mid-way), counted in
  `app[STATS]`, so client retries can be tested. With `admin=True` (`--admin`), `POST /_dev/faults` replaces
  them at run time (a JSON object of `Faults` fields; `{}` heals) and `GET /_dev/faults` shows them and the
  counters, so a chaos campaign can switch a burst of 5xx on and off in a server running as a process.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import random
import sys
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from aiohttp import web

from packager.dev.ckan_packages import add_show_routes
from packager.dev.ckan_params import IGNORED_GET_PARAMS, CkanError, validate_params, validation_error
from packager.dev.ckan_query import QueryPlan, TableIndex, plan_query
from packager.dev.ckan_records import render_without_gc
from packager.dev.ckan_table import SyntheticTable, json_default

ACTION_PATH = "/api/3/action/datastore_search"
ADMIN_PATH = "/_dev/faults"  # served only with admin=True (--admin)
BACKENDS = (None, "solr", "versioned-datastore")
DEFAULT_LIMIT = 100  # ckan.datastore.search.rows_default

# What tests and benchmarks use, some of it defined in the modules this one is built from.
__all__ = [
    "ACTION_PATH",
    "ADMIN_PATH",
    "STATS",
    "Faults",
    "SyntheticTable",
    "TableIndex",
    "create_ckan_app",
    "main",
    "plan_query",
    "serve_app",
    "serve_ckan",
    "validate_params",
]


# ---------------------------------------------------------------------------------------------------------
# Fault injection


@dataclass(frozen=True)
class Faults:
    """Deterministic fault injection; each rate is the fraction of requests it hits."""

    error_rate: float = 0.0  # answered 500, 502 or 503
    timeout_rate: float = 0.0  # answered only after `timeout_seconds`
    timeout_seconds: float = 30.0
    reset_rate: float = 0.0  # headers and part of the body sent, then the connection closed
    slow_page_delay: float = 0.0  # seconds added to every answer
    seed: int = 0


STATS = web.AppKey("ckan_stats", dict[str, int])
"""Counters of a running app: requests, errors_injected, timeouts_injected, resets_injected, pages, rows."""


@dataclass
class _ServerState:
    indexes: dict[str, TableIndex]
    rows_max: int
    api_token: str | None
    backend: str | None
    faults: Faults | None
    rng: random.Random
    # Requests that just got a fault: their next attempt is answered normally, even with other clients
    # interleaving, so a client that retries always gets through.
    exempt: OrderedDict[bytes, None] = field(default_factory=OrderedDict)


_STATE = web.AppKey("ckan_state", _ServerState)

_GATEWAY_BODIES = {
    500: b"<html><body><h1>500 Internal Server Error</h1></body></html>",
    502: b"<html><body><h1>502 Bad Gateway</h1></body></html>",
    503: b"<html><body><h1>503 Service Unavailable</h1></body></html>",
}


def _draw_fault(state: _ServerState, fingerprint: bytes) -> str | None:
    """Which fault (if any) this request gets: a request that just got one never gets one again."""
    faults = state.faults
    if faults is None:
        return None
    # Always draw the same numbers per request, so a run is reproducible from the seed.
    error, timeout, reset = state.rng.random(), state.rng.random(), state.rng.random()
    if fingerprint in state.exempt:
        del state.exempt[fingerprint]
        return None
    fault = None
    if error < faults.error_rate:
        fault = "error"
    elif reset < faults.reset_rate:
        fault = "reset"
    elif timeout < faults.timeout_rate:
        fault = "timeout"
    if fault:
        state.exempt[fingerprint] = None
        while len(state.exempt) > 4096:
            state.exempt.popitem(last=False)
    return fault


async def _send_truncated(request: web.Request, body: bytes) -> web.StreamResponse:
    """Announce the whole body, send about half of it, then close the connection."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json;charset=utf-8"})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: max(1, len(body) // 2)])
    transport = request.transport
    if transport is not None:
        transport.close()  # flushes what was written, then closes: the client sees a short body
    return response


# ---------------------------------------------------------------------------------------------------------
# HTTP


async def _read_raw_params(request: web.Request, body: bytes) -> dict[str, Any]:
    if request.method == "GET":
        raw: dict[str, Any] = {}
        for key in request.query:
            if key in IGNORED_GET_PARAMS or key in raw:
                continue
            values = request.query.getall(key)
            raw[key] = values[0] if len(values) == 1 else list(values)
        return raw
    if not body.strip():
        return {}
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        return {key: form.getall(key)[0] if len(form.getall(key)) == 1 else form.getall(key) for key in form}
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CkanError(400, "Bad request", f"Bad request - JSON Error: {exc}") from None
    if not isinstance(parsed, dict):
        raise CkanError(
            400,
            "Bad request",
            "Bad request - JSON Error: Request data JSON decoded to "
            f"{parsed!r} but it needs to be a dictionary.",
        )
    return parsed


def _help_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}/api/3/action/help_show?name=datastore_search"


def _json_response(status: int, payload: dict[str, Any]) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(payload, default=json_default),
        content_type="application/json",
        charset="utf-8",
    )


def _encode_cursor(position: int) -> str:
    return "AoE" + base64.urlsafe_b64encode(f"p{position}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    if cursor == "*":
        return 0
    try:
        if not cursor.startswith("AoE"):
            raise ValueError(cursor)
        text = cursor[3:]
        decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        if not decoded.startswith("p"):
            raise ValueError(cursor)
        return int(decoded[1:])
    except (ValueError, UnicodeDecodeError):
        raise validation_error({"cursor": [f"Unable to parse cursor: {cursor!r}"]}) from None


def _position_after(selection: Sequence[int], plan: QueryPlan, after: Any) -> int:
    """Where the page after the row named by a versioned-datastore `after` value starts."""
    if not isinstance(after, list) or len(after) != 1 or isinstance(after[0], bool):
        raise validation_error({"after": [f"invalid value {after!r}"]})
    try:
        index = int(after[0]) - 1
    except (TypeError, ValueError):
        raise validation_error({"after": [f"invalid value {after!r}"]}) from None
    if plan.keyset_operator == "gt":
        return bisect_right(selection, index)
    if plan.keyset_operator == "lt":
        ascending = selection[::-1]
        return len(selection) - bisect_left(ascending, index)
    for position, found in enumerate(selection):
        if found == index:
            return position + 1
    raise validation_error({"after": [f"invalid value {after!r}"]})


async def _search(request: web.Request, state: _ServerState, raw: Mapping[str, Any]) -> dict[str, Any]:
    params = validate_params(raw, state.backend)
    index = state.indexes.get(params.resource_id)
    if index is None:
        raise CkanError(404, "Not Found Error", f'Not found: Resource "{params.resource_id}" was not found.')
    if state.api_token is not None and request.headers.get("Authorization", "") != state.api_token:
        raise CkanError(
            403,
            "Authorization Error",
            f"Access denied: User not authorized to read resource {params.resource_id}",
        )
    table = index.table
    if params.records_format == "lists" and (params.q or params.full_text):
        # CKAN 2.12 builds a full-text search with `lists` into two statements, which it refuses.
        raise validation_error({"query": ["Query is not a single statement."]})
    plan = plan_query(table, params)
    limit = min(DEFAULT_LIMIT if params.limit is None else params.limit, state.rows_max)
    offset = params.offset or 0
    if state.backend == "solr" and params.cursor is not None and offset:
        raise validation_error({"cursor": ["Cursor functionality requires start=0"]})

    selection = await index.select(plan)
    total = len(selection)
    extra: dict[str, Any] = {}
    keyset = plan.keyset_operator is not None and any(
        isinstance(spec, dict) and ("gt" in spec or "lt" in spec)
        for column, spec in params.filters.items()
        if column == "_id"
    )
    start = 0 if keyset else offset
    if state.backend == "solr" and params.cursor is not None:
        start = _decode_cursor(params.cursor)
    elif state.backend == "versioned-datastore" and params.after is not None:
        start = _position_after(selection, plan, params.after)
    page = selection[start : start + limit] if limit else range(0)

    result: dict[str, Any] = {
        "include_total": params.include_total,
        "resource_id": params.resource_id,
        "fields": [{"id": name, "type": table.types[name]} for name in plan.output]
        + [{"id": name, "type": "float"} for name in plan.rank_columns],
        "records_format": params.records_format,
    }
    if limit:
        result["records"] = render_without_gc(table, plan, page, params.records_format)
    else:  # CKAN 2.12 answers `limit=0` with an empty page, not without one
        result["records"] = "" if params.records_format in ("csv", "tsv") else []
    result["limit"] = limit
    if params.offset is not None:
        result["offset"] = params.offset
    # CKAN answers with the call's own parameters beside the results.
    for echoed in ("filters", "q", "sort", "full_text", "plain", "language", "distinct"):
        if echoed in params.given:
            result[echoed] = {"filters": params.filters, "q": params.q}.get(echoed, params.given[echoed])
    if params.include_next_page:
        result["include_next_page"] = True
    if params.include_total:
        result["total"] = total
    if params.include_next_page and plan.keyset_operator and len(page):
        result["next_page"] = {"_id": {plan.keyset_operator: page[-1] + 1}}
    if state.backend == "solr":
        extra["_backend"] = "solr"
        if params.cursor is not None:
            extra["next_cursor"] = _encode_cursor(start + len(page)) if len(page) else params.cursor
    elif state.backend == "versioned-datastore":
        extra["_backend"] = "versioned-datastore"
        if limit and start + len(page) < total:
            extra["after"] = [page[-1] + 1]
    result.update(extra)
    return {"rows": len(page), "result": result}


async def _handle_search(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    stats = request.app[STATS]
    stats["requests"] += 1
    body = await request.read()
    fingerprint = request.method.encode() + b" " + request.path_qs.encode() + b"\n" + body
    fault = _draw_fault(state, fingerprint)
    faults = state.faults
    if faults is not None and faults.slow_page_delay > 0:
        await asyncio.sleep(faults.slow_page_delay)
    if fault == "error":
        stats["errors_injected"] += 1
        status = state.rng.choice((500, 502, 503))
        return web.Response(status=status, body=_GATEWAY_BODIES[status], content_type="text/html")
    if fault == "timeout" and faults is not None:
        stats["timeouts_injected"] += 1
        await asyncio.sleep(faults.timeout_seconds)

    help_url = _help_url(request)
    try:
        answer = await _search(request, state, await _read_raw_params(request, body))
    except CkanError as exc:
        payload = {"help": help_url, "success": False, "error": exc.error_body()}
        return _json_response(exc.status, payload)
    stats["pages"] += 1
    stats["rows"] += answer["rows"]
    payload = {"help": help_url, "success": True, "result": answer["result"]}
    if fault == "reset":
        stats["resets_injected"] += 1
        return await _send_truncated(request, orjson.dumps(payload, default=json_default))
    return _json_response(200, payload)


def create_ckan_app(
    tables: Mapping[str, SyntheticTable],
    *,
    rows_max: int = 32000,
    api_token: str | None = None,
    backend: str | None = None,
    faults: Faults | None = None,
    admin: bool = False,
    datasets: Mapping[str, Mapping[str, Any]] | None = None,
) -> web.Application:
    """An aiohttp app serving `datastore_search` (GET and POST, /api/3/action and /api/action) over tables.

    Each table is also a resource of a dataset of its own (`resource_show`, `package_show`); `datasets` gives
    some of a dataset's fields by resource id (`packager.dev.ckan_packages`). `admin` adds `/_dev/faults` to
    change the faults while the server runs (development only).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if rows_max < 1:
        raise ValueError("rows_max must be at least 1")
    app = web.Application()
    app[_STATE] = _ServerState(
        indexes={rid: TableIndex(table) for rid, table in tables.items()},
        rows_max=rows_max,
        api_token=api_token,
        backend=backend,
        faults=faults,
        rng=random.Random(faults.seed if faults else 0),
    )
    app[STATS] = dict.fromkeys(
        ("requests", "errors_injected", "timeouts_injected", "resets_injected", "pages", "rows"), 0
    )
    for path in (ACTION_PATH, "/api/action/datastore_search"):
        app.router.add_get(path, _handle_search, allow_head=False)
        app.router.add_post(path, _handle_search)
    add_show_routes(app, list(tables), datasets or {}, api_token)
    if admin:
        app.router.add_get(ADMIN_PATH, _show_faults)
        app.router.add_post(ADMIN_PATH, _set_faults)
    return app


def _faults_body(app: web.Application) -> dict[str, Any]:
    faults = app[_STATE].faults
    stats: dict[str, int] = app[STATS]
    return {"faults": None if faults is None else asdict(faults), "stats": dict(stats)}


async def _show_faults(request: web.Request) -> web.Response:
    """GET /_dev/faults: the faults in force and the counters."""
    return _json_response(200, _faults_body(request.app))


async def _set_faults(request: web.Request) -> web.Response:
    """POST /_dev/faults: replace the faults with the JSON object's `Faults` fields (`{}`: none)."""
    try:
        raw = orjson.loads(await request.read() or b"{}")
        if not isinstance(raw, dict):
            raise TypeError("a JSON object of Faults fields is expected")
        faults = Faults(**raw) if raw else None
    except (orjson.JSONDecodeError, TypeError) as exc:
        return _json_response(400, {"error": str(exc)})
    state = request.app[_STATE]
    state.faults = faults
    if faults is not None:
        state.rng = random.Random(faults.seed)
    return _json_response(200, _faults_body(request.app))


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run an app built by create_ckan_app on a free port; yield its datastore_search URL."""
    # A short shutdown timeout: a request sleeping in an injected timeout must not hold up the cleanup.
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield f"http://{bound_host}:{bound_port}{ACTION_PATH}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serve_ckan(tables: Mapping[str, SyntheticTable], **kwargs: Any) -> AsyncIterator[str]:
    """Serve `tables` on 127.0.0.1 and a free port; yield the URL ending in /api/3/action/datastore_search."""
    async with serve_app(create_ckan_app(tables, **kwargs)) as url:
        yield url


def main(argv: Sequence[str] | None = None) -> int:
    """`packager dev ckan`: serve one synthetic table until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="packager dev ckan", description="A CKAN-compatible datastore_search server over synthetic rows."
    )
    parser.add_argument("--rows", type=int, default=10_000, help="rows in the table (default 10000)")
    parser.add_argument("--port", type=int, default=5005, help="port to listen on (default 5005)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--resource-id", default="synthetic", help="the table's resource id")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic rows")
    parser.add_argument("--rows-max", type=int, default=32000, help="ckan.datastore.search.rows_max")
    parser.add_argument("--token", default=None, help="require this raw API token in Authorization")
    parser.add_argument("--backend", choices=["solr", "versioned-datastore"], default=None)
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction of requests answered 5xx")
    parser.add_argument("--timeout-rate", type=float, default=0.0, help="fraction of requests delayed")
    parser.add_argument("--timeout-seconds", type=float, default=30.0, help="delay of a delayed request")
    parser.add_argument("--reset-rate", type=float, default=0.0, help="fraction of bodies cut mid-way")
    parser.add_argument("--slow-page-delay", type=float, default=0.0, help="seconds added to every page")
    parser.add_argument(
        "--admin", action="store_true", help=f"serve {ADMIN_PATH} to change the faults at run time"
    )
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--"]:
        # `packager dev ckan -- --rows N`: the separator the wrapping command needs to pass options on.
        arguments = arguments[1:]
    args = parser.parse_args(arguments)

    faults = None
    if args.error_rate or args.timeout_rate or args.reset_rate or args.slow_page_delay:
        faults = Faults(
            error_rate=args.error_rate,
            timeout_rate=args.timeout_rate,
            timeout_seconds=args.timeout_seconds,
            reset_rate=args.reset_rate,
            slow_page_delay=args.slow_page_delay,
            seed=args.seed,
        )
    table = SyntheticTable(args.resource_id, args.rows, seed=args.seed)
    app = create_ckan_app(
        {table.resource_id: table},
        rows_max=args.rows_max,
        api_token=args.token,
        backend=args.backend,
        faults=faults,
        admin=args.admin,
    )
    url = f"http://{args.host}:{args.port}{ACTION_PATH}?resource_id={table.resource_id}"
    print(f"[ckan] serving {table.rows} rows of {table.resource_id!r} at {url}", file=sys.stderr, flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    return 0
