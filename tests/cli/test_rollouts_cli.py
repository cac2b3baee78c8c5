"""``clipper rollout start|stop`` and ``clipper rollouts`` (issue #27)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from rich.console import Console

from clipper.cli.admin_cmds import _parse_limits, _parse_steps
from clipper.cli.render import rollouts_table
from tests.cli.runner import assert_one_error_line, cli_env, global_args
from tests.helpers import Clipper

LONG = "digits-classifier-v2"
NOW = 1_800_000_000.0


def lines_at(width: int, table: object) -> list[str]:
    console = Console(record=True, width=width, color_system=None, file=io.StringIO())
    console.print(table)
    return console.export_text().splitlines()


ROLLOUTS = [
    {
        "model": LONG,
        "base_version": "2024-06-01-retrained",
        "new_version": "2024-07-15-retrained",
        "mode": "canary",
        "fraction": 0.05,
        "fraction_now": 0.25,
        "limits": {},
        "steps": [[600.0, 0.25], [3600.0, 1.0]],
        "started_at": NOW - 3725,
        "figures": {},
    },
    {
        "model": "m",
        "base_version": "1",
        "new_version": "2",
        "mode": "bandit",
        "fraction": 0.05,
        "fraction_now": 0.05,
        "limits": {"confidence": 0.95, "max_error_rate": 0.05},
        "steps": [],
        "started_at": NOW - 5,
        "figures": {},
    },
    {
        "model": "s",
        "base_version": "1",
        "new_version": "2",
        "mode": "shadow",
        "fraction": 1.0,
        "fraction_now": 1.0,
        "limits": {},
        "steps": [],
        "started_at": NOW,
        "figures": {},
    },
]


def test_the_table_fits_80_columns_with_the_names_whole() -> None:
    lines = lines_at(80, rollouts_table(ROLLOUTS, NOW))
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    text = "\n".join(lines)
    for name in (LONG, "2024-07-15-retrained", "canary", "bandit", "shadow"):
        assert name in text, (name, text)
    assert "…" not in text
    wide = "\n".join(lines_at(200, rollouts_table(ROLLOUTS, NOW)))
    assert "25%" in wide and "copy 100%" in wide and "1h 2m 5s" in wide
    assert "600s: 25%, 3600s: 100%" in wide and "confidence=0.95" in wide


def test_limits_and_steps_are_parsed() -> None:
    assert _parse_limits(["confidence=0.9", " min_feedback = 50"]) == {
        "confidence": 0.9,
        "min_feedback": 50.0,
    }
    assert _parse_steps(["600:0.25", "3600:1"]) == [(600.0, 0.25), (3600.0, 1.0)]
    for bad in (["confidence"], ["=1"], ["confidence=high"]):
        with pytest.raises(typer.BadParameter, match="KEY=NUMBER"):
            _parse_limits(bad)
    for bad_step in (["600"], ["ten:0.5"], ["600:half"]):
        with pytest.raises(typer.BadParameter, match="SECONDS:FRACTION"):
            _parse_steps(bad_step)


# -- against a real server ---------------------------------------------------------------

MODEL_FILE = """\
def total(xs):
    return [float(sum(x)) for x in xs]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clipper]:
    clipper = Clipper(tmp_path_factory.mktemp("cli-rollout-state")).start()
    try:
        yield clipper
    finally:
        clipper.stop()


def clipper_80(server: Clipper, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clipper", *global_args(server.cm), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**cli_env(), "COLUMNS": "80"},
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout


@pytest.mark.slow
def test_start_list_and_stop_from_the_command_line(server: Clipper, tmp_path: Path) -> None:
    model = tmp_path / "total.py"
    model.write_text(MODEL_FILE)
    assert ok(clipper_80(server, "rollouts")).strip() == "No rollouts running."
    for version in ("1", "2"):
        ok(
            clipper_80(
                server,
                *("deploy", LONG, version, "--input-type", "doubles", "--replicas", "0"),
                *("--python-file", str(model), "--function", "total", "--no-wait"),
            )
        )
    ok(clipper_80(server, "set-version", LONG, "1", "--no-wait"))

    started = clipper_80(
        server,
        *("rollout", "start", LONG, "2", "--mode", "canary", "--fraction", "0.1"),
        *("--step", "600:0.5", "--step", "1200:1"),
    )
    assert f"Rolling out {LONG}:2 (canary, fraction 0.1) against version 1." in ok(started)
    # Version 2 runs no replica: accepted, with a warning on stderr.
    assert "warning: version '2' has 0 replicas" in started.stderr

    lines = ok(clipper_80(server, "rollouts")).splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert any(LONG in line and "canary" in line for line in lines), lines
    listed = json.loads(ok(clipper_80(server, "rollouts", "--json")))
    assert listed[0]["steps"] == [[600.0, 0.5], [1200.0, 1.0]]

    line = assert_one_error_line(clipper_80(server, "set-version", LONG, "2", "--no-wait"))
    assert "canary rollout of version '2'" in line and "stop it first" in line
    line = assert_one_error_line(
        clipper_80(server, "rollout", "start", LONG, "2", "--mode", "bandit", "--limit", "x=1")
    )
    assert "unknown rollout limit(s) x" in line
    usage = clipper_80(server, "rollout", "start", LONG, "2", "--mode", "canary", "--step", "1")
    assert usage.returncode == 2 and "--step takes SECONDS:FRACTION" in usage.stderr

    stopped = ok(clipper_80(server, "rollout", "stop", LONG, "--promote"))
    assert f"Rollout of {LONG}:2 promoted; model '{LONG}' serves version 2." in stopped
    assert ok(clipper_80(server, "rollouts")).strip() == "No rollouts running."
    line = assert_one_error_line(clipper_80(server, "rollout", "stop", LONG))
    assert f"model '{LONG}' has no rollout running" in line
