"""Events of what someone did to a job or to the views from outside: cancelling a job, resetting statistics.

Part of the public contract like every event in `packager.domain.events` (which registers them); kept here
so that module stays a readable size.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from packager.domain.event_base import Event

# Who may cancel a job: the operator (the shared secret) or its requester (the job's cancel token).
BY_OPERATOR, BY_REQUESTER = "operator", "requester"


@dataclasses.dataclass(frozen=True, slots=True)
class CancelRequested(Event):
    """Someone asked to cancel job `job_id`; one per partition of the events topic (`cache_key` "*").

    The ingress does not know which partition holds the job, so it asks every partition: the steward of
    the job's own partition acts (ends the job with `PackageCancelled`, or does nothing when it has
    already ended), the others ignore it. Not terminal: the job's steward decides.
    """

    TYPE: ClassVar[str] = "CancelRequested"
    cache_key: str  # "*": addressed to every partition
    partition: int
    by: str  # "operator" or "requester"


@dataclasses.dataclass(frozen=True, slots=True)
class PackageCancelled(Event):
    """Terminal: the job was cancelled before it ended; a build in progress stopped and left no file.

    `lane` is where its build was queued ("" when it had none: it waited for an identical request's build,
    or was cancelled before it was planned). Carries the requester fields like the other terminal events,
    for the optional "cancelled" email (EMAIL_CANCELLATIONS).
    """

    TYPE: ClassVar[str] = "PackageCancelled"
    cache_key: str
    resource_id: str
    ckan_host: str
    lane: str
    by: str  # "operator" or "requester"
    email: str = ""
    requester: str = ""
    requester_domain: str = ""
    email_sealed: str = ""
    callback_sealed: str = ""  # the request's webhook callback URL, sealed (docs/http-api.md#webhooks)


@dataclasses.dataclass(frozen=True, slots=True)
class StatisticsReset(Event):
    """An operator reset the `requests` or `errors` statistics (`ckanpackager reset`); `cache_key` "*".

    Nothing is deleted from the log: from this event on, the views list and count only the entries of
    `which` that occurred after `occurred_at` (the cut), whatever order the partitions are folded in.
    """

    TYPE: ClassVar[str] = "StatisticsReset"
    cache_key: str  # "*": not about one request
    which: str  # "requests" or "errors"
