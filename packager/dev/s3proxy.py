"""A real S3-compatible server for tests and local stacks: s3proxy on a folder, on a free loopback port.

s3proxy (Apache 2.0, `org.gaul:s3proxy`) speaks the S3 API (multipart uploads, ranged reads, presigned URLs)
over its `filesystem` backend: a bucket is a folder of `<state_dir>/data`. Its runnable jar is resolved with
Maven from Maven Central (`s3proxy-pom.xml`) into a cache folder that survives between runs
(`$PACKAGER_S3PROXY_CACHE`, default `~/.cache/ckanpackager/s3proxy-<version>`), staged and renamed into place
so an interrupted resolution is never taken for a cache, as the Kafka jars are. It runs on the machine's
Java 17. `start` records the pid, port and a pair of credentials made for this server in
`<state_dir>/s3proxy.json` (owner-only); `stop` ends exactly that pid and removes the data unless asked to
keep it.

CLI: `packager dev s3 start|stop|status [--state-dir DIR] [--port N] [--bucket NAME] [--keep-data]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from packager.dev.kafka_jars import _run_saying_progress
from packager.dev.processes import ServiceError, alive, free_port, spawn, terminate, wait_until

DEFAULT_VERSION = "4.1.0"  # built for Java 17 (class files of version 61)
POM = Path(__file__).with_name("s3proxy-pom.xml")
RECORD = "s3proxy.json"
DEFAULT_BUCKET = "ckanpackager"


@dataclass(frozen=True, slots=True)
class S3Proxy:
    """A running s3proxy started by this module."""

    port: int
    pid: int
    jar: str
    data_dir: str
    log_file: str
    bucket: str
    access_key_id: str
    secret_access_key: str

    @property
    def endpoint(self) -> str:
        """The server's base URL (path-style requests)."""
        return f"http://127.0.0.1:{self.port}"

    def settings_env(self, prefix: str = "") -> dict[str, str]:
        """The `PACKAGER_*` settings that point the service's store at this server, under `prefix`."""
        url = f"s3://{self.bucket}/{prefix.strip('/')}" if prefix.strip("/") else f"s3://{self.bucket}"
        return {
            "PACKAGER_STORE_URL": url,
            "PACKAGER_S3_ENDPOINT_URL": self.endpoint,
            "PACKAGER_S3_ACCESS_KEY_ID": self.access_key_id,
            "PACKAGER_S3_SECRET_ACCESS_KEY": self.secret_access_key,
        }


def s3proxy_version() -> str:
    """The s3proxy version to run: `PACKAGER_S3PROXY_VERSION` or the tested default."""
    return os.environ.get("PACKAGER_S3PROXY_VERSION", DEFAULT_VERSION)


def cache_dir(version: str) -> Path:
    """Where the resolved jar of `version` is kept between runs."""
    root = os.environ.get("PACKAGER_S3PROXY_CACHE") or Path.home() / ".cache" / "ckanpackager"
    return Path(root) / f"s3proxy-{version}"


def jar_path(version: str | None = None, *, log: Callable[[str], None] = print) -> Path:
    """s3proxy's runnable jar: from the cache, or resolved with Maven from Maven Central the first time."""
    version = version or s3proxy_version()
    target = cache_dir(version)
    jar = target / f"s3proxy-{version}-jar-with-dependencies.jar"
    if (target / ".complete").exists() and jar.is_file():
        return jar
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError("Maven (mvn) is not installed: it resolves s3proxy from Maven Central")
    log(f"Resolving s3proxy {version} from Maven Central into {target} (first run only)...")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="s3proxy-", dir=target.parent))
    cmd = [mvn, "-B", "-q", "-f", str(POM), f"-Ds3proxy.version={version}", "dependency:copy-dependencies"]
    cmd += [f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
    done = _run_saying_progress(cmd, log, "resolving")
    if done.returncode != 0 or not (staging / jar.name).is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise ServiceError(
            f"Maven could not resolve s3proxy {version}:\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
        )
    (staging / ".complete").write_text(version)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return jar


def status(state_dir: Path) -> S3Proxy | None:
    """The server recorded in `state_dir` if its process is alive."""
    record = Path(state_dir) / RECORD
    if not record.exists():
        return None
    server = S3Proxy(**json.loads(record.read_text()))
    return server if alive(server.pid, running=server.jar) else None


def _answers(port: int) -> bool:
    """Whether s3proxy answers HTTP (any status: an unsigned request gets 403 once it is up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def start(
    state_dir: Path,
    *,
    port: int | None = None,
    bucket: str = DEFAULT_BUCKET,
    timeout: float = 90.0,
    log: Callable[[str], None] = print,
) -> S3Proxy:
    """Start s3proxy on a folder of `state_dir` with `bucket` created; return once it answers requests."""
    state_dir = Path(state_dir).resolve()
    if (running := status(state_dir)) is not None:
        return running
    java = shutil.which("java")
    if java is None:
        raise ServiceError("Java is not installed: s3proxy needs Java 17 or newer")
    jar = jar_path(log=log)
    data = state_dir / "data"
    (data / bucket).mkdir(parents=True, exist_ok=True)  # the filesystem backend's bucket is a folder
    port = port or free_port()
    server = S3Proxy(
        port=port,
        pid=0,
        jar=str(jar),
        data_dir=str(data),
        log_file=str(state_dir / "s3proxy.log"),
        bucket=bucket,
        access_key_id=f"dev-{secrets.token_hex(6)}",
        secret_access_key=secrets.token_hex(20),
    )
    properties = state_dir / "s3proxy.properties"
    properties.touch(mode=0o600)
    properties.write_text(
        "\n".join(
            [
                f"s3proxy.endpoint=http://127.0.0.1:{port}",
                "s3proxy.authorization=aws-v2-or-v4",
                f"s3proxy.identity={server.access_key_id}",
                f"s3proxy.credential={server.secret_access_key}",
                "jclouds.provider=filesystem",
                f"jclouds.filesystem.basedir={data}",
                "",
            ]
        )
    )
    pid = spawn([java, "-Xmx256m", "-jar", str(jar), "--properties", str(properties)], Path(server.log_file))
    server = S3Proxy(**{**asdict(server), "pid": pid})
    record = state_dir / RECORD
    record.touch(mode=0o600)
    record.write_text(json.dumps(asdict(server)))
    try:
        wait_until(
            lambda: _answers(port), timeout=timeout, what="s3proxy", pid=pid, log_file=Path(server.log_file)
        )
    except ServiceError:
        stop(state_dir)
        raise
    return server


def stop(state_dir: Path, *, keep_data: bool = False, timeout: float = 30.0) -> bool:
    """Stop the server recorded in `state_dir`; remove its data unless `keep_data`. True if it ran."""
    state_dir = Path(state_dir).resolve()
    record = state_dir / RECORD
    if not record.exists():
        return False
    server = S3Proxy(**json.loads(record.read_text()))
    was_running = alive(server.pid, running=server.jar) and terminate(server.pid, timeout=timeout)
    with contextlib.suppress(FileNotFoundError):
        record.unlink()
    if not keep_data:
        shutil.rmtree(server.data_dir, ignore_errors=True)
    return was_running


def main(argv: Sequence[str]) -> int:
    """`packager dev s3 start|stop|status [--state-dir DIR] [--port N] [--bucket NAME] [--keep-data]`."""
    parser = argparse.ArgumentParser(prog="packager dev s3")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--state-dir", default="var/s3", help="where the server's record and data are kept")
    parser.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    parser.add_argument("--bucket", default=DEFAULT_BUCKET, help="the bucket to create")
    parser.add_argument("--keep-data", action="store_true", help="on stop, keep the objects for a restart")
    args = parser.parse_args(list(argv))
    state_dir = Path(args.state_dir)
    try:
        if args.action == "start":
            server = start(
                state_dir, port=args.port, bucket=args.bucket, log=lambda m: print(m, file=sys.stderr)
            )
        elif args.action == "stop":
            print("stopped" if stop(state_dir, keep_data=args.keep_data) else "no server was running")
            return 0
        elif (found := status(state_dir)) is None:
            print("not running")
            return 1
        else:
            server = found
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Lines a shell can `export` (the secret key is the server's own, made at start: a local test server).
    for name, value in server.settings_env().items():
        print(f"{name}={value}")
    return 0
