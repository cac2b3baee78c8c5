"""Run the code blocks of the README, Getting started, the how-to guides and the
REST reference against real servers, and check the outputs they show.

One server (with the demo app, as ``make run`` has it) serves every page but
the Redis one, in the order of ``EXECUTED``; that page starts its own servers
on a throwaway Redis. Commands see the server's ports in ``CLIPPER_*``
variables (which the examples and the CLI read), and ``localhost:1337``-style
addresses in the text are rewritten to the test server's ports.

Nothing waits between blocks: each runs right after the one before, as a
reader pasting them would (what the docs show must hold at once).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clipper.admin import ClipperConnection, LocalContainerManager
from tests.docs.blocks import EXECUTED, ROOT, Command, Page, commands, is_skipped, output_matches
from tests.helpers import Clipper, free_port, wait_for
from tests.redis_server import redis_server

pytestmark = pytest.mark.slow

COMMAND_TIMEOUT = 120
MANAGER_CALL = "LocalContainerManager()"


@dataclass
class Target:
    """Where a page's commands go: ports to substitute, variables to set."""

    env: dict[str, str]
    ports: dict[int, int]  # port in the docs -> port of the test server
    paths: dict[str, str] = field(default_factory=dict)

    def localize(self, text: str) -> str:
        for shown, actual in self.ports.items():
            text = re.sub(rf"\b(?:localhost|127\.0\.0\.1):{shown}\b", f"127.0.0.1:{actual}", text)
            text = re.sub(rf"(--[a-z-]+-port[ =]){shown}\b", rf"\g<1>{actual}", text)
        for shown, actual in self.paths.items():
            text = text.replace(shown, actual)
        return text


def command_env(state_dir: Path, query: int, management: int, rpc: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPPER_")}
    env.update(
        CLIPPER_QUERY_PORT=str(query),
        CLIPPER_MANAGEMENT_PORT=str(management),
        CLIPPER_RPC_PORT=str(rpc),
        CLIPPER_HOME=str(state_dir),
        # `python` and `clipper` are the test's own (the .venv of `make test`).
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def run_command(command: Command, target: Target, where: str) -> None:
    text = target.localize(command.text)
    started = time.monotonic()
    run = subprocess.run(
        ["bash", "-c", f"set -euo pipefail\n{text}"],
        cwd=ROOT,
        env=target.env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    took = time.monotonic() - started
    detail = f"{where}: `{text}` ({took:.1f}s)\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert run.returncode == 0, f"exit status {run.returncode}: {detail}"
    if command.expected is not None:
        problem = output_matches(command.expected, run.stdout)
        assert problem is None, f"{problem}: {detail}"


def run_python(code: str, target: Target, where: str, tmp_path: Path) -> None:
    assert MANAGER_CALL in code, f"{where}: the block no longer creates {MANAGER_CALL}"
    port = target.ports
    code = code.replace(
        MANAGER_CALL,
        f"LocalContainerManager(clipper_query_port={port[1337]}, "
        f"clipper_management_port={port[1338]}, clipper_rpc_port={port[7000]})",
    )
    script = tmp_path / "block.py"
    script.write_text(code)
    run = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env=target.env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    assert run.returncode == 0, f"{where}:\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"


def run_page(path: str, target: Target, tmp_path: Path) -> None:
    for block in Page.read(path).blocks:
        where = f"{path}:{block.line}"
        if block.lang == "bash":
            for command in commands(block):
                if not is_skipped(command):
                    run_command(command, target, f"{path}:{command.line}")
        elif block.lang == "python" and block.source is None:
            run_python(block.code, target, where, tmp_path)
        # python blocks copied from examples/ run through the page's bash blocks;
        # other fences are not run (see blocks.NOT_RUN).


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Clipper]:
    state = tmp_path_factory.mktemp("docs-server")
    cm = LocalContainerManager(
        clipper_query_port=free_port(),
        clipper_management_port=free_port(),
        clipper_rpc_port=free_port(),
        state_dir=state,
        # As `make run`, with the gRPC port on (docs/howto/grpc.md's 8001).
        server_flags=["--demo", "--grpc-port", str(free_port())],
    )
    clipper = Clipper(state, cm=cm).start()
    clipper.wait_live("digits-svc")
    yield clipper
    clipper.stop()


def target_of(server: Clipper) -> Target:
    cm = server.cm
    grpc_port = int(cm.server_flags[cm.server_flags.index("--grpc-port") + 1])
    env = command_env(
        cm.state_path,
        cm.clipper_query_port,
        cm.clipper_management_port,
        cm.clipper_rpc_port,
    )
    return Target(
        env={**env, "CLIPPER_GRPC_PORT": str(grpc_port)},
        ports={
            1337: cm.clipper_query_port,
            1338: cm.clipper_management_port,
            7000: cm.clipper_rpc_port,
            8001: grpc_port,
        },
    )


@pytest.mark.parametrize("path", [p for p in EXECUTED if "redis" not in p])
def test_page_runs_as_written(path, server, tmp_path):
    run_page(path, target_of(server), tmp_path)


def test_redis_page_runs_as_written(tmp_path):
    path = "docs/howto/redis-and-ray.md"
    assert path in EXECUTED
    a = {p: free_port() for p in ("query", "management", "rpc")}
    b = {p: free_port() for p in ("query", "management", "rpc")}
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    with redis_server() as url:
        redis_port = int(url.rsplit(":", 1)[1].split("/")[0])
        target = Target(
            env=command_env(home_a, a["query"], a["management"], a["rpc"]),
            ports={
                1337: a["query"],
                1338: a["management"],
                7000: a["rpc"],
                2337: b["query"],
                2338: b["management"],
                7001: b["rpc"],
                6379: redis_port,
            },
            paths={"/tmp/clipper-b": str(home_b)},
        )
        try:
            run_page(path, target, tmp_path)
        finally:
            # Whatever the page left running (if it failed before `clipper stop`).
            for home, ports in ((home_a, a), (home_b, b)):
                cm = LocalContainerManager(
                    clipper_management_port=ports["management"], state_dir=home
                )
                ClipperConnection(cm).stop_all()
            wait_for(
                lambda: all(not (h / "server.json").exists() for h in (home_a, home_b)),
                30,
                "the page's servers to stop",
            )
