"""Fast tests of the CLI's pure helpers and of its offline behaviour (no server)."""

import sys

import cloudpickle
import pytest
from rich.console import Console
from typer.testing import CliRunner

from clipper import __version__
from clipper.cli import app
from clipper.cli.base import CliError
from clipper.cli.parsing import (
    build_query_body,
    error_line,
    load_function,
    new_log_lines,
    parse_input_json,
    parse_shape,
    read_pickle,
    split_server_args,
)
from clipper.cli.render import (
    apps_table,
    format_slo,
    format_uptime,
    models_table,
    replicas_table,
    status_summary,
    status_table,
)

runner = CliRunner()


def text_of(renderable) -> str:
    console = Console(record=True, width=200, color_system=None)
    console.print(renderable)
    return console.export_text()


# -- input parsing -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("[1, 2.5, 3]", [1, 2.5, 3]), ('"hello"', "hello"), ('{"a": 1}\n', {"a": 1}), ("7", 7)],
)
def test_parse_input_json(text, value):
    assert parse_input_json(text) == value


@pytest.mark.parametrize("text", ["", "  \n", "[1, 2", "hello"])
def test_parse_input_json_rejects_empty_and_invalid(text):
    with pytest.raises(CliError, match="input"):
        parse_input_json(text)


def test_build_query_body():
    assert build_query_body([1, 2]) == {"input": [1, 2]}
    assert build_query_body([[1], [2]], batch=True) == {"input_batch": [[1], [2]]}
    assert build_query_body("x", version="2") == {"input": "x", "version": "2"}
    with pytest.raises(CliError, match="--batch needs a JSON array"):
        build_query_body({"a": 1}, batch=True)


def test_error_line():
    body = '{"error": "unknown app", "cause": "no application named \'x\'"}'
    assert error_line(404, body) == "HTTP 404: unknown app: no application named 'x'"
    assert error_line(400, '{"error": "bad"}') == "HTTP 400: bad"
    expected = "HTTP 502: <html> bad gateway </html>"
    assert error_line(502, "<html>\n bad gateway\n</html>") == expected
    assert error_line(500, "") == "HTTP 500: (empty response)"


@pytest.mark.parametrize(("text", "shape"), [("64", [64]), ("28,28", [28, 28]), ("3x4", [3, 4])])
def test_parse_shape(text, shape):
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text", ["", "0", "a,b", "-1"])
def test_parse_shape_rejects(text):
    with pytest.raises(CliError, match="--input-shape"):
        parse_shape(text)


def test_split_server_args():
    overrides, rest = split_server_args(
        ["--demo", "--query-port", "1400", "--state-dir=/tmp/x", "--log-level", "DEBUG"]
    )
    assert overrides["query_port"] == 1400 and str(overrides["state_dir"]) == "/tmp/x"
    assert rest == ["--demo", "--log-level", "DEBUG"]
    assert split_server_args([]) == ({}, [])
    # No prefix matching: --query is not --query-port.
    assert split_server_args(["--query", "1"]) == ({}, ["--query", "1"])
    with pytest.raises(CliError):
        split_server_args(["--query-port", "many"])


# -- log following -----------------------------------------------------------------


def test_new_log_lines():
    assert new_log_lines([], ["a", "b"]) == ["a", "b"]
    assert new_log_lines(["a", "b"], ["a", "b"]) == []
    assert new_log_lines(["a", "b"], ["a", "b", "c"]) == ["c"]
    # A full window slides: the seen tail starts the new window.
    assert new_log_lines(["a", "b", "c"], ["b", "c", "d"]) == ["d"]
    assert new_log_lines(["a", "b", "c"], ["c", "d", "e"]) == ["d", "e"]
    # Nothing in common (more new lines than the window): all of it is new.
    assert new_log_lines(["a", "b"], ["x", "y"]) == ["x", "y"]


# -- loading models ----------------------------------------------------------------


def test_load_function_pickles_the_file_by_value(tmp_path):
    path = tmp_path / "my-model.py"
    path.write_text("OFFSET = 10\n\ndef predict(xs):\n    return [x + OFFSET for x in xs]\n")
    func = load_function(path, "predict")
    module_name = func.__module__
    assert func([1, 2]) == [11, 12]
    try:
        data = cloudpickle.dumps(func)
        # A container cannot import the module: the pickle must not need it.
        module = sys.modules.pop(module_name)
        assert cloudpickle.loads(data)([1]) == [11]
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def test_load_function_errors(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("VALUE = 3\n")
    with pytest.raises(CliError, match="defines no 'predict'"):
        load_function(path, "predict")
    with pytest.raises(CliError, match="not callable"):
        load_function(path, "VALUE")
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(CliError, match="RuntimeError: boom"):
        load_function(bad, "predict")


def test_read_pickle(tmp_path):
    good = tmp_path / "m.pkl"
    good.write_bytes(cloudpickle.dumps(len))
    assert read_pickle(good) == good.read_bytes()
    bad = tmp_path / "m.txt"
    bad.write_text("def f(): pass\n")
    with pytest.raises(CliError, match="not a pickle"):
        read_pickle(bad)


# -- rendering ---------------------------------------------------------------------


def test_format_uptime_and_slo():
    assert format_uptime(0) == "0s"
    assert format_uptime(59.9) == "59s"
    assert format_uptime(3725.2) == "1h 2m 5s"
    assert format_uptime(86400 + 4) == "1d 0h 0m 4s"
    assert format_slo(100000) == "100"
    assert format_slo(2500) == "2.5"
    assert format_slo(None) == "-"


def test_apps_table():
    text = text_of(
        apps_table(
            [
                {
                    "name": "digits",
                    "input_type": "doubles",
                    "latency_slo_micros": 100000,
                    "default_output": "-1",
                    "linked_models": ["m1", "m2"],
                    "selection_policy": "exp3",
                },
                {"name": "empty", "input_type": "strings", "linked_models": []},
            ]
        )
    )
    assert "Applications" in text
    row = next(line for line in text.splitlines() if "digits" in line)
    for cell in ("doubles", "100", "-1", "m1, m2", "exp3"):
        assert cell in row
    assert "empty" in text


def test_models_table():
    models = [
        {
            "model_name": "m",
            "model_version": "1",
            "is_current_version": False,
            "input_type": "doubles",
            "batch_size": -1,
        },
        {
            "model_name": "m",
            "model_version": "2",
            "is_current_version": True,
            "input_type": "doubles",
            "batch_size": 8,
        },
    ]
    models.append(
        {
            "model_name": "auto",
            "model_version": "1",
            "is_current_version": True,
            "input_type": "doubles",
            "batch_size": -1,
            "options": {"min_replicas": 0, "max_replicas": 4},
        }
    )
    wanted = {("m", "1"): 0, ("m", "2"): 3, ("auto", "1"): 1}
    text = text_of(models_table(models, wanted))
    v1 = next(line for line in text.splitlines() if " 1 " in line and "m " in line)
    v2 = next(line for line in text.splitlines() if " 2 " in line and "m " in line)
    assert "✓" not in v1 and "default" in v1
    assert "✓" in v2 and "8" in v2 and "3" in v2
    # Autoscaled: its range, not the stored count (which does not apply).
    auto = next(line for line in text.splitlines() if "auto " in line and "doubles" in line)
    assert "auto 0-4" in auto


def test_replicas_table():
    replicas = [
        {
            "model_name": "m",
            "model_version": "1",
            "replica": "m-1-0",
            "pid": 42,
            "live": True,
            "max_batch_size": 17,
            "latency_estimate_ms": 3.25,
        },
        {
            "model_name": "m",
            "model_version": "1",
            "replica": "m-1-1",
            "pid": None,
            "live": False,
            "restarts": 2,
        },
    ]
    lines = text_of(replicas_table(replicas)).splitlines()
    assert any("Max batch" in line and "Batch ms" in line for line in lines[:5])
    live = next(line for line in lines if "m-1-0" in line)
    dead = next(line for line in lines if "m-1-1" in line)
    assert "42" in live and "✓" in live and "17" in live and "3.2" in live
    assert "✗" in dead and "2" in dead


def test_status_summary_and_table():
    info = {
        "pid": 123,
        "uptime_s": 65.5,
        "query_port": 1337,
        "management_port": 1338,
        "rpc_port": 7000,
        "state_dir": "/s",
        "store": "",
        "manager": "local",
        "replicas": [{"live": True}, {"live": False}],
    }
    models = [{"model_name": "a"}, {"model_name": "a"}, {"model_name": "b"}]
    summary = status_summary(info, "127.0.0.1", ["x"], models)
    assert summary["server"] == "http://127.0.0.1:1338"
    assert (summary["apps"], summary["models"], summary["model_versions"]) == (1, 2, 3)
    assert (summary["replicas_live"], summary["replicas"]) == (1, 2)
    text = text_of(status_table(summary))
    assert "1m 5s" in text and "123" in text and "1 live of 2" in text
    assert "query 1337, management 1338, RPC 7000" in text


# -- the command line, in process --------------------------------------------------


def test_help_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("start", "stop", "status", "apps", "deploy", "query", "logs", "scale"):
        assert command in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"clipper {__version__}"


def test_deploy_needs_exactly_one_source():
    result = runner.invoke(app, ["deploy", "m", "1", "--input-type", "doubles"])
    assert result.exit_code == 2
    assert "--python-file" in result.output
