"""The event envelope: round trips, stored payloads, malformed records, and no secrets on the wire."""

from __future__ import annotations

import orjson
import pytest

from packager.core.errors import EventDecodeError
from packager.domain.events import (
    EVENT_TYPES,
    EmailSent,
    PackageCompleted,
    PackageRequested,
    decode,
    encode,
    envelope,
)
from packager.domain.secrets import seal, unseal
from tests.unit.samples import completed

SECRET = "unit-test-secret-0123456789"

# A PackageRequested exactly as schema v1 stores it. It must keep decoding as the code evolves.
STORED_V1 = (
    b'{"event_id":"5f0c1d7e9a3b4c2d8e6f7a1b2c3d4e5f","type":"PackageRequested","schema_version":1,'
    b'"job_id":"0b7e2a52-7d0c-4f1a-9a57-3e2f4a0d9c11","occurred_at":"2026-11-26T14:00:00.000Z",'
    b'"payload":{"kind":"url","cache_key":"abc","resource_id":"r1","email":"a@example.org",'
    b'"ckan_host":"data.example.org","request":{"resource_id":"r1",'
    b'"resource_url":"https://data.example.org/f.csv","key_sealed":""}}}'
)


def requested(**overrides: object) -> PackageRequested:
    fields: dict[str, object] = dict(
        kind="url",
        cache_key="ck",
        resource_id="r1",
        email="a@example.org",
        ckan_host="h",
        request={"resource_url": "https://h/f.csv", "key_sealed": ""},
    )
    fields.update(overrides)
    return PackageRequested(**fields)  # type: ignore[arg-type]


def test_envelope_round_trips_every_field() -> None:
    env = envelope("job-1", requested())
    assert decode(encode(env)) == env


def test_stored_v1_payload_still_decodes() -> None:
    env = decode(STORED_V1)
    assert env.type == "PackageRequested"
    assert isinstance(env.payload, PackageRequested)
    assert env.payload.request["resource_url"] == "https://data.example.org/f.csv"
    assert env.job_id == "0b7e2a52-7d0c-4f1a-9a57-3e2f4a0d9c11"


def test_every_event_type_has_a_distinct_wire_name() -> None:
    assert set(EVENT_TYPES) >= {
        "PackageRequested",
        "PackageStarted",
        "PackageProgress",
        "PackageCompleted",
        "PackageFailed",
        "EmailSent",
        "EmailFailed",
    }


@pytest.mark.parametrize(
    ("raw", "reason", "message"),
    [
        (b"not json", "not_json", "not JSON"),
        (b"[1, 2]", "bad_envelope", "Expected `object`, got `array`"),
        (b'{"type": "PackageRequested"}', "bad_envelope", "missing required field"),
        (STORED_V1.replace(b'"PackageRequested"', b'"PackageExploded"'), "unknown_type", "unknown event"),
        (STORED_V1.replace(b'"schema_version":1', b'"schema_version":99'), "unsupported_version", "v99"),
        (STORED_V1.replace(b'"kind":"url",', b""), "bad_payload", "missing required field `kind`"),
        (STORED_V1.replace(b'"kind":"url",', b'"kind":"url","extra":1,'), "bad_payload", "unknown field"),
    ],
)
def test_malformed_records_are_refused_with_a_reason(raw: bytes, reason: str, message: str) -> None:
    with pytest.raises(EventDecodeError, match=message) as refused:
        decode(raw)
    assert refused.value.reason == reason


def test_a_sealed_ckan_key_never_appears_in_clear_on_the_wire() -> None:
    ckan_key = "ckan-api-key-very-private"
    env = envelope("job-1", requested(request={"key_sealed": seal(SECRET, ckan_key)}))
    wire = encode(env)
    assert ckan_key.encode() not in wire
    assert SECRET.encode() not in wire
    assert unseal(SECRET, orjson.loads(wire)["payload"]["request"]["key_sealed"]) == ckan_key


def test_terminal_event_carries_what_the_mailer_needs() -> None:
    done = completed(ckan_host="h", zip_file_name="j.zip", size=10)
    env = decode(encode(envelope("j", done)))
    assert isinstance(env.payload, PackageCompleted)
    assert env.cache_key == "ck"
    assert decode(encode(envelope("j", EmailSent(cache_key="ck", about="x", message_id="m", attempts=1))))


STORED_COMPLETED_V1 = (
    b'{"event_id":"e1","type":"PackageCompleted","schema_version":1,"job_id":"j1",'
    b'"occurred_at":"2026-11-26T14:00:00.000Z","payload":{"cache_key":"ck","resource_id":"r1",'
    b'"email":"a@example.org","ckan_host":"h","doi":"","lane":"fast","zip_file_name":"j1.zip","size":10,'
    b'"sha256":"00","rows":null,"started_at":"t0","finished_at":"t1"}}'
)


def test_a_stored_v1_completion_is_upcast_to_the_current_version() -> None:
    env = decode(STORED_COMPLETED_V1)
    assert env.schema_version == PackageCompleted.VERSION == 4
    assert isinstance(env.payload, PackageCompleted)
    assert env.payload.cached_from == ""
    assert env.payload.callback_sealed == "", "no webhook before v4"
    assert env.payload.zip_file_name == "j1.zip"
    # Written before crypto-shredding: the address stays where it was, with no pseudonym and nothing sealed.
    assert (env.payload.email, env.payload.requester, env.payload.email_sealed) == ("a@example.org", "", "")


STORED_REQUESTED_V1 = (
    b'{"event_id":"e0","type":"PackageRequested","schema_version":1,"job_id":"j1",'
    b'"occurred_at":"2026-11-26T13:59:59.000Z","payload":{"kind":"url","cache_key":"ck","resource_id":"r1",'
    b'"email":"a@example.org","ckan_host":"h","request":{"resource_url":"http://x/a.csv","key_sealed":""}}}'
)


@pytest.mark.privacy
def test_a_request_logged_before_crypto_shredding_still_decodes_with_its_clear_address() -> None:
    env = decode(STORED_REQUESTED_V1)
    assert env.schema_version == PackageRequested.VERSION == 2
    assert isinstance(env.payload, PackageRequested)
    assert env.payload.email == "a@example.org"
    assert (env.payload.requester, env.payload.requester_domain, env.payload.email_sealed) == ("", "", "")
