"""Run the ``clipper`` command as a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys

from clipper.admin import LocalContainerManager


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPPER_")}
    env.update(COLUMNS="200", NO_COLOR="1", PYTHONIOENCODING="utf-8")
    return env


def global_args(cm: LocalContainerManager) -> list[str]:
    return [
        "--host",
        cm.host,
        "--management-port",
        str(cm.clipper_management_port),
        "--query-port",
        str(cm.clipper_query_port),
        "--rpc-port",
        str(cm.clipper_rpc_port),
        "--state-dir",
        str(cm.state_path),
    ]


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clipper", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        env=cli_env(),
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]
