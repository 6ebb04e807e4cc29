"""The typed boundary: every event type and stored version decodes with its types checked, and the committed
JSON Schemas accept and refuse exactly what the decode accepts and refuses.

Known difference, left out on purpose: JSON Schema counts `1.0` as an integer, the decode does not (no
producer writes one).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Union, get_args, get_origin, get_type_hints

import orjson
import pytest
from jsonschema import Draft202012Validator

from packager.core.errors import EventDecodeError
from packager.domain import events as ev
from packager.domain.events import EVENT_TYPES, UPCASTERS, Envelope, decode, encode, envelope
from packager.domain.schemas import SCHEMA_DIRECTORY

T0 = "2026-11-26T14:21:00.123Z"

# A requester as events name one since crypto-shredding: pseudonym, domain, the address sealed.
WHO = ("ab" * 32, "example.org", "v1.0123456789abcdef.c2VhbGVk")
CLEAR = {"email": "a@example.org"}
NO_REQUESTER = {"requester": "", "requester_domain": "", "email_sealed": ""}
HOOK = "gAAAAB-sealed-callback"  # a request's sealed callback_url, carried by its terminal event
NO_CALLBACK = {"callback_sealed": ""}

# One realistic payload of every event type, at its current version.
SAMPLES: dict[str, ev.Event] = {
    s.TYPE: s
    for s in (
        ev.PackageRequested("datastore", "ck", "r1", "", "h", {"q": "x", "filters": {"a": [1]}}, *WHO),
        ev.PackageQueued("ck", "slow", 2),
        ev.PackageStarted("ck", "fast", "w1:42", 1, "2026-11-26T14:26:00.000Z"),
        ev.PackageProgress("ck", 500, None, 4096, None, 1),
        ev.PackageCompleted(
            "ck", "r1", "", "h", "", "fast", "j.zip", 10, "0" * 64, 5, T0, T0, "", *WHO, HOOK
        ),
        ev.PackageFailed("ck", "r1", "", "h", "The portal said no", "CkanError", *WHO, HOOK),
        ev.PackageBuilt("ck", 1, "w1:42", "PackageFailed", {"error": "x"}),
        ev.LeaseExpired("ck", 1, "w1:42", T0),
        ev.PackageReleased("ck", 1, "w1:42", "shutdown"),
        ev.EmailSent("ck", "PackageCompleted", "<m@x>", 1),
        ev.EmailFailed("ck", "PackageFailed", "550 no such user", 3),
        ev.WebhookDelivered("ck", "PackageCompleted", "callback", "hooks.example.org", 204, 2),
        ev.WebhookFailed("ck", "PackageFailed", "service", "hooks.example.org:8443", "answered HTTP 500", 9),
        ev.CacheCleared("*", 3),
        ev.PackageExpired("ck", "j.zip"),
        ev.RequestAbandoned("ck", T0, T0),
        ev.RecordRejected("k", "p.requests", 0, 17, "not JSON", "-"),
        ev.RequesterErased("ab" * 32, ["ab" * 32, "cd" * 32], ["0123456789abcdef"]),
        ev.ExpiryNoticeDue("ck", "r1", "h", "j.zip", T0, "", *WHO),
        ev.CancelRequested("*", 2, "requester"),
        ev.PackageCancelled("ck", "r1", "h", "slow", "operator", "", *WHO),
        ev.StatisticsReset("*", "errors"),
    )
}

# Stored payloads of every older version, as they were written: (type, version) -> (payload, expected).
STORED_OLD: dict[tuple[str, int], tuple[dict[str, Any], ev.Event]] = {
    ("PackageQueued", 1): ({"cache_key": "ck", "lane": "fast"}, ev.PackageQueued("ck", "fast", 1)),
    ("PackageStarted", 1): (
        {"cache_key": "ck", "lane": "slow", "worker": "w"},
        ev.PackageStarted("ck", "slow", "w", 1, ""),
    ),
    ("PackageProgress", 1): (
        {"cache_key": "ck", "rows_done": 1, "rows_total": 2, "bytes_done": 3, "bytes_total": None},
        ev.PackageProgress("ck", 1, 2, 3, None, 1),
    ),
    # Before crypto-shredding: the address in clear, no pseudonym, nothing sealed (replays of old logs).
    ("PackageCompleted", 1): (
        {**dataclasses.asdict(SAMPLES["PackageCompleted"]), **CLEAR},
        dataclasses.replace(SAMPLES["PackageCompleted"], **CLEAR, **NO_REQUESTER, **NO_CALLBACK),
    ),
    ("PackageCompleted", 2): (
        {**dataclasses.asdict(SAMPLES["PackageCompleted"]), **CLEAR},
        dataclasses.replace(SAMPLES["PackageCompleted"], **CLEAR, **NO_REQUESTER, **NO_CALLBACK),
    ),
    # Before webhooks: no callback.
    ("PackageCompleted", 3): (
        dataclasses.asdict(SAMPLES["PackageCompleted"]),
        dataclasses.replace(SAMPLES["PackageCompleted"], **NO_CALLBACK),
    ),
    ("PackageFailed", 2): (
        dataclasses.asdict(SAMPLES["PackageFailed"]),
        dataclasses.replace(SAMPLES["PackageFailed"], **NO_CALLBACK),
    ),
    ("PackageRequested", 1): (
        {**dataclasses.asdict(SAMPLES["PackageRequested"]), **CLEAR},
        dataclasses.replace(SAMPLES["PackageRequested"], **CLEAR, **NO_REQUESTER),
    ),
    ("PackageFailed", 1): (
        {**dataclasses.asdict(SAMPLES["PackageFailed"]), **CLEAR},
        dataclasses.replace(SAMPLES["PackageFailed"], **CLEAR, **NO_REQUESTER, **NO_CALLBACK),
    ),
}
for (_type, _version), (_payload, _) in STORED_OLD.items():
    if _type in ("PackageCompleted", "PackageFailed"):
        del _payload["callback_sealed"]
    if (_type, _version) in (("PackageCompleted", 3), ("PackageFailed", 2)):
        continue
    if _type in ("PackageCompleted", "PackageRequested", "PackageFailed"):
        for _name in NO_REQUESTER:
            del _payload[_name]
del STORED_OLD[("PackageCompleted", 1)][0]["cached_from"]


def schema_validator(type_name: str) -> Draft202012Validator:
    cls = EVENT_TYPES[type_name]
    schema = orjson.loads((SCHEMA_DIRECTORY / f"{type_name}.v{cls.VERSION}.json").read_bytes())
    # The format checker is what makes `date-time` a check (with rfc3339-validator), not a comment.
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def wire(type_name: str) -> dict[str, Any]:
    """The sample of `type_name` as a JSON document."""
    result: dict[str, Any] = orjson.loads(encode(envelope("job-1", SAMPLES[type_name], occurred_at=T0)))
    return result


def refused_by_both(doc: dict[str, Any], type_name: str) -> EventDecodeError:
    """Assert that the schema and the decode both refuse `doc`; the decode's error."""
    assert not schema_validator(type_name).is_valid(doc), f"the schema accepts {doc}"
    with pytest.raises(EventDecodeError) as refused:
        decode(orjson.dumps(doc))
    return refused.value


def test_every_event_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(EVENT_TYPES)


@pytest.mark.parametrize("type_name", sorted(EVENT_TYPES))
def test_a_valid_event_of_every_type_passes_the_decode_and_its_schema(type_name: str) -> None:
    doc = wire(type_name)
    schema_validator(type_name).validate(doc)
    env = decode(orjson.dumps(doc))
    assert env == Envelope(doc["event_id"], type_name, doc["schema_version"], "job-1", T0, SAMPLES[type_name])
    assert type(env.payload) is EVENT_TYPES[type_name]


def _wrong_values(hint: Any) -> list[Any]:
    """JSON values of the wrong type for a field annotated `hint`."""
    allowed = set(get_args(hint)) if get_origin(hint) in (Union, types.UnionType) else {hint}
    candidates: list[Any] = ["7", 7, True, None, {"a": 1}, [1], 2.5]
    kinds = {str: str, int: int, dict[str, Any]: dict, list[str]: list, type(None): type(None)}
    accepted = {kinds[a] for a in allowed}

    def fits(value: Any) -> bool:
        if isinstance(value, bool):
            return False  # never an int, for the schema as for the decode
        return type(value) in accepted

    return [v for v in candidates if not fits(v)]


WRONG_FIELDS = [
    (name, field.name, value)
    for name, cls in sorted(EVENT_TYPES.items())
    for field in dataclasses.fields(cls)
    for value in _wrong_values(get_type_hints(cls)[field.name])
]


@pytest.mark.parametrize(("type_name", "field", "value"), WRONG_FIELDS)
def test_a_wrong_type_in_any_payload_field_is_refused_by_both(type_name: str, field: str, value: Any) -> None:
    doc = wire(type_name)
    doc["payload"][field] = value
    error = refused_by_both(doc, type_name)
    assert error.reason == "bad_payload"
    assert f"$.{field}" in error.message


@pytest.mark.parametrize("type_name", sorted(EVENT_TYPES))
def test_a_missing_or_unknown_payload_field_is_refused_by_both(type_name: str) -> None:
    doc = wire(type_name)
    first = next(iter(doc["payload"]))
    del doc["payload"][first]
    assert refused_by_both(doc, type_name).reason == "bad_payload"
    doc = wire(type_name)
    doc["payload"]["surprise"] = 1
    assert refused_by_both(doc, type_name).reason == "bad_payload"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("occurred_at", "yesterday"),
        ("occurred_at", "2026-02-30T10:00:00Z"),  # no such day
        ("occurred_at", "2026-11-26 14:21:00Z"),  # not RFC 3339
        ("occurred_at", "2026-11-26T14:21:00"),  # no offset
        ("occurred_at", "2026-11-26t14:21:00z"),  # lower case: statistics could not read it
        ("occurred_at", None),
        ("occurred_at", 1764166860),
        ("event_id", ""),
        ("event_id", None),
        ("job_id", ""),
        ("job_id", 5),
        ("schema_version", "1"),
        ("payload", ["x"]),
        ("payload", None),
        ("type", None),
        ("surprise", 1),
    ],
)
def test_a_wrong_envelope_is_refused_by_both(field: str, value: Any) -> None:
    doc = wire("PackageFailed")
    doc[field] = value
    assert refused_by_both(doc, "PackageFailed").reason in {"bad_envelope", "bad_payload"}


@pytest.mark.parametrize(
    "moment", ["2026-11-26T14:21:00Z", "2026-11-26T14:21:00.123456789+05:30", "2024-02-29T23:59:59-08:00"]
)
def test_any_rfc_3339_time_passes_both(moment: str) -> None:
    doc = wire("PackageFailed")
    doc["occurred_at"] = moment
    schema_validator("PackageFailed").validate(doc)
    assert decode(orjson.dumps(doc)).occurred_at == moment


def test_every_older_version_has_a_stored_sample() -> None:
    assert set(STORED_OLD) == set(UPCASTERS)
    assert set(UPCASTERS) == {(t, v) for t, cls in EVENT_TYPES.items() for v in range(1, cls.VERSION)}


@pytest.mark.parametrize(("type_name", "version"), sorted(STORED_OLD))
def test_a_stored_older_version_is_upcast_and_type_checked(type_name: str, version: int) -> None:
    payload, expected = STORED_OLD[(type_name, version)]
    doc = {**wire(type_name), "schema_version": version, "payload": payload}
    env = decode(orjson.dumps(doc))
    assert env.payload == expected
    assert env.schema_version == EVENT_TYPES[type_name].VERSION
    # The upcast payload is checked like a current one: a wrong type in a stored field is refused.
    wrong = {**doc, "payload": {**payload, "cache_key": None}}
    with pytest.raises(EventDecodeError) as refused:
        decode(orjson.dumps(wrong))
    assert refused.value.reason == "bad_payload"


def test_versions_this_code_does_not_know_are_refused() -> None:
    for version in (0, -1, ev.PackageQueued.VERSION + 1):
        doc = {**wire("PackageQueued"), "schema_version": version}
        with pytest.raises(EventDecodeError) as refused:
            decode(orjson.dumps(doc))
        assert refused.value.reason == "unsupported_version"
