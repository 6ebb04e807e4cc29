"""`ckanpackager` beside a Quickstart stack: the secret and address of its `var/stack.toml`, as `packager
replay` reads them, unless the operator said otherwise."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from packager.cli import main as packager_main
from packager.cli import operator as cli
from packager.cli import operator_http

STACK_SECRET = "the-stack's-secret"


@pytest.fixture(autouse=True)
def in_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty folder, with the standard defaults file absent unless a test writes it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "DEFAULT_DEFAULTS_FILE", tmp_path / "etc" / "ckanpackager-cli.json")
    return tmp_path


def started_stack(folder: Path, **settings: str) -> Path:
    """`var/stack.toml` as `packager dev up` writes it, with the stack's secret and `settings`."""
    (folder / "var").mkdir()
    path = folder / "var" / "stack.toml"
    env = {"PACKAGER_SECRET": STACK_SECRET, **{f"PACKAGER_{k.upper()}": v for k, v in settings.items()}}
    packager_main._write_stack_settings(path, {**env, "HOME": "/not/a/setting"})
    return path


def target_for(argv: list[str], environ: Mapping[str, str] | None = None) -> cli.Target:
    args = cli.build_parser().parse_args(argv)
    return cli.resolve_target(args, environ or {})


def test_the_stacks_secret_and_ingress_are_used_with_nothing_exported(in_a_folder: Path) -> None:
    started_stack(in_a_folder, port="9123")
    target = target_for(["status"])
    assert (target.host, target.secret) == ("http://127.0.0.1:9123", STACK_SECRET)


def test_without_a_stack_file_nothing_changes() -> None:
    target = target_for(["status"])
    assert (target.host, target.secret) == (cli.DEFAULT_HOST, None)


def test_an_explicit_secret_wins_over_the_stack_file(in_a_folder: Path) -> None:
    started_stack(in_a_folder)
    assert target_for(["-s", "given", "status"]).secret == "given"
    assert target_for(["status"], {"CKANPACKAGER_SECRET": "exported"}).secret == "exported"


def test_packager_variables_win_over_the_file_as_for_replay(in_a_folder: Path) -> None:
    started_stack(in_a_folder, port="9123")
    target = target_for(["status"], {"PACKAGER_PORT": "9456", "PACKAGER_SECRET": "newer"})
    assert (target.host, target.secret) == ("http://127.0.0.1:9456", "newer")


def test_the_stacks_secret_is_not_sent_to_another_host(in_a_folder: Path) -> None:
    started_stack(in_a_folder, port="9123")
    target = target_for(["-p", "https://packager.example.org", "status"])
    assert (target.host, target.secret) == ("https://packager.example.org", None)


def test_the_stacks_secret_goes_to_its_ingress_named_by_hand(in_a_folder: Path) -> None:
    started_stack(in_a_folder, port="9123")
    assert target_for(["-p", "127.0.0.1:9123", "status"]).secret == STACK_SECRET


def test_a_defaults_file_wins_over_the_stack_file(in_a_folder: Path) -> None:
    started_stack(in_a_folder, port="9123")
    defaults = in_a_folder / "defaults.json"
    defaults.write_text(json.dumps({"host": "https://packager.example.org"}))
    target = target_for(["-d", str(defaults), "status"])
    assert (target.host, target.secret) == ("https://packager.example.org", None)
    defaults.write_text(json.dumps({"secret": "from-defaults"}))
    target = target_for(["-d", str(defaults), "status"])
    assert (target.host, target.secret) == ("http://127.0.0.1:9123", "from-defaults")


def test_packager_config_turns_the_stack_file_off_as_for_replay(in_a_folder: Path) -> None:
    started_stack(in_a_folder, port="9123")
    target = target_for(["status"], {"PACKAGER_CONFIG": str(in_a_folder / "elsewhere.toml")})
    assert (target.host, target.secret) == (cli.DEFAULT_HOST, None)


def test_a_stack_listening_on_every_address_is_reached_on_the_loopback(in_a_folder: Path) -> None:
    started_stack(in_a_folder, host="0.0.0.0", port="9123")
    assert target_for(["status"]).host == "http://127.0.0.1:9123"


def test_a_broken_stack_file_is_a_usage_error_naming_it(
    in_a_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = started_stack(in_a_folder)
    path.write_text("port = 'not a number'\n")
    with pytest.raises(operator_http.UsageError, match=r"var/stack\.toml"):
        target_for(["status"])
    with pytest.raises(SystemExit) as stop:
        cli.main(["status"], environ={})
    assert stop.value.code == 2
    assert str(path.resolve()) in capsys.readouterr().err


def test_a_broken_stack_file_does_not_matter_when_everything_is_given(in_a_folder: Path) -> None:
    started_stack(in_a_folder).write_text("not toml at all = = =\n")
    target = target_for(["-p", "127.0.0.1:9", "-s", "given", "status"])
    assert (target.host, target.secret) == ("http://127.0.0.1:9", "given")
