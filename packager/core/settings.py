"""The service's configuration: one typed, frozen object read from `PACKAGER_*` variables and a TOML file.

Names follow the original ckanpackager's options (`SECRET`, `STORE_DIRECTORY`, `CACHE_TIME`, `SLOW_REQUEST`,
`EMAIL_*`, `SMTP_*`, ...) so an operator can carry a configuration across. Precedence, lowest first: the
defaults below, the TOML file named by `PACKAGER_CONFIG` (keys in either case, e.g. `SECRET` or `secret`),
then `PACKAGER_<NAME>` environment variables.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from packager.core.email_texts import (
    DEFAULT_DOI_BODY,
    DEFAULT_DOI_BODY_HTML,
    DEFAULT_EMAIL_BODY,
    DEFAULT_EMAIL_BODY_HTML,
    DEFAULT_FAILURE_BODY,
    DEFAULT_FAILURE_SUBJECT,
)
from packager.core.errors import ConfigurationError

ENV_PREFIX = "PACKAGER_"
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Seconds added to JOB_TIMEOUT before a partial file left behind (a `kill -9`) is swept.
PARTIAL_SWEEP_MARGIN = 10 * 60


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
    # Fair limits (docs/http-api.md#fair-limits), 0 = no limit: jobs one requester (their pseudonym) may have
    # queued or running, requests they may make in an hour, and jobs one resource may have in progress.
    max_active_jobs_per_requester: int = 0
    max_requests_per_hour_per_requester: int = 0
    max_active_jobs_per_resource: int = 0

    # Kafka.
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = "packager"
    partitions: int = 8
    # Copies of every service topic and table changelog, set when the topics are created. Use 3 on a
    # production cluster (with the brokers' min.insync.replicas=2: the producers already wait for acks=all).
    replication_factor: int = 1
    kafka_send_timeout: float = 10.0

    # Statistics and job pages show requesters as a pseudonym and the address's domain. Turning it off shows
    # the addresses of requesters not erased, deliberately (the views still store only pseudonyms).
    anonymize_emails: bool = True
    # Requesters' personal data (docs/privacy.md). Pseudonyms are an HMAC of the address under a key derived
    # from PSEUDONYM_SECRET; data keys are stored wrapped under a key derived from KEY_SEALING_SECRET. Empty
    # means derived from SECRET. The PREVIOUS_* lists keep values written under older secrets readable.
    pseudonym_secret: str = ""
    previous_pseudonym_secrets: tuple[str, ...] = ()
    key_sealing_secret: str = ""
    previous_key_sealing_secrets: tuple[str, ...] = ()
    # The database of the read side's views (jobs, statistics), written by `packager projector` and read by
    # every ingress: `postgresql://user:password@host:port/db` to share it between processes and machines,
    # or `sqlite:///path`; empty means an embedded SQLite file in READ_MODEL_DIRECTORY.
    database_url: str = ""
    # Where the embedded SQLite views live; empty means `<store_directory>/.readmodel`.
    read_model_directory: str = ""

    # Worker.
    store_directory: str = "/tmp/ckanpackager"
    # Where partial files are built; empty means `<store_directory>/.partial` (same filesystem, so the final
    # rename is atomic).
    temp_directory: str = ""
    # Where finished ZIPs are published: empty means the folder STORE_DIRECTORY; `s3://bucket/prefix` an
    # S3-compatible object store (ZIPs are still built in TEMP_DIRECTORY, then uploaded in parts).
    store_url: str = ""
    s3_endpoint_url: str = ""  # empty: AWS S3 itself
    s3_region: str = "us-east-1"
    # Empty: the store client's own AWS_* environment variables (or the instance's role).
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    s3_part_size: int = 16 * 1024 * 1024
    # How /downloads serves an object: `stream` (through the ingress) or `redirect` (302 to a presigned URL,
    # valid S3_PRESIGN_TIME seconds: for an endpoint the requesters can reach).
    s3_downloads: str = "stream"
    s3_presign_time: float = 300.0
    worker_lanes: tuple[str, ...] = ("fast", "slow")
    cache_time: int = 60 * 60 * 24
    # Seconds between the janitor's sweeps for packages older than CACHE_TIME.
    janitor_interval: float = 60.0
    # Seconds before a package expires at which its requesters are emailed a reminder, once (0: none).
    expiry_notice_before: int = 0
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
    # Deflate level of the ZIPs, 1 (fastest) to 9 (smallest; 0 stores). Level 1 packages datastore rows about
    # 30% faster than 6 for archives about a third larger (docs/benchmarks.md).
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
    # The requester's pages (`/`, `/jobs/{id}`, errors in a browser): the portal they belong to, a link back
    # to it, its logo, two colours (#rrggbb: the band and links, and the page's background; pick colours with
    # a contrast of 4.5:1 to white and to the text) and a file replacing the pages' template.
    portal_name: str = ""
    portal_url: str = ""
    portal_logo_url: str = ""
    page_accent_colour: str = "#1d4f91"
    page_background_colour: str = "#ffffff"
    page_template_file: str = ""
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
    # Email the requester a short note when their job is cancelled (`POST /jobs/{id}/cancel`).
    email_cancellations: bool = False

    # Webhooks (docs/http-api.md#webhooks): a signed JSON POST about every finished job to the request's
    # `callback_url` and to WEBHOOK_URL (empty: none). WEBHOOK_SECRET keys the signatures; without it no
    # webhook is sent and a request naming a `callback_url` is refused. A receiver that does not answer 2xx
    # is retried with exponential backoff (capped at WEBHOOK_RETRY_MAX_DELAY) for WEBHOOK_RETRY_FOR seconds.
    webhook_url: str = ""
    webhook_secret: str = ""
    webhook_timeout: float = 10.0
    webhook_retry_for: float = 3600.0
    webhook_retry_max_delay: float = 300.0
    # Webhooks one worker sends at once; a slow receiver holds only webhooks, never other work.
    webhook_concurrency: int = 8

    # Darwin Core Archives (the original's DWC_* options). Empty paths mean the definitions shipped in
    # packager/domain/dwc_data; DWC_EXTENSION_FIELDS is a JSON object
    # (empty: associatedMedia -> Simple Multimedia).
    dwc_id_field: str = "_id"
    dwc_core_extension: str = ""
    dwc_additional_extensions: tuple[str, ...] = ()
    dwc_dynamic_term: str = "dynamicProperties"
    dwc_extension_fields: str = ""
    # The EML template of GBIF-ready archives (for_gbif without eml); empty: packager/domain/dwc_data/eml.xml.
    eml_template_file: str = ""

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

    @property
    def pseudonym_key(self) -> str:
        """The secret requesters' pseudonyms are computed under (PSEUDONYM_SECRET, else SECRET)."""
        return self.pseudonym_secret or self.secret

    @property
    def sealing_keys(self) -> tuple[str, ...]:
        """The secrets stored data keys may be wrapped under, the current (used for new keys) first."""
        return (self.key_sealing_secret or self.secret, *self.previous_key_sealing_secrets)

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
    environ: Mapping[str, str] | None = None, config_file: str | Path | None = None, /, **overrides: Any
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
    problems = settings_problems(settings)
    if problems:
        raise ConfigurationError("; ".join(problems))
    return settings


@dataclasses.dataclass(frozen=True, slots=True)
class Range:
    """The values a numeric setting accepts: `low` to `high` (None: unbounded), `low` excluded if `above`."""

    low: float
    high: float | None = None
    above: bool = False
    unit: str = ""
    note: str = ""  # what a special value means, e.g. "0: no cap"

    def allows(self, value: float) -> bool:
        """True when `value` is in the range (NaN and infinities never are)."""
        if not math.isfinite(value):
            return False
        if value <= self.low if self.above else value < self.low:
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        """The range in words, e.g. `1 to 65535`, `more than 0 seconds`, `at least 0 bytes`."""
        unit = f" {self.unit}" if self.unit else ""
        note = f"; {self.note}" if self.note else ""
        if self.high is None:
            return f"{'more than' if self.above else 'at least'} {_number(self.low)}{unit}{note}"
        return f"{_number(self.low)} to {_number(self.high)}{unit}{note}"


def _number(value: float) -> str:
    """A bound as an operator would write it: 1000000, not 1e+06."""
    return str(int(value)) if float(value).is_integer() else str(value)


POSITIVE_SECONDS = Range(0, above=True, unit="seconds")
TCP_PORT = Range(1, 65535)

# Every numeric setting and the values it accepts (a test checks that none is missing). A value outside
# stops the service at start-up, before it serves or builds anything.
RANGES: dict[str, Range] = {
    "port": TCP_PORT,
    "max_body_size": Range(1024, 2**30, unit="bytes"),
    "partitions": Range(1, 10_000),
    "replication_factor": Range(1, 100),
    "kafka_send_timeout": POSITIVE_SECONDS,
    "cache_time": Range(0, unit="seconds"),
    # S3's own limits on a multipart upload's parts (the last may be smaller).
    "s3_part_size": Range(5 * 2**20, 5 * 2**30, unit="bytes"),
    "s3_presign_time": Range(1, 7 * 24 * 3600, unit="seconds"),
    "janitor_interval": POSITIVE_SECONDS,
    "expiry_notice_before": Range(0, unit="seconds", note="0: no notice"),
    "max_active_jobs_per_requester": Range(0, 1_000_000, note="0: no limit"),
    "max_requests_per_hour_per_requester": Range(0, 1_000_000, note="0: no limit"),
    "max_active_jobs_per_resource": Range(0, 1_000_000, note="0: no limit"),
    # Kafka's group.min/max.session.timeout.ms defaults.
    "session_timeout": Range(6, 300, unit="seconds"),
    "lease_time": Range(3, 3600, unit="seconds"),
    "max_attempts": Range(1, 100),
    "worker_concurrency": Range(1, 256),
    "drain_timeout": Range(0, 3600, unit="seconds"),
    "mail_concurrency": Range(1, 1024),
    "page_size": Range(1, 1_000_000, unit="rows"),
    "slow_request": Range(0, unit="rows"),
    "fetch_connect_timeout": POSITIVE_SECONDS,
    "fetch_read_timeout": POSITIVE_SECONDS,
    "fetch_max_redirects": Range(0, 50),
    "job_timeout": POSITIVE_SECONDS,
    "max_download_bytes": Range(0, unit="bytes", note="0: no cap"),
    "max_page_bytes": Range(0, unit="bytes", note="0: no cap"),
    # zlib's levels: 0 stores, 9 compresses most.
    "zip_compresslevel": Range(0, 9, note="0 stores without compressing"),
    "smtp_port": TCP_PORT,
    "smtp_timeout": POSITIVE_SECONDS,
    "smtp_retry_for": Range(0, unit="seconds"),
    "smtp_retry_max_delay": POSITIVE_SECONDS,
    "webhook_timeout": POSITIVE_SECONDS,
    "webhook_retry_for": Range(0, unit="seconds"),
    "webhook_retry_max_delay": POSITIVE_SECONDS,
    "webhook_concurrency": Range(1, 1024),
    "metrics_port": Range(0, 65535, note="0: any free port"),
    "log_repeat_interval": Range(0, 3600, unit="seconds", note="0: every line is written"),
}

# Kafka's legal topic name characters; the prefix starts every topic's and the consumer group's name.
_TOPIC_PREFIX = re.compile(r"[A-Za-z0-9._-]{1,200}")


def settings_problems(settings: Settings) -> list[str]:
    """Every way `settings` is unusable: one sentence each, naming the setting, its value and the range."""
    problems = []
    for name, allowed in RANGES.items():
        value = getattr(settings, name)
        if not allowed.allows(value):
            problems.append(
                f"Setting {name.upper()}={value!r} is out of range (allowed: {allowed.describe()})"
            )
    if settings.log_format not in LOG_FORMATS:
        problems.append(f"Setting LOG_FORMAT={settings.log_format!r} must be one of {', '.join(LOG_FORMATS)}")
    if settings.log_level.upper() not in LOG_LEVELS:
        problems.append(f"Setting LOG_LEVEL={settings.log_level!r} must be one of {', '.join(LOG_LEVELS)}")
    unknown_lanes = set(settings.worker_lanes) - {"fast", "slow"}
    if unknown_lanes:
        problems.append(
            f"Setting WORKER_LANES names unknown worker lane(s): {', '.join(sorted(unknown_lanes))} "
            "(allowed: fast, slow)"
        )
    for name in ("host", "metrics_host", "kafka_bootstrap_servers", "store_directory", "email_from"):
        if not getattr(settings, name).strip():
            problems.append(f"Setting {name.upper()} is empty (allowed: any non-empty value)")
    if not _TOPIC_PREFIX.fullmatch(settings.topic_prefix):
        problems.append(
            f"Setting TOPIC_PREFIX={settings.topic_prefix!r} is not a Kafka topic name "
            "(allowed: 1 to 200 of the characters A-Z a-z 0-9 . _ -)"
        )
    for name in ("page_accent_colour", "page_background_colour"):
        value = getattr(settings, name)
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", value):
            problems.append(f"Setting {name.upper()}={value!r} is not a colour (allowed: #rrggbb)")
    for name in (
        "download_url_base",
        "status_url_base",
        "portal_url",
        "portal_logo_url",
        "s3_endpoint_url",
        "webhook_url",
    ):
        value = getattr(settings, name)
        if value and not value.startswith(("http://", "https://")):
            problems.append(
                f"Setting {name.upper()}={value!r} is not a URL (allowed: http:// or https://...)"
            )
    if settings.store_url and not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,62}(/.*)?", settings.store_url):
        problems.append(
            f"Setting STORE_URL={settings.store_url!r} is not an object store URL "
            "(allowed: s3://bucket or s3://bucket/prefix, or empty for STORE_DIRECTORY)"
        )
    if settings.s3_downloads not in ("stream", "redirect"):
        problems.append(f"Setting S3_DOWNLOADS={settings.s3_downloads!r} must be one of stream, redirect")
    if settings.database_url and not settings.database_url.startswith(
        ("sqlite:///", "postgresql://", "postgres://")
    ):
        problems.append(
            "Setting DATABASE_URL is not a database URL "
            "(allowed: postgresql://user:password@host:port/database, sqlite:///path, or empty)"
        )
    for name in ("pseudonym_secret", "key_sealing_secret"):
        value = getattr(settings, name)
        if value and len(value) < 16:
            problems.append(f"Setting {name.upper()} is shorter than 16 characters (allowed: 16 or more)")
    if settings.webhook_secret and len(settings.webhook_secret) < 16:
        problems.append("Setting WEBHOOK_SECRET is shorter than 16 characters (allowed: 16 or more)")
    if settings.webhook_url and not settings.webhook_secret:
        problems.append("Setting WEBHOOK_URL needs WEBHOOK_SECRET (the key its signatures are made with)")
    if settings.smtp_starttls and settings.smtp_tls:
        problems.append("Settings SMTP_STARTTLS and SMTP_TLS are both on (allowed: one of them at most)")
    return problems
