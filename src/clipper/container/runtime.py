"""The model container runtime: serve one model version to a frontend over ZeroMQ.

Imports only the RPC protocol, numpy, pyzmq, msgpack and cloudpickle, so a
container installs without the frontend's dependencies.

Threads: the main thread owns the connections to the frontend (a ZeroMQ
DEALER, or a Unix socket to a frontend on this host: container/links.py) and
does registration, heartbeats, receiving batches and sending results; one
worker thread runs ``predict``.
Heartbeats therefore keep flowing during a long prediction, and stop only
when the process itself stops (killed, frozen), which is what the frontend's
liveness check is meant to detect.

A fast model skips the hand-off: once batches are seen to take under
``INLINE_BELOW_S`` (an average), the main thread runs them itself, which
saves two thread switches and a socket hop per batch (about a third of the
replica's CPU per batch with a light model). Heartbeats pause for that long
at most; should such a batch suddenly run for seconds, the frontend drops the
replica and it registers again when the batch ends, and the average sends
later batches to the worker. A watchdog thread enforces the batch time limit
either way.

The frontend sends its size limit when it acknowledges the registration
(``max_message_bytes``); a result over it would cost the connection (the
frontend's socket disconnects a peer that sends more), so the runtime sends an
error result for that batch instead, naming the size (the queries get the
app's default output with that explanation). A frontend that sends no limit
gets every result as it is.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

import zmq

from ..rpc import protocol as p
from ..rpc import stream
from .links import Link, connect

log = logging.getLogger("clipper.container")

PredictFn = Callable[[Any], Any]
MAX_ERROR_MESSAGE = p.MAX_ERROR_MESSAGE
INLINE_BELOW_S = 0.02  # batches faster than this (on average) run on the main thread
WATCHDOG_INTERVAL_S = 0.25


def prepare_model(model: Any) -> dict[str, str]:
    """Run the model's ``clipper_prepare`` hook, if it has one, before registering:
    a deployer's model moves to its device there (so the first batch does not pay
    for it) and says what it runs on (``{"device": "cuda:0", ...}``), which the
    replica reports in ``register`` as ``runtime``. An error in it stops the
    replica (its manager restarts it), as a model that does not load does."""
    hook = getattr(model, "clipper_prepare", None)
    if not callable(hook):
        return {}
    details = hook() or {}
    return {str(k)[:32]: str(v)[:120] for k, v in list(dict(details).items())[:8]}


def as_predict_fn(model: Any) -> PredictFn:
    """Accept a callable or an object with a ``predict`` method."""
    if callable(model):
        return model
    predict = getattr(model, "predict", None)
    if callable(predict):
        return predict
    raise TypeError(f"model of type {type(model).__name__} is neither callable nor has predict()")


# -- one batch: predict, isolate the inputs it fails on, encode -----------------------

# A frontend that sends no ``deadline_s`` still bounds isolation: this share of
# the batch's time limit (the watchdog's), or ISOLATE_DEFAULT_S without one.
ISOLATE_SHARE_OF_LIMIT = 0.5
ISOLATE_DEFAULT_S = 5.0
NOT_ISOLATED = (
    " (not isolated: the batch's deadline came before this input's group of {size} "
    "could be split further, so the error may be another input's)"
)


@dataclass(frozen=True, slots=True)
class InputFailure:
    """Why one input of a batch has no output: the model raised on it
    (``exc``, kept for the log's traceback), or its output cannot be sent."""

    error_type: str
    message: str
    exc: BaseException | None = None
    raised: bool = True  # False: a bad output (``bad_outputs`` on the wire)


class ErrorSink(Protocol):
    """Where ``run_predict`` reports each failure (``where``: the batch and input)."""

    def failed(
        self, where: str, error_type: str, message: str, exc: BaseException | None
    ) -> None: ...


def _as_outputs(raw: Any, count: int) -> list[Any]:
    """What ``predict`` returned, as a list of ``count`` outputs; raises
    TypeError or ValueError when it breaks the contract (for the whole batch:
    splitting it would not help)."""
    if isinstance(raw, (str, bytes, dict)) or not hasattr(raw, "__len__"):
        raise TypeError(
            f"predict must return a list with one output per input, got {type(raw).__name__}"
        )
    outputs = p.plain_outputs(raw)
    if len(outputs) != count:
        raise ValueError(f"predict returned {len(outputs)} outputs for {count} inputs")
    return outputs


def _failure(exc: BaseException, note: str = "") -> InputFailure:
    return InputFailure(type(exc).__name__, str(exc)[:MAX_ERROR_MESSAGE] + note, exc)


def isolate_failures(
    predict: PredictFn,
    inputs: Any,
    count: int,
    first: BaseException,
    *,
    deadline: float | None = None,
    per_input_s: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
) -> list[Any]:
    """The outputs of a batch whose ``predict`` raised (``first``), found by
    bisection: each failing half is split again until the inputs the model
    fails on stand alone; their places hold an ``InputFailure`` with their own
    error. With one bad input in N that is 1 + 2·log2(N) calls on about 3N
    inputs in all. A split starts only if it should end by ``deadline``
    (``per_input_s``: the first call's time per input); the inputs of a group
    left unsplit get the group's error, saying so."""
    results: list[Any] = [None] * count
    pending: list[tuple[int, int, BaseException]] = [(0, count, first)]
    while pending:
        lo, hi, exc = pending.pop()
        size = hi - lo
        if size == 1:
            results[lo] = _failure(exc)
            continue
        if deadline is not None and clock() + per_input_s * size > deadline:
            failure = _failure(exc, NOT_ISOLATED.format(size=size))
            results[lo:hi] = [failure] * size
            continue
        mid = (lo + hi) // 2
        for a, b in ((lo, mid), (mid, hi)):
            try:
                raw = predict(inputs[a:b])
            except MemoryError:
                raise
            except Exception as sub:
                pending.append((a, b, sub))
                continue
            try:
                results[a:b] = _as_outputs(raw, b - a)
            except (TypeError, ValueError) as broken:  # the contract, not an input
                results[a:b] = [_failure(broken)] * (b - a)
    return results


def _isolation_deadline(header: dict[str, Any], started: float) -> float:
    budget = header.get("deadline_s")
    limit = header.get("time_limit_s")
    share = (
        float(limit) * ISOLATE_SHARE_OF_LIMIT
        if isinstance(limit, int | float) and limit > 0
        else ISOLATE_DEFAULT_S
    )
    if isinstance(budget, int | float) and not isinstance(budget, bool) and budget >= 0:
        share = min(share, float(budget))
    return started + share


def _encode(
    batch_id: int, outputs: list[Any], input_errors: bool, isolated: bool
) -> tuple[p.Frames, dict[int, InputFailure]]:
    """The ``result`` for a batch's outputs and the per-input failures in it.

    With ``input_errors`` (a frontend that takes them), an output that cannot
    be packed, or holds NaN or infinity, fails its own input; the result then
    says the outputs were checked (``finite``), so the frontend need not."""
    whole: BaseException | None = None
    if not isolated:
        try:
            packed = p.pack(outputs)
        except (TypeError, ValueError, OverflowError) as exc:
            if not input_errors:
                raise
            whole = exc
        else:
            if not input_errors:
                return p.encode_result_ok(batch_id, packed), {}
            if not p.may_hold_nonfinite(packed):  # the common case: one scan, no more
                return p.encode_result_ok(batch_id, packed, finite=True), {}
    failures: dict[int, InputFailure] = {}
    sendable: list[Any] = []
    for i, output in enumerate(outputs):
        if isinstance(output, InputFailure):
            failures[i] = output
            sendable.append(None)
            continue
        try:
            p.pack(output)
        except (TypeError, ValueError, OverflowError) as exc:
            reason = f"an output that cannot be sent ({type(exc).__name__}: {exc})"
            failures[i] = InputFailure(type(exc).__name__, reason, None, raised=False)
            sendable.append(None)
            continue
        what = p.nonfinite_in(output)
        if what is not None:
            failures[i] = InputFailure("ValueError", p.nonfinite_reason(what), None, raised=False)
            sendable.append(None)
        else:
            sendable.append(output)
    if not failures:
        if whole is not None:  # packing failed as a whole, never one by one: unexpected
            raise whole
        return p.encode_result_ok(batch_id, sendable, finite=True), {}
    cap = max(p.MIN_INPUT_ERROR_CHARS, p.INPUT_ERRORS_BUDGET // (2 * len(failures)))
    errors = [
        (i, p.cut(f.error_type, min(cap, p.MAX_ERROR_TYPE)), p.cut(f.message, cap))
        for i, f in failures.items()
        if f.raised
    ]
    bad = [(i, p.cut(f.message, cap)) for i, f in failures.items() if not f.raised]
    frames = p.encode_result_ok(batch_id, sendable, errors, bad, finite=True)
    if len(frames[0]) > p.MAX_HEADER_BYTES // 2:  # too many to name: the first for all
        first = next(iter(failures.values()))
        message = f"{first.message} (and {len(failures) - 1} more inputs failed)"
        frames = p.encode_result_error(batch_id, first.error_type, message)
    return frames, failures


def run_predict(
    predict: PredictFn,
    batch_id: int,
    header: dict[str, Any],
    frames: list[Any],
    *,
    input_errors: bool = False,
    errors: ErrorSink | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> p.Frames:
    """Run one batch and encode the result; any failure becomes an error result.

    What a replica runs for every batch, and what ``test_predict_function``
    runs on the machine of whoever deploys. With ``input_errors`` (the frontend
    announced it), a batch on which ``predict`` raises is split until the
    inputs it fails on stand alone (``isolate_failures``, bounded by the
    batch's ``deadline_s``), and an output that cannot be packed fails its
    input only: the result names them (``errors``, ``bad_outputs``) and
    carries the others' outputs. A batch that succeeds pays for none of this.
    Without it (an older frontend), the first failure fails the whole batch.
    ``errors`` hears of each failure (the replica's rate-limited log).
    """
    count = header.get("count")
    try:
        inputs = p.decode_inputs(header, frames)
        assert isinstance(count, int)  # decode_inputs checked it
        started = clock()
        isolated = False
        try:
            raw = predict(inputs)
        except MemoryError:
            raise
        except Exception as exc:
            if not input_errors or count < 2:
                raise
            took = clock() - started
            outputs = isolate_failures(
                predict,
                inputs,
                count,
                exc,
                deadline=_isolation_deadline(header, started),
                per_input_s=took / count,
                clock=clock,
            )
            isolated = True
        else:
            outputs = _as_outputs(raw, count)
        result, failures = _encode(batch_id, outputs, input_errors, isolated)
        if errors is not None:
            for i, f in failures.items():
                where = f"batch {batch_id}, input {i + 1} of {count}"
                errors.failed(where, f.error_type, f.message, f.exc)
        return result
    except MemoryError:
        # Past the replica's memory limit: report it, then let the container
        # exit so its manager restarts it with a clean heap.
        log.error("batch %s ran out of memory; this container will restart", batch_id)
        raise
    except Exception as exc:  # the model's errors travel back as data
        message = str(exc)[:MAX_ERROR_MESSAGE]
        if errors is not None:
            errors.failed(f"batch {batch_id}", type(exc).__name__, message, exc)
        return p.encode_result_error(batch_id, type(exc).__name__, message)


class _Raised:
    """An ``ErrorSink`` that keeps the exceptions (for a dry run's traceback)."""

    def __init__(self) -> None:
        self.exceptions: list[BaseException] = []

    def failed(self, where: str, error_type: str, message: str, exc: BaseException | None) -> None:
        if exc is not None:
            self.exceptions.append(exc)


def dry_run(
    model: Any, input_type: str, inputs: list[Any]
) -> tuple[p.BatchResult, list[BaseException]]:
    """Run ``model`` on ``inputs`` (validated, as the frontend parsed them) as
    one batch, exactly as a replica of the current frontend would: encoded and
    decoded as the RPC carries them, ``predict`` called on the batch, outputs
    checked, failing inputs isolated, the result encoded; then read back as
    the frontend reads it. Returns the ``BatchResult`` the frontend would hear
    and the exceptions the model raised (for their tracebacks)."""
    predict = as_predict_fn(model)
    fields, data = p.encode_inputs(input_type, inputs)
    header = p.parse_header(p.make(p.BATCH, id=1, input_type=input_type, **fields))
    raised = _Raised()
    frames = run_predict(
        predict, 1, header, [bytes(f) for f in data], input_errors=True, errors=raised
    )
    result = p.parse_header(frames[0])
    if result.get("ok") is not True:
        p.bound_error(result)
    return p.decode_result(result, [bytes(f) for f in frames[1:]]), raised.exceptions


class ErrorLog:
    """The replica's log of model errors, rate-limited: per error type and
    window (a minute), the first ``tracebacks`` failures are logged with the
    traceback of the model's code (the runtime's own frames left out); the
    rest only counted, and the count logged when the window ends
    (``flush``, called from the serve loop). Thread-safe."""

    def __init__(
        self,
        *,
        tracebacks: int = 3,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        self.tracebacks = tracebacks
        self.window_s = window_s
        self.clock = clock
        self.log = logger or log
        self._lock = threading.Lock()
        # error type -> [window start, logged in it, left out of it]
        self._windows: dict[str, list[float]] = {}

    def failed(self, where: str, error_type: str, message: str, exc: BaseException | None) -> None:
        with self._lock:
            now = self.clock()
            window = self._windows.get(error_type)
            if window is None or now - window[0] >= self.window_s:
                if window is not None:
                    self._report(error_type, window)
                window = self._windows[error_type] = [now, 0, 0]
            if window[1] >= self.tracebacks:
                window[2] += 1
                return
            window[1] += 1
        line = f"{where} failed: {error_type}: {message}"
        trace = _model_traceback(exc)
        if trace:
            self.log.warning("%s\n%s", line, trace)
        else:
            self.log.warning("%s", line)

    def flush(self) -> None:
        """Log the counts of the windows that ended (and forget them)."""
        with self._lock:
            now = self.clock()
            for error_type, window in list(self._windows.items()):
                if now - window[0] >= self.window_s:
                    self._report(error_type, window)
                    del self._windows[error_type]

    def _report(self, error_type: str, window: list[float]) -> None:
        if window[2]:
            self.log.warning(
                "%d more model errors of type %s in %.0f s (logged: the first %d, with tracebacks)",
                int(window[2]),
                error_type,
                self.window_s,
                self.tracebacks,
            )


def _model_traceback(exc: BaseException | None) -> str:
    """The traceback of an exception the model raised, from its first frame
    outside this module (the model's own code), or "" for none. Code that
    cloudpickle shipped by value has lost its file name (``<dynamic-code>``);
    its module's ``__file__`` (which cloudpickle keeps) names it again."""
    tb: TracebackType | None = exc.__traceback__ if exc is not None else None
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    if tb is None or exc is None:  # none, or raised by the runtime itself: no model frame
        return ""
    frames = []
    for frame, lineno in traceback.walk_tb(tb):
        code = frame.f_code
        filename = code.co_filename
        if filename == "<dynamic-code>":
            known = frame.f_globals.get("__file__")
            filename = known if isinstance(known, str) else filename
        frames.append(traceback.FrameSummary(filename, lineno, code.co_name))
    lines = [
        "Traceback (most recent call last):\n",
        *traceback.StackSummary.from_list(frames).format(),
        *traceback.format_exception_only(type(exc), exc),
    ]
    return "".join(lines).rstrip()


MAX_PEERS = 256  # worker peers a container follows at most


def peer_addresses(address: str, ports: list[Any]) -> list[str]:
    """The addresses of a frontend's worker peers, reached the way ``address`` (the
    one the container was given) reaches the frontend: its host with each port
    named (``tcp://``), or the socket beside its own (``unix://``, one
    ``rpc-<port>.sock`` per worker); only valid ports."""
    valid = list(dict.fromkeys(n for n in ports[:MAX_PEERS] if type(n) is int and 0 < n < 65536))
    path = stream.path_of(address)
    if path is not None:
        return [stream.SCHEME + stream.peer_path(path, n) for n in valid]
    scheme, sep, rest = address.partition("://")
    host, colon, _ = rest.rpartition(":")
    if scheme != "tcp" or not sep or not colon:
        return []
    return [f"tcp://{host}:{n}" for n in valid]


# How long closing waits for the last messages to leave (milliseconds).
CLOSE_LINGER_MS = 2000


@dataclass
class _Session:
    """What one ``serve_forever`` holds: sockets, the worker, and its clocks."""

    ctx: zmq.Context[Any]
    links: list[Link]
    results_rx: zmq.Socket[Any]
    work: queue.Queue[tuple[int, dict[str, Any], list[Any]] | None]
    worker: threading.Thread
    watchdog_done: threading.Event
    poller: zmq.Poller
    parent: int  # the pid our parent had: a new one means it exited
    # The link each batch handed to the worker came from, in order: the worker
    # answers them in the order taken, so each result goes back where its batch came from.
    origins: deque[Link] = field(default_factory=deque)
    drain_started: float | None = None
    status: int = 0  # the process exit status serve_forever returns

    @property
    def primary(self) -> Link:
        return self.links[0]


class ContainerRuntime:
    """Connects to a frontend, registers one model version and serves its batches."""

    def __init__(
        self,
        model: Any,
        *,
        address: str,
        model_name: str,
        model_version: str,
        input_type: str,
        heartbeat_interval: float = 0.5,
        frontend_timeout: float = 3.0,
        exit_with_parent: bool = False,
        replica_label: str | None = None,
        secret: str | None = None,
        drain_timeout: float = 30.0,
        server_key: bytes | None = None,
    ) -> None:
        self.server_key = server_key  # the frontend's CurveZMQ public key: encrypt
        self.predict = as_predict_fn(model)
        self.model = model
        self.runtime_details: dict[str, str] | None = None  # prepare_model's, once run
        self.address = address
        self.model_name = model_name
        self.model_version = model_version
        self.input_type = input_type
        self.heartbeat_interval = heartbeat_interval
        self.frontend_timeout = frontend_timeout
        self.exit_with_parent = exit_with_parent
        self.replica_label = replica_label or uuid.uuid4().hex[:8]
        self.secret = secret
        self.drain_timeout = drain_timeout
        self._stop = threading.Event()
        self._busy = 0  # batches taken and not yet answered
        # (start time, time limit) of the batch in predict, set by the worker
        self._running: tuple[float, float | None] | None = None
        self.out_of_memory = threading.Event()
        # Made now, while memory is there: reporting an out-of-memory batch and
        # saying goodbye must not need a new packer's buffer (one each: threads).
        self._spare_result_packer = p.spare_packer()
        self._spare_goodbye_packer = p.spare_packer()
        self.registered = threading.Event()
        # The frontend's RPC size limit, from its ``registered`` (None: no limit given).
        self.max_message_bytes: int | None = None
        # Whether the frontend takes per-input errors (``input_errors`` in its
        # ``registered``): then a failing batch is split to isolate its bad inputs.
        self.input_errors = False
        self.error_log = ErrorLog()
        self.batches_served = 0
        self.inline_batches = 0
        # Batch latency (seconds, exponentially weighted); None until one ran.
        self._latency: float | None = None

    def stop(self) -> None:
        """Ask ``serve_forever`` to return (thread-safe)."""
        self._stop.set()

    def _register_message(self) -> p.Frames:
        return [
            p.make(
                p.REGISTER,
                model_name=self.model_name,
                model_version=self.model_version,
                input_type=self.input_type,
                pid=os.getpid(),
                replica=self.replica_label,
                **({"secret": self.secret} if self.secret else {}),
                **({"runtime": self.runtime_details} if self.runtime_details else {}),
            )
        ]

    def serve_forever(self) -> int:
        """Serve until stopped, the parent dies or the frontend rejects us.

        Returns a process exit status: 0 on a clean stop, 2 when rejected, 3 when
        the model ran out of memory (its manager restarts it).
        """
        if self.runtime_details is None:
            self.runtime_details = prepare_model(self.model)
            if self.runtime_details:
                log.info("model runs on %s", self.runtime_details)
        session = self._open()
        log.info(
            "container %s:%s (replica %s) connecting to %s",
            self.model_name,
            self.model_version,
            self.replica_label,
            self.address,
        )
        self._register(session.primary, time.monotonic())
        try:
            while not self._drained(session):
                stopping = self._stopping()
                timeout = 0.05 if stopping else self.heartbeat_interval
                if any(link.register_unsent for link in session.links):
                    timeout = 0.005
                events = dict(session.poller.poll(int(timeout * 1000)))
                now = time.monotonic()
                if session.results_rx in events:
                    result = session.results_rx.recv_multipart(copy=False)
                    session.origins.popleft().send(result)
                    self._busy -= 1
                for link in list(session.links):
                    if not link.conn.ready(events):
                        continue
                    for frames in link.conn.receive():
                        link.last_heard = now
                        if not self._on_message(session, link, frames, now, stopping):
                            return session.status
                for link in session.links:
                    if link.conn.maintain(now):  # a local socket connected again
                        link.registered = False
                        self._register(link, now)
                    elif link.register_unsent:
                        self._register(link, now)
                    self._keep_in_touch(link, now)
                if self.exit_with_parent and os.getppid() != session.parent:
                    log.info("parent process exited; stopping")
                    break
        finally:
            self._close(session)
        return session.status

    def _open(self) -> _Session:
        """The sockets, the predict worker and the watchdog of one ``serve_forever``."""
        ctx = zmq.Context()
        now = time.monotonic()
        poller = zmq.Poller()
        primary = Link(self.address, connect(ctx, self.address, poller, self.server_key), True, now)
        wake_addr = f"inproc://results-{id(self)}"
        results_rx = ctx.socket(zmq.PAIR)
        results_rx.bind(wake_addr)
        work: queue.Queue[tuple[int, dict[str, Any], list[Any]] | None] = queue.Queue()
        worker = threading.Thread(
            target=self._work, args=(ctx, wake_addr, work), name="predict", daemon=True
        )
        worker.start()
        watchdog_done = threading.Event()
        threading.Thread(
            target=self._watchdog, args=(watchdog_done,), name="watchdog", daemon=True
        ).start()
        poller.register(results_rx, zmq.POLLIN)
        return _Session(
            ctx, [primary], results_rx, work, worker, watchdog_done, poller, os.getppid()
        )

    def _stopping(self) -> bool:
        return self._stop.is_set() or self.out_of_memory.is_set()

    def _drained(self, session: _Session) -> bool:
        """Stopping, and the batch in progress answered (or the drain timed out)."""
        if not self._stopping():
            return False
        now = time.monotonic()
        if session.drain_started is None:
            session.drain_started = now
            if self._busy:
                log.info("stopping: finishing the batch in progress")
        return self._busy == 0 or now - session.drain_started > self.drain_timeout

    def _on_message(
        self, session: _Session, link: Link, frames: list[Any], now: float, stopping: bool
    ) -> bool:
        """Handle one message from a frontend; False: stop serving."""
        try:
            header = p.parse_header(frames[0])
        except Exception as exc:
            log.warning("ignoring malformed message from frontend: %s", exc)
            return True
        kind = header["type"]
        if kind == p.BATCH:
            if not stopping:  # else the frontend retries it elsewhere on our goodbye
                return self._take_batch(session, link, header, frames)
        elif kind == p.REGISTERED:
            link.registered = True
            if link.primary:
                self._registered(session, header, now)
        elif kind == p.REREGISTER:
            link.registered = False
            if link.primary:
                self.registered.clear()
            self._register(link, now)
        elif kind == p.REJECTED:
            if link.primary:
                log.error("frontend rejected this container: %s", header.get("reason"))
                session.status = 2
                return False
            # A worker that has not caught up with the store yet: it is asked
            # again when its heartbeat finds us a stranger (and logged now and then).
            link.registered = False
            if now - link.rejected_logged > 60:
                link.rejected_logged = now
                log.warning(
                    "frontend worker %s rejected this container: %s",
                    link.address,
                    header.get("reason"),
                )
        return True

    def _registered(self, session: _Session, header: dict[str, Any], now: float) -> None:
        """The frontend's ``registered``: its limits, features and worker peers."""
        limit = header.get("max_message_bytes")
        if type(limit) is int and limit > 0:
            self.max_message_bytes = limit
        features = header.get("features")
        self.input_errors = isinstance(features, list) and p.INPUT_ERRORS in features
        if not self.registered.is_set():
            log.info("registered with the frontend")
        self.registered.set()
        peers = header.get("peers")
        if isinstance(peers, list):
            self._follow_peers(session, peer_addresses(self.address, peers), now)

    def _follow_peers(self, session: _Session, wanted: list[str], now: float) -> None:
        """Open a link to each worker peer named, close the links to those gone."""
        for link in session.links[1:]:
            if link.address not in wanted:
                link.send([p.make(p.GOODBYE)])
                link.conn.close(linger_ms=0)
                session.links.remove(link)
                log.info("frontend worker %s is gone", link.address)
        have = {link.address for link in session.links}
        for address in wanted:
            if address in have:
                continue
            conn = connect(session.ctx, address, session.poller, self.server_key)
            link = Link(address, conn, False, now)
            session.links.append(link)
            self._register(link, now)
            log.info("serving frontend worker %s too", address)

    def _take_batch(
        self, session: _Session, link: Link, header: dict[str, Any], frames: list[Any]
    ) -> bool:
        """Run a batch inline (a fast model, nothing running) or hand it to the
        worker; False: the model ran out of memory, stop."""
        batch_id = header.get("id", -1)
        buffers = frames[1:]
        if self._busy == 0 and self._inline():
            link.send(self._run_batch(batch_id, header, buffers))
            self.inline_batches += 1
            return not self.out_of_memory.is_set()
        self._busy += 1
        session.origins.append(link)
        session.work.put((batch_id, header, buffers))
        return True

    def _keep_in_touch(self, link: Link, now: float) -> None:
        """Heartbeats, and registering again when a frontend went quiet."""
        if now - link.last_beat >= self.heartbeat_interval:
            link.send([p.make(p.HEARTBEAT)])
            link.last_beat = now
            if link.primary:
                self.error_log.flush()
        if (
            now - link.last_heard > self.frontend_timeout
            and now - link.last_register > self.frontend_timeout
        ):
            # The frontend went quiet (restarted, or the network dropped us):
            # register again; ZeroMQ reconnects underneath.
            link.registered = False
            if link.primary:
                self.registered.clear()
            self._register(link, now)

    def _register(self, link: Link, now: float) -> None:
        link.register_unsent = not link.send(self._register_message())
        link.last_register = now

    def _close(self, session: _Session) -> None:
        for link in session.links:
            link.send([p.make_spare(self._spare_goodbye_packer, p.GOODBYE)])
        session.watchdog_done.set()
        if self.out_of_memory.is_set():
            session.status = 3
        session.work.put(None)
        session.worker.join(timeout=1.0)
        session.results_rx.close(linger=0)
        # Flush what was just sent (the last result, the goodbye) before the
        # process exits: with no linger, a result sent as the model ran out of
        # memory could be dropped, and its batch retried elsewhere instead of
        # answered as the error it was. IMMEDIATE queues nothing while
        # disconnected, so with no frontend this does not wait.
        for link in session.links:
            link.conn.close(linger_ms=CLOSE_LINGER_MS)
        session.ctx.term()

    def _inline(self) -> bool:
        return self._latency is not None and self._latency < INLINE_BELOW_S

    def _watchdog(self, done: threading.Event) -> None:
        while not done.wait(WATCHDOG_INTERVAL_S):
            if self._stuck(time.monotonic()):
                # Only a new process can recover from a stuck batch (a thread
                # cannot be stopped): the manager restarts us, and the
                # frontend retries the batch elsewhere or answers its default.
                os._exit(4)

    def _stuck(self, now: float) -> bool:
        running = self._running
        if running is None or running[1] is None or now - running[0] <= running[1]:
            return False
        log.error(
            "a batch has run %.0fs, past its %.0fs limit; exiting", now - running[0], running[1]
        )
        return True

    def _run_batch(self, batch_id: int, header: dict[str, Any], frames: list[Any]) -> p.Frames:
        """Run one batch (on whichever thread) and time it; never raises."""
        limit = header.get("time_limit_s")
        started = time.monotonic()
        self._running = (
            started,
            float(limit) if isinstance(limit, int | float) and limit > 0 else None,
        )
        try:
            result = run_predict(
                self.predict,
                batch_id,
                header,
                frames,
                input_errors=self.input_errors,
                errors=self.error_log,
            )
        except MemoryError:
            result = p.encode_result_error(
                batch_id, "MemoryError", "out of memory", self._spare_result_packer
            )
            self.out_of_memory.set()
        finally:
            self._running = None
        result = self._within_limit(batch_id, result)
        took = time.monotonic() - started
        self._latency = took if self._latency is None else 0.8 * self._latency + 0.2 * took
        self.batches_served += 1
        return result

    def _within_limit(self, batch_id: int, result: p.Frames) -> p.Frames:
        """``result``, or an error result when it is over the frontend's size limit."""
        limit = self.max_message_bytes
        if limit is None:
            return result
        size = p.frames_size(result)
        if size <= limit:
            return result
        message = (
            f"the result of this batch is {size:,} bytes, over the frontend's RPC size "
            f"limit of {limit:,} bytes"
        )
        log.warning("batch %s not sent: %s", batch_id, message)
        return p.encode_result_error(batch_id, p.RESULT_TOO_LARGE, message)

    def _work(
        self,
        ctx: zmq.Context[Any],
        wake_addr: str,
        work: queue.Queue[tuple[int, dict[str, Any], list[Any]] | None],
    ) -> None:
        tx = ctx.socket(zmq.PAIR)
        tx.setsockopt(zmq.LINGER, 0)
        tx.connect(wake_addr)
        try:
            while True:
                item = work.get()
                if item is None:
                    return
                tx.send_multipart(self._run_batch(*item), copy=False)
        finally:
            tx.close(linger=0)
