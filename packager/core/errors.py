"""The packager's exceptions. One base class; the ingress maps each to an HTTP status and a JSON body."""

from __future__ import annotations


class PackagerError(Exception):
    """Base of every error the packager raises on purpose."""

    http_status = 500
    error_name = "InternalError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(PackagerError):
    """The settings are unusable; the service refuses to start."""


class BadRequestError(PackagerError):
    """The request is malformed or names something the service will not touch."""

    http_status = 400
    error_name = "BadRequestError"


class NotAuthorizedError(PackagerError):
    """The shared secret is wrong or missing."""

    http_status = 401
    error_name = "NotAuthorizedError"


class PayloadTooLargeError(PackagerError):
    """The request body is over the configured size."""

    http_status = 413
    error_name = "PayloadTooLargeError"


class TooManyRequestsError(PackagerError):
    """A fair limit refused the request (429); `retry_after`: seconds until asking again may succeed."""

    http_status = 429
    error_name = "TooManyRequestsError"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnavailableError(PackagerError):
    """A dependency (the Kafka broker) cannot be reached; the request was not accepted."""

    http_status = 503
    error_name = "ServiceUnavailableError"


class EventDecodeError(PackagerError):
    """A record on a topic is not a valid event: `reason` names why, in a word fit for a metric label."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class PackagingError(PackagerError):
    """An expected failure while building a package; it becomes a `PackageFailed` event."""
