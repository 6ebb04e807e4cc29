"""A real CKAN 2.12 with its datastore, on free loopback ports, for the `real_ckan` tests and the benchmark.

What `start` does (each step only when not already done, so a second start is quick):

1. Debian's `postgresql`, `redis-server`, `libpq-dev` (to build psycopg2) and `libmagic1` are installed if
   missing (root, apt-get; `packager.dev.processes.ensure_debian_packages`).
2. CKAN `CKAN_VERSION` from PyPI, with its pinned requirements (`ckan[requirements]`) and gunicorn, goes into
   its own virtualenv cached in `~/.cache/ckanpackager/ckan-<version>` (`$PACKAGER_CKAN_CACHE` overrides the
   parent folder), like the Kafka jars: installed once, reused by every later run.
3. PostgreSQL (`packager.dev.postgres`) with CKAN's two databases and roles (`ckan_default` writes,
   `datastore_default` only reads), Redis on its own port, and `packager.dev.solr_standin` instead of Solr:
   CKAN 2.12 needs Solr only to index datasets when they are created; the datastore API never reads it.
4. A `ckan.ini` with the datastore plugin, `ckan db init`, the datastore's permissions, a sysadmin and an API
   token (kept in `<state_dir>/setup.json`).
5. CKAN under gunicorn (two sync workers) on a free port, ready once `status_show` answers.

`stop` ends every process it started, by pid, and removes the database cluster unless `keep_data` (the
benchmark keeps its loaded table that way). `CkanApi` calls the action API; `create_table` loads a table
through `datastore_create` (or through PostgreSQL's COPY for big benchmark tables).

CLI: `packager dev real-ckan start|stop|status [--state-dir DIR] [--keep-data]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from packager.dev import postgres
from packager.dev.processes import (
    ServiceError,
    alive,
    ensure_debian_packages,
    free_port,
    port_open,
    run,
    spawn,
    terminate,
    wait_until,
)

CKAN_VERSION = "2.12.0"
GUNICORN = "gunicorn>=23,<28"
DEBIAN_PACKAGES = ("postgresql", "redis-server", "libpq-dev", "libmagic1")
RECORD = "real_ckan.json"
SETUP = "setup.json"
ADMIN = "packager_admin"
ORGANIZATION = "packager-tests"

_WSGI = '''"""CKAN as a WSGI application for gunicorn (written by packager.dev.real_ckan)."""
import os
from logging.config import fileConfig

from ckan.cli import CKANConfigLoader
from ckan.config.middleware import make_app

_ini = os.environ["CKAN_INI"]
fileConfig(_ini)
application = make_app(CKANConfigLoader(_ini).get_config())
'''


@dataclass(frozen=True, slots=True)
class RealCkan:
    """A running CKAN started by this module."""

    url: str
    api_token: str
    state_dir: str
    postgres_port: int
    redis_port: int
    solr_port: int
    gunicorn_pid: int
    redis_pid: int
    solr_pid: int

    @property
    def action_url(self) -> str:
        """The `datastore_search` URL the packager is given."""
        return f"{self.url}/api/3/action/datastore_search"


def cache_root() -> Path:
    """Where the CKAN virtualenv is cached between runs."""
    root = os.environ.get("PACKAGER_CKAN_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "ckanpackager"


def venv_dir() -> Path:
    """The cached virtualenv of `CKAN_VERSION`."""
    return cache_root() / f"ckan-{CKAN_VERSION}"


def install(*, log: Callable[[str], None] = print) -> Path:
    """Make sure the Debian packages and the cached CKAN virtualenv are there; returns the virtualenv."""
    ensure_debian_packages(DEBIAN_PACKAGES, log=log)
    venv = venv_dir()
    marker = venv / ".complete"
    if marker.exists() and marker.read_text().strip() == f"{CKAN_VERSION} {GUNICORN}":
        return venv
    log(f"installing CKAN {CKAN_VERSION} from PyPI into {venv} (once; a few minutes)...")
    venv.parent.mkdir(parents=True, exist_ok=True)
    if not (venv / "bin" / "python").exists():
        run([sys.executable, "-m", "venv", str(venv)], what="creating CKAN's virtualenv")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run([*pip, f"ckan[requirements]=={CKAN_VERSION}", GUNICORN], what=f"pip install ckan {CKAN_VERSION}")
    marker.write_text(f"{CKAN_VERSION} {GUNICORN}")
    return venv


def _ckan_env(ini: Path) -> dict[str, str]:
    return {**os.environ, "CKAN_INI": str(ini)}


def _ckan(venv: Path, ini: Path, *args: str, what: str, input_text: str | None = None) -> str:
    return run(
        [str(venv / "bin" / "ckan"), "-c", str(ini), *args],
        what=what,
        env=_ckan_env(ini),
        input_text=input_text,
    )


def _setup_databases(server: postgres.Postgres, passwords: Mapping[str, str]) -> None:
    postgres.psql(
        server,
        f"CREATE ROLE ckan_default LOGIN PASSWORD '{passwords['ckan_default']}';\n"
        f"CREATE ROLE datastore_default LOGIN PASSWORD '{passwords['datastore_default']}';\n"
        "CREATE DATABASE ckan_default OWNER ckan_default ENCODING 'utf-8';\n"
        "CREATE DATABASE datastore_default OWNER ckan_default ENCODING 'utf-8';\n",
    )


def _configure(
    venv: Path, ini: Path, state_dir: Path, ports: Mapping[str, int], setup: Mapping[str, Any]
) -> None:
    if not ini.exists():
        run([str(venv / "bin" / "ckan"), "generate", "config", str(ini)], what="ckan generate config")
    pg, pw = ports["postgres"], setup["passwords"]
    storage = state_dir / "storage"
    storage.mkdir(exist_ok=True)
    options = {
        "sqlalchemy.url": f"postgresql://ckan_default:{pw['ckan_default']}@127.0.0.1:{pg}/ckan_default",
        "ckan.datastore.write_url": (
            f"postgresql://ckan_default:{pw['ckan_default']}@127.0.0.1:{pg}/datastore_default"
        ),
        "ckan.datastore.read_url": (
            f"postgresql://datastore_default:{pw['datastore_default']}@127.0.0.1:{pg}/datastore_default"
        ),
        "ckan.site_url": f"http://127.0.0.1:{ports['ckan']}",
        "solr_url": f"http://127.0.0.1:{ports['solr']}/solr/ckan",
        "ckan.redis.url": f"redis://127.0.0.1:{ports['redis']}/0",
        "ckan.plugins": "datastore",
        "ckan.storage_path": str(storage),
        "ckan.auth.create_unowned_dataset": "true",
        "debug": "false",
    }
    run(
        [str(venv / "bin" / "ckan"), "config-tool", str(ini), *(f"{k}={v}" for k, v in options.items())],
        what="ckan config-tool",
    )


def status(state_dir: Path) -> RealCkan | None:
    """The CKAN recorded in `state_dir` if its gunicorn is alive."""
    record = Path(state_dir) / RECORD
    if not record.exists():
        return None
    found = RealCkan(**json.loads(record.read_text()))
    return found if alive(found.gunicorn_pid) else None


def start(
    state_dir: Path, *, workers: int = 2, timeout: float = 180.0, log: Callable[[str], None] = print
) -> RealCkan:
    """Install what is missing; start PostgreSQL, Redis, the Solr stand-in and CKAN, until CKAN answers."""
    state_dir = Path(state_dir).resolve()
    if (running := status(state_dir)) is not None:
        return running
    venv = install(log=log)
    state_dir.mkdir(parents=True, exist_ok=True)
    ini = state_dir / "ckan.ini"
    setup_file = state_dir / SETUP
    setup: dict[str, Any] = json.loads(setup_file.read_text()) if setup_file.exists() else {}
    started: list[int] = []
    try:
        server = postgres.start(state_dir / "postgres", log=log)
        if not setup.get("databases"):
            setup["passwords"] = {
                name: secrets.token_hex(12) for name in ("ckan_default", "datastore_default")
            }
            _setup_databases(server, setup["passwords"])
            setup["databases"] = True
            setup_file.write_text(json.dumps(setup))
        ports = {"postgres": server.port, "redis": free_port(), "solr": free_port(), "ckan": free_port()}
        redis_log = state_dir / "redis.log"
        redis_argv = ["redis-server", "--port", str(ports["redis"]), "--bind", "127.0.0.1"]
        redis_argv += ["--save", "", "--appendonly", "no", "--dir", str(state_dir)]
        redis_pid = spawn(redis_argv, redis_log)
        started.append(redis_pid)
        solr_log = state_dir / "solr.log"
        solr_pid = spawn(
            [sys.executable, "-m", "packager.dev.solr_standin", "--port", str(ports["solr"])], solr_log
        )
        started.append(solr_pid)
        wait_until(
            lambda: port_open(ports["redis"]), timeout=30, what="Redis", pid=redis_pid, log_file=redis_log
        )
        wait_until(
            lambda: port_open(ports["solr"]),
            timeout=30,
            what="the Solr stand-in",
            pid=solr_pid,
            log_file=solr_log,
        )
        _configure(venv, ini, state_dir, ports, setup)
        if not setup.get("token"):
            _ckan(venv, ini, "db", "init", what="ckan db init")
            permissions = _ckan(
                venv, ini, "datastore", "set-permissions", what="ckan datastore set-permissions"
            )
            postgres.psql(server, permissions, database="datastore_default")
            password = secrets.token_urlsafe(16)
            _ckan(
                venv,
                ini,
                "user",
                "add",
                ADMIN,
                "email=admin@example.org",
                f"password={password}",
                what="ckan user add",
            )
            _ckan(venv, ini, "sysadmin", "add", ADMIN, what="ckan sysadmin add")
            out = _ckan(venv, ini, "user", "token", "add", ADMIN, "packager", what="ckan user token add")
            setup["token"] = [line.strip() for line in out.splitlines() if line.strip()][-1]
            setup_file.write_text(json.dumps(setup))
        (state_dir / "wsgi.py").write_text(_WSGI)
        ckan_log = state_dir / "ckan.log"
        argv = [
            str(venv / "bin" / "gunicorn"),
            "--chdir",
            str(state_dir),
            "--bind",
            f"127.0.0.1:{ports['ckan']}",
        ]
        argv += ["--workers", str(workers), "--timeout", "600", "--graceful-timeout", "5", "wsgi:application"]
        gunicorn_pid = spawn(argv, ckan_log, env=_ckan_env(ini))
        started.append(gunicorn_pid)
        found = RealCkan(
            url=f"http://127.0.0.1:{ports['ckan']}",
            api_token=setup["token"],
            state_dir=str(state_dir),
            postgres_port=server.port,
            redis_port=ports["redis"],
            solr_port=ports["solr"],
            gunicorn_pid=gunicorn_pid,
            redis_pid=redis_pid,
            solr_pid=solr_pid,
        )
        (state_dir / RECORD).write_text(json.dumps(asdict(found)))
        api = CkanApi(found.url, found.api_token)
        wait_until(api.answers, timeout=timeout, what="CKAN", pid=gunicorn_pid, log_file=ckan_log)
        if not setup.get("organization"):
            api.action("organization_create", {"name": ORGANIZATION, "title": "Packager tests"})
            setup["organization"] = ORGANIZATION
            setup_file.write_text(json.dumps(setup))
        return found
    except BaseException:
        for pid in reversed(started):
            terminate(pid, timeout=10)
        with contextlib.suppress(FileNotFoundError):
            (state_dir / RECORD).unlink()
        postgres.stop(state_dir / "postgres", keep_data=bool(setup.get("token")))
        raise


def stop(state_dir: Path, *, keep_data: bool = False) -> bool:
    """Stop everything `start` started for `state_dir`; remove the databases unless `keep_data`."""
    state_dir = Path(state_dir).resolve()
    record = state_dir / RECORD
    was_running = False
    if record.exists():
        found = RealCkan(**json.loads(record.read_text()))
        for pid in (found.gunicorn_pid, found.solr_pid, found.redis_pid):
            was_running = terminate(pid, timeout=20) or was_running
        record.unlink()
    postgres.stop(state_dir / "postgres", keep_data=keep_data)
    if not keep_data:
        with contextlib.suppress(FileNotFoundError):
            (state_dir / SETUP).unlink()
        shutil.rmtree(state_dir / "storage", ignore_errors=True)
    return was_running


class CkanApiError(RuntimeError):
    """CKAN's action API answered with an error."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class CkanApi:
    """A small synchronous client of CKAN's action API (for fixtures and benchmarks, not the packager)."""

    def __init__(self, url: str, token: str = "") -> None:
        self.url = url.rstrip("/")
        self.token = token

    def answers(self) -> bool:
        """Whether CKAN answers `status_show`."""
        try:
            self.action("status_show", {}, timeout=5)
        except (OSError, CkanApiError):
            return False
        return True

    def raw(
        self, path: str, data: bytes | None = None, *, token: str | None = None, timeout: float = 600
    ) -> tuple[int, bytes]:
        """POST (or GET when `data` is None) to a path; returns the status and the body."""
        headers = {"Content-Type": "application/json"}
        key = self.token if token is None else token
        if key:
            headers["Authorization"] = key
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def action(
        self, name: str, data: Mapping[str, Any], *, token: str | None = None, timeout: float = 600
    ) -> Any:
        """Call an action; return its `result` or raise `CkanApiError`."""
        status, body = self.raw(
            f"/api/3/action/{name}", json.dumps(data).encode(), token=token, timeout=timeout
        )
        try:
            doc = json.loads(body)
        except ValueError:
            raise CkanApiError(status, body[:500]) from None
        if status != 200 or not doc.get("success"):
            raise CkanApiError(status, doc.get("error", doc))
        return doc["result"]


def create_table(
    api: CkanApi,
    name: str,
    fields: Sequence[Mapping[str, str]],
    records: Iterable[Mapping[str, Any]],
    *,
    private: bool = False,
    chunk: int = 5000,
) -> str:
    """A dataset `name` with one datastore resource of these fields and records; returns the resource id."""
    package = api.action(
        "package_create", {"name": name, "owner_org": ORGANIZATION, "private": private, "title": name}
    )
    batch: list[Mapping[str, Any]] = []
    resource_id = ""
    for record in records:
        batch.append(record)
        if len(batch) == chunk:
            resource_id = _push(api, package["id"], resource_id, fields, batch)
            batch = []
    if batch or not resource_id:
        resource_id = _push(api, package["id"], resource_id, fields, batch)
    return resource_id


def _push(
    api: CkanApi, package_id: str, resource_id: str, fields: Sequence[Mapping[str, str]], batch: list[Any]
) -> str:
    if not resource_id:
        result = api.action(
            "datastore_create",
            {
                "resource": {"package_id": package_id, "name": "data"},
                "fields": list(fields),
                "records": batch,
            },
        )
        return str(result["resource_id"])
    api.action("datastore_upsert", {"resource_id": resource_id, "records": batch, "method": "insert"})
    return resource_id


def copy_rows(found: RealCkan, resource_id: str, columns: Sequence[str], csv_text: str) -> None:
    """Append CSV rows (no header) to a datastore table through PostgreSQL's COPY: fast, for big tables.

    The datastore's trigger fills `_full_text` as for rows inserted through the API.
    """
    server = postgres.status(Path(found.state_dir) / "postgres")
    if server is None:
        raise ServiceError("PostgreSQL of this CKAN is not running")
    names = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
    sql = f'\\copy "{resource_id}" ({names}) FROM STDIN WITH (FORMAT csv)\n{csv_text}\\.\n'
    postgres.psql(server, sql, database="datastore_default")


def main(argv: Sequence[str]) -> int:
    """`packager dev real-ckan start|stop|status [--state-dir DIR] [--keep-data]`."""
    parser = argparse.ArgumentParser(prog="packager dev real-ckan")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument(
        "--state-dir", default="var/real-ckan", help="where CKAN's config and records are kept"
    )
    parser.add_argument("--keep-data", action="store_true", help="on stop, keep the databases for a restart")
    args = parser.parse_args(list(argv))
    state_dir = Path(args.state_dir)
    try:
        if args.action == "start":
            begun = time.monotonic()
            found = start(state_dir, log=lambda m: print(m, file=sys.stderr))
            print(f"{found.url}  (token in {Path(found.state_dir) / SETUP}; {time.monotonic() - begun:.0f}s)")
        elif args.action == "stop":
            print("stopped" if stop(state_dir, keep_data=args.keep_data) else "nothing was running")
        else:
            running = status(state_dir)
            if running is None:
                print("not running")
                return 1
            print(running.url)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
