"""The broker's classpath: the folder of Apache Kafka jars a node runs from.

It is `$KAFKA_HOME/libs` when `KAFKA_HOME` is set; otherwise Maven resolves `org.apache.kafka:kafka_2.13` and
its runtime dependencies (`kafka-pom.xml`) from Maven Central into a cache folder (`$PACKAGER_KAFKA_CACHE`,
default `~/.cache/ckanpackager/kafka-<version>`) that survives between runs. A resolution is staged in a
temporary folder and renamed into place once complete, so an interrupted one is never taken for a cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from packager.dev.kafka_process import BrokerError

DEFAULT_VERSION = "4.1.1"
POM = Path(__file__).with_name("kafka-pom.xml")


def kafka_version() -> str:
    """The Kafka version to run: `PACKAGER_KAFKA_VERSION` or the tested default."""
    return os.environ.get("PACKAGER_KAFKA_VERSION", DEFAULT_VERSION)


def cache_dir(version: str) -> Path:
    """Where the resolved jars of `version` are kept between runs."""
    root = os.environ.get("PACKAGER_KAFKA_CACHE") or Path.home() / ".cache" / "ckanpackager"
    return Path(root) / f"kafka-{version}"


def classpath_dir(version: str | None = None, *, log: Callable[[str], None] = print) -> Path:
    """The folder of broker jars: `$KAFKA_HOME/libs`, the cache, or a fresh Maven resolution."""
    if home := os.environ.get("KAFKA_HOME"):
        libs = Path(home) / "libs"
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise BrokerError(f"KAFKA_HOME={home} has no libs/kafka_2.13-*.jar")
        return libs
    version = version or kafka_version()
    target = cache_dir(version) / "libs"
    if (target / ".complete").exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is not installed: install it, or set KAFKA_HOME to a Kafka install")
    log(f"Resolving Apache Kafka {version} from Maven Central into {target} (first run only)...")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=target.parent))
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(POM),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    done = _run_saying_progress(cmd, log, "resolving")
    if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError(
            f"Maven could not resolve Kafka {version}:\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
        )
    (staging / ".complete").write_text(version)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _run_saying_progress(
    cmd: list[str], log: Callable[[str], None], doing: str, every: float = 10.0
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` to its end, capturing its output, and say every `every` seconds that it is still going."""
    started = time.monotonic()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        while True:
            try:
                out, err = proc.communicate(timeout=every)
                break
            except subprocess.TimeoutExpired:
                log(f"  ... still {doing} ({time.monotonic() - started:.0f}s)")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
