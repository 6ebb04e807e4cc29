"""Event schemas stay in sync with the code; analytics records carry no address and no secret."""

from __future__ import annotations

import orjson
from jsonschema import Draft202012Validator

from packager.domain.events import PackageRequested, encode, envelope
from packager.domain.schemas import SCHEMA_DIRECTORY, all_schemas
from projections.analytics import pseudonymise
from tests.unit.samples import completed

SECRET = "unit-test-secret-0123456789"


def test_committed_schema_files_equal_the_generated_ones() -> None:
    generated = all_schemas()
    committed = {p.name: orjson.loads(p.read_bytes()) for p in SCHEMA_DIRECTORY.glob("*.json")}
    assert committed == generated, "run `python -m packager.domain.schemas` and commit schemas/"
    for schema in generated.values():
        Draft202012Validator.check_schema(schema)


def test_encoded_events_validate_against_their_schema() -> None:
    schemas = all_schemas()
    done = completed(resource_id="r", ckan_host="h", zip_file_name="j.zip", size=1)
    doc = orjson.loads(encode(envelope("j", done)))
    Draft202012Validator(schemas["PackageCompleted.v4.json"]).validate(doc)
    doc["payload"]["size"] = "big"
    assert not Draft202012Validator(schemas["PackageCompleted.v4.json"]).is_valid(doc)


def test_analytics_records_pseudonymise_requesters_and_drop_secrets() -> None:
    request = PackageRequested(
        kind="dwc",
        cache_key="ck",
        resource_id="r",
        email="Ann@Example.org",
        ckan_host="h",
        request={
            "resource_id": "r",
            "key_sealed": "gAAAA-sealed",
            "callback_sealed": "gAAAA-hook",
            "eml": "<eml/>",
            "q": "x",
        },
    )
    out = orjson.loads(pseudonymise(encode(envelope("j", request)), SECRET))
    payload = out["payload"]
    assert "email" not in payload and "@" not in orjson.dumps(out).decode()
    assert payload["requester_domain"] == "example.org"
    assert payload["request"] == {"resource_id": "r", "q": "x"}
    again = orjson.loads(pseudonymise(encode(envelope("k", request)), SECRET))
    assert again["payload"]["requester"] == payload["requester"]  # stable per person
    other = orjson.loads(pseudonymise(encode(envelope("k", request)), "another-secret-0123456789"))
    assert other["payload"]["requester"] != payload["requester"]  # keyed, not a plain hash


def test_a_builds_proposed_outcome_carries_no_address_either() -> None:
    from dataclasses import asdict

    from packager.domain.events import PackageBuilt

    done = completed(email="ann@example.org", callback_sealed="gAAAA-hook")
    built = PackageBuilt(cache_key="ck", attempt=1, worker="w", outcome=done.TYPE, result=asdict(done))
    out = orjson.loads(pseudonymise(encode(envelope("j", built)), SECRET))
    assert "@" not in orjson.dumps(out).decode() and "gAAAA-hook" not in orjson.dumps(out).decode()
    assert out["payload"]["result"]["requester_domain"] == "example.org"
