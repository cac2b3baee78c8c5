"""``clipper`` without a shared server: help, no server, start and stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from clipper.admin import ClipperConnection, LocalContainerManager
from tests.cli.runner import assert_one_error_line, cli_env, global_args, run_cli
from tests.helpers import free_port, pid_alive, wait_for

pytestmark = pytest.mark.slow


def test_help():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("start", "stop", "status", "apps", "models", "replicas", "register"):
        assert command in result.stdout
    for command in ("unregister", "link", "unlink", "deploy", "set-version", "scale", "query"):
        assert command in result.stdout
    deploy = run_cli("deploy", "--help")
    assert deploy.returncode == 0
    assert "--python-file" in deploy.stdout and "--pickle" in deploy.stdout
    query = run_cli("query", "--help")
    assert query.returncode == 0 and "--batch" in query.stdout
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("clipper ")


def test_no_server_is_one_error_line():
    port = free_port()
    for args in (["status"], ["apps"], ["logs"]):
        line = assert_one_error_line(run_cli("--management-port", str(port), *args))
        assert str(port) in line
    line = assert_one_error_line(run_cli("--query-port", str(port), "query", "app", "[1]"))
    assert str(port) in line


def test_start_detach_and_stop(tmp_path):
    cm = LocalContainerManager(
        clipper_query_port=free_port(),
        clipper_management_port=free_port(),
        clipper_rpc_port=free_port(),
        state_dir=tmp_path / "state",
    )
    args = global_args(cm)
    try:
        started = run_cli(*args, "start", "--detach")
        assert started.returncode == 0, started.stderr
        pid = json.loads((cm.state_path / "server.json").read_text())["pid"]
        assert f"pid {pid}" in started.stdout
        assert str(cm.clipper_query_port) in started.stdout
        status = json.loads(run_cli(*args, "status", "--json").stdout)
        assert status["pid"] == pid and status["query_port"] == cm.clipper_query_port
        # A second start on the same ports is refused in one line.
        assert "already answers" in assert_one_error_line(run_cli(*args, "start", "--detach"))

        stopped = run_cli(*args, "stop")
        assert stopped.returncode == 0 and f"pid {pid}" in stopped.stdout
        wait_for(lambda: not pid_alive(pid), 30, "the server to exit")
        assert_one_error_line(run_cli(*args, "status"))
        again = run_cli(*args, "stop")
        assert again.returncode == 0 and "No running Clipper server" in again.stdout
    finally:
        ClipperConnection(cm).stop_all()


def test_start_in_the_foreground_passes_options_through(tmp_path):
    cm = LocalContainerManager(
        clipper_management_port=free_port(),
        clipper_rpc_port=free_port(),
        state_dir=tmp_path / "state",
    )
    query_port = free_port()
    args = global_args(cm)
    # Global options before the command, server options (any of them) after it.
    command = [sys.executable, "-m", "clipper", *args, "start", "--query-port", str(query_port)]
    with subprocess.Popen(
        [*command, "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
    ) as proc:
        try:
            status = wait_for(
                lambda: json.loads(run_cli(*args, "status", "--json").stdout),
                what="the foreground server to answer",
            )
            assert status["pid"] == proc.pid
            assert status["query_port"] == query_port
            assert status["rpc_port"] == cm.clipper_rpc_port
            assert status["state_dir"] == str(cm.state_path)
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0
