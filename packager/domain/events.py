"""Events: the public contract of the service, and their wire encoding.

Every record on a packager topic is an *envelope* (`event_id`, `type`, `schema_version`, `job_id`,
`occurred_at`, `payload`) encoded as JSON with orjson. The payload is one of the frozen dataclasses below,
named in the past tense. Events are never renamed or repurposed: a change of shape gets a new
`schema_version` and an upcaster (`packager.domain.upcasters`) that turns the stored older payload into the
current one.

Secrets never travel in clear: the shared secret is not part of any event, and a CKAN API key only appears
sealed (see `packager.domain.secrets`), and a requester's address only sealed under their data key, beside
their pseudonym (`packager.domain.requesters`, docs/privacy.md; older events keep it in clear in `email`).
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Annotated, Any, ClassVar, get_type_hints

import msgspec
import msgspec.structs
import orjson

from packager.core.errors import EventDecodeError
from packager.domain.event_base import Event, utc_now

# Defined apart so this module stays readable; part of the contract, imported from here like the rest.
from packager.domain.operator_events import CancelRequested as CancelRequested
from packager.domain.operator_events import PackageCancelled as PackageCancelled
from packager.domain.operator_events import StatisticsReset as StatisticsReset
from packager.domain.timestamps import RFC3339_PATTERN as RFC3339_PATTERN
from packager.domain.timestamps import is_timestamp
from packager.domain.upcasters import UPCASTERS


@dataclasses.dataclass(frozen=True, slots=True)
class PackageRequested(Event):
    """The ingress accepted a request; `request` holds its normalised parameters (no secret, sealed key).

    v2 added `requester` (pseudonym), `requester_domain` and `email_sealed` (the address sealed under the
    requester's data key); `email` is "" from v2 on (v1 kept the address there, in clear)."""

    TYPE: ClassVar[str] = "PackageRequested"
    VERSION: ClassVar[int] = 2
    kind: str  # "url", later "datastore" and "dwc"
    cache_key: str
    resource_id: str
    email: str
    ckan_host: str
    request: dict[str, Any]
    requester: str = ""
    requester_domain: str = ""
    email_sealed: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class PackageQueued(Event):
    """The job was put on a lane: by the planner (attempt 1), or again after a lost or released build.

    v2 added `attempt`: the number of the build this dispatch starts (1, 2, ...).
    """

    TYPE: ClassVar[str] = "PackageQueued"
    VERSION: ClassVar[int] = 2
    cache_key: str
    lane: str
    attempt: int


@dataclasses.dataclass(frozen=True, slots=True)
class PackageStarted(Event):
    """A packer began building the job, holding a lease on it until `lease_until` unless renewed.

    v2 added `attempt` and `lease_until` (ISO 8601 UTC; "" in v1 events, which had no leases).
    """

    TYPE: ClassVar[str] = "PackageStarted"
    VERSION: ClassVar[int] = 2
    cache_key: str
    lane: str
    worker: str
    attempt: int
    lease_until: str


@dataclasses.dataclass(frozen=True, slots=True)
class PackageProgress(Event):
    """Work done so far; `rows_total`/`bytes_total` are None when not known in advance.

    Also the build's heartbeat: each one renews the lease of build `attempt` (v2 added `attempt`).
    """

    TYPE: ClassVar[str] = "PackageProgress"
    VERSION: ClassVar[int] = 2
    cache_key: str
    rows_done: int
    rows_total: int | None
    bytes_done: int
    bytes_total: int | None
    attempt: int


@dataclasses.dataclass(frozen=True, slots=True)
class PackageCompleted(Event):
    """Terminal: the ZIP is in the store under `zip_file_name`.

    v2 added `cached_from`: the job whose ZIP was reused ("" when this job built it). v3 added the requester
    fields of PackageRequested v2 (`email` is "" from v3 on). v4 added `callback_sealed`: the request's
    `callback_url`, sealed under SECRET ("" when the request named none; see docs/http-api.md#webhooks).
    """

    TYPE: ClassVar[str] = "PackageCompleted"
    VERSION: ClassVar[int] = 4
    cache_key: str
    resource_id: str
    email: str
    ckan_host: str
    doi: str
    lane: str
    zip_file_name: str
    size: int
    sha256: str
    rows: int | None
    started_at: str
    finished_at: str
    cached_from: str = ""
    requester: str = ""
    requester_domain: str = ""
    email_sealed: str = ""
    callback_sealed: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class PackageFailed(Event):
    """Terminal: the job could not be built; `error` is written for the requester.

    v2 added the requester fields of PackageRequested v2 (`email` is "" from v2 on). v3 added
    `callback_sealed`, as PackageCompleted v4 did.
    """

    TYPE: ClassVar[str] = "PackageFailed"
    VERSION: ClassVar[int] = 3
    cache_key: str
    resource_id: str
    email: str
    ckan_host: str
    error: str
    error_type: str
    requester: str = ""
    requester_domain: str = ""
    email_sealed: str = ""
    callback_sealed: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class PackageBuilt(Event):
    """A packer finished build `attempt`: `outcome` is the terminal event it proposes, `result` its payload.

    Not terminal itself: the job's steward (the agent owning the job's partition of the events topic)
    turns it into that terminal event only if `attempt` still holds the lease, so a build that lost its
    lease (a worker stopped past its session timeout, say) can never end a job a second time.
    """

    TYPE: ClassVar[str] = "PackageBuilt"
    cache_key: str
    attempt: int
    worker: str
    outcome: str  # "PackageCompleted" or "PackageFailed"
    result: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseExpired(Event):
    """Build `attempt` sent no heartbeat before `lease_until`: its worker is taken for lost.

    With `lease_until` and `worker` empty, the attempt never started: its lane record was passed (the
    worker group committed beyond it) with no PackageStarted, so it is queued again all the same.
    """

    TYPE: ClassVar[str] = "LeaseExpired"
    cache_key: str
    attempt: int
    worker: str
    lease_until: str


@dataclasses.dataclass(frozen=True, slots=True)
class PackageReleased(Event):
    """A stopping worker gave build `attempt` back without finishing it, so that another takes it at once."""

    TYPE: ClassVar[str] = "PackageReleased"
    cache_key: str
    attempt: int
    worker: str
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class EmailSent(Event):
    """The notification for a terminal event was accepted by the SMTP server."""

    TYPE: ClassVar[str] = "EmailSent"
    cache_key: str
    about: str  # the terminal event type the email reports
    message_id: str
    attempts: int


@dataclasses.dataclass(frozen=True, slots=True)
class EmailFailed(Event):
    """The notification could not be delivered after every attempt."""

    TYPE: ClassVar[str] = "EmailFailed"
    cache_key: str
    about: str
    error: str
    attempts: int


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookDelivered(Event):
    """A finished job's webhook was answered with a 2xx by its receiver (see docs/http-api.md#webhooks).

    `target`: "callback" (the request's `callback_url`) or "service" (WEBHOOK_URL); `host` only."""

    TYPE: ClassVar[str] = "WebhookDelivered"
    cache_key: str
    about: str  # the terminal event type the webhook reports
    target: str
    host: str
    status: int
    attempts: int


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookFailed(Event):
    """A webhook about a terminal event got no 2xx within WEBHOOK_RETRY_FOR (or could not be sent at all)."""

    TYPE: ClassVar[str] = "WebhookFailed"
    cache_key: str
    about: str
    target: str
    host: str
    error: str
    attempts: int


@dataclasses.dataclass(frozen=True, slots=True)
class CacheCleared(Event):
    """An operator emptied the cache (`/clear_caches`); one per partition of the events topic."""

    TYPE: ClassVar[str] = "CacheCleared"
    cache_key: str  # "*": not about one request
    partition: int


@dataclasses.dataclass(frozen=True, slots=True)
class PackageExpired(Event):
    """A stored ZIP passed CACHE_TIME: it leaves the cache index and the store. `job_id` is its builder's."""

    TYPE: ClassVar[str] = "PackageExpired"
    cache_key: str
    zip_file_name: str


@dataclasses.dataclass(frozen=True, slots=True)
class ExpiryNoticeDue(Event):
    """A completed job's download expires soon: the mailer reminds its requester.

    Appended once by the job's steward EXPIRY_NOTICE_BEFORE before `expires_at`; requester fields as in
    PackageCompleted."""

    TYPE: ClassVar[str] = "ExpiryNoticeDue"
    cache_key: str
    resource_id: str
    ckan_host: str
    zip_file_name: str
    expires_at: str
    email: str
    requester: str
    requester_domain: str
    email_sealed: str


@dataclasses.dataclass(frozen=True, slots=True)
class RequestAbandoned(Event):
    """Terminal: the request reached the log only after the ingress had stopped waiting and answered 503.

    The requester was told the request was not accepted, so nothing is built and no email is sent. The
    broker's append time (`appended_at`) is compared with the deadline the ingress gave the append.
    """

    TYPE: ClassVar[str] = "RequestAbandoned"
    cache_key: str
    appended_at: str
    answer_deadline: str


@dataclasses.dataclass(frozen=True, slots=True)
class RecordRejected(Event):
    """A record on a packager topic was not a valid event: it was copied to the dead-letter topic.

    Not about a job: its `job_id` is always "-". Whatever job id the bad record claimed is kept apart in
    `claimed_job_id` (anyone able to write to the topic controls it, so it is never trusted).
    """

    TYPE: ClassVar[str] = "RecordRejected"
    cache_key: str  # the record's key (at most 200 characters), or "" when it had none
    source_topic: str
    partition: int
    offset: int
    error: str  # at most 500 characters
    claimed_job_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class RequesterErased(Event):
    """An operator erased a requester: their data keys are destroyed, their sealed addresses unreadable.

    `requesters`: the address's pseudonyms (current and previous secrets; the first is the record's key).
    `key_ids`: the data keys destroyed (none for a requester unknown or erased before). No address here.
    """

    TYPE: ClassVar[str] = "RequesterErased"
    cache_key: str
    requesters: list[str]
    key_ids: list[str]


# The requester fields of the events naming a requester (PackageRequested, -Completed, -Failed), and their
# sealed webhook `callback_url` (a request keeps it in `request["callback_sealed"]`, absent when none).
REQUESTER_FIELDS = ("email", "requester", "requester_domain", "email_sealed", "callback_sealed")


def requester_fields(event: Event | dict[str, Any]) -> dict[str, str]:
    """The requester fields of a request or terminal event (or of such an event's dict), to copy along."""
    if isinstance(event, dict):
        return {name: str(event.get(name) or "") for name in REQUESTER_FIELDS}
    fields = {name: str(getattr(event, name, "") or "") for name in REQUESTER_FIELDS}
    if isinstance(event, PackageRequested):
        fields["callback_sealed"] = str(event.request.get("callback_sealed") or "")
    return fields


# Every payload type, by wire name: the subclasses of Event defined above and in `operator_events`.
EVENT_TYPES: dict[str, type[Event]] = {cls.TYPE: cls for cls in Event.__subclasses__()}

TERMINAL_TYPES = frozenset(
    {PackageCompleted.TYPE, PackageFailed.TYPE, RequestAbandoned.TYPE, PackageCancelled.TYPE}
)
# Terminal events the requester hears about by email (they also hear of `ExpiryNoticeDue`, and of a
# cancellation when EMAIL_CANCELLATIONS is on).
NOTIFIED_TYPES = frozenset({PackageCompleted.TYPE, PackageFailed.TYPE})


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """One record on a topic: metadata plus a typed payload."""

    event_id: str
    type: str
    schema_version: int
    job_id: str
    occurred_at: str
    payload: Event

    @property
    def cache_key(self) -> str:
        """The partitioning key of every packager event."""
        return str(self.payload.cache_key)  # type: ignore[attr-defined]


def envelope(job_id: str, payload: Event, *, occurred_at: str | None = None) -> Envelope:
    """Wrap a payload in a new envelope with a fresh event id."""
    return Envelope(
        event_id=uuid.uuid4().hex,
        type=payload.TYPE,
        schema_version=payload.VERSION,
        job_id=job_id,
        occurred_at=occurred_at or utc_now(),
        payload=payload,
    )


def encode(env: Envelope) -> bytes:
    """Serialise an envelope to its wire form."""
    return orjson.dumps(
        {
            "event_id": env.event_id,
            "type": env.type,
            "schema_version": env.schema_version,
            "job_id": env.job_id,
            "occurred_at": env.occurred_at,
            # orjson writes a dataclass's fields in order, as `dataclasses.asdict` would, without a deep copy.
            "payload": env.payload,
        }
    )


# --- the typed wire boundary ------------------------------------------------------------------------
# Every record is checked against the payload dataclasses' annotations before a fold or an agent sees it: a
# msgspec Struct mirrors each dataclass (derived from it, so the two cannot drift), decoding checks every
# field's type in C, and the result is turned into the dataclass the code works with. 3-4 us an event,
# faster than the untyped checks it replaced (docs/events.md, "The typed boundary").


class _WireEnvelope(msgspec.Struct, forbid_unknown_fields=True):
    """The envelope as it travels; the payload is kept raw until its type (and version) is known."""

    event_id: Annotated[str, msgspec.Meta(min_length=1)]
    type: str
    schema_version: int
    job_id: Annotated[str, msgspec.Meta(min_length=1)]
    occurred_at: str
    payload: msgspec.Raw


def _wire_struct(cls: type[Event]) -> type[msgspec.Struct]:
    """A Struct with the dataclass's fields, in order, all required, no others allowed (like the schema)."""
    hints = get_type_hints(cls)
    fields = [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]
    return msgspec.defstruct(f"{cls.__name__}Wire", fields, forbid_unknown_fields=True)


_WIRE_STRUCTS: dict[type[Event], type[msgspec.Struct]] = {
    cls: _wire_struct(cls) for cls in EVENT_TYPES.values()
}
_ENVELOPE_DECODER = msgspec.json.Decoder(_WireEnvelope)
_PAYLOAD_DECODERS = {cls: msgspec.json.Decoder(struct) for cls, struct in _WIRE_STRUCTS.items()}
_astuple = msgspec.structs.astuple


def _upcast(cls: type[Event], version: int, raw: msgspec.Raw) -> msgspec.Struct:
    """An older payload brought to the current version by the upcasters, then type-checked."""
    payload = orjson.loads(memoryview(raw))
    if not isinstance(payload, dict):
        raise EventDecodeError(f"{cls.TYPE} payload must be an object", reason="bad_payload")
    while version < cls.VERSION:
        upcast = UPCASTERS.get((cls.TYPE, version))
        if upcast is None:
            raise EventDecodeError(f"no upcaster for {cls.TYPE} v{version}", reason="unsupported_version")
        payload, version = upcast(payload), version + 1
    return msgspec.convert(payload, _WIRE_STRUCTS[cls])


def decode(raw: bytes | str) -> Envelope:
    """Parse a wire record, checking every field's type and upcasting old payloads.

    Raises EventDecodeError (with a `reason`: not_json, bad_envelope, unknown_type, unsupported_version or
    bad_payload) for anything the schemas in `schemas/` would refuse.
    """
    try:
        wire = _ENVELOPE_DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        raise EventDecodeError(f"not an event envelope: {exc}", reason="bad_envelope") from None
    except msgspec.DecodeError as exc:
        raise EventDecodeError(f"not JSON: {exc}", reason="not_json") from None
    cls = EVENT_TYPES.get(wire.type)
    if cls is None:
        raise EventDecodeError(f"unknown event type {wire.type[:80]!r}", reason="unknown_type")
    version = wire.schema_version
    try:
        if version == cls.VERSION:
            fields = _PAYLOAD_DECODERS[cls].decode(wire.payload)
        elif version > cls.VERSION or version < 1:
            raise EventDecodeError(
                f"{cls.TYPE} v{version} is not a version this code knows (v1 to v{cls.VERSION})",
                reason="unsupported_version",
            )
        else:
            fields = _upcast(cls, version, wire.payload)
    except msgspec.DecodeError as exc:  # ValidationError is one: a wrong type, a missing or unknown field
        raise EventDecodeError(f"{cls.TYPE} v{version} payload: {exc}", reason="bad_payload") from None
    if not is_timestamp(wire.occurred_at):
        raise EventDecodeError(
            f"occurred_at {wire.occurred_at[:40]!r} is not an RFC 3339 date-time", reason="bad_envelope"
        )
    return Envelope(
        wire.event_id, cls.TYPE, cls.VERSION, wire.job_id, wire.occurred_at, cls(*_astuple(fields))
    )
