"""The ``clipper`` command as a real subprocess against one real server."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.cli.runner import assert_one_error_line, cli_env, global_args, run_cli
from tests.helpers import Clipper, default_sigint, wait_for

pytestmark = pytest.mark.slow

MODEL_FILE = """\
import numpy as np


def total(xs):
    return [float(np.sum(x)) for x in xs]


def total_times_ten(xs):
    return [10.0 * float(np.sum(x)) for x in xs]
"""


class Cli:
    """Runs ``clipper <global options for the server> ARGS``."""

    def __init__(self, server: Clipper) -> None:
        self.server = server
        self.args = global_args(server.cm)

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(*self.args, *args, stdin=stdin)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self(*args, stdin=stdin)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    def json(self, *args: str) -> object:
        return json.loads(self.ok(*args, "--json"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    clipper = Clipper(tmp_path_factory.mktemp("cli-state")).start()
    yield clipper
    clipper.stop()


@pytest.fixture(scope="module")
def cli(server):
    return Cli(server)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli-models") / "sums.py"
    path.write_text(MODEL_FILE)
    return path


@pytest.fixture(scope="module")
def summing(cli, server, model_file):
    """App ``sum-app`` (3 doubles) linked to model ``summer`` v1, deployed from a file."""
    cli.ok(
        "register",
        "sum-app",
        "--input-type",
        "doubles",
        "--default-output",
        "-1",
        "--slo-micros",
        "2000000",
        "--input-shape",
        "3",
    )
    out = cli.ok(
        "deploy",
        "summer",
        "1",
        "--input-type",
        "doubles",
        "--python-file",
        str(model_file),
        "--function",
        "total",
        "--label",
        "cli",
    )
    assert "summer:1" in out
    server.wait_live("summer")
    cli.ok("link", "sum-app", "summer")
    return "sum-app"


def test_status(cli, server):
    pid = server.status()["pid"]
    out = cli.ok("status")
    assert str(pid) in out and str(server.cm.clipper_query_port) in out
    summary = cli.json("status")
    assert summary["pid"] == pid
    assert summary["management_port"] == server.cm.clipper_management_port
    assert summary["rpc_port"] == server.cm.clipper_rpc_port


def test_register_then_apps_then_unregister(cli):
    cli.ok("register", "reg-app", "--input-type", "floats", "--input-shape", "4")
    assert "reg-app" in cli.ok("apps")
    apps = {a["name"]: a for a in cli.json("apps")}
    assert apps["reg-app"]["input_shape"] == [4]
    assert apps["reg-app"]["latency_slo_micros"] == 100000
    assert apps["reg-app"]["default_output"] == "None"
    cli.ok("unregister", "reg-app")
    assert "reg-app" not in {a["name"] for a in cli.json("apps")}
    line = assert_one_error_line(cli("unregister", "reg-app"))
    assert "reg-app" in line and "does not exist" in line


def test_register_reports_the_servers_reason(cli):
    line = assert_one_error_line(cli("register", "bad-app", "--input-type", "nonsense"))
    assert "nonsense" in line


def test_deployed_model_shows_in_models_and_replicas(cli, summing):
    table = cli.ok("models")
    row = next(line for line in table.splitlines() if "summer" in line)
    assert "✓" in row and "doubles" in row
    models = [m for m in cli.json("models") if m["model_name"] == "summer"]
    assert models[0]["labels"] == ["cli"]
    replicas = [r for r in cli.json("replicas") if r["model_name"] == "summer"]
    assert replicas and replicas[0]["live"] is True and isinstance(replicas[0]["pid"], int)
    # Each live replica batches on its own: its maximum batch size is shown.
    assert isinstance(replicas[0]["max_batch_size"], int) and replicas[0]["max_batch_size"] >= 1
    assert replicas[0]["replica"] in cli.ok("replicas")


def test_link_and_query(cli, summing):
    apps = {a["name"]: a for a in cli.json("apps")}
    assert apps[summing]["linked_models"] == ["summer"]
    answer = json.loads(cli.ok("query", summing, "[1, 2, 3]"))
    assert answer["output"] == 6.0 and answer["default"] is False
    batch = json.loads(cli.ok("query", summing, "--batch", stdin="[[1, 1, 1], [2, 2, 2]]"))
    assert [p["output"] for p in batch["batch_predictions"]] == [3.0, 6.0]
    from_stdin = json.loads(cli.ok("query", summing, "-", stdin="[0.5, 0.5, 0]"))
    assert from_stdin["output"] == 1.0


def test_query_errors_exit_1_with_one_line(cli, summing):
    result = cli("query", "no-such-app", "[1, 2, 3]")
    line = assert_one_error_line(result)
    assert "404" in line and result.stdout == ""
    assert "400" in assert_one_error_line(cli("query", summing, "[1, 2]"))
    assert "JSON" in assert_one_error_line(cli("query", summing, "[1, 2"))


def test_set_version_and_scale(cli, server, summing, model_file):
    cli.ok(
        "deploy",
        "summer",
        "2",
        "--input-type",
        "doubles",
        "--python-file",
        str(model_file),
        "--function",
        "total_times_ten",
    )
    server.wait_live("summer", version="2")
    try:
        # A new version becomes current.
        assert json.loads(cli.ok("query", summing, "[1, 2, 3]"))["output"] == 60.0
        cli.ok("set-version", "summer", "1")
        current = {m["model_version"] for m in cli.json("models") if m["is_current_version"]}
        assert current == {"1"}
        assert json.loads(cli.ok("query", summing, "[1, 2, 3]"))["output"] == 6.0
        pinned = json.loads(cli.ok("query", summing, "[1, 2, 3]", "--version", "2"))
        assert pinned["output"] == 60.0

        assert "2 replica" in cli.ok("scale", "summer", "2")
        server.wait_live("summer", count=2)
        rows = [line for line in cli.ok("replicas").splitlines() if "summer" in line]
        assert sum("✓" in line for line in rows) >= 3  # two of v1, one of v2
        cli.ok("scale", "summer", "1")
        cli.ok("scale", "summer", "0", "--version", "2")

        def settled() -> bool:
            replicas = [r for r in cli.json("replicas") if r["model_name"] == "summer"]
            versions = sorted(r["model_version"] for r in replicas)
            return versions == ["1"] and replicas[0]["live"]

        wait_for(settled, what="summer back to one replica of v1")
        assert json.loads(cli.ok("query", summing, "[1, 2, 3]"))["output"] == 6.0
    finally:
        cli("set-version", "summer", "1")


def test_link_unlink(cli, summing):
    cli.ok("register", "other-app", "--input-type", "doubles")
    try:
        cli.ok("link", "other-app", "summer")
        assert {a["name"]: a for a in cli.json("apps")}["other-app"]["linked_models"] == ["summer"]
        cli.ok("unlink", "other-app", "summer")
        assert {a["name"]: a for a in cli.json("apps")}["other-app"]["linked_models"] == []
        line = assert_one_error_line(cli("link", "other-app", "no-such-model"))
        assert "no-such-model" in line
    finally:
        cli.ok("unregister", "other-app")


def test_logs(cli, summing):
    result = cli.ok("logs", "--lines", "500")
    lines = result.splitlines()
    assert 0 < len(lines) <= 500
    assert any("summer" in line for line in lines)
    assert len(cli.ok("logs", "-n", "3").splitlines()) <= 3
    label = next(r["replica"] for r in cli.json("replicas") if r["model_name"] == "summer")
    cli.ok("logs", "--replica", label)
    assert "summer" in cli.ok("logs", "--worker", "0", "-n", "500")  # 0: the server's
    # One process serves here: worker 1 has no log (tests/e2e/test_workers.py reads one).
    assert "no log for worker 1" in assert_one_error_line(cli("logs", "--worker", "1"))
    assert "not both" in assert_one_error_line(cli("logs", "--worker", "1", "--replica", label))


def test_logs_follow_prints_new_lines_until_ctrl_c(cli, tmp_path):
    stderr_path = tmp_path / "stderr"
    command = [sys.executable, "-m", "clipper", *cli.args, "logs", "--follow", "-n", "1"]
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []

    def saw_new_app() -> bool:
        while not lines.empty():
            seen.append(lines.get())
        return any("follow-app" in line for line in seen)

    with (
        open(stderr_path, "w") as stderr,
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=cli_env(),
            preexec_fn=default_sigint,
        ) as proc,
    ):
        assert proc.stdout is not None
        out = proc.stdout
        reader = threading.Thread(target=lambda: [lines.put(x) for x in out], daemon=True)
        reader.start()
        try:
            wait_for(lambda: not lines.empty(), what="the first log line")
            cli.ok("register", "follow-app", "--input-type", "strings")
            wait_for(saw_new_app, what="the follow-app log line")
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                status = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()  # never leave it for Popen.__exit__ to wait on forever
                raise
            assert status == 0
            reader.join(timeout=10)
            cli("unregister", "follow-app")
    assert "Traceback" not in stderr_path.read_text()
