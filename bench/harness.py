"""Start a real Clipper server for a benchmark, deploy models, pin CPUs, clean up.

``BenchServer`` is a context manager: a server on free ports with its state
in a temporary folder, started through the public admin client
(``ClipperConnection`` + ``LocalContainerManager``) with extra server flags,
and stopped, with every replica, on the way out whatever happened (SIGTERM
and SIGHUP to the benchmark included: ``StopSignals``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import cloudpickle

from clipper.admin import ClipperConnection, LocalContainerManager

from . import loadgen, models

# One BLAS thread per process: the server and its replicas share one core.
SINGLE_THREAD_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Where the benchmarks read and write (every bench module imports these).
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
IMG = DOCS / "img"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now, and not one this process handed out before: the kernel
    may offer a port just released again, so a server's query and RPC ports,
    chosen one after the other, could otherwise be the same (the tests use it too)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it is truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception as exc:  # keep polling through transient errors
            last = exc
        else:
            if value:
                return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last})")


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _gone(pid: int) -> bool:
    return not pid_alive(pid)


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


class StopSignals:
    """SIGTERM and SIGHUP, while a server of ours is open, unwind like Ctrl-C does.

    The servers run in sessions of their own, so a signal for the benchmark
    (``kill``, a CI timeout, a closed terminal) never reaches them, and the
    signals' default action ends the benchmark without running its ``with``
    blocks: the server and its replicas would live on. While one or more
    servers are open (``hold`` on enter, ``release`` on exit, counted, so they
    nest in any order), either signal raises ``SystemExit(128 + signal)`` in
    the main thread instead, and every open server stops on the way out.
    Only signals left at their default action are taken over (``nohup``'s
    ignored SIGHUP stays ignored, a handler of the program's own stays), and
    only from the main thread, the one Python runs handlers in.

    A stop, once begun, finishes: a signal that comes during one (``deferred``)
    is raised when the outermost stop is done, and a repeat of a signal that
    already raised is ignored while the servers are stopping.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self._holders = 0
        self._saved: dict[signal.Signals, Any] = {}
        self._stopping = 0
        self._fired = False
        self._pending: int | None = None

    @staticmethod
    def _main_thread() -> bool:
        return threading.current_thread() is threading.main_thread()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._fired:
            return  # already unwinding: let the stops finish
        self._fired = True
        if self._stopping:
            self._pending = signum
            return
        raise SystemExit(128 + signum)

    def hold(self) -> bool:
        """Take the signals over (the first holder); False, and nothing done,
        off the main thread. Pass True back to ``release``."""
        if not self._main_thread():
            return False
        if self._holders == 0:
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is signal.SIG_DFL:
                    self._saved[sig] = signal.signal(sig, self._handle)
        self._holders += 1
        return True

    def release(self) -> None:
        """Give the signals back to what they were (the last holder)."""
        self._holders -= 1
        if self._holders == 0:
            for sig, previous in self._saved.items():
                if signal.getsignal(sig) == self._handle:  # not replaced since
                    signal.signal(sig, previous)
            self._saved.clear()
            self._fired, self._pending = False, None

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A stop: a signal that comes during it is raised once it is done."""
        if not self._main_thread():
            yield
            return
        self._stopping += 1
        try:
            yield
        finally:
            self._stopping -= 1
            if not self._stopping and self._pending is not None:
                signum, self._pending = self._pending, None
                raise SystemExit(128 + signum)


# The one owner of the handlers: BenchServer and procserver.ProcessServer share it.
stop_signals = StopSignals()


class StoppedOnSignals:
    """A server context manager's part in ``stop_signals``: ``_hold`` before it
    starts, ``_close`` (its ``stop``, then the signals given back) on the way out."""

    _holds_signals = False

    def stop(self) -> None:
        raise NotImplementedError

    def _hold(self) -> None:
        self._holds_signals = stop_signals.hold()

    def _close(self) -> None:
        try:
            self.stop()
        finally:
            if self._holds_signals:
                self._holds_signals = False
                stop_signals.release()


def pin_tree(pid: int, cpus: set[int]) -> int:
    """Pin every thread of ``pid`` and of its descendants to ``cpus``; threads pinned."""
    pinned = 0
    for proc in descendants(pid):
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{proc}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), cpus)
                    pinned += 1
    return pinned


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class CpuPlan:
    """Where the generator and the server run; what was done is reported."""

    generator: set[int] | None
    server: set[int] | None
    note: str

    @classmethod
    def choose(cls, enabled: bool = True) -> CpuPlan:
        have = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if not enabled:
            return cls(None, None, "not pinned (--no-pin)")
        if len(have) < 2 or shutil.which("taskset") is None:
            return cls(None, None, f"not pinned (CPUs {have}, taskset {shutil.which('taskset')})")
        server, generator = {have[0]}, {have[1]}
        return cls(
            generator,
            server,
            f"generator pinned to CPU {have[1]}; server and model replicas (every thread) "
            f"pinned to CPU {have[0]} with os.sched_setaffinity",
        )

    def pin_generator(self) -> None:
        if self.generator is not None:
            os.sched_setaffinity(0, self.generator)


@dataclass
class BenchServer(StoppedOnSignals):
    """A Clipper server for one benchmark configuration (a context manager)."""

    def __init__(
        self,
        flags: list[str],
        cpus: CpuPlan,
        log: Callable[[str], None],
        *,
        module: str = "clipper.server",
        env: dict[str, str] | None = None,
    ) -> None:
        """``module``: what ``python -m`` runs (a wrapper of ``clipper.server``'s
        ``main``, such as ``bench.soak_probe``); ``env``: more environment for it
        (and, inherited, for its replicas)."""
        self.flags = flags
        self.module = module
        self.env = dict(env or {})
        self.cpus = cpus
        self.log = log
        self.state = Path(tempfile.mkdtemp(prefix="clipper-bench-"))
        self.cm = LocalContainerManager(
            clipper_query_port=free_port(),
            clipper_management_port=free_port(),
            clipper_rpc_port=free_port(),
            state_dir=self.state,
            server_flags=list(flags),
        )
        self.conn = ClipperConnection(self.cm)
        self.host = "127.0.0.1"
        self.query_port = self.cm.clipper_query_port
        self.admin_port = self.cm.clipper_management_port
        self.pid: int | None = None

    def __enter__(self) -> BenchServer:
        saved = {k: os.environ.get(k) for k in SINGLE_THREAD_ENV}
        os.environ.update(SINGLE_THREAD_ENV)
        # Before the server starts: SIGTERM from here on stops it (StopSignals).
        self._hold()
        try:
            if self.module == "clipper.server" and not self.env:
                self.conn.start_clipper(timeout=120)
            else:
                self._start_module(timeout=120)
            self.pid = int(self.status()["pid"])
            if self.cpus.server is not None:
                pin_tree(self.pid, self.cpus.server)
        except BaseException:
            self._close()
            raise
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return self

    def _start_module(self, timeout: float) -> None:
        """``start_clipper`` for another module: detached, logs in the state folder."""
        logs = self.state / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / "server.out", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.cm.server_args()],
                env={**os.environ, **self.cm.server_env(), **self.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # Reap it as soon as it exits, so ``stop_all`` sees it gone (not a zombie).
        threading.Thread(target=proc.wait, daemon=True).start()

        def ready() -> bool:
            if proc.poll() is not None:
                tail = (logs / "server.out").read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(
                    f"{self.module} exited with {proc.returncode}:\n" + "\n".join(tail)
                )
            url = f"http://{self.host}:{self.query_port}/ready"
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.status == 200

        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.module} did not answer within {timeout:.0f}s")
            time.sleep(0.1)
        self.conn.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    @property
    def admin_headers(self) -> dict[str, str]:
        """The management API's token: given, else the one the server keeps in its state folder."""
        # An older commit's client (PYTHONPATH, BENCH_MEASURED_COMMIT) has no token.
        resolve = getattr(self.cm, "resolve_admin_token", None)
        token = resolve() if resolve is not None else None
        return {"Authorization": f"Bearer {token}"} if token else {}

    def status(self) -> dict[str, Any]:
        url = f"http://{self.host}:{self.admin_port}/admin/status"
        request = urllib.request.Request(url, headers=self.admin_headers)
        with urllib.request.urlopen(request, timeout=10) as r:
            return dict(json.loads(r.read()))

    def model_status(self, model: str) -> dict[str, Any]:
        for m in self.status()["models"]:
            if m["model"] == f"{model}:1":
                return dict(m)
        return {}

    def replica_pids(self) -> list[int]:
        return [int(r["pid"]) for r in self.status()["replicas"] if r.get("pid")]

    def deploy(
        self,
        name: str,
        model: Any,
        *,
        slo_ms: float,
        batch_size: int = -1,
        input_type: str = "doubles",
    ) -> None:
        """App ``name`` with one model ``name:1`` (its own replica), live on return."""
        self.conn.register_application(
            name=name, input_type=input_type, default_output="-1", slo_micros=int(slo_ms * 1000)
        )
        cloudpickle.register_pickle_by_value(models)
        try:
            data = cloudpickle.dumps(model)
        finally:
            cloudpickle.unregister_pickle_by_value(models)
        self.conn.deploy_model(name, "1", input_type, data, batch_size=batch_size)
        self.conn.link_model_to_app(app_name=name, model_name=name)
        wait_for(
            lambda: any(r["model_name"] == name and r["live"] for r in self.status()["replicas"]),
            120,
            f"a live replica of {name}",
        )
        if self.cpus.server is not None and self.pid is not None:
            pin_tree(self.pid, self.cpus.server)

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: the server process, and its replicas together."""
        if self.pid is None:
            return {"server": 0.0, "replicas": 0.0}
        tree = descendants(self.pid)
        return {
            "server": cpu_seconds(self.pid),
            "replicas": sum(cpu_seconds(p) for p in tree if p != self.pid),
        }

    def stop(self) -> None:
        """Stop the server and every replica; remove the state folder."""
        with stop_signals.deferred():
            pids: list[int] = []
            if self.pid is not None:
                with contextlib.suppress(Exception):
                    pids = descendants(self.pid)
            try:
                self.conn.stop_all()
            finally:
                for pid in pids:
                    with contextlib.suppress(TimeoutError):
                        wait_for(functools.partial(_gone, pid), 30, f"pid {pid} to exit")
                    if pid_alive(pid):  # a straggler of ours: make sure
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, 9)
                            print(f"killed stray benchmark process {pid}", file=sys.stderr)
                if os.environ.get("BENCH_KEEP_STATE"):
                    print(f"kept the server's state folder {self.state}", file=sys.stderr)
                else:
                    shutil.rmtree(self.state, ignore_errors=True)


@contextlib.contextmanager
def timed(log: Callable[[str], None], what: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    log(f"{what}: {time.perf_counter() - t0:.1f}s")


def system_busy_seconds() -> float:
    """CPU seconds all CPUs spent running processes, or stolen by the hypervisor.

    Interrupt time is left out: it is mostly the loopback traffic of the
    benchmark itself, which no process is charged for.
    """
    with open("/proc/stat") as f:
        parts = f.readline().split()
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (int(x) for x in parts[1:9])
    return (user + nice + system + steal) / CLK_TCK


def own_cpu_seconds() -> float:
    """CPU seconds of this (the generator's) process, all threads."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


BENCHMARKS_DOC = DOCS / "benchmarks.md"


def publish(name: str, result: dict[str, Any], text: str, *, write: bool = True) -> None:
    """Print a benchmark's section; with ``write``, keep its results as
    bench/results/<name>.json and put the section in docs/benchmarks.md."""
    print(text)
    if write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        write_doc_section(name, text)


def write_doc_section(name: str, body: str, doc: Path = BENCHMARKS_DOC) -> None:
    """Replace (or append) the generated section ``name`` of the benchmarks page,
    between ``<!-- name:start -->`` and ``<!-- name:end -->``; the rest is kept."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n\n"
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory for ``asyncio.Runner``, or None (asyncio's own) without it."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def machine_info(cpus: CpuPlan) -> dict[str, Any]:
    model = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in (
        "clipper-serve",
        "numpy",
        "scikit-learn",
        "uvicorn",
        "uvloop",
        "httptools",
        "orjson",
        "pyzmq",
        "msgpack",
        "cloudpickle",
        "matplotlib",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[pkg] = importlib.metadata.version(pkg)
    git: dict[str, Any] = {}
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        git["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True
        ).stdout
        git["src_modified"] = bool(status.strip())
    clipper_from = Path(sys.modules["clipper"].__file__ or "").parent
    if os.environ.get("BENCH_MEASURED_COMMIT"):
        # The server ran from a checkout of another commit (PYTHONPATH): say which.
        git["measured"] = os.environ["BENCH_MEASURED_COMMIT"]
    elif clipper_from.is_relative_to(ROOT):
        git["measured"] = git.get("commit", "?")[:10] + (
            " + uncommitted changes" if git.get("src_modified") else ""
        )
    else:
        git["measured"] = f"unknown (clipper imported from {clipper_from})"
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "cpus_available": sorted(os.sched_getaffinity(0)),
        "memory_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "git": git,
        "pinning": cpus.note,
        "event_loop": loadgen.install_uvloop(),
        "loadavg_start": os.getloadavg(),
        "clipper_from": str(clipper_from),
    }
