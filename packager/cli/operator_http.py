"""The operator command's side of the HTTP API: requests over urllib, the events stream, and its errors.

`Service` talks to the ingress; failures become a `CliError` (exit status 1), a `RefusedError` when the
service answered with an error status, or a `UsageError` (exit status 2) for a wrong command line.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

SECRET_ENVIRONMENT_VARIABLE = "CKANPACKAGER_SECRET"
REQUEST_TIMEOUT = 30.0
# The events stream is quiet while a job waits; reconnecting after this long costs nothing (the service
# sends the job's current state first), and a dead connection is noticed.
EVENTS_READ_TIMEOUT = 60.0


class CliError(Exception):
    """A failure to report in one line on stderr, with the exit status to leave with."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class RefusedError(CliError):
    """The service answered with an HTTP error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class UsageError(CliError):
    """The command line or the defaults file is wrong (exit status 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)


@dataclass
class Service:
    """The ingress's HTTP API, over urllib."""

    host: str
    timeout: float = REQUEST_TIMEOUT

    def url(self, path: str) -> str:
        """The absolute URL of an API path (the host may carry a path prefix)."""
        return f"{self.host}/{path.lstrip('/')}"

    def post(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        """POST form-encoded `params` and return the JSON answer."""
        data = urllib.parse.urlencode(params).encode()
        request = urllib.request.Request(
            self.url(path), data=data, headers={"Accept": "application/json"}, method="POST"
        )
        return self._json(request)

    def get(self, path: str) -> dict[str, Any]:
        """GET `path` as JSON."""
        return self._json(urllib.request.Request(self.url(path), headers={"Accept": "application/json"}))

    def _json(self, request: urllib.request.Request) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                raise http_failure(self.host, exc.code, exc.reason, exc.read()) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise unreachable(self.host, exc) from None
        return _decode(self.host, body)

    def events(self, path: str) -> Iterator[tuple[str, str]]:
        """The (event, data) pairs of a Server-Sent Events stream, until the service closes it."""
        request = urllib.request.Request(self.url(path), headers={"Accept": "text/event-stream"})
        try:
            response = urllib.request.urlopen(request, timeout=EVENTS_READ_TIMEOUT)
        except urllib.error.HTTPError as exc:
            with exc:
                raise http_failure(self.host, exc.code, exc.reason, exc.read()) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise unreachable(self.host, exc) from None
        with response:
            yield from parse_sse(line.decode("utf-8", errors="replace") for line in response)


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """Server-Sent Events from text lines: (event name, data) for each event, `message` when unnamed."""
    event = ""
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)


def _decode(host: str, body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CliError(f"the answer from {host} is not JSON: is it a ckanpackager service?") from None
    if not isinstance(doc, dict):
        raise CliError(f"the answer from {host} is not a JSON object: is it a ckanpackager service?")
    return doc


def http_failure(host: str, status: int, reason: str, body: bytes) -> RefusedError:
    """A refusal by the service as one line, using the message it gave."""
    try:
        doc = json.loads(body)
        message = str(doc.get("message") or doc.get("msg") or reason) if isinstance(doc, dict) else reason
    except (json.JSONDecodeError, UnicodeDecodeError):
        message = reason
    if status == 401:
        text = (
            f"{host} refused the secret, or its absence ({message}): give the service's secret with -s, "
            f"${SECRET_ENVIRONMENT_VARIABLE} or the defaults file (the local stack keeps it in var/secret)"
        )
    elif status == 400:
        text = f"{host} rejected the request: {message}"
    elif status == 404:
        text = f"{host} has no such thing: {message}"
    elif status == 429:  # a fair limit: the message says when to ask again
        text = f"{host} is limiting requests: {message}"
    elif status == 503:
        text = f"{host} is unavailable: {message}"
    else:
        text = f"{host} answered {status}: {message}"
    return RefusedError(text, status)


def unreachable(host: str, exc: BaseException) -> CliError:
    """A connection failure as one line."""
    reason: Any = getattr(exc, "reason", None) or exc
    if isinstance(reason, socket.timeout | TimeoutError):
        text = "no answer in time"
    elif isinstance(reason, OSError) and reason.strerror:
        text = reason.strerror
    else:
        text = str(reason) or type(reason).__name__
    return CliError(f"cannot reach the service at {host}: {text}")
