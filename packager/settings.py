"""The service's configuration: one typed, frozen object read from `PACKAGER_*` variables and a TOML file.

Names follow the original ckanpackager's options (`SECRET`, `STORE_DIRECTORY`, `CACHE_TIME`, `SLOW_REQUEST`,
`EMAIL_*`, `SMTP_*`, ...) so an operator can carry a configuration across. Precedence, lowest first: the
defaults below, the TOML file named by `PACKAGER_CONFIG` (keys in either case, e.g. `SECRET` or `secret`),
then `PACKAGER_<NAME>` environment variables.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from packager.errors import ConfigurationError

ENV_PREFIX = "PACKAGER_"
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Seconds added to JOB_TIMEOUT before a partial file left behind (a `kill -9`) is swept.
PARTIAL_SWEEP_MARGIN = 10 * 60

DEFAULT_EMAIL_BODY = """Hello,

The data you requested from {ckan_host} (resource {resource_id}) is ready. Download it here:
{download_url}

This was job {job_id}; its status page is {status_url}

{doi_body}
Best wishes,
The Data Portal Bot
"""

DEFAULT_EMAIL_BODY_HTML = """<html lang="en">
<body>
<p>Hello,</p>
<p>The data you requested from {ckan_host} (resource {resource_id}) is ready.
<a href="{download_url}">Download it here</a>.</p>
<p>This was job {job_id}; <a href="{status_url}">its status page</a>.</p>
{doi_body_html}
<p>Best wishes,<br>The Data Portal Bot</p>
</body>
</html>
"""

DEFAULT_DOI_BODY = """A DOI has been created for this data: https://doi.org/{doi} (it may take a few hours to
become active). Please cite this DOI when you use the data.
"""

DEFAULT_DOI_BODY_HTML = """<p>A DOI has been created for this data:
<a href="https://doi.org/{doi}">https://doi.org/{doi}</a> (it may take a few hours to become active).
Please cite this DOI when you use the data.</p>
"""


DEFAULT_FAILURE_SUBJECT = "Your download from {ckan_host} could not be prepared"

DEFAULT_FAILURE_BODY = """Hello,

We could not prepare the data you requested from {ckan_host} (resource {resource_id}).

What went wrong: {error}

Details: {status_url}

You can request the download again from the portal. If it keeps failing, please contact the portal's
administrators and quote this job id: {job_id}

Best wishes,
The Data Portal Bot
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything the ingress and the workers are configured by. Build it with `load_settings()`."""

    # The shared secret every request must carry. No default: the service refuses to start without one.
    secret: str = ""

    # HTTP ingress.
    host: str = "127.0.0.1"
    port: int = 8765
    max_body_size: int = 1024 * 1024
    # Private, loopback and link-local targets are refused unless this is on (tests and local stacks).
    allow_private_urls: bool = False
    # Base of the download links put in emails; empty means http://{host}:{port}/downloads.
    download_url_base: str = ""
    # Hosts `api_url` may name (lower case); empty means any host that passes the address checks.
    allowed_api_hosts: tuple[str, ...] = ()

    # Kafka.
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = "packager"
    partitions: int = 8
    # Copies of every service topic and table changelog, set when the topics are created. Use 3 on a
    # production cluster (with the brokers' min.insync.replicas=2: the producers already wait for acks=all).
    replication_factor: int = 1
    kafka_send_timeout: float = 10.0

    # Statistics keep a keyed hash of each address (and its domain) instead of the address.
    anonymize_emails: bool = False
    # Where the ingress keeps its read-model snapshot; empty means `<store_directory>/.readmodel`.
    read_model_directory: str = ""

    # Worker.
    store_directory: str = "/tmp/ckanpackager"
    # Where partial files are built; empty means `<store_directory>/.partial` (same filesystem, so the final
    # rename is atomic).
    temp_directory: str = ""
    worker_lanes: tuple[str, ...] = ("fast", "slow")
    cache_time: int = 60 * 60 * 24
    # Seconds between the janitor's sweeps for packages older than CACHE_TIME.
    janitor_interval: float = 60.0
    # Seconds without a heartbeat after which the broker gives a dead worker's partitions to the others
    # (Kafka's group session timeout; the broker accepts 6 to 300 by default).
    session_timeout: float = 15.0
    # Completion is owned by the log (docs/delivery.md): a build holds a lease, renewed by a heartbeat every
    # third of LEASE_TIME; a build silent for LEASE_TIME seconds is started again elsewhere, at most
    # MAX_ATTEMPTS times in all before the job fails.
    lease_time: float = 30.0
    max_attempts: int = 3
    # Builds one worker runs at once per lane (they mostly wait on the network).
    worker_concurrency: int = 2
    # On SIGTERM/SIGINT a worker stops taking work and lets running builds finish for this many seconds;
    # builds still running then are released to other workers at once.
    drain_timeout: float = 20.0
    # Emails one worker's mailer hands to the SMTP server at once. A crash repeats at most this many emails
    # (those the server accepted just before it); an SMTP outage holds emails only, never other work.
    mail_concurrency: int = 4
    page_size: int = 5000
    slow_request: int = 50_000
    fetch_connect_timeout: float = 10.0
    # Seconds without a byte on an open connection (a silent server); a server that trickles bytes is
    # stopped by JOB_TIMEOUT instead.
    fetch_read_timeout: float = 60.0
    fetch_max_redirects: int = 5
    # Seconds one build may take, from PackageStarted to its ZIP in the store; then it fails.
    job_timeout: float = 6 * 60 * 60
    # Largest file `/package_url` downloads, bytes (0: no cap).
    max_download_bytes: int = 10 * 1024**3
    # Largest body of one CKAN `datastore_search` answer, bytes (0: no cap). A page of PAGE_SIZE rows
    # is held in memory while it is parsed, so this bounds a worker's memory per job.
    max_page_bytes: int = 256 * 1024**2
    # Deflate level of the ZIPs, 1 (fastest) to 9 (smallest). Level 1 packages datastore rows about 30%
    # faster than 6 for archives about a third larger (docs/benchmarks.md).
    zip_compresslevel: int = 1

    # Email.
    email_from: str = "ckanpackager@localhost"
    email_subject: str = "Resource from {ckan_host}"
    email_body: str = DEFAULT_EMAIL_BODY
    email_body_html: str = DEFAULT_EMAIL_BODY_HTML
    doi_body: str = DEFAULT_DOI_BODY
    doi_body_html: str = DEFAULT_DOI_BODY_HTML
    failure_subject: str = DEFAULT_FAILURE_SUBJECT
    failure_body: str = DEFAULT_FAILURE_BODY
    # Files whose contents replace the templates above (empty: use the setting's text).
    email_subject_file: str = ""
    email_body_file: str = ""
    email_body_html_file: str = ""
    doi_body_file: str = ""
    doi_body_html_file: str = ""
    failure_subject_file: str = ""
    failure_body_file: str = ""
    # Base of the job status links (`{status_url}`); empty means DOWNLOAD_URL_BASE with its `/downloads`
    # replaced by `/jobs` when it ends so (the ingress's own public address), else http://{host}:{port}/jobs.
    status_url_base: str = ""
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_login: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    smtp_tls: bool = False
    smtp_timeout: float = 30.0
    # While the SMTP server is down or answers 4xx, retry with exponential backoff (capped at
    # smtp_retry_max_delay) for this many seconds, then record EmailFailed.
    smtp_retry_for: float = 3600.0
    smtp_retry_max_delay: float = 60.0
    # Email the requester when a job fails.
    email_failures: bool = True

    # Darwin Core Archives (the original's DWC_* options). Empty paths mean the definitions shipped in
    # packager/dwc_data; DWC_EXTENSION_FIELDS is a JSON object (empty: associatedMedia -> Simple Multimedia).
    dwc_id_field: str = "_id"
    dwc_core_extension: str = ""
    dwc_additional_extensions: tuple[str, ...] = ()
    dwc_dynamic_term: str = "dynamicProperties"
    dwc_extension_fields: str = ""

    # Operations. LOG_LEVEL is a standard level name; LOG_FORMAT is `json` (one object per line) or `text`.
    log_level: str = "INFO"
    log_format: str = "json"
    # Identical WARNING and ERROR lines (a client's connection errors while the broker is down) are written
    # once, then at most once per this many seconds with the count of those left out; 0 writes them all.
    log_repeat_interval: float = 10.0
    # The worker's metrics and health server (the ingress serves /metrics and /health/* on its own port).
    # Port 0 picks a free port, logged at start.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 8766

    @property
    def download_base(self) -> str:
        """Base URL for download links, without a trailing slash."""
        base = self.download_url_base or f"http://{self.host}:{self.port}/downloads"
        return base.rstrip("/")

    @property
    def status_base(self) -> str:
        """Base URL of job status links, without a trailing slash."""
        if self.status_url_base:
            return self.status_url_base.rstrip("/")
        download_base = self.download_url_base.rstrip("/")
        if download_base.endswith("/downloads"):
            # The ingress's public address serves both (a store behind another server serves only ZIPs).
            return download_base.removesuffix("/downloads") + "/jobs"
        return f"http://{self.host}:{self.port}/jobs"

    @property
    def partial_directory(self) -> Path:
        """Directory where files are built before they are renamed into the store."""
        return Path(self.temp_directory or Path(self.store_directory) / ".partial")

    @property
    def partial_max_age(self) -> float:
        """Seconds after which an unmodified partial file can belong to no running build (then swept).

        Every file a build writes is created after the build started, and a build is stopped at
        JOB_TIMEOUT; the margin covers a file thread still finishing after its build was cancelled.
        """
        return self.job_timeout + PARTIAL_SWEEP_MARGIN

    def require_secret(self) -> None:
        """Refuse to run a service without a shared secret."""
        if not self.secret:
            raise ConfigurationError(
                "No shared secret is configured. Set PACKAGER_SECRET (or SECRET in the file named by "
                "PACKAGER_CONFIG) to a long random string; the CKAN extension must send the same value."
            )
        if len(self.secret) < 16:
            raise ConfigurationError("The shared secret is shorter than 16 characters; use a longer one.")


def _convert(name: str, raw: Any, annotation: Any) -> Any:
    """Convert a TOML or environment value to the field's declared type."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
        origin = get_origin(annotation)
    try:
        if annotation is bool:
            if isinstance(raw, bool):
                return raw
            lowered = str(raw).strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if annotation is int:
            if isinstance(raw, bool):
                raise ValueError(raw)
            return int(raw)
        if annotation is float:
            return float(raw)
        if origin is tuple:
            items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
            return tuple(str(i).strip() for i in items if str(i).strip())
        if annotation is str:
            return str(raw)
    except ValueError:
        raise ConfigurationError(f"Setting {name.upper()} has an invalid value: {raw!r}") from None
    raise ConfigurationError(f"Setting {name.upper()} has an unsupported type")  # pragma: no cover


def load_settings(
    environ: Mapping[str, str] | None = None, config_file: str | Path | None = None, **overrides: Any
) -> Settings:
    """Read settings from defaults, an optional TOML file and `PACKAGER_*` variables, then `overrides`."""
    env = os.environ if environ is None else environ
    hints = get_type_hints(Settings)
    names = {f.name for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}

    path = config_file or env.get(f"{ENV_PREFIX}CONFIG")
    if path:
        try:
            with open(path, "rb") as fh:
                document = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigurationError(f"Configuration file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"Configuration file {path} is not valid TOML: {exc}") from None
        for key, raw in document.items():
            name = key.lower()
            if name not in names:
                raise ConfigurationError(f"Unknown setting {key} in {path}")
            values[name] = _convert(name, raw, hints[name])

    for name in names:
        raw = env.get(f"{ENV_PREFIX}{name.upper()}")
        if raw is not None:
            values[name] = _convert(name, raw, hints[name])

    values.update(overrides)
    settings = Settings(**values)
    if settings.log_format not in LOG_FORMATS:
        raise ConfigurationError(f"Setting LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}")
    if settings.log_level.upper() not in LOG_LEVELS:
        raise ConfigurationError(f"Setting LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
    if not 0 <= settings.log_repeat_interval <= 3600:
        raise ConfigurationError("Setting LOG_REPEAT_INTERVAL must be between 0 and 3600 seconds")
    if not 0 <= settings.metrics_port <= 65535:
        raise ConfigurationError("Setting METRICS_PORT must be a TCP port (0: any free port)")
    unknown_lanes = set(settings.worker_lanes) - {"fast", "slow"}
    if unknown_lanes:
        raise ConfigurationError(f"Unknown worker lane(s): {', '.join(sorted(unknown_lanes))}")
    if settings.job_timeout <= 0:
        raise ConfigurationError("Setting JOB_TIMEOUT must be a positive number of seconds")
    for name in ("max_download_bytes", "max_page_bytes"):
        if getattr(settings, name) < 0:
            raise ConfigurationError(f"Setting {name.upper()} must be a number of bytes (0: no cap)")
    if settings.replication_factor < 1:
        raise ConfigurationError("Setting REPLICATION_FACTOR must be at least 1")
    if not 6 <= settings.session_timeout <= 300:
        raise ConfigurationError("Setting SESSION_TIMEOUT must be between 6 and 300 seconds")
    if not 3 <= settings.lease_time <= 3600:
        raise ConfigurationError("Setting LEASE_TIME must be between 3 and 3600 seconds")
    if not 1 <= settings.max_attempts <= 100:
        raise ConfigurationError("Setting MAX_ATTEMPTS must be between 1 and 100")
    if not 1 <= settings.worker_concurrency <= 256:
        raise ConfigurationError("Setting WORKER_CONCURRENCY must be between 1 and 256")
    if not 0 <= settings.drain_timeout <= 3600:
        raise ConfigurationError("Setting DRAIN_TIMEOUT must be between 0 and 3600 seconds")
    if not 1 <= settings.mail_concurrency <= 1024:
        raise ConfigurationError("Setting MAIL_CONCURRENCY must be between 1 and 1024")
    return settings
