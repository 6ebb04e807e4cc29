"""Settings: defaults, TOML, environment precedence, ranges checked at start-up, a secret required."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import get_type_hints

import pytest

from packager.core.errors import ConfigurationError
from packager.core.settings import RANGES, Range, Settings, load_settings


def test_defaults_follow_the_original_service() -> None:
    settings = load_settings({})
    assert (settings.host, settings.port) == ("127.0.0.1", 8765)
    assert settings.cache_time == 86400
    assert settings.page_size == 5000
    assert settings.slow_request == 50_000
    assert settings.secret == ""


def test_there_is_no_default_secret_and_the_service_says_why() -> None:
    with pytest.raises(ConfigurationError, match="PACKAGER_SECRET"):
        load_settings({}).require_secret()


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="shorter"):
        load_settings({"PACKAGER_SECRET": "abc"}).require_secret()


def test_environment_overrides_the_toml_file(tmp_path: Path) -> None:
    config = tmp_path / "packager.toml"
    config.write_text('SECRET = "from-file-0123456789"\nSLOW_REQUEST = 10\nport = 9000\n')
    settings = load_settings({"PACKAGER_CONFIG": str(config), "PACKAGER_PORT": "9100"})
    assert settings.secret == "from-file-0123456789"
    assert settings.slow_request == 10
    assert settings.port == 9100


def test_types_are_converted_and_bad_values_named() -> None:
    settings = load_settings(
        {
            "PACKAGER_ALLOW_PRIVATE_URLS": "true",
            "PACKAGER_WORKER_LANES": "slow",
            "PACKAGER_SMTP_TIMEOUT": "2.5",
        }
    )
    assert settings.allow_private_urls is True
    assert settings.worker_lanes == ("slow",)
    assert settings.smtp_timeout == 2.5
    with pytest.raises(ConfigurationError, match="PORT"):
        load_settings({"PACKAGER_PORT": "eighty"})
    with pytest.raises(ConfigurationError, match="lane"):
        load_settings({"PACKAGER_WORKER_LANES": "fast,medium"})


def test_unknown_keys_in_the_file_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "packager.toml"
    config.write_text('ZIP_COMAND = "zip"\n')
    with pytest.raises(ConfigurationError, match="ZIP_COMAND"):
        load_settings({}, config)


def test_download_links_default_to_the_ingress() -> None:
    assert load_settings({}).download_base == "http://127.0.0.1:8765/downloads"
    assert load_settings({"PACKAGER_DOWNLOAD_URL_BASE": "https://dl.example.org/z/"}).download_base == (
        "https://dl.example.org/z"
    )


def test_deadlines_and_caps_have_documented_defaults_and_read_their_environment_names() -> None:
    defaults = load_settings({})
    assert defaults.job_timeout == 6 * 3600
    assert defaults.max_download_bytes == 10 * 1024**3
    assert defaults.max_page_bytes == 256 * 1024**2
    assert defaults.partial_max_age == 6 * 3600 + 600
    settings = load_settings(
        {
            "PACKAGER_JOB_TIMEOUT": "90",
            "PACKAGER_MAX_DOWNLOAD_BYTES": "0",
            "PACKAGER_MAX_PAGE_BYTES": "1000000",
        }
    )
    assert (settings.job_timeout, settings.max_download_bytes, settings.max_page_bytes) == (90, 0, 1_000_000)
    assert settings.partial_max_age == 90 + 600


@pytest.mark.parametrize(
    ("name", "value"),
    [("JOB_TIMEOUT", "0"), ("JOB_TIMEOUT", "-5"), ("MAX_DOWNLOAD_BYTES", "-1"), ("MAX_PAGE_BYTES", "-1")],
)
def test_deadlines_and_caps_out_of_range_stop_the_service_naming_the_setting(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        load_settings({f"PACKAGER_{name}": value})


def numeric_settings() -> list[str]:
    hints = get_type_hints(Settings)
    return [f.name for f in dataclasses.fields(Settings) if hints[f.name] in (int, float)]


def test_every_numeric_setting_has_a_range() -> None:
    assert sorted(RANGES) == sorted(numeric_settings())


def outside(allowed: Range) -> list[float]:
    """Values just outside `allowed`, on each side it has."""
    below = allowed.low if allowed.above else allowed.low - 1
    return [below] + ([allowed.high + 1] if allowed.high is not None else [])


@pytest.mark.parametrize("name", sorted(RANGES))
def test_each_range_refuses_values_outside_it_and_accepts_its_bounds(name: str) -> None:
    allowed = RANGES[name]
    is_int = get_type_hints(Settings)[name] is int
    for value in outside(allowed):
        raw = str(int(value)) if is_int else str(value)
        with pytest.raises(ConfigurationError) as refused:
            load_settings({f"PACKAGER_{name.upper()}": raw})
        message = refused.value.message
        assert message.startswith(f"Setting {name.upper()}=") and raw.removesuffix(".0") in message
        assert f"(allowed: {allowed.describe()})" in message
        assert "\n" not in message
    inside = [allowed.low + 1 if allowed.above else allowed.low]
    if allowed.high is not None:
        inside.append(allowed.high)
    for value in inside:
        raw = str(int(value)) if is_int else str(value)
        assert getattr(load_settings({f"PACKAGER_{name.upper()}": raw}), name) == value


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"PACKAGER_ZIP_COMPRESSLEVEL": "42"},
            "Setting ZIP_COMPRESSLEVEL=42 is out of range (allowed: 0 to 9;",
        ),
        ({"PACKAGER_PARTITIONS": "0"}, "Setting PARTITIONS=0 is out of range (allowed: 1 to 10000)"),
        ({"PACKAGER_PAGE_SIZE": "0"}, "Setting PAGE_SIZE=0 is out of range (allowed: 1 to 1000000 rows)"),
        ({"PACKAGER_PORT": "99999"}, "Setting PORT=99999 is out of range (allowed: 1 to 65535)"),
        ({"PACKAGER_SMTP_TIMEOUT": "0"}, "Setting SMTP_TIMEOUT=0.0 is out of range (allowed: more than 0"),
        ({"PACKAGER_FETCH_READ_TIMEOUT": "inf"}, "Setting FETCH_READ_TIMEOUT=inf is out of range"),
        ({"PACKAGER_JOB_TIMEOUT": "nan"}, "Setting JOB_TIMEOUT=nan is out of range"),
        (
            {"PACKAGER_TOPIC_PREFIX": "my topics"},
            "Setting TOPIC_PREFIX='my topics' is not a Kafka",
        ),
        ({"PACKAGER_KAFKA_BOOTSTRAP_SERVERS": " "}, "Setting KAFKA_BOOTSTRAP_SERVERS is empty"),
        (
            {"PACKAGER_STATUS_URL_BASE": "x.org/jobs"},
            "Setting STATUS_URL_BASE='x.org/jobs' is not",
        ),
        (
            {"PACKAGER_SMTP_TLS": "1", "PACKAGER_SMTP_STARTTLS": "1"},
            "Settings SMTP_STARTTLS and SMTP_TLS are both on",
        ),
        ({"PACKAGER_LOG_FORMAT": "xml"}, "Setting LOG_FORMAT='xml' must be one of json, text"),
    ],
)
def test_bad_values_are_named_with_the_value_and_what_is_allowed(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        load_settings(env)
    assert refused.value.message.startswith(expected)


def test_every_bad_setting_is_named_at_once() -> None:
    with pytest.raises(ConfigurationError) as refused:
        load_settings({"PACKAGER_PORT": "0", "PACKAGER_MAX_ATTEMPTS": "0"})
    assert "PORT=0" in refused.value.message and "MAX_ATTEMPTS=0" in refused.value.message


@pytest.mark.parametrize("command", ["worker", "ingress"])
def test_a_bad_setting_stops_the_service_with_one_line_and_no_traceback(command: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PACKAGER_SECRET": "unit-test-secret-0123456789abcdef",
        "PACKAGER_STORE_DIRECTORY": str(tmp_path),
        # Nothing listens there: the service must stop before it talks to a broker.
        "PACKAGER_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "PACKAGER_ZIP_COMPRESSLEVEL": "42",
    }
    done = subprocess.run(
        [sys.executable, "-m", "packager", command], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "packager: configuration error: Setting ZIP_COMPRESSLEVEL=42 is out of range "
        "(allowed: 0 to 9; 0 stores without compressing)"
    ]


def test_a_bad_setting_stops_the_local_stack_before_it_starts_a_broker(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACKAGER_")}
    env["PACKAGER_SESSION_TIMEOUT"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "packager", "dev", "up", "--var", str(tmp_path / "var")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "packager: configuration error: Setting SESSION_TIMEOUT=1.0 is out of range "
        "(allowed: 6 to 300 seconds)"
    ]
    assert not (tmp_path / "var" / "kafka").exists(), "a broker was started for a stack that cannot run"
