"""A throwaway redis-server for tests: its own port, its own directory, no persistence."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import free_port

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def redis_server_binary() -> str:
    """Return the path of redis-server, or fail the test (never skip) saying how to get it."""
    path = shutil.which("redis-server")
    if path is None:
        pytest.fail(
            "redis-server is not on PATH; the Redis store tests need it. "
            "`make test` installs it (target system-deps: apt-get install -y redis-server).",
            pytrace=False,
        )
    return path


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server(port: int | None = None, directory: Path | None = None) -> Iterator[str]:
    """Run redis-server on 127.0.0.1 and yield its URL (``redis://127.0.0.1:PORT/0``).

    ``port`` defaults to a free one; pass the port of a server stopped earlier
    to stand in for it after a restart. ``directory`` (default: a new temporary
    one) is its working directory and holds its log. On exit the server is
    terminated and waited for, and killed if it does not stop in time.
    """
    binary = redis_server_binary()
    with tempfile.TemporaryDirectory(prefix="redis-") as tmp:
        workdir = directory if directory is not None else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        # A free port can be taken by someone else before redis-server binds it;
        # then try another, unless the caller asked for this one.
        for _attempt in range(1 if port is not None else 5):
            chosen = port if port is not None else free_port()
            log_path = workdir / f"redis-{chosen}.log"
            with log_path.open("ab") as log:  # a restart on the same port appends
                proc = subprocess.Popen(
                    [
                        binary,
                        "--port", str(chosen),
                        "--bind", "127.0.0.1",
                        "--save", "",
                        "--appendonly", "no",
                        "--dir", str(workdir),
                        "--daemonize", "no",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )  # fmt: skip
            try:
                if _wait_until_ready(proc, chosen):
                    yield f"redis://127.0.0.1:{chosen}/0"
                    return
            finally:
                _stop(proc)
        log_text = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"redis-server did not start on port {chosen}; its log:\n{log_text}")


def _wait_until_ready(proc: subprocess.Popen[bytes], port: int) -> bool:
    """True once the server answers PING; False if it exited (e.g. port taken)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _answers_ping(port):
            return True
        # Not a bare sleep: a short poll interval on the way to the deadline.
        time.sleep(0.02)
    raise RuntimeError(f"redis-server on port {port} did not answer PING in {START_TIMEOUT} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # SIGTERM: redis-server shuts down cleanly (nothing to save)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
