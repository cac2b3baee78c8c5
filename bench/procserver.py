"""A server under test that is a process tree (the naive baseline, the batching
peers, the echo server): started pinned to the server's core, checked, and
stopped with every process it started (``bench/peers.py``, ``bench/wrk.py``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .harness import (
    ROOT,
    SINGLE_THREAD_ENV,
    CpuPlan,
    StoppedOnSignals,
    cpu_seconds,
    pid_alive,
    pin_tree,
    stop_signals,
)


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[19] if fields else None


def tree_and_session(pid: int) -> list[int]:
    """``pid``, its descendants, and every process of the session ``pid`` leads
    (a child whose parent died is reparented but stays in the session)."""
    children: dict[int, list[int]] = {}
    session: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        if not fields or fields[0] == "Z":
            continue
        with contextlib.suppress(ValueError, IndexError):
            children.setdefault(int(fields[1]), []).append(int(entry))
            if int(fields[3]) == pid:
                session.append(int(entry))
    out, todo = set(session), [pid]
    while todo:
        p = todo.pop()
        out.add(p)
        todo.extend(c for c in children.get(p, []) if c not in out)
    return sorted(p for p in out if pid_alive(p))


class ServerFailed(RuntimeError):
    """A server process that exited, or never answered."""


class ProcessServer(StoppedOnSignals):
    """A server pinned to the server's CPUs, run as a process in a session of
    its own; duck-types ``BenchServer`` for the probes of bench/batching.py (no
    model status; CPU of its whole tree).

    Every process it starts (its descendants, and what stays in its session
    after a parent died) is pinned to the server's core once it is up and
    before every probe, counted in its CPU time, and stopped on the way out:
    SIGTERM to the main process (``grace_s`` to shut its own children down),
    then SIGTERM and SIGKILL to whatever of the tree is left. ``port``: given
    (and already written into its configuration) or chosen here and passed as
    ``--port``; ``log_dir``: its output goes there (else to ours), and
    the folder is removed on the way out, like ``cleanup``. SIGTERM or SIGHUP
    to the benchmark stops it too (``harness.StopSignals``).
    """

    def __init__(
        self,
        argv: list[str],
        cpus: CpuPlan,
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float = 60.0,
        grace_s: float = 15.0,
        log_dir: Path | None = None,
        cleanup: tuple[Path, ...] = (),
    ) -> None:
        self.host = "127.0.0.1"
        if port is None:
            with socket.socket() as s:
                s.bind((self.host, 0))
                self.query_port = int(s.getsockname()[1])
            self.argv = [*argv, "--port", str(self.query_port)]
        else:
            self.query_port = port
            self.argv = list(argv)
        self.cpus = cpus
        self.env = env
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.log_dir = log_dir
        self.cleanup = (*cleanup, *((log_dir,) if log_dir else ()))
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.pinned: dict[str, int] = {}
        self.killed = 0

    def __enter__(self) -> ProcessServer:
        server_cpus = self.cpus.server

        def pin() -> None:
            if server_cpus is not None:
                os.sched_setaffinity(0, server_cpus)

        out: Any = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / "server.log", "ab")  # closed once started
        # Before the server starts: SIGTERM from here on stops it.
        self._hold()
        try:
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    cwd=ROOT,
                    env=self.env if self.env is not None else os.environ | SINGLE_THREAD_ENV,
                    preexec_fn=pin,
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT if out is not None else None,
                )
            finally:
                if out is not None:
                    out.close()
            self.pid = self.proc.pid
            self._wait_listening()
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def log_tail(self, lines: int = 12) -> str:
        if self.log_dir is None:
            return ""
        with contextlib.suppress(OSError):
            text = (self.log_dir / "server.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_tail()
            raise ServerFailed(
                f"{' '.join(self.argv[:3])} exited with {self.proc.returncode}"
                + (f"; its output ends:\n{tail}" if tail else "")
            )

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            self.check_alive()
            try:
                with socket.create_connection((self.host, self.query_port), timeout=1):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                tail = self.log_tail()
                raise ServerFailed(
                    f"{' '.join(self.argv[:3])} did not listen on port {self.query_port} within "
                    f"{self.timeout_s:.0f}s" + (f"; its output ends:\n{tail}" if tail else "")
                )
            time.sleep(0.1)

    def members(self) -> list[int]:
        return tree_and_session(self.pid) if self.pid is not None else []

    def pin(self) -> dict[str, int]:
        """Pin every thread of every process of the server to its core (again)."""
        if self.cpus.server is None or self.pid is None:
            return {}
        procs = self.members()
        threads = sum(pin_tree(p, self.cpus.server) for p in procs)
        self.pinned = {"processes": len(procs), "threads": threads}
        return self.pinned

    def model_status(self, app: str) -> dict[str, Any]:
        return {}

    def cpu(self) -> dict[str, float]:
        if self.pid is None:
            return {"server": 0.0, "replicas": 0.0}
        rest = [p for p in self.members() if p != self.pid]
        return {"server": cpu_seconds(self.pid), "replicas": sum(map(cpu_seconds, rest))}

    def wait_idle(self, limit_s: float = 30.0, cores: float = 0.25) -> float:
        """Wait (bounded) until the server's processes use under ``cores`` of a
        core: a peer may still be working off the backlog of an overload."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < limit_s:
            c0, w0 = sum(self.cpu().values()), time.perf_counter()
            time.sleep(0.1)  # a measurement window
            used = (sum(self.cpu().values()) - c0) / (time.perf_counter() - w0)
            if used < cores:
                break
        return time.perf_counter() - t0

    def stop(self) -> None:
        with stop_signals.deferred():
            self._stop()

    def _stop(self) -> None:
        if self.proc is None:
            return
        assert self.pid is not None
        started = {p: _start_time(p) for p in self.members()}
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(self.grace_s)
        for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            left = self._ours(started)
            if not left:
                break
            for p in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, sig)
            if sig == signal.SIGKILL:
                self.killed += len(left)
                print(
                    f"killed {len(left)} stray process(es) of {self.argv[2]}: {left}",
                    file=sys.stderr,
                )
            deadline = time.monotonic() + wait_s
            while self._ours(started) and time.monotonic() < deadline:
                time.sleep(0.1)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(15)
        self.proc = None
        if not os.environ.get("BENCH_KEEP_STATE"):
            for path in self.cleanup:
                shutil.rmtree(path, ignore_errors=True)

    def _ours(self, started: dict[int, str | None]) -> list[int]:
        """What is left of the server: processes seen at the stop (the same
        process: same start time) and whatever is still in its session."""
        assert self.pid is not None
        left = {
            p for p, t in started.items() if t is not None and _start_time(p) == t and pid_alive(p)
        }
        return sorted(left | set(tree_and_session(self.pid)))
