"""The `ckanpackager` operator command without a service: arguments, the defaults file, output, `watch`."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from packager.cli import operator as cli
from packager.cli import operator_http, operator_output, operator_stats

JOB = "0232e797-71da-4658-8d92-52080d82db79"


@pytest.fixture(autouse=True)
def no_system_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the standard defaults file at a path the test controls (absent unless written), and run in a
    folder with no Quickstart stack's `var/stack.toml` (a developer's checkout may have one)."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "etc" / "ckanpackager-cli.json"
    monkeypatch.setattr(cli, "DEFAULT_DEFAULTS_FILE", path)
    return path


def target_for(argv: list[str], environ: Mapping[str, str] | None = None) -> cli.Target:
    args = cli.build_parser().parse_args(argv)
    return cli.resolve_target(args, environ or {})


def test_without_options_it_talks_to_the_local_service_with_no_secret() -> None:
    target = target_for(["status"])
    assert target.host == "http://127.0.0.1:8765"
    assert target.secret is None


def test_the_standard_defaults_file_is_used_when_present(no_system_defaults: Path) -> None:
    no_system_defaults.parent.mkdir()
    no_system_defaults.write_text(json.dumps({"secret": "s3", "host": "https://packager.example.org/"}))
    target = target_for(["status"])
    assert target.host == "https://packager.example.org"
    assert target.secret == "s3"


def test_an_explicit_defaults_file_that_is_missing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(operator_http.UsageError, match="no such defaults file"):
        target_for(["-d", str(tmp_path / "missing.json"), "status"])


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"host": 5}'])
def test_a_defaults_file_that_is_not_a_json_object_is_an_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "defaults.json"
    path.write_text(content)
    with pytest.raises(operator_http.UsageError, match=str(path)):
        target_for(["-d", str(path), "status"])


def test_no_defaults_flag_ignores_the_standard_file(no_system_defaults: Path) -> None:
    no_system_defaults.parent.mkdir()
    no_system_defaults.write_text(json.dumps({"secret": "from-file"}))
    assert target_for(["-D", "status"]).secret is None


def test_secret_precedence_option_then_environment_then_file(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"secret": "file"}))
    env = {"CKANPACKAGER_SECRET": "env"}
    assert target_for(["-d", str(path), "status"]).secret == "file"
    assert target_for(["-d", str(path), "status"], env).secret == "env"
    assert target_for(["-d", str(path), "-s", "option", "status"], env).secret == "option"


def test_options_may_follow_the_verb() -> None:
    args = cli.build_parser().parse_args(["stats", "requests", "-p", "h:9", "-o", "5", "-l", "7", "-x"])
    assert (args.host, args.offset, args.limit, args.exit_on_errors) == ("h:9", 5, 7, True)
    target = cli.resolve_target(args, {})
    assert target.host == "http://h:9"


def test_options_before_the_verb_are_kept_when_the_verb_repeats_none() -> None:
    args = cli.build_parser().parse_args(["-p", "h:9", "-q", "-r", "res", "stats", "errors"])
    assert (args.host, args.quiet, args.resource, args.kind) == ("h:9", True, "res", "errors")


def test_queue_parameters_merge_defaults_secret_and_pairs(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(
        json.dumps({"secret": "file", "api_url": "https://ckan/api", "filters": {"country": ["Kenya"]}})
    )
    target = target_for(["-d", str(path), "-s", "option", "queue", "package_datastore"])
    params = cli.queue_params(target, ["resource_id:r1", "api_url:https://other:8080/api", "secret:pair"])
    assert params == {
        "secret": "pair",
        "api_url": "https://other:8080/api",
        "filters": '{"country":["Kenya"]}',
        "resource_id": "r1",
    }


@pytest.mark.parametrize("text", ["email", ":value", " :x"])
def test_malformed_param_value_pairs_are_refused(text: str) -> None:
    with pytest.raises(operator_http.UsageError, match="PARAM:VALUE"):
        cli.parse_param(text)


def test_an_empty_value_is_allowed() -> None:
    assert cli.parse_param("q:") == ("q", "")


def test_unknown_tasks_are_refused_before_anything_is_sent() -> None:
    assert cli.task_path("/package_url") == "/package_url"
    with pytest.raises(operator_http.UsageError, match="unknown task 'package_zip'"):
        cli.task_path("package_zip")


def test_statistics_options_map_onto_the_endpoints_parameters() -> None:
    args = cli.build_parser().parse_args(
        ["stats", "errors", "-o", "10", "-l", "5", "-r", "r1", "-e", "a@b.c"]
    )
    assert operator_stats.stats_request("errors", args) == (
        "/statistics/errors",
        {"offset": "10", "limit": "5", "resource_id": "r1", "email": "a@b.c"},
    )
    args = cli.build_parser().parse_args(["stats", "-r", "r1"])
    assert operator_stats.stats_request("totals", args) == ("/statistics", {"resource_id": "r1"})
    args = cli.build_parser().parse_args(["stats", "requests"])
    assert operator_stats.stats_request("requests", args) == (
        "/statistics/requests",
        {"offset": "0", "limit": "100"},
    )


def test_a_negative_limit_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["stats", "requests", "-l", "-3"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["queue", "package_url", "email"], "malformed parameter 'email'"),
        (["queue", "package_zip"], "unknown task"),
        (["watch", "not-a-job"], "not a job id"),
        (["-p", "ftp://x", "status"], "not a service address"),
    ],
)
def test_usage_errors_are_one_line_on_stderr_with_exit_status_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv, environ={})
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("ckanpackager: ") and message in captured.err


def test_job_ids_and_status_urls_are_both_accepted() -> None:
    assert cli.job_events_path(JOB) == (JOB, f"/jobs/{JOB}/events")
    assert cli.job_events_path(f"http://127.0.0.1:8765/jobs/{JOB}") == (JOB, f"/jobs/{JOB}/events")


def test_server_sent_events_are_parsed_into_named_events() -> None:
    lines = iter(["event: job\n", 'data: {"a": 1}\n', "\n", ": a comment\n", "data: x\n", "data: y\n", "\n"])
    assert list(operator_http.parse_sse(lines)) == [("job", '{"a": 1}'), ("message", "x\ny")]


def test_refusals_are_explained_with_the_services_message() -> None:
    body = json.dumps({"status": "failed", "message": "Wrong/missing secret"}).encode()
    error = operator_http.http_failure("http://h", 401, "Unauthorized", body)
    assert "refused the secret, or its absence (Wrong/missing secret)" in error.message
    assert "-s" in error.message and "var/secret" in error.message
    error = operator_http.http_failure(
        "http://h", 400, "Bad Request", b'{"message": "Parameter email is required"}'
    )
    assert error.message == "http://h rejected the request: Parameter email is required"
    assert "502" in operator_http.http_failure("http://h", 502, "Bad Gateway", b"<html>").message


def test_the_progress_line_shows_a_bar_counts_and_state() -> None:
    line = operator_output.progress_line(
        {"state": "running", "percent": 50.0, "rows_done": 1500, "rows_total": 3000}, 10
    )
    assert line == "[#####-----]  50.0%  1,500 of 3,000 rows  running"
    assert operator_output.progress_line({"state": "queued", "percent": None}) == "queued"
    fetched = operator_output.progress_line({"state": "running", "bytes_done": 3 * 1048576})
    assert fetched == "3.0 MiB fetched  running"


# --- watch against a scripted service -----------------------------------------------------------------


def job(state: str, **extra: Any) -> dict[str, Any]:
    return {"job_id": JOB, "state": state, "percent": None, "rows_done": 0, **extra}


@dataclass
class ScriptedService(operator_http.Service):
    """A service whose events stream plays scripted connections, one per call."""

    connections: list[list[tuple[str, str]] | BaseException] = field(default_factory=list)

    def get(self, path: str) -> dict[str, Any]:
        return {"success": True, **job("queued")}

    def events(self, path: str) -> Iterator[tuple[str, str]]:
        script = self.connections.pop(0)
        if isinstance(script, BaseException):
            raise script
        yield from script


def as_events(*states: dict[str, Any]) -> list[tuple[str, str]]:
    return [("job", json.dumps(s)) for s in states]


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.time, "sleep", lambda _: None)


def output() -> tuple[operator_output.Output, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return operator_output.Output(out=out, err=err), out, err


def test_watch_ends_with_the_download_link_and_status_0_when_the_job_completes(no_sleep: None) -> None:
    done = job("completed", percent=100.0, download_url="http://h/downloads/x.zip", size=2048)
    service = ScriptedService(
        "http://h", connections=[as_events(job("queued"), job("running", percent=40.0), done)]
    )
    display, out, err = output()
    assert cli.watch(service, JOB, display) == 0
    assert out.getvalue() == "completed: http://h/downloads/x.zip (ZIP of 2.0 KiB)\n"
    assert err.getvalue().splitlines() == [
        "queued",
        "[############------------------]  40.0%  running",
        "[##############################] 100.0%  completed",
    ]


def test_watch_exits_1_and_says_why_when_the_job_fails(no_sleep: None) -> None:
    service = ScriptedService("http://h", connections=[as_events(job("failed", error="CKAN said 404"))])
    display, _, err = output()
    assert cli.watch(service, JOB, display) == 1
    assert err.getvalue().splitlines()[-1] == f"ckanpackager: job {JOB} failed: CKAN said 404"


def test_watch_ends_when_the_request_was_abandoned(no_sleep: None) -> None:
    abandoned = job("abandoned", error="not accepted: the ingress answered 503")
    service = ScriptedService("http://h", connections=[as_events(job("queued"), abandoned), [("end", "{}")]])
    display, _, err = output()
    assert cli.watch(service, JOB, display) == 1
    assert err.getvalue().splitlines()[-1] == (
        f"ckanpackager: job {JOB} was abandoned: not accepted: the ingress answered 503"
    )


def test_watch_reconnects_when_the_stream_drops_before_the_end(no_sleep: None) -> None:
    service = ScriptedService(
        "http://h",
        connections=[
            as_events(job("running")),
            ConnectionResetError(),
            TimeoutError(),
            as_events(job("completed", percent=100.0, download_url="u", size=1)),
        ],
    )
    display, out, _ = output()
    assert cli.watch(service, JOB, display) == 0
    assert out.getvalue().startswith("completed: u")


def test_watch_gives_up_after_repeated_failures(no_sleep: None) -> None:
    lost = operator_http.CliError("cannot reach the service at http://h: Connection refused")
    service = ScriptedService("http://h", connections=[lost] * (cli.EVENTS_RECONNECTS + 1))
    display, _, _ = output()
    with pytest.raises(operator_http.CliError, match="cannot reach"):
        cli.watch(service, JOB, display)


def test_watch_with_json_prints_one_document_per_state(no_sleep: None) -> None:
    states = [job("running", percent=10.0), job("completed", percent=100.0, download_url="u", size=1)]
    service = ScriptedService("http://h", connections=[as_events(*states)])
    out = io.StringIO()
    assert cli.watch(service, JOB, operator_output.Output(as_json=True, out=out, err=io.StringIO())) == 0
    assert [json.loads(line) for line in out.getvalue().splitlines()] == states
