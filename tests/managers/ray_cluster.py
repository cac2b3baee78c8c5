"""A throwaway Ray cluster for tests: nodes are ``ray start --block`` subprocesses.

Each node gets its own loopback address (Ray replaces 127.0.0.1 with the
machine's external address, so the head is 127.0.0.2, the next 127.0.0.3),
free ports for everything it listens on, token authentication disabled and
short health checks (a dead node is noticed in seconds). Everything is
stopped by PID, never with ``ray stop`` (which kills every Ray process on
the machine): each ``ray start`` gets SIGTERM and takes its children down,
and any process of a node's tree still alive after that (the log monitor
of a node whose raylet was killed lingers) is killed by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Every process that touches the cluster (nodes, drivers) must agree on these.
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Notice a dead node in ~2 s instead of ~15 s (read by the GCS).
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}
START_TIMEOUT = 180.0  # a loaded 2-core CI machine, first start of a fresh venv
STOP_TIMEOUT = 20.0
LINGER_GRACE = 3.0  # after its node stopped, how long a process may take to exit


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(
    host: str, count: int, consecutive: bool = False, exclude: set[int] | None = None
) -> list[int]:
    """``count`` ports free on ``host`` (and on 0.0.0.0), optionally a consecutive run,
    none of them in ``exclude`` (ports already chosen but not bound yet).

    Picked below the kernel's ephemeral range: a port that is free now but in
    that range can be taken by any outgoing connection before Ray binds it
    (Ray's processes bind theirs over several seconds).
    """
    high = min(_ephemeral_low(), 60000)
    low = 10000 if high > 20000 else 1024
    for _ in range(200):
        if consecutive:
            base = random.randrange(low, high - count)
            ports = list(range(base, base + count))
        else:
            ports = random.sample(range(low, high), count)
        if exclude and not exclude.isdisjoint(ports):
            continue
        if all(_port_free(host, p) and _port_free("0.0.0.0", p) for p in ports):
            return ports
    raise RuntimeError(f"no {count} free ports on {host}")


def _start_time(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _tree(pid: int) -> dict[int, int]:
    """``pid`` and its descendants, each with its start time (to recognise it later)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    out: dict[int, int] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        started = _start_time(p)
        if started is not None:
            out[p] = started
        todo.extend(children.get(p, []))
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@dataclass
class RayNode:
    ip: str
    process: subprocess.Popen[bytes]
    log: Path
    known: dict[int, int] = field(default_factory=dict)  # pid -> start time, ever seen

    def remember(self) -> None:
        self.known.update(_tree(self.process.pid))

    def raylet_pid(self) -> int:
        self.remember()
        pids = [p for p in self.known if _comm(p) == "raylet" and _start_time(p) == self.known[p]]
        assert pids, f"no raylet under node {self.ip}"
        return pids[0]


class RayCluster:
    """Nodes started here and stopped here; ``address`` is the head's GCS address."""

    def __init__(self) -> None:
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: socket paths
        self.nodes: list[RayNode] = []
        self.address = ""
        self.env = {**os.environ, **RAY_ENV}
        self.ray = str(Path(sys.executable).with_name("ray"))
        # Every port handed to a node so far: free when chosen, but bound only
        # once Ray starts, so the next choice must not pick them again (a worker
        # port range once overlapped the same node's agent port, and Ray refused
        # to start).
        self.chosen: set[int] = set()

    def _ports(self, ip: str, count: int, consecutive: bool = False) -> list[int]:
        ports = free_ports(ip, count, consecutive, exclude=self.chosen)
        self.chosen.update(ports)
        return ports

    def _node_flags(self, ip: str, num_cpus: int, resources: dict[str, float] | None) -> list[str]:
        ports = self._ports(ip, 6)
        workers = self._ports(ip, 40, consecutive=True)
        flags = [
            "--block",
            f"--node-ip-address={ip}",
            f"--num-cpus={num_cpus}",
            f"--node-manager-port={ports[0]}",
            f"--object-manager-port={ports[1]}",
            f"--dashboard-agent-listen-port={ports[2]}",
            f"--dashboard-agent-grpc-port={ports[3]}",
            f"--runtime-env-agent-port={ports[4]}",
            f"--metrics-export-port={ports[5]}",
            f"--min-worker-port={workers[0]}",
            f"--max-worker-port={workers[-1]}",
            "--object-store-memory=80000000",
            "--disable-usage-stats",
        ]
        if resources:
            flags.append(f"--resources={json.dumps(resources)}")
        return flags

    def _start(self, ip: str, flags: list[str]) -> RayNode:
        log = self.temp_dir / f"node-{ip}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [self.ray, "start", *flags],
                env=self.env,
                cwd=self.temp_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C must not reach it first
            )
        node = RayNode(ip, process, log)
        self.nodes.append(node)
        deadline = time.monotonic() + START_TIMEOUT
        while b"Ray runtime started" not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                # Read the log before stop(), which removes the temp folder.
                tail = log.read_text(errors="replace")[-3000:]
                why = (
                    f"exited with status {process.returncode}"
                    if process.poll() is not None
                    else f"not up after {START_TIMEOUT:.0f} s"
                )
                self.stop()
                raise RuntimeError(f"ray node {ip} did not start ({why}):\n{tail}")
            time.sleep(0.1)
        node.remember()
        return node

    def start_head(self, ip: str = "127.0.0.2", num_cpus: int = 2, **kw: float) -> RayNode:
        gcs, client, dashboard = self._ports(ip, 3)
        flags = [
            "--head",
            f"--port={gcs}",
            f"--ray-client-server-port={client}",
            "--include-dashboard=false",
            f"--dashboard-port={dashboard}",
            f"--temp-dir={self.temp_dir}",
            *self._node_flags(ip, num_cpus, kw or None),
        ]
        self.address = f"{ip}:{gcs}"
        return self._start(ip, flags)

    def add_node(self, ip: str, num_cpus: int = 2, **resources: float) -> RayNode:
        assert self.address, "start the head first"
        flags = [f"--address={self.address}", *self._node_flags(ip, num_cpus, resources or None)]
        return self._start(ip, flags)

    def kill_raylet(self, node: RayNode) -> None:
        """Kill a node the hard way: its raylet, with SIGKILL (its workers die with it)."""
        os.kill(node.raylet_pid(), signal.SIGKILL)

    def stop(self) -> list[int]:
        """Stop every node (workers first) by PID; then kill what of theirs lingers.

        Returns the PIDs that had to be killed after their node stopped.
        """
        for node in reversed(self.nodes):
            node.remember()
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in reversed(self.nodes):
            try:
                node.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
        killed = []
        deadline = time.monotonic() + LINGER_GRACE
        for node in self.nodes:
            for pid, started in node.known.items():
                while _start_time(pid) == started and time.monotonic() < deadline:
                    time.sleep(0.05)
                if _start_time(pid) == started:  # the same process, still there
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
        self.nodes.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return killed
