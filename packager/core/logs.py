"""Log lines: one JSON object per line (or plain text), tagged with the job they are about, secrets redacted.

The job a line is about comes from a context variable that the agents and the ingress set when they start
handling a job (`bind_job`), so code deep inside a job needs no extra argument to be traceable. Redaction
runs on the finished text of every line (message, exception, extra fields): the configured secrets are
replaced wherever they appear, and so is anything shaped like `secret=...`, `key=...`, `password=...` or an
`Authorization` header, which covers CKAN API keys that are not known in advance.

Identical warnings and errors are rate-limited (`RepeatFilter`): a Kafka client that cannot reach its broker
writes the same few lines dozens of times a second, which would bury everything else.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from packager.core.settings import Settings

JOB_ID: ContextVar[str | None] = ContextVar("job_id", default=None)

REDACTED = "[REDACTED]"

# `name=value`, `name: value`, `"name": "value"`, `'name': 'value'` for names that carry secrets. A name
# ending in `key` only counts on its own or as `api_key`/`apikey`, so `cache_key=...` stays readable. A value
# already replaced (a configured secret goes first) is matched whole, with whatever follows it: the `]` would
# otherwise end the value and leave `[REDACTED]]`.
_NAMED_SECRET = re.compile(
    r"""(?ix)
    (?<![\w-])
    (secret|password|passwd|smtp_password|api[_-]?key|key|key_sealed|token|access_token)
    (["']?\s*[=:]\s*["']?)
    (\[REDACTED\][^\s"'&,;}\]]*|[^\s"'&,;}\]]+)
    """
)
# An `Authorization` header in any notation, with or without a scheme word.
_AUTHORIZATION = re.compile(
    r"""(?ix)
    (authorization["']?\s*[=:,]\s*["']?)
    (?:(bearer|basic|token)\s+)?
    ([^\s"',;}\]]+)
    """
)
# JSON Web Tokens (CKAN 2.10+ API tokens are JWTs): three base64url parts, the first starting `eyJ`.
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
# Every match of the patterns above holds one of these (lower case; `eyJ` as is): ASCII text holding none of
# them is left as it is without running the patterns, as most lines are (an access line, a job's progress).
# Only ASCII text takes the shortcut: case-insensitive matching also pairs some other characters with ASCII
# letters (the Kelvin sign with `k`), which `lower()` would not show.
_SECRET_HINTS = ("secret", "pass", "key", "token", "authorization")

# Attributes every LogRecord has; anything else on a record came from `extra=` and is written out.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class Redactor:
    """Replaces known secrets and secret-shaped values in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is replaced whole. Very short values are left out:
        # replacing every "a" in a log would say nothing and hide everything.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        """The text with every secret replaced by `[REDACTED]`."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if text.isascii() and "eyJ" not in text:
            lowered = text.lower()
            if not any(hint in lowered for hint in _SECRET_HINTS):
                return text
        text = _AUTHORIZATION.sub(
            lambda m: f"{m.group(1)}{m.group(2) + ' ' if m.group(2) else ''}{REDACTED}", text
        )
        text = _NAMED_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        return _JWT.sub(REDACTED, text)

    def value(self, value: Any) -> Any:
        """Redact strings inside a JSON-able value (dicts, lists), leaving other values alone."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {
                k: REDACTED if _NAMED_SECRET.fullmatch(f"{k}=x") else self.value(v) for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value


def redacted_url(url: str) -> str:
    """The URL with any password replaced by `***` (for log lines and messages)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user, colon, _ = credentials.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


def redactor_for(settings: Settings) -> Redactor:
    """A redactor that knows the configured secrets (shared secret, SMTP password, object store key, webhook
    secret)."""
    return Redactor(
        [settings.secret, settings.smtp_password, settings.s3_secret_access_key, settings.webhook_secret]
    )


def current_job_id() -> str | None:
    """The job the running code is about, if any."""
    return JOB_ID.get()


def bind_job(job_id: str | None) -> None:
    """Tag the log lines of the running task (and tasks it starts) with `job_id` from now on."""
    JOB_ID.set(job_id)


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Tag the log lines written inside the block with `job_id`."""
    token = JOB_ID.set(job_id)
    try:
        yield
    finally:
        JOB_ID.reset(token)


def _job_id_of(record: logging.LogRecord) -> str | None:
    explicit = getattr(record, "job_id", None)
    return str(explicit) if explicit else current_job_id()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, job_id, exception, and `extra` fields."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single line of JSON."""
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": self.redact(record.getMessage()),
        }
        job_id = _job_id_of(record)
        if job_id:
            line["job_id"] = job_id
        for name, value in record.__dict__.items():
            if name not in _STANDARD_ATTRS and name != "job_id" and not name.startswith("_"):
                line[name] = self.redact.value(value)
        if record.exc_info:
            line["exc"] = self.redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exc"] = self.redact(record.exc_text)
        if record.stack_info:
            line["stack"] = self.redact(self.formatStack(record.stack_info))
        return orjson.dumps(line, default=lambda o: self.redact(str(o))).decode()


class TextFormatter(logging.Formatter):
    """`time LEVEL logger [job_id]: message`, redacted, for people reading a terminal."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(job)s: %(message)s")
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        """The record as text; a traceback follows on the next lines."""
        job_id = _job_id_of(record)
        # `%(job)s` of the format: set on the record for this call only.
        record.__dict__["job"] = f" [job {job_id}]" if job_id else ""
        try:
            return self.redact(super().format(record))
        finally:
            del record.__dict__["job"]


class RepeatFilter(logging.Filter):
    """Lets the first of identical WARNING-or-worse lines through, then at most one per `interval` seconds.

    Lines are identical when logger, level and finished message are. A line let through after others were
    left out says how many: `... (repeated 57 times)`, also as the field `repeated`. Lower levels (the access
    log, job progress) always pass.
    """

    def __init__(
        self,
        interval: float,
        *,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
        max_kinds: int = 1000,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.level = level
        self._clock = clock
        self._max_kinds = max_kinds
        # (logger, level, message) -> [when one was last let through, how many were left out since]
        self._seen: dict[tuple[str, int, str], list[float]] = {}
        self._lock = threading.Lock()  # Faust's consumer thread logs too

    def filter(self, record: logging.LogRecord) -> bool:
        """True to write the record (annotated with the count it stands for), False to leave it out."""
        if record.levelno < self.level or self.interval <= 0:
            return True
        message = record.getMessage()
        key = (record.name, record.levelno, message)
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.interval:
                seen[1] += 1
                return False
            left_out = int(seen[1]) if seen is not None else 0
            if seen is None and len(self._seen) >= self._max_kinds:
                self._forget_quiet(now)
            self._seen[key] = [now, 0]
        if left_out:
            record.msg, record.args = f"{message} (repeated {left_out} times)", None
            record.repeated = left_out
        return True

    def _forget_quiet(self, now: float) -> None:
        """Drop the kinds not seen for an interval (or all, if none is), so memory stays bounded."""
        quiet = [k for k, (at, _) in self._seen.items() if now - at >= self.interval]
        for k in quiet or list(self._seen):
            del self._seen[k]


def formatter_for(settings: Settings) -> logging.Formatter:
    """The formatter LOG_FORMAT asks for."""
    redact = redactor_for(settings)
    return JsonFormatter(redact) if settings.log_format == "json" else TextFormatter(redact)


def log_handler(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing to `stream` (standard error by default) in the configured format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter_for(settings))
    handler.addFilter(RepeatFilter(settings.log_repeat_interval))
    return handler


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> None:
    """Send every log record of the process through one handler in the configured format and level."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(log_handler(settings, stream))
    root.setLevel(settings.log_level.upper())


def faust_logging_config(settings: Settings) -> dict[str, Any]:
    """A `logging.config` dictionary for the Faust worker: no handler of its own (ours is added)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "root": {"level": settings.log_level.upper(), "handlers": []},
    }
