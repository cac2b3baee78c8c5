"""An asyncio load generator for the query frontend: open-loop Poisson or closed-loop.

It speaks just enough HTTP/1.1 itself (keep-alive connections on asyncio
streams, on uvloop): a POST with Content-Length, then the status line, the
headers and a Content-Length or chunked body. That is several times cheaper per
request than a general client, and the generator must not be the
bottleneck; its own CPU use is measured and reported with every result.

- Open loop (``run_open``): arrivals at Poisson times at a target rate,
  bounded by a count and a duration. Arrivals queue for a free connection of
  a bounded pool (the most recently used first, as HTTP clients' pools do);
  an arrival that finds none is counted as the *client's own backlog*.
  Latency of a request sent from that backlog is measured from its scheduled
  arrival, so waiting for the server counts (no coordinated omission); a
  request that found a free connection is timed from its send. The event
  loop's timers tick in milliseconds, so sends are up to a millisecond off
  their schedule either way (at 50/s, 0.3-0.45 ms late at the median and up
  to 1.4 ms at p99 in our runs): timing those from the schedule charged the
  generator's own lateness to the server, most visibly at low rates. The
  lateness is reported apart
  (``send_late_p50_ms``, ``send_late_p99_ms``).
- The garbage collector is paused while a run measures (``gc_paused``):
  the generator's own collections stopped its event loop for 20-50 ms at a
  time, every second or so at 9,000 requests/s, and every answer due then
  was charged those milliseconds (the light MLP under overload: p99 24-26 ms
  with the collector, 11-12 ms without it, in the same server and load).
- Closed loop (``run_closed``): N clients, each sending its next request
  as soon as it has the previous answer; ``run_closed_pairs``: each client
  sends a pair of requests in turn (a prediction, then its feedback).

A result reports the achieved rate, latency percentiles, the ratio of
default outputs (``"default":true`` in the response), errors, the client
backlog and the generator's CPU use. ``python -m bench.loadgen --help``
runs it by hand against a running server.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import gc
import itertools
import json
import os
import random
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ParamSpec, TypeVar

import numpy as np

DEFAULT_MARKER = b'"default":true'
# Above this share of one core, the generator may be what limits the rate.
GENERATOR_SATURATED = 0.85


class HTTPError(Exception):
    """A response that could not be read (connection closed, bad framing)."""


class _Stale(Exception):
    """The server had closed the connection before this request."""


class Connection:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def _read_chunked(self) -> bytes:
        assert self.reader is not None
        parts: list[bytes] = []
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                # Trailers (none expected) end with a blank line.
                while await self.reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return b"".join(parts)
            parts.append((await self.reader.readexactly(size + 2))[:-2])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        """Send a prepared request head (ending in a blank line) and body;
        return (status, response body). Reads Content-Length and chunked bodies.

        A kept-alive connection the server closed meanwhile (its idle timeout)
        is reopened and the request sent again, as HTTP clients do.
        """
        reused = self.writer is not None
        if not reused:
            await self.open()
        try:
            return await self._exchange(head, body)
        except _Stale as exc:
            self.close()
            if not reused:
                raise HTTPError(f"connection closed before a response: {exc}") from exc
        await self.open()
        try:
            return await self._exchange(head, body)
        except _Stale as exc:
            self.close()
            raise HTTPError(f"connection closed before a response: {exc}") from exc

    async def _exchange(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        try:
            self.writer.write(head + body if len(body) < 16384 else head)
            if len(body) >= 16384:
                self.writer.write(body)
            raw = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _Stale("no bytes") from exc
            self.close()
            raise HTTPError(f"response head cut short: {exc}") from exc
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise _Stale(str(exc)) from exc
        except asyncio.LimitOverrunError as exc:
            self.close()
            raise HTTPError(f"response head too long: {exc}") from exc
        try:
            status = int(raw[9:12])
        except ValueError as exc:
            self.close()
            raise HTTPError(f"bad status line {raw[:40]!r}") from exc
        length = -1
        chunked = False
        keep_alive = True
        for line in raw.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif lname == b"connection" and value.strip().lower() == b"close":
                keep_alive = False
        try:
            if chunked:
                payload = await self._read_chunked()
            elif length >= 0:
                payload = await self.reader.readexactly(length)
            else:
                self.close()
                raise HTTPError("response with neither Content-Length nor chunked encoding")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self.close()
            raise HTTPError(f"response body cut short: {exc}") from exc
        if not keep_alive:
            self.close()
        return status, payload


def post_head(host: str, port: int, path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def get_head(host: str, port: int, path: str, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()


@dataclass
class Workload:
    """What to send: a predict path and a cycle of prepared JSON bodies.

    Each server under test has its own path and body encoding (Clipper and the
    plain servers ``{"input": [...]}``, MLServer an Open Inference Protocol V2
    request); every body and request head is encoded once, here, so the
    generator's hot loop only writes prepared bytes.
    """

    host: str
    port: int
    path: str
    bodies: list[bytes]

    def __post_init__(self) -> None:
        self.requests = [
            (post_head(self.host, self.port, self.path, len(b)), b) for b in self.bodies
        ]

    @classmethod
    def predict(cls, host: str, port: int, app: str, inputs: Sequence[Any]) -> Workload:
        """Clipper's query API: ``POST /<app>/predict`` with ``{"input": [...]}``."""
        return cls.post_input(host, port, f"/{app}/predict", inputs)

    @classmethod
    def post_input(cls, host: str, port: int, path: str, inputs: Sequence[Any]) -> Workload:
        """``{"input": [...]}`` bodies to any path (LitServe, Ray Serve)."""
        bodies = [json.dumps({"input": x}, separators=(",", ":")).encode() for x in inputs]
        return cls(host, port, path, bodies)

    @classmethod
    def v2_infer(
        cls, host: str, port: int, model: str, inputs: Sequence[Any], datatype: str = "FP32"
    ) -> Workload:
        """Open Inference Protocol V2 (MLServer): ``POST /v2/models/<model>/infer``,
        one input tensor ``[1, n]`` per request."""
        bodies = [
            json.dumps(
                {
                    "inputs": [
                        {"name": "input", "shape": [1, len(x)], "datatype": datatype, "data": x}
                    ]
                },
                separators=(",", ":"),
            ).encode()
            for x in inputs
        ]
        return cls(host, port, f"/v2/models/{model}/infer", bodies)

    async def send_each(self, count: int) -> list[tuple[int, bytes]]:
        """The first ``count`` requests at once, one connection each; (status, body) each."""
        count = min(count, len(self.requests))
        conns = [Connection(self.host, self.port) for _ in range(count)]
        try:
            return list(
                await asyncio.gather(
                    *(c.request(*req) for c, req in zip(conns, self.requests[:count], strict=True))
                )
            )
        finally:
            for c in conns:
                c.close()


@dataclass
class LoadResult:
    mode: str
    target_rate: float | None
    concurrency: int
    duration_s: float
    sent: int
    completed: int
    ok: int
    defaults: int
    errors: int
    answered_total: int  # warm-up included
    unsent: int
    client_backlogged: int
    max_client_backlog: int
    achieved_rate: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    generator_cpu_s: float
    generator_cpu_util: float
    generator_saturated: bool
    error_samples: list[str] = field(default_factory=list)
    # Open loop: how late the generator sent arrivals that found a free
    # connection (its timer's slack; not part of their latency).
    send_late_p50_ms: float = 0.0
    send_late_p99_ms: float = 0.0

    @property
    def default_ratio(self) -> float:
        return self.defaults / self.completed if self.completed else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["default_ratio"] = self.default_ratio
        return d

    def summary(self) -> str:
        rate = f"{self.target_rate:.0f}/s" if self.target_rate else f"N={self.concurrency}"
        return (
            f"{self.mode} {rate}: {self.achieved_rate:.0f}/s achieved, "
            f"p50 {self.p50_ms:.1f} p99 {self.p99_ms:.1f} p99.9 {self.p999_ms:.1f} ms, "
            f"defaults {self.default_ratio:.2%}, errors {self.errors}, "
            f"backlogged {self.client_backlogged}, unsent {self.unsent}, "
            f"generator CPU {self.generator_cpu_util:.0%}"
            + (f", sends late p99 {self.send_late_p99_ms:.2f} ms" if self.mode == "open" else "")
        )


# One answered request in a trace: (seconds since the run started at its
# arrival, latency in seconds, whether it was a default output).
TracePoint = tuple[float, float, bool]


class _Recorder:
    def __init__(self, trace: list[TracePoint] | None = None) -> None:
        self.latencies: list[float] = []
        self.late: list[float] = []  # open loop: send time minus scheduled arrival
        self.ok = 0
        self.defaults = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.trace = trace
        self.t0 = 0.0
        self.measure_from = 0.0  # answers to requests scheduled earlier are warm-up
        self.answered = 0  # every answer or error, warm-up included

    def record(self, started: float, status: int, payload: bytes) -> None:
        self.answered += 1
        if started < self.measure_from:
            return
        latency = time.perf_counter() - started
        self.latencies.append(latency)
        default = False
        if status == 200:
            self.ok += 1
            if DEFAULT_MARKER in payload:
                self.defaults += 1
                default = True
        else:
            self.error(f"HTTP {status}: {payload[:200]!r}")
        if self.trace is not None:
            self.trace.append((started - self.t0, latency, default))

    def error(self, what: str, started: float | None = None) -> None:
        if started is not None:
            self.answered += 1
            if started < self.measure_from:
                return
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what)


def _result(
    mode: str,
    rec: _Recorder,
    *,
    target_rate: float | None,
    concurrency: int,
    wall: float,
    cpu: float,
    sent: int,
    unsent: int,
    backlogged: int,
    max_backlog: int,
    cpu_wall: float | None = None,
) -> LoadResult:
    lat = np.asarray(rec.latencies) * 1000 if rec.latencies else np.zeros(1)
    q = np.percentile(lat, [50, 90, 99, 99.9])
    late = np.percentile(np.asarray(rec.late) * 1000, [50, 99]) if rec.late else np.zeros(2)
    cpu_wall = wall if cpu_wall is None else cpu_wall
    util = cpu / cpu_wall if cpu_wall > 0 else 0.0
    return LoadResult(
        mode=mode,
        target_rate=target_rate,
        concurrency=concurrency,
        duration_s=wall,
        sent=sent,
        completed=len(rec.latencies),
        ok=rec.ok,
        defaults=rec.defaults,
        errors=rec.errors,
        answered_total=rec.answered,
        unsent=unsent,
        client_backlogged=backlogged,
        max_client_backlog=max_backlog,
        achieved_rate=len(rec.latencies) / wall if wall > 0 else 0.0,
        p50_ms=float(q[0]),
        p90_ms=float(q[1]),
        p99_ms=float(q[2]),
        p999_ms=float(q[3]),
        max_ms=float(lat.max()),
        mean_ms=float(lat.mean()),
        generator_cpu_s=cpu,
        generator_cpu_util=util,
        generator_saturated=util > GENERATOR_SATURATED,
        error_samples=rec.error_samples,
        send_late_p50_ms=float(late[0]),
        send_late_p99_ms=float(late[1]),
    )


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Pool:
    """Keep-alive connections to one server, opened before a run starts (so a
    run does not time its own connection set-up) and reused across runs."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.conns: list[Connection] = []

    async def warm(self, count: int) -> list[Connection]:
        """At least ``count`` open connections; the first ``count`` are returned."""
        while len(self.conns) < count:
            self.conns.append(Connection(self.host, self.port))
        stale = [
            c
            for c in self.conns[:count]
            if c.writer is None or c.reader is None or c.reader.at_eof()
        ]
        for c in stale:
            c.close()
        await asyncio.gather(*(c.open() for c in stale))
        return self.conns[:count]

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.conns.clear()


async def _send_one(
    conn: Connection, req: tuple[bytes, bytes], started: float, rec: _Recorder
) -> None:
    try:
        status, payload = await conn.request(*req)
    except (OSError, HTTPError) as exc:
        conn.close()
        rec.error(f"{type(exc).__name__}: {exc}", started)
        return
    rec.record(started, status, payload)


P = ParamSpec("P")
R = TypeVar("R")


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No garbage collection in this process while a run measures: a
    collection stops the generator's event loop, and the answers it holds up
    would be charged to the server. Collected once before, enabled after."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _measuring(run: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """A load run, with the collector paused (``gc_paused``) while it lasts."""

    @functools.wraps(run)
    async def measured(*args: P.args, **kwargs: P.kwargs) -> R:
        with gc_paused():
            return await run(*args, **kwargs)

    return measured


# Event-loop timers tick in whole milliseconds: an arrival due within this
# much is sent now rather than a whole tick late.
EARLY_S = 0.0005


@_measuring
async def run_open(
    pool: Pool,
    workload: Workload,
    rate: float,
    duration_s: float,
    *,
    max_requests: int | None = None,
    connections: int = 256,
    drain_s: float = 5.0,
    seed: int = 0,
    trace: list[TracePoint] | None = None,
    warmup_s: float = 0.0,
) -> LoadResult:
    """Poisson arrivals at ``rate``/s for ``duration_s`` (or ``max_requests``).

    The first ``warmup_s`` of arrivals (on top of ``duration_s``) are sent
    but not measured: the server's batch-size controllers adapt to the rate.

    Up to ``connections`` requests are in flight; later arrivals wait in the
    client's backlog (counted) and their latency includes that wait (it runs
    from the scheduled arrival, or from the send when that was earlier).
    After the arrivals stop, answers are awaited for ``drain_s`` more; what
    is still backlogged then is counted as unsent, what is in flight as errors.
    With ``trace``, every answer is appended to it as a ``TracePoint``.
    """
    rng = random.Random(seed)
    rec = _Recorder(trace)
    limit = max_requests if max_requests is not None else int(rate * duration_s * 2 + 10)
    backlog: collections.deque[float] = collections.deque()  # arrivals without a connection
    sent = 0
    requests = itertools.cycle(workload.requests)
    conns = await pool.warm(connections)
    # Idle connections, the most recently used on top: an arrival takes the
    # hottest one, as HTTP clients' pools do. (Taking the longest idle would
    # spread a low rate over every connection, each idle for seconds: past a
    # server's keep-alive timeout, so the measure would be of reconnects.)
    idle = list(reversed(conns))
    running: set[asyncio.Task[None]] = set()

    async def serve(conn: Connection, scheduled: float) -> None:
        nonlocal sent
        # The first request found this connection free: timed from its send
        # (the timer's slack is the generator's, recorded apart). The rest
        # waited in the backlog for the server: timed from their schedule.
        started = time.perf_counter()
        if scheduled >= rec.measure_from:
            rec.late.append(started - scheduled)
        while True:
            sent += 1
            await _send_one(conn, next(requests), started, rec)
            if not backlog:
                idle.append(conn)
                return
            started = min(backlog.popleft(), time.perf_counter())

    def arrive(scheduled: float) -> None:
        if not idle:
            backlog.append(scheduled)
            return
        task = asyncio.create_task(serve(idle.pop(), scheduled))
        running.add(task)
        task.add_done_callback(running.discard)

    backlogged = 0
    max_backlog = 0
    issued = 0
    warm = 0
    cpu0 = _cpu_seconds()
    begin = time.perf_counter()
    start = rec.t0 = rec.measure_from = begin + warmup_s
    end = start + duration_s
    next_at = begin + rng.expovariate(rate)
    try:
        while issued < limit and next_at < end:
            now = time.perf_counter()
            if next_at > now + EARLY_S:
                await asyncio.sleep(next_at - now)
                now = time.perf_counter()
            # Release every arrival that is due.
            while next_at <= now + EARLY_S and issued < limit and next_at < end:
                if next_at < start:
                    warm += 1
                elif not idle:
                    backlogged += 1
                arrive(next_at)
                issued += 1
                next_at += rng.expovariate(rate)
            max_backlog = max(max_backlog, len(backlog))
        # Arrivals are over: wait (bounded) for every issued request to be answered.
        drain_deadline = time.perf_counter() + drain_s
        while rec.answered < issued and time.perf_counter() < drain_deadline:
            await asyncio.sleep(0.002)
    finally:
        wall = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu0
        cpu_wall = time.perf_counter() - begin
        for task in list(running):
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    unsent = len(backlog)
    lost = sent - rec.answered  # still in flight at the deadline
    if lost > 0:
        # A cancelled request leaves its connection mid-response: start afresh.
        for conn in conns:
            conn.close()
    for _ in range(max(0, lost)):
        rec.error("no answer before the drain deadline")
    return _result(
        "open",
        rec,
        target_rate=rate,
        concurrency=connections,
        wall=wall,
        cpu=cpu,
        cpu_wall=cpu_wall,
        sent=sent - warm,
        unsent=unsent,
        backlogged=backlogged,
        max_backlog=max_backlog,
    )


@_measuring
async def run_closed(
    pool: Pool,
    workload: Workload,
    clients: int,
    duration_s: float,
    *,
    max_requests: int | None = None,
) -> LoadResult:
    """``clients`` concurrent clients, each sending back to back, for ``duration_s``."""
    rec = _Recorder()
    limit = max_requests if max_requests is not None else sys.maxsize
    counter = itertools.count()
    requests = itertools.cycle(workload.requests)
    conns = await pool.warm(clients)
    end = 0.0

    async def client(conn: Connection) -> None:
        while time.perf_counter() < end and next(counter) < limit:
            await _send_one(conn, next(requests), time.perf_counter(), rec)

    cpu0 = _cpu_seconds()
    start = time.perf_counter()
    end = start + duration_s
    await asyncio.gather(*(client(c) for c in conns))
    wall = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu0
    return _closed_result("closed", rec, clients, wall, cpu, len(rec.latencies) + rec.errors)


def _closed_result(
    mode: str, rec: _Recorder, clients: int, wall: float, cpu: float, sent: int
) -> LoadResult:
    """A closed loop's result: no target rate, nothing unsent, no client backlog."""
    return _result(
        mode,
        rec,
        target_rate=None,
        concurrency=clients,
        wall=wall,
        cpu=cpu,
        sent=sent,
        unsent=0,
        backlogged=0,
        max_backlog=0,
    )


@_measuring
async def run_closed_pairs(
    pool: Pool,
    first: Workload,
    then: Workload,
    clients: int,
    duration_s: float,
    *,
    then_must_contain: bytes | None = None,
) -> tuple[LoadResult, LoadResult]:
    """Closed loop of request pairs: each of ``clients`` takes the next index
    ``i`` not yet taken, sends ``first``'s request ``i`` and, once answered,
    ``then``'s request ``i`` (a prediction, then its feedback), and so on
    for ``duration_s`` or until the pairs run out. Each request is used once.

    Returns one result per half: ``first``'s (its defaults counted as usual)
    and ``then``'s, where an answer without ``then_must_contain`` counts as an
    error. Each half's achieved rate is pairs per second.
    """
    pairs = min(len(first.requests), len(then.requests))
    firsts, thens = _Recorder(), _Recorder()
    counter = itertools.count()
    conns = await pool.warm(clients)
    end = 0.0

    async def client(conn: Connection) -> None:
        while time.perf_counter() < end and (i := next(counter)) < pairs:
            await _send_one(conn, first.requests[i], time.perf_counter(), firsts)
            started = time.perf_counter()
            try:
                status, payload = await conn.request(*then.requests[i])
            except (OSError, HTTPError) as exc:
                conn.close()
                thens.error(f"{type(exc).__name__}: {exc}", started)
                continue
            if status == 200 and then_must_contain and then_must_contain not in payload:
                thens.answered += 1
                thens.error(f"answer without {then_must_contain!r}: {payload[:200]!r}")
                continue
            thens.record(started, status, payload)

    cpu0 = _cpu_seconds()
    start = time.perf_counter()
    end = start + duration_s
    await asyncio.gather(*(client(c) for c in conns))
    wall = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu0
    done = len(firsts.latencies) + firsts.errors
    if done >= pairs:
        raise RuntimeError(f"ran out of the {pairs} prepared pairs in {wall:.1f}s: prepare more")
    return (
        _closed_result("closed-pairs", firsts, clients, wall, cpu, done),
        _closed_result("closed-pairs", thens, clients, wall, cpu, done),
    )


async def poll_json(
    host: str,
    port: int,
    path: str,
    interval_s: float,
    until: Callable[[], bool],
    sink: Callable[[float, dict[str, Any]], None],
    headers: dict[str, str] | None = None,
) -> None:
    """GET ``path`` every ``interval_s`` until ``until()``; feed each JSON answer to sink."""
    conn = Connection(host, port)
    head = get_head(host, port, path, headers)
    start = time.perf_counter()
    tick = start
    try:
        while not until():
            with contextlib.suppress(OSError, HTTPError, ValueError):
                status, payload = await conn.request(head)
                if status == 200:
                    sink(time.perf_counter() - start, json.loads(payload))
            tick += interval_s
            await asyncio.sleep(max(0.0, tick - time.perf_counter()))
    finally:
        conn.close()


def install_uvloop() -> str:
    """Use uvloop for the generator's event loop when it is there; say which loop runs."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return f"uvloop {uvloop.__version__}"


@_measuring
async def httpx_closed(workload: Workload, clients: int, duration_s: float) -> LoadResult:
    """The closed loop with ``httpx.AsyncClient`` instead: to compare client costs."""
    import httpx

    rec = _Recorder()
    bodies = itertools.cycle(workload.bodies)
    url = f"http://{workload.host}:{workload.port}{workload.path}"
    end = 0.0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one() -> None:
            while time.perf_counter() < end:
                started = time.perf_counter()
                try:
                    r = await client.post(
                        url, content=next(bodies), headers={"content-type": "application/json"}
                    )
                except httpx.HTTPError as exc:
                    rec.error(str(exc))
                    continue
                rec.record(started, r.status_code, r.content)

        cpu0 = _cpu_seconds()
        start = time.perf_counter()
        end = start + duration_s
        await asyncio.gather(*(one() for _ in range(clients)))
        wall = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu0
    return _result(
        "closed-httpx",
        rec,
        target_rate=None,
        concurrency=clients,
        wall=wall,
        cpu=cpu,
        sent=len(rec.latencies),
        unsent=0,
        backlogged=0,
        max_backlog=0,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description="Send predict queries to a running Clipper app and report latency.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1337, help="query port")
    parser.add_argument("--app", required=True)
    parser.add_argument("--input", default="[0]", help="JSON input of every query (default [0])")
    parser.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second")
    parser.add_argument("--clients", type=int, help="closed loop: concurrent clients")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds")
    parser.add_argument("--count", type=int, help="at most this many requests")
    parser.add_argument("--connections", type=int, default=256, help="open loop: pool size")
    parser.add_argument("--httpx", action="store_true", help="closed loop through httpx")
    args = parser.parse_args(argv)
    workload = Workload.predict(args.host, args.port, args.app, [json.loads(args.input)])
    pool = Pool(args.host, args.port)

    async def go() -> LoadResult:
        try:
            if args.rate is not None:
                return await run_open(
                    pool,
                    workload,
                    args.rate,
                    args.duration,
                    max_requests=args.count,
                    connections=args.connections,
                )
            if args.httpx:
                return await httpx_closed(workload, args.clients or 16, args.duration)
            return await run_closed(
                pool, workload, args.clients or 16, args.duration, max_requests=args.count
            )
        finally:
            pool.close()

    loop = install_uvloop()
    result = asyncio.run(go())
    print(result.summary(), f"[{loop}, pid {os.getpid()}]")
    print(json.dumps(result.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
