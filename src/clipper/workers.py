"""Several frontend processes on one server (``--workers N``): the supervisor's side.

One Python process tops out at about one core of query handling, so a server
started with ``--workers N`` runs N frontend processes. The first is the
supervisor, the process ``clipper start`` started (its PID is in the state
folder): it serves queries like the others and alone runs the management
port, the dashboard, the container manager, the autoscaler and the rollouts'
decisions. It spawns the other N - 1 (``python -m clipper.server
--worker-fd``, new interpreters, not forks) and keeps them running:

- **Ports.** Every worker listens on the query port (and the gRPC port) with
  ``SO_REUSEPORT``, so the kernel spreads new connections among them. Each
  binds its own RPC port (any free one, on ``rpc_host``) and says which.
- **Replicas are not duplicated.** A container connects to the address it was
  given (the supervisor's RPC port); the supervisor's ``registered`` names
  the workers' RPC ports (``peers``) and the container registers with each,
  so every worker batches for every replica directly (see
  docs/rpc-protocol.md). A replaced worker's new port is announced again.
- **Configuration** lives in the store; the supervisor tells the workers when
  it changed (and each re-reads the store's generation once a second anyway).
- **Policy state** lives in the store, written by feedback atomically; each
  worker re-reads a cached state after ``PolicyStates.ttl_s`` (1 s), so
  feedback through any worker reaches what all of them use within about a
  second.
- **The prediction cache** is per worker: each keeps its own, and the cache's
  contract (a repeated query within the cache's life is answered from it)
  holds per worker.
- **Metrics.** Each worker sends its counters to the supervisor once a
  second; the supervisor sums them with its own and renders ``/metrics``,
  which every worker then serves as it is, so a scrape gets the same
  (summed, monotonic) figures whichever worker answers it, at most about a
  second old. The dashboard and ``/admin/status`` read the same sums.
- **Rollouts.** Workers route queries as the catalog says and count their
  evidence; the supervisor judges the rollout on the evidence of all of them
  and sends the new version's share back.

The control channel between the supervisor and each worker is a socket pair
made before the worker starts (so no port, no path and no secret: only the
two processes hold it), carrying length-prefixed pickled messages. A worker
whose supervisor goes away (the channel closes) stops; a worker that exits
is started again, with a back-off, and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .batching.dispatcher import ModelStatistics
from .batching.model_state import retire_statistics
from .cache.prediction_cache import CacheStatistics
from .metrics import Counters, retire_counters

log = logging.getLogger("clipper.workers")

_LENGTH = struct.Struct("!I")
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
START_TIMEOUT_S = 120.0  # how long a worker may take to start (imports, store, ports)
BACKOFF_INITIAL_S, BACKOFF_MAX_S = 0.5, 10.0

Message = dict[str, Any]


class Channel:
    """Length-prefixed pickled messages over one end of a socket pair.

    Pickle is safe here only because both ends are this server's own
    processes and nothing else can reach the socket pair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_unix_connection(sock=self.sock)

    def send(self, message: Message) -> bool:
        """Queue one message; False when the channel is closed."""
        writer = self._writer
        if writer is None or writer.is_closing():
            return False
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        writer.write(_LENGTH.pack(len(data)) + data)
        return True

    async def recv(self) -> Message | None:
        """The next message, or None once the other end has closed."""
        assert self._reader is not None
        try:
            (size,) = _LENGTH.unpack(await self._reader.readexactly(_LENGTH.size))
            if size > MAX_MESSAGE_BYTES:
                raise ValueError(f"a control message of {size:,} bytes")
            message = pickle.loads(await self._reader.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return message if isinstance(message, dict) else None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        else:
            self.sock.close()


@dataclass(eq=False)
class Worker:
    """One worker process as the supervisor keeps it."""

    index: int  # 1..N-1 (the supervisor is worker 0)
    process: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    rpc_port: int | None = None  # once it said hello
    started_at: float = 0.0
    restarts: int = 0
    stats: Message | None = None  # what it sent last (its counters, cumulative)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    start_failure: int | None = None  # its exit status, had it exited while the pool started

    @property
    def pid(self) -> int | None:
        p = self.process
        return p.pid if p is not None and p.returncode is None else None

    def describe(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "pid": self.pid,
            "rpc_port": self.rpc_port,
            "live": self.rpc_port is not None and self.pid is not None,
            "restarts": self.restarts,
        }


class WorkerPool:
    """The supervisor's workers: started, followed, restarted and stopped."""

    def __init__(
        self,
        count: int,
        settings: Any,
        *,
        on_peers_changed: Callable[[], None],
        on_message: Callable[[Worker, Message], None],
        python: str = sys.executable,
    ) -> None:
        self.settings = settings  # what each worker runs with (the bound ports filled in)
        self.on_peers_changed = on_peers_changed
        self.on_message = on_message
        self.python = python
        self.workers = [Worker(i) for i in range(1, count)]
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._starting = False

    async def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start every worker and wait until each serves (raises RuntimeError if one cannot)."""
        self._starting = True
        for worker in self.workers:
            await self._spawn(worker)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        # A start-up wait (once per server), polled: fails as soon as one exits.
        while not all(w.ready.is_set() for w in self.workers):
            for w in self.workers:
                if w.start_failure is not None:
                    raise RuntimeError(
                        f"worker {w.index} exited with status {w.start_failure} while "
                        f"starting; see logs/worker-{w.index}.log and the lines above"
                    )
            if loop.time() > deadline:
                late = [w.index for w in self.workers if not w.ready.is_set()]
                raise RuntimeError(f"worker(s) {late} did not start within {timeout_s:.0f}s")
            await asyncio.sleep(0.05)
        self._starting = False
        log.info("%d worker processes serve beside the supervisor", len(self.workers))

    async def _spawn(self, worker: Worker) -> None:
        ours, theirs = socket.socketpair()
        try:
            worker.process = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                "clipper.server",
                "--worker-fd",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        worker.channel = Channel(ours)
        await worker.channel.open()
        worker.rpc_port, worker.stats = None, None
        worker.started_at = time.monotonic()
        worker.channel.send({"type": "settings", "index": worker.index, "settings": self.settings})
        self._spawn_task(self._follow(worker, worker.channel, worker.process))

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow(
        self, worker: Worker, channel: Channel, process: asyncio.subprocess.Process
    ) -> None:
        """Read one worker's messages until its channel closes; then start it again."""
        while (message := await channel.recv()) is not None:
            kind = message.get("type")
            if kind == "hello":
                worker.rpc_port = int(message["rpc_port"])
                worker.ready.set()
                log.info(
                    "worker %d (pid %s) serves; its RPC port is %d",
                    worker.index,
                    process.pid,
                    worker.rpc_port,
                )
                self.on_peers_changed()
            else:
                try:
                    self.on_message(worker, message)
                except Exception:
                    log.exception("handling a message of worker %d failed", worker.index)
        channel.close()
        with contextlib.suppress(ProcessLookupError):
            if process.returncode is None:
                process.kill()
        code = await process.wait()
        worker.ready.clear()
        # Told while its last report is still there (the supervisor keeps its counts).
        self.on_message(worker, {"type": "exited", "status": code})
        worker.rpc_port, worker.stats = None, None
        if self._starting:
            worker.start_failure = code
            return
        if self._stopping:
            return
        self.on_peers_changed()
        backoff = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2**worker.restarts)
        if time.monotonic() - worker.started_at > 60:
            backoff = BACKOFF_INITIAL_S  # it had run a while: not a crash loop
        worker.restarts += 1
        log.error(
            "worker %d (pid %s) exited with status %s; starting it again in %.1fs",
            worker.index,
            process.pid,
            code,
            backoff,
        )
        await asyncio.sleep(backoff)
        if not self._stopping:
            try:
                await self._spawn(worker)
            except OSError:
                log.exception("could not start worker %d again", worker.index)

    def peers(self) -> list[int]:
        """The RPC ports of the workers that serve now."""
        return [w.rpc_port for w in self.workers if w.rpc_port is not None]

    def broadcast(self, message: Message) -> None:
        for worker in self.workers:
            if worker.channel is not None and worker.rpc_port is not None:
                worker.channel.send(message)

    def describe(self) -> list[dict[str, Any]]:
        return [w.describe() for w in self.workers]

    async def stop(self, timeout_s: float) -> None:
        """Ask every worker to drain and exit; kill those still running after ``timeout_s``."""
        self._stopping = True
        for worker in self.workers:
            if worker.channel is not None:
                worker.channel.send({"type": "stop"})
        processes = [w.process for w in self.workers if w.process is not None]
        waits = [asyncio.create_task(p.wait()) for p in processes]
        if waits:
            await asyncio.wait(waits, timeout=timeout_s)
        for process in processes:
            if process.returncode is None:
                log.warning("worker pid %s did not stop in time: killed", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for worker in self.workers:
            if worker.channel is not None:
                worker.channel.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)


@dataclass
class Retired:
    """The supervisor's: what worker processes that exited had counted, their
    last reports, kept in the sums so that a worker started again from zero
    does not set ``/metrics``' counters back (gauges, such as queue depth,
    are left out)."""

    counters: Counters | None = None
    models: list[ModelStatistics] = field(default_factory=list)
    cache: CacheStatistics | None = None

    def add(self, last: Message) -> None:
        """One more worker's last ``stats`` report."""
        self.counters = retire_counters(self.counters, last["counters"])
        self.models = retire_statistics(self.models, last["models"])
        if last["cache"] is not None:
            gone = last["cache"].counters_only()
            self.cache = gone if self.cache is None else self.cache + gone
