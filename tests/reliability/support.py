"""Helpers of the reliability tests: deploying, timing queries, reading processes."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from clipper.deployers.python import deploy_python_closure
from clipper.statedir import RPC_SECRET_FILE, read_secret
from tests.helpers import Clipper, pid_alive, wait_for

# Explanations the server gives with a default output (selection/processor.py,
# batching/dispatcher.py); a test accepts any of them where the cause may vary.
NO_MODELS = "No connected models found for query"
SLO_MISSED = "latency SLO"
REPLICA_LOST = "replica computing it was lost"
QUEUE_FULL = "queue is full"


def deploy(
    clipper: Clipper,
    app: str,
    model: str,
    func: Any,
    *,
    input_type: str = "doubles",
    slo_micros: int = 2_000_000,
    default: str = "-1",
    replicas: int = 1,
    batch_size: int = -1,
    shape: list[int] | None = None,
    options: dict[str, Any] | None = None,
) -> None:
    """Register an app, deploy a closure as its model, link them, wait for the replicas."""
    clipper.conn.register_application(
        app, input_type, default, slo_micros, input_shape=shape, options=options
    )
    deploy_python_closure(
        clipper.conn, model, "1", input_type, func, num_replicas=replicas, batch_size=batch_size
    )
    clipper.conn.link_model_to_app(app, model)
    if replicas:
        clipper.wait_live(model, replicas)


@dataclass
class Answer:
    """One query's HTTP answer and how long it took, seen from the client."""

    status: int
    body: Any
    elapsed: float


def timed_predict(clipper: Clipper, app: str, body: Any, timeout: float = 20.0) -> Answer:
    """POST a query with a client timeout (so no query can hang the test)."""
    start = time.monotonic()
    r = clipper.http.post(f"{clipper.query_url}/{app}/predict", json=body, timeout=timeout)
    elapsed = time.monotonic() - start
    try:
        payload = r.json()
    except ValueError:
        payload = r.text
    return Answer(r.status_code, payload, elapsed)


@dataclass
class Offered:
    """What an open-loop load got back: every answer, and what ended a sender early."""

    answers: list[Answer]
    errors: list[BaseException]


def open_loop(url: str, qps: float, duration_s: float, threads: int, lead_s: float) -> Offered:
    """POST queries to ``url`` at ``qps`` in all for ``duration_s``, open loop.

    ``threads`` threads, each with its own client, take turns on one schedule
    that starts ``lead_s`` from now (time for the threads to start); a thread
    that falls behind sends at once and skips its missed slots, never bursting
    to catch up, so the rate offered does not depend on how fast the server
    answers. Thread i sends ``{"input": [i, k]}`` in its slot k. An error (a dropped
    connection) ends its thread and is returned, for the test to fail on.
    """
    offered = Offered([], [])
    lock = threading.Lock()
    start = time.monotonic() + lead_s
    interval = threads / qps  # between one thread's slots

    def send(index: int) -> None:
        k = 0
        with httpx.Client(timeout=10.0) as client:
            while True:
                due = start + (k * threads + index) / qps
                if due > start + duration_s:
                    return
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif -delay > interval:  # behind schedule: skip the missed slots
                    k += int(-delay / interval)
                k += 1
                t0 = time.monotonic()
                try:
                    r = client.post(url, json={"input": [float(index), float(k)]})
                    answer = Answer(r.status_code, r.json(), time.monotonic() - t0)
                except BaseException as exc:  # a dropped connection fails the test
                    with lock:
                        offered.errors.append(exc)
                    return
                with lock:
                    offered.answers.append(answer)

    senders = [threading.Thread(target=send, args=(i,)) for i in range(threads)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    return offered


def concurrently(fn: Callable[[int], Any], n: int, threads: int = 8) -> list[Any]:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, range(n)))


def replicas_of(clipper: Clipper, model: str, version: str = "1") -> list[dict[str, Any]]:
    return [
        r
        for r in clipper.status()["replicas"]
        if r["model_name"] == model and r["model_version"] == version
    ]


def model_stats(clipper: Clipper, model: str, version: str = "1") -> dict[str, Any] | None:
    for m in clipper.status()["models"]:
        if m["model"] == f"{model}:{version}":
            return m  # type: ignore[no-any-return]
    return None


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP a process for the duration of the block; SIGCONT it whatever happens."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def start_container(
    rpc_port: int,
    model_path: Path,
    name: str,
    version: str,
    input_type: str,
    log: Path,
    state_dir: Path,
) -> subprocess.Popen[bytes]:
    """A model container started by hand (not by the server's manager), with the
    server's RPC secret in its environment, as `clipper token --rpc` gives it."""
    secret = read_secret(state_dir, RPC_SECRET_FILE)
    assert secret, f"no RPC secret in {state_dir}"
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable, "-m", "clipper.container",
                "--address", f"tcp://127.0.0.1:{rpc_port}",
                "--model-name", name,
                "--model-version", version,
                "--input-type", input_type,
                "--model-path", str(model_path),
                "--replica", f"external-{name}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "CLIPPER_RPC_SECRET": secret},
        )  # fmt: skip


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Terminate a child process and reap it; kill it if it does not stop in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kill_server(clipper: Clipper) -> int:
    """kill -9 a server (not a clean stop); return its pid once it is gone and reaped.

    The handle's clients are closed: a new server may take over its ports.
    """
    pid = int(clipper.status()["pid"])
    os.kill(pid, signal.SIGKILL)
    proc = clipper.conn._process  # the test started it: reap it, or it stays a zombie
    if proc is not None and proc.pid == pid:
        proc.wait(30)
    wait_for(lambda: not pid_alive(pid), 30, f"server pid {pid} to die")
    clipper.conn.stop_all()  # nothing left to stop: closes the admin client
    clipper.http.close()
    return pid


def stop_quietly(clipper: Clipper) -> None:
    """Stop a server and the replicas it started, whatever state it is in."""
    pids: list[int] = []
    with contextlib.suppress(httpx.HTTPError, ValueError):
        pids = [r["pid"] for r in clipper.status()["replicas"] if r.get("pid")]
    clipper.conn.stop_all()
    clipper.http.close()
    for pid in pids:
        wait_for(lambda pid=pid: not pid_alive(pid), 30, f"replica pid {pid} to exit")
