"""A benchmark stopped by SIGTERM or SIGHUP stops the servers it started.

The servers run in sessions of their own, so the signal reaches only the
benchmark; without ``harness.StopSignals`` its default action would end the
benchmark at once and leave them running. Each test runs a small benchmark
as a child process, signals it once its servers are up, and checks that every
process of theirs is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from bench.harness import ROOT, StopSignals

from tests.helpers import pid_alive, wait_for

# A peer server at its simplest: listens on the port ProcessServer passes
# (``--port N``, last) and waits to be stopped.
LISTENER = (
    "import socket, sys, time\n"
    "s = socket.socket()\n"
    "s.bind(('127.0.0.1', int(sys.argv[-1])))\n"
    "s.listen()\n"
    "time.sleep(600)\n"
)

# Two ProcessServers, one inside the other: their pids go to argv[1] once both
# are up, then the benchmark waits to be stopped.
NESTED_PROCESS_SERVERS = f"""
import json, os, sys, time
from bench.harness import CpuPlan
from bench.procserver import ProcessServer

plan = CpuPlan(None, None, "not pinned")
argv = [sys.executable, "-c", {LISTENER!r}]
with ProcessServer(argv, plan, grace_s=5) as outer, ProcessServer(argv, plan, grace_s=5) as inner:
    with open(sys.argv[1] + ".tmp", "w") as f:
        json.dump(outer.members() + inner.members(), f)
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(600)
"""

# A Clipper server with one model: the server's and its replica's pids.
BENCH_SERVER = """
import json, os, sys, time
from bench import models
from bench.harness import BenchServer, CpuPlan, descendants

plan = CpuPlan(None, None, "not pinned")
with BenchServer(["--log-level", "WARNING"], plan, lambda line: None) as server:
    server.deploy("noop", models.NoOp(), slo_ms=1000)
    with open(sys.argv[1] + ".tmp", "w") as f:
        json.dump(descendants(server.pid), f)
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(600)
"""


def _default_signals() -> None:
    for sig in StopSignals.SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


def signal_once_up(script: str, sig: signal.Signals, tmp_path: Path) -> None:
    """Run ``script`` as a benchmark; once it has written the pids of its
    servers, send it ``sig``; it must exit as SystemExit(128 + sig) would,
    and every one of those pids must be gone."""
    pids_file = tmp_path / "pids.json"
    log = tmp_path / "bench.log"
    pids: list[int] = []
    with log.open("wb") as out:
        bench = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), str(pids_file)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # As from a terminal: a test run under nohup (or a CI runner that
            # ignores SIGHUP) would pass its ignored SIGHUP on, which the
            # benchmark rightly leaves ignored.
            preexec_fn=_default_signals,
        )
    try:
        wait_for(lambda: pids_file.exists() or bench.poll() is not None, 90, "the servers to be up")
        assert pids_file.exists(), f"the benchmark exited early:\n{log.read_text()}"
        pids = json.loads(pids_file.read_text())
        # Two servers, or a server and its replica: more than the benchmark's child.
        assert len(pids) >= 2 and all(pid_alive(p) for p in pids), pids
        bench.send_signal(sig)
        exit_code = bench.wait(30)
        wait_for(
            lambda: not any(map(pid_alive, pids)), 30, f"the servers' processes {pids} to exit"
        )
    except BaseException:
        for pid in filter(pid_alive, pids):  # a failed test leaves nothing of its own behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert exit_code == 128 + sig, log.read_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda sig: sig.name)
def test_a_signal_stops_every_process_server_the_benchmark_opened(sig, tmp_path):
    signal_once_up(NESTED_PROCESS_SERVERS, sig, tmp_path)


@pytest.mark.slow
def test_sigterm_stops_a_bench_server_and_its_replicas(tmp_path):
    signal_once_up(BENCH_SERVER, signal.SIGTERM, tmp_path)


@pytest.fixture
def default_handlers():
    """SIGTERM and SIGHUP at their default action for the test, as they were after it."""
    saved = {sig: signal.getsignal(sig) for sig in StopSignals.SIGNALS}
    for sig in StopSignals.SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_holds_nest_in_any_order_and_give_the_defaults_back(default_handlers):
    signals = StopSignals()
    assert signals.hold() and signals.hold()
    assert signal.getsignal(signal.SIGTERM) == signals._handle
    signals.release()  # the first holder leaves first: the second is still covered
    assert signal.getsignal(signal.SIGHUP) == signals._handle
    signals.release()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL


def test_an_ignored_sighup_stays_ignored(default_handlers):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    signals = StopSignals()
    signals.hold()
    try:
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == signals._handle
    finally:
        signals.release()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


def test_a_signal_during_a_stop_is_raised_once_the_stop_is_done(default_handlers):
    signals = StopSignals()
    signals.hold()
    stopped = []
    try:
        with pytest.raises(SystemExit) as raised, signals.deferred():
            assert signal.getsignal(signal.SIGTERM) == signals._handle
            signal.raise_signal(signal.SIGTERM)  # handled before raise_signal returns
            stopped.append(True)
        assert stopped and raised.value.code == 128 + signal.SIGTERM
    finally:
        signals.release()


def test_off_the_main_thread_nothing_is_taken_over(default_handlers):
    signals = StopSignals()
    held: list[bool] = []
    thread = threading.Thread(target=lambda: held.append(signals.hold()))
    thread.start()
    thread.join()
    assert held == [False]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
