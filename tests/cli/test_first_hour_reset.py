"""``clipper reset``, ``--exist-ok``, and the CLI's waits (issue #23, points 1 and 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipper.admin import ClipperConnection
from clipper.statedir import ADMIN_TOKEN_FILE, RPC_SECRET_FILE, read_secret
from tests.cli.runner import assert_one_error_line, cli_env, global_args, run_cli
from tests.helpers import manager_on_free_ports, pid_alive, wait_for

pytestmark = pytest.mark.slow

MODEL_FILE = """\
def double(xs):
    return [2 * float(sum(x)) for x in xs]
"""


@pytest.fixture
def home(tmp_path: Path):
    """A state folder and the global options of a server on free ports in it; any
    server still running there at the end is stopped."""
    cm = manager_on_free_ports(tmp_path / "state")
    yield cm
    ClipperConnection(cm).stop_all()


def ok(*args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli(*args, stdin="")
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def populate(args: list[str], model_file: Path) -> None:
    """An app, a model (the CLI waits for its replica) and a link."""
    ok(*args, "register", "twice", "--input-type", "doubles", "--default-output", "-1")
    deployed = ok(
        *args,
        *("deploy", "doubler", "1", "--input-type", "doubles"),
        *("--python-file", str(model_file), "--function", "double"),
    )
    # Not a terminal: one line before the wait and one after, on stderr.
    assert "Waiting for a live replica of doubler:1" in deployed.stderr
    assert "Ready: a live replica of doubler:1" in deployed.stderr
    ok(*args, "link", "twice", "doubler")
    ok(*args, "wait", "twice", "--timeout", "60")
    answer = ok(*args, "query", "twice", "[1, 2]").stdout
    assert '"output": 6.0' in answer.replace('":6.0', '": 6.0'), answer


def is_empty(cm) -> bool:
    conn = ClipperConnection(cm)
    conn.connect()
    try:
        return conn.get_all_apps() == [] and conn.get_all_models() == []
    finally:
        conn.close()


def test_register_deploy_and_link_again_with_exist_ok(home, tmp_path):
    args = global_args(home)
    model_file = tmp_path / "model.py"
    model_file.write_text(MODEL_FILE)
    ok(*args, "start", "--detach")
    populate(args, model_file)
    again = run_cli(*args, "register", "twice", "--input-type", "doubles", stdin="")
    assert "already exists" in assert_one_error_line(again)
    ok(*args, "register", "twice", "--input-type", "doubles", "--default-output=-1", "--exist-ok")
    differs = run_cli(*args, "register", "twice", "--input-type", "doubles", "--exist-ok")
    assert "default_output is '-1', not 'None'" in assert_one_error_line(differs)
    ok(
        *args,
        *("deploy", "doubler", "1", "--input-type", "doubles", "--exist-ok"),
        *("--python-file", str(model_file), "--function", "double"),
    )
    assert "already linked" in assert_one_error_line(run_cli(*args, "link", "twice", "doubler"))
    ok(*args, "link", "twice", "doubler", "--exist-ok", "--no-wait")


def test_reset_a_running_then_a_stopped_server(home, tmp_path):
    args = global_args(home)
    state = home.state_path
    model_file = tmp_path / "model.py"
    model_file.write_text(MODEL_FILE)
    ok(*args, "start", "--detach")
    token, secret = read_secret(state, ADMIN_TOKEN_FILE), read_secret(state, RPC_SECRET_FILE)
    populate(args, model_file)
    conn = ClipperConnection(home)
    conn.connect()
    pids = [conn.inspect_instance()["pid"]]
    pids += [r["pid"] for r in conn.get_all_model_replicas() if r.get("pid")]
    conn.close()

    # Without a terminal to ask on, and without --yes: refused, nothing changes.
    refused = run_cli(*args, "reset", stdin="")
    assert refused.returncode == 1 and "pass --yes" in refused.stderr
    assert all(pid_alive(pid) for pid in pids) and (state / "clipper.db").exists()

    # Running: the server and its replicas stop, then the store goes.
    reset = ok(*args, "reset", "--yes")
    assert "was stopped" in reset.stdout
    for pid in pids:
        wait_for(lambda pid=pid: not pid_alive(pid), 30, f"pid {pid} to exit")
    assert not (state / "clipper.db").exists() and not (state / "models").exists()
    assert read_secret(state, ADMIN_TOKEN_FILE) == token
    assert read_secret(state, RPC_SECRET_FILE) == secret
    ok(*args, "start", "--detach")
    assert is_empty(home)

    # Stopped: the store in the state folder goes; the token stays.
    populate(args, model_file)
    ok(*args, "stop")
    ok(*args, "reset", "--yes")
    assert not (state / "clipper.db").exists()
    assert read_secret(state, ADMIN_TOKEN_FILE) == token
    ok(*args, "start", "--detach")
    assert is_empty(home)
    nothing = ok("--state-dir", str(tmp_path / "never-used"), "reset", "--yes")
    assert "Nothing to reset" in nothing.stdout


def test_reset_asks_on_a_terminal_and_no_keeps_everything(home):
    args = global_args(home)
    ok(*args, "start", "--detach")
    ok(*args, "register", "kept", "--input-type", "doubles")
    ok(*args, "stop")
    leader, follower = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clipper", *args, "reset"],
            stdin=follower,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        os.write(leader, b"n\n")
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(leader)
        os.close(follower)
    assert proc.returncode == 1, (out, err)
    assert "This deletes every application" in out and "Nothing changed." in out
    assert (home.state_path / "clipper.db").exists()
