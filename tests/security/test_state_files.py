"""The state folder: owner-only files, and a stale server record never kills a stranger."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from clipper.admin import ClipperConnection, LocalContainerManager
from clipper.statedir import (
    SERVER_FILE,
    is_clipper_server,
    load_or_create_secret,
    private_dir,
    write_private,
)
from tests.helpers import free_port, pid_alive, wait_for


def test_private_folder_and_files(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    private_dir(state)
    assert state.stat().st_mode & 0o777 == 0o700
    write_private(state / "f", "x")
    assert (state / "f").stat().st_mode & 0o777 == 0o600
    (state / "t").write_text("loose\n")
    (state / "t").chmod(0o644)
    assert load_or_create_secret(state, "t") == "loose"
    assert (state / "t").stat().st_mode & 0o777 == 0o600  # tightened when read
    assert not list(state.glob(".*tmp"))  # no temporary file left behind


def test_stop_all_never_signals_a_process_that_is_not_a_clipper_server(tmp_path: Path) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        # A stale record: the server is gone and its pid now belongs to another program.
        (tmp_path / SERVER_FILE).write_text(json.dumps({"pid": stranger.pid}))
        assert not is_clipper_server(stranger.pid)
        cm = LocalContainerManager(clipper_management_port=free_port(), state_dir=tmp_path)
        assert ClipperConnection(cm).stop_all() is False
        assert pid_alive(stranger.pid) and stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait(timeout=30)


def test_a_server_is_recognised_by_its_command_line() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "-m", "clipper.server"]
    )
    try:
        # Until the child has exec'd, /proc shows its parent's (this test's) command line.
        wait_for(lambda: is_clipper_server(proc.pid), 30, "the child's command line")
    finally:
        proc.kill()
        proc.wait(timeout=30)
