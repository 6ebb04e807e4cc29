"""Settings: defaults, TOML, environment precedence, and the refusal to run without a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from packager.core.errors import ConfigurationError
from packager.core.settings import load_settings


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
        load_settings({}, config_file=config)


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
