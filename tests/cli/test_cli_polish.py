"""The ``clipper`` command's polish (issue #23, point 7).

- Every table fits 80 columns with the names whole (never cut to ``digits-…``).
- A command naming a model that does not exist says so.
- ``clipper query`` takes plain text for an app that takes strings, and
  otherwise says what to type.
- Building the command line imports neither the server nor the admin client
  (httpx), numpy, ZeroMQ or the store: ``clipper --help`` starts fast. Checked
  on the import graph, not with a clock.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from clipper.cli.base import CliError
from clipper.cli.parsing import parse_query_input
from clipper.cli.render import (
    Col,
    apps_table,
    fit_columns,
    models_table,
    replicas_table,
    status_summary,
    status_table,
)
from tests.cli.runner import assert_one_error_line, cli_env, global_args
from tests.helpers import Clipper, free_port, wait_for

LONG = "digits-classifier-v2"

# -- the import graph ----------------------------------------------------------------

# Modules a command that talks to no server must not import: the server side, the
# admin client and its HTTP stack, numpy, ZeroMQ, the store, the deployers.
NOT_FOR_THE_PARSER = (
    "clipper.server",
    "clipper.admin",
    "clipper.http",
    "clipper.store",
    "clipper.rpc",
    "clipper.container",
    "clipper.deployers",
    "clipper.managers",
    "clipper.metrics",
    "clipper.types",
    "numpy",
    "zmq",
    "sqlite3",
    "httpx",
    "cloudpickle",
    "msgpack",
    "orjson",
    "uvloop",
    "httptools",
    "prometheus_client",
    "simdjson",
    "ssl",
)
# Modules a client command (it talks to the management API) must still not import.
NOT_FOR_A_CLIENT = (
    "clipper.server",
    "clipper.http",
    "clipper.store",
    "clipper.rpc",
    "clipper.container",
    "clipper.deployers",
    "clipper.managers",
    "clipper.metrics",
    "numpy",
    "zmq",
    "sqlite3",
    "cloudpickle",
    "msgpack",
    "uvloop",
    "httptools",
    "prometheus_client",
    "simdjson",
)

PROBE = textwrap.dedent(
    """
    import json, sys
    import typer.main
    import clipper.cli
    typer.main.get_command(clipper.cli.app)  # the whole command line, every command
    for argv in json.loads(sys.argv[1]):
        try:
            clipper.cli.main(argv)
        except SystemExit:
            pass
    sys.stdout.flush()
    print("\\nMODULES " + json.dumps(sorted(sys.modules)))
    """
)


def imported_by(*argvs: list[str], state_dir: Path) -> set[str]:
    """The modules imported in a fresh interpreter that runs ``clipper ARGV`` for each argv."""
    env = {**cli_env(), "CLIPPER_HOME": str(state_dir)}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(argvs))],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    line = result.stdout.rsplit("\nMODULES ", 1)[1]
    return set(json.loads(line))


def offending(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    # httpx._main is the CLI's empty stand-in for httpx's own command-line tool
    modules = modules - {"httpx._main"}
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))


def test_help_version_and_token_import_nothing_heavy(tmp_path: Path) -> None:
    (tmp_path / "admin_token").write_text("t0ken\n")
    (tmp_path / "admin_token").chmod(0o600)
    modules = imported_by(["--help"], ["apps", "--help"], state_dir=tmp_path)
    assert "clipper.cli.admin_cmds" in modules  # the probe did build the command line
    assert offending(modules, NOT_FOR_THE_PARSER) == []
    # A command that prints no table does not even import Rich (typer's help does).
    modules = imported_by(["--version"], ["token"], state_dir=tmp_path)
    assert offending(modules, (*NOT_FOR_THE_PARSER, "rich")) == []


def test_client_commands_import_no_server_side_module(tmp_path: Path) -> None:
    # Nothing answers on that port: each command fails, after importing what it needs.
    port = str(free_port())
    argvs = [
        ["--management-port", port, "--query-port", port, *command]
        for command in (["status"], ["apps"], ["replicas"], ["query", "x", "hello"], ["logs"])
    ]
    modules = imported_by(*argvs, state_dir=tmp_path)
    assert "httpx" in modules  # the probe did run a client command
    assert offending(modules, NOT_FOR_A_CLIENT) == []
    # httpx's own command-line tool (and the pygments it loads) stays out
    assert offending(modules, ("pygments", "rich.syntax", "rich.progress")) == []


# -- tables at 80 columns --------------------------------------------------------------


def lines_at(width: int, renderable: object) -> list[str]:
    console = Console(record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text().splitlines()


def assert_fits(lines: list[str], width: int = 80) -> None:
    too_wide = [line for line in lines if len(line.rstrip()) > width]
    assert not too_wide, "\n".join(lines)


REPLICAS = [
    {
        "model_name": LONG,
        "model_version": "1",
        "replica": f"{LONG}-1-{i}",
        "pid": 4_194_000 + i,
        "live": i != 2,
        "restarts": i,
        "max_batch_size": 17 if i != 2 else None,
        "latency_estimate_ms": 3.25,
    }
    for i in range(3)
]


def test_replicas_fit_80_columns_with_the_labels_whole() -> None:
    lines = lines_at(80, replicas_table(REPLICAS))
    assert_fits(lines)
    for i in range(3):
        assert sum(f"{LONG}-1-{i}" in line for line in lines) == 1
    assert not any("…" in line for line in lines)
    text = "\n".join(lines)
    # The label repeats the model and version: those columns go first, and the
    # caption says so.
    assert "Model, Version" in text and "--json" in text
    for header in ("Live", "PID", "Restarts"):
        assert header in text
    # Wide enough, nothing is left out.
    wide = "\n".join(lines_at(200, replicas_table(REPLICAS)))
    assert "Model" in wide and "Version" in wide and "Left out" not in wide


def test_apps_models_and_status_fit_80_columns_with_the_names_whole() -> None:
    apps = [
        {
            "name": "digits-classifier-app",
            "input_type": "doubles",
            "latency_slo_micros": 100000,
            "default_output": "a long default output, with spaces, that can wrap anywhere",
            "linked_models": [LONG, "another-long-model-name"],
            "selection_policy": "exp4",
        }
    ]
    models = [
        {
            "model_name": LONG,
            "model_version": "2024-06-01-retrained",
            "is_current_version": True,
            "input_type": "doubles",
            "batch_size": -1,
        }
    ]
    summary = status_summary(
        {"pid": 1, "uptime_s": 5, "state_dir": "/home/someone/" + "deep/" * 20}, "h", [], []
    )
    for table, names in (
        (apps_table(apps), ["digits-classifier-app", LONG, "another-long-model-name"]),
        (models_table(models, {(LONG, "2024-06-01-retrained"): 2}), [LONG, "2024-06-01-retrained"]),
        (status_table(summary), ["Management API", "State folder"]),
    ):
        lines = lines_at(80, table)
        assert_fits(lines)
        for name in names:
            assert any(name in line for line in lines), (name, "\n".join(lines))


def test_columns_are_left_out_least_useful_first() -> None:
    columns = [Col("Name"), Col("Extra", keep=1), Col("Useful", keep=2)]
    rows = [["x" * 30, "e" * 20, "u" * 20]]
    assert fit_columns(columns, rows, 200)[0] == [0, 1, 2]
    assert fit_columns(columns, rows, 60)[0] == [0, 2]
    assert fit_columns(columns, rows, 40)[0] == [0]
    # Never the essential ones, even when they do not fit.
    kept, widths = fit_columns(columns, rows, 20)
    assert kept == [0] and widths == [30]


# -- query inputs ----------------------------------------------------------------------


def never() -> str | None:
    raise AssertionError("the app's input type was looked up for a JSON input")


def test_json_inputs_need_no_lookup() -> None:
    assert parse_query_input('"hello"', never) == "hello"
    assert parse_query_input("[1, 2.5]", never) == [1, 2.5]
    assert parse_query_input('["a", "b"]', never, batch=True) == ["a", "b"]


def test_a_strings_app_takes_plain_text() -> None:
    assert parse_query_input("hello", lambda: "strings") == "hello"
    assert parse_query_input("hello world\n", lambda: "strings") == "hello world"


@pytest.mark.parametrize(
    ("itype", "batch", "fragment"),
    [
        (None, False, """a string goes in quotes, such as '"hello"'"""),
        ("doubles", False, "the application takes doubles: give a JSON array of numbers"),
        ("json", False, """(a string goes in quotes: '"hello"')"""),
        ("strings", True, "--batch takes a JSON array of inputs"),
    ],
)
def test_otherwise_the_error_says_what_to_type(
    itype: str | None, batch: bool, fragment: str
) -> None:
    with pytest.raises(CliError, match="not valid JSON") as info:
        parse_query_input("hello", lambda: itype, batch=batch)
    assert fragment in str(info.value)


# -- against a real server, at 80 columns ----------------------------------------------

MODEL_FILE = """\
def shout(xs):
    return [x.upper() for x in xs]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clipper]:
    clipper = Clipper(tmp_path_factory.mktemp("cli-polish-state")).start()
    try:
        yield clipper
    finally:
        clipper.stop()


def clipper_80(
    server: Clipper, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``clipper ARGS`` against ``server``, in an 80-column terminal."""
    return subprocess.run(
        [sys.executable, "-m", "clipper", *global_args(server.cm), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        env={**cli_env(), "COLUMNS": "80"},
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout


@pytest.fixture(scope="module")
def shouting(server: Clipper, tmp_path_factory: pytest.TempPathFactory) -> str:
    """App ``shout`` (strings) linked to model ``digits-classifier-v2`` v1."""
    model = tmp_path_factory.mktemp("cli-polish-models") / "shout.py"
    model.write_text(MODEL_FILE)
    ok(
        clipper_80(
            server, "register", "shout", "--input-type", "strings", "--slo-micros", "2000000"
        )
    )
    ok(clipper_80(server, "register", "sums", "--input-type", "doubles"))
    ok(
        clipper_80(
            server,
            *("deploy", LONG, "1", "--input-type", "strings"),
            *("--python-file", str(model), "--function", "shout"),
        )
    )
    server.wait_live(LONG)
    ok(clipper_80(server, "link", "shout", LONG))
    return "shout"


@pytest.mark.slow
def test_every_listing_fits_80_columns_with_the_names_whole(server: Clipper, shouting: str) -> None:
    for command, names in (
        ("replicas", [f"{LONG}-1-0"]),
        ("models", [LONG]),
        ("apps", ["shout", LONG]),
        ("status", [str(server.cm.state_path)[:20]]),
    ):
        lines = ok(clipper_80(server, command)).splitlines()
        assert_fits(lines)
        for name in names:
            assert any(name in line for line in lines), (command, name, lines)
        assert not any("…" in line for line in lines), (command, lines)


@pytest.mark.slow
def test_unknown_models_are_named_as_unknown(server: Clipper, shouting: str) -> None:
    for args in (
        ("scale", "nosuch", "2"),
        ("scale", "nosuch", "2", "--version", "1"),
        ("set-version", "nosuch", "1"),
        ("unlink", "shout", "nosuch"),
    ):
        line = assert_one_error_line(clipper_80(server, *args))
        assert "no model named 'nosuch'" in line, (args, line)
        assert "current version" not in line
    line = assert_one_error_line(clipper_80(server, "scale", LONG, "1", "--version", "7"))
    assert f"model '{LONG}' has no version '7'" in line


@pytest.mark.slow
def test_query_takes_plain_text_for_a_strings_app(server: Clipper, shouting: str) -> None:
    def answer(*args: str, stdin: str | None = None) -> dict[str, object] | None:
        out = json.loads(ok(clipper_80(server, "query", *args, stdin=stdin)))
        return None if out["default"] else out

    assert wait_for(lambda: answer("shout", "hello"), what="a model's answer")["output"] == "HELLO"
    assert answer("shout", '"hello"')["output"] == "HELLO"  # type: ignore[index]
    assert answer("shout", stdin="hello there\n")["output"] == "HELLO THERE"  # type: ignore[index]
    # An app of another type: the error says what to type.
    line = assert_one_error_line(clipper_80(server, "query", "sums", "hello"))
    assert "not valid JSON" in line and "takes doubles" in line
