"""Policy state per (app, user), cached in memory, kept in the config store.

The query path reads states from memory only, never from the store, so a
slow or dead store cannot hold up the event loop. A state not in memory is
fetched in the background (a few worker threads; at most one fetch in flight
per state, and a bounded number in all) and the query meanwhile gets the
best state at hand: a user's query gets the app's shared state (uid ""), or
the policy's initial state when that is not in memory either. Such answers
are counted (``statistics().fallbacks``) and logged, at most once a minute.
The one exception: the first query of an app (since the cache was last
cleared) waits for the app's shared state, at most ``first_read_timeout_s``.

Cached states are fetched again after ``ttl_s``, so updates made by other
frontends arrive within about that time; until the new read lands, the last
known state is served, and it keeps being served while the store is down.
After a failed read, no new read starts for ``retry_after_s``.

Feedback updates states through the store's atomic read-modify-write (a
user's state and the app's shared one in one step), so concurrent feedback
(from this or another frontend) never loses an update; the store keeps at
most ``max_user_states`` user states per app (see
``ConfigStore.update_policy_states``), and the new states go into the cache.

The cache is bounded in bytes: each entry counts its state's JSON size plus
a fixed overhead (an estimate of what the entry costs, not a measure), and
past ``max_bytes`` the least recently used users' states go first; apps'
shared states go only when no user state is left to evict.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from ..exceptions import StoreError, ValidationError

log = logging.getLogger("clipper.selection")

State = dict[str, Any]
SHARED = ""  # the uid of the app-wide state
Key = tuple[str, str]  # (app, uid)

# Bytes an entry costs beyond its state's JSON text: the key tuple and its two
# strings, the entry object, the decoded dict's own overhead, the LRU's links.
ENTRY_OVERHEAD = 512


class StateBackend(Protocol):
    def get_policy_state(self, app: str, uid: str) -> State | None: ...

    def update_policy_states(
        self,
        app: str,
        uids: Sequence[str],
        update: Callable[[dict[str, State | None]], Mapping[str, State]],
        *,
        max_user_states: int = 0,
    ) -> dict[str, State]: ...


def state_size(app: str, uid: str, state: State | None) -> int:
    """The bytes a cached state is taken to cost (None: a user known to have none)."""
    size = ENTRY_OVERHEAD + len(app) + len(uid)
    if state is None:
        return size
    try:
        return size + len(orjson.dumps(state))
    except TypeError:  # not JSON (only a test double would hand us that)
        return size + len(repr(state))


@dataclass(slots=True)
class Entry:
    """A cached state: ``state`` None means the store has none for that key."""

    state: State | None
    size: int
    fetched: float  # clock time of the read or write it came from
    seq: int = 0  # install order: a read started before a newer write must not undo it


class StateCache:
    """A least-recently-used map of states, bounded in bytes (pure: no I/O, no lock).

    Users' states are evicted before any app's shared state; an entry larger
    than the whole budget is not kept at all.
    """

    def __init__(self, max_bytes: int) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValidationError(
                "the policy state cache (policy_cache_bytes) needs a positive size in bytes, "
                f"got {max_bytes!r}"
            )
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evictions = 0
        self._users: OrderedDict[Key, Entry] = OrderedDict()
        self._shared: OrderedDict[Key, Entry] = OrderedDict()

    def _table(self, key: Key) -> OrderedDict[Key, Entry]:
        return self._shared if key[1] == SHARED else self._users

    def __len__(self) -> int:
        return len(self._users) + len(self._shared)

    def __contains__(self, key: Key) -> bool:
        return key in self._table(key)

    def get(self, key: Key) -> Entry | None:
        """The entry of ``key``, now the most recently used; None if absent."""
        table = self._table(key)
        entry = table.get(key)
        if entry is not None:
            table.move_to_end(key)
        return entry

    def peek(self, key: Key) -> Entry | None:
        """The entry of ``key``, its place in the order untouched; None if absent."""
        return self._table(key).get(key)

    def put(self, key: Key, entry: Entry) -> bool:
        """Keep ``entry`` as the most recently used, evicting others past the
        budget; False if it is larger than the whole budget (then not kept)."""
        self.pop(key)
        if entry.size > self.max_bytes:
            self.evictions += 1
            return False
        self._table(key)[key] = entry
        self.bytes += entry.size
        while self.bytes > self.max_bytes:
            table = self._users if self._users else self._shared
            _, old = table.popitem(last=False)
            self.bytes -= old.size
            self.evictions += 1
        return key in self._table(key)

    def pop(self, key: Key) -> Entry | None:
        entry = self._table(key).pop(key, None)
        if entry is not None:
            self.bytes -= entry.size
        return entry

    def clear(self) -> None:
        self._users.clear()
        self._shared.clear()
        self.bytes = 0


@dataclass(frozen=True, slots=True)
class PolicyStateStatistics:
    """Counters since start (hits ... evictions) and the cache's size now."""

    hits: int  # reads answered from memory (fresh, or stale while a refresh runs)
    misses: int  # reads of a state not in memory (a fetch starts)
    fallbacks: int  # queries answered from a less specific state than their own,
    # because theirs was not in memory yet or the store was failing
    fetches: int  # background reads of the store started
    fetch_errors: int  # background reads that failed
    fetches_skipped: int  # reads not started: too many in flight, or the store failing
    evictions: int  # states dropped to stay within the byte budget
    entries: int
    bytes: int
    max_bytes: int
    pending: int  # background reads queued or running


@dataclass(slots=True, eq=False)
class _Fetch:
    key: Key
    seq: int  # the cache's install counter when the fetch was scheduled
    epoch: int  # the cache's epoch then (clear() starts a new one)
    done: threading.Event = field(default_factory=threading.Event)


class _Workers:
    """A few daemon threads running submitted callables, started on demand.

    Daemon threads: a read stuck on a dead store must not hold up the exit.
    """

    def __init__(self, count: int, name: str) -> None:
        self._count = max(1, count)
        self._name = name
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], None]) -> None:
        self._queue.put(fn)
        with self._lock:
            if len(self._threads) < self._count:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _work(self) -> None:
        while (fn := self._queue.get()) is not None:
            try:
                fn()
            except Exception:  # a bug: log it, and keep the thread for the next read
                log.exception("a background policy state read failed")

    def stop(self) -> None:
        with self._lock:
            for _ in self._threads:
                self._queue.put(None)


class PolicyStates:
    """The policy states of the query path: in memory, fetched in the background.

    Thread-safe: ``get`` runs on the event loop, ``update`` in a worker
    thread, the background reads in their own threads; the shared structures
    sit behind one lock, held only for in-memory work.
    """

    def __init__(
        self,
        backend: StateBackend,
        *,
        ttl_s: float = 1.0,
        max_bytes: int = 64 * 1024 * 1024,
        max_user_states: int = 0,
        fetch_workers: int = 4,
        max_pending_fetches: int = 1024,
        first_read_timeout_s: float = 0.05,
        retry_after_s: float = 1.0,
        log_interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_user_states, bool) or not isinstance(max_user_states, int):
            raise ValidationError(f"max_user_states must be an integer, got {max_user_states!r}")
        if max_user_states < 0:
            raise ValidationError(
                f"max_user_states must be >= 0 (0: no limit), got {max_user_states}"
            )
        if fetch_workers < 1 or max_pending_fetches < 1:
            raise ValidationError("fetch_workers and max_pending_fetches must be at least 1")
        self.backend = backend
        self.ttl_s = ttl_s
        self.max_user_states = max_user_states
        self.max_pending_fetches = max_pending_fetches
        self.first_read_timeout_s = first_read_timeout_s
        self.retry_after_s = retry_after_s
        self.log_interval_s = log_interval_s
        self.clock = clock
        self._cache = StateCache(max_bytes)
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)  # notified as fetches end
        self._workers = _Workers(fetch_workers, "clipper-policy-state")
        self._inflight: dict[Key, _Fetch] = {}  # this epoch's fetches, one per key
        self._running = 0  # every fetch queued or running, whatever its epoch
        self._seq = 0
        self._epoch = 0
        self._primed: set[str] = set()  # apps whose first read has waited
        self._failing_until = float("-inf")
        self._closed = False
        self._hits = self._misses = self._fallbacks = 0
        self._fetches = self._errors = self._skipped = 0
        self._fallback_logged = self._error_logged = float("-inf")

    # -- the query path ----------------------------------------------------------

    def get(self, app: str, uid: str, initial: Callable[[], State]) -> State:
        """The user's state, else the app's shared state, else ``initial()``.

        Never reads the store on the calling thread, except that the first
        read of an app may wait up to ``first_read_timeout_s`` for its shared
        state.
        """
        now = self.clock()
        known = True
        if uid != SHARED:
            known, state = self._lookup((app, uid), now, wait=False)
            if state is not None:
                return state
        shared_known, shared = self._lookup((app, SHARED), now, wait=True)
        if not (known and shared_known):
            self._fell_back(app, uid, now)
        return shared if shared is not None else initial()

    def _lookup(self, key: Key, now: float, *, wait: bool) -> tuple[bool, State | None]:
        """(whether the state is known, the state): from memory, starting a
        background read when it is absent or older than the TTL."""
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None:
                self._hits += 1
                if now - entry.fetched >= self.ttl_s:
                    self._schedule(key, now)
                return True, entry.state
            self._misses += 1
            fetch = self._schedule(key, now)
            if fetch is None or not wait or key[0] in self._primed:
                return False, None
            self._primed.add(key[0])
        # The app's first read: worth a short wait, once (never while holding the lock).
        fetch.done.wait(self.first_read_timeout_s)
        with self._lock:
            entry = self._cache.get(key)
            return (True, entry.state) if entry is not None else (False, None)

    def _fell_back(self, app: str, uid: str, now: float) -> None:
        with self._lock:
            self._fallbacks += 1
            count = self._fallbacks
            if now - self._fallback_logged < self.log_interval_s:
                return
            self._fallback_logged = now
            failing = now < self._failing_until
        # The app only: uids come from clients, and may be personal data.
        what = "a user's" if uid != SHARED else "the shared"
        if failing:
            log.warning(
                "the config store is failing: %s policy state of app %r was not in memory, "
                "so a query used a less specific state (%d such queries so far; logged at "
                "most every %.0f s)",
                what,
                app,
                count,
                self.log_interval_s,
            )
        else:
            log.info(
                "%s policy state of app %r is being read in the background; meanwhile a "
                "query used a less specific state (%d such queries so far; logged at most "
                "every %.0f s)",
                what[0].upper() + what[1:],
                app,
                count,
                self.log_interval_s,
            )

    # -- background reads ------------------------------------------------------------

    def _schedule(self, key: Key, now: float) -> _Fetch | None:
        """Start reading ``key`` from the store, unless a read is in flight (then
        that one) or reads are not allowed now (None). Called with the lock held."""
        fetch = self._inflight.get(key)
        if fetch is not None:
            return fetch
        if self._closed or now < self._failing_until or self._running >= self.max_pending_fetches:
            self._skipped += 1
            return None
        fetch = _Fetch(key, self._seq, self._epoch)
        self._inflight[key] = fetch
        self._running += 1
        self._fetches += 1
        self._workers.submit(lambda: self._fetch(fetch))
        return fetch

    def _fetch(self, fetch: _Fetch) -> None:
        """Read one state (in a worker thread) and put it in the cache."""
        app, uid = fetch.key
        error: Exception | None = None
        report = False
        state: State | None = None
        size = 0
        try:
            state = self.backend.get_policy_state(app, uid)
            size = state_size(app, uid, state)
        except Exception as exc:  # the worker must outlive anything the store raises
            error = exc
        now = self.clock()
        with self._lock:
            self._running -= 1
            if self._inflight.get(fetch.key) is fetch:
                del self._inflight[fetch.key]
            if error is None:
                self._failing_until = float("-inf")
                current = self._cache.peek(fetch.key)
                # Not after clear(), nor over a state written since the read began.
                if fetch.epoch == self._epoch and (current is None or current.seq <= fetch.seq):
                    self._install(fetch.key, state, size, now)
            else:
                self._errors += 1
                if isinstance(error, StoreError):
                    self._failing_until = now + self.retry_after_s
                report = now - self._error_logged >= 10.0
                if report:
                    self._error_logged = now
            self._settled.notify_all()
        fetch.done.set()
        if error is not None and report:
            if isinstance(error, StoreError):
                log.warning("policy state unavailable (%s); serving the last known states", error)
            else:
                log.error("reading the policy state of %r failed", fetch.key, exc_info=error)

    def _install(self, key: Key, state: State | None, size: int, now: float) -> None:
        self._seq += 1
        self._cache.put(key, Entry(state, size, now, self._seq))

    def wait_fetches(self, timeout: float | None = None) -> bool:
        """Wait until no background read is queued or running; False on timeout."""
        with self._settled:
            return self._settled.wait_for(lambda: self._running == 0, timeout)

    # -- feedback --------------------------------------------------------------------

    def update(
        self,
        app: str,
        uids: Sequence[str],
        update: Callable[[dict[str, State | None]], Mapping[str, State]],
    ) -> dict[str, State]:
        """Atomically update states of one app in the store (one step for all of
        ``uids``, keeping at most ``max_user_states`` users' states in the
        store) and refresh the cache. Blocks on the store: call it off the
        event loop."""
        with self._lock:
            epoch = self._epoch
        states = self.backend.update_policy_states(
            app, uids, update, max_user_states=self.max_user_states
        )
        sized = [(uid, state, state_size(app, uid, state)) for uid, state in states.items()]
        now = self.clock()
        with self._lock:
            self._failing_until = float("-inf")
            if epoch == self._epoch:  # else a clear() came between: states may be stale
                for uid, state, size in sized:
                    self._install((app, uid), state, size, now)
        return states

    # -- housekeeping --------------------------------------------------------------------

    def clear(self) -> None:
        """Forget cached states (after a configuration change, e.g. a new policy);
        reads in flight are left to finish, and their results dropped."""
        with self._lock:
            self._cache.clear()
            self._inflight.clear()
            self._primed.clear()
            self._epoch += 1

    def statistics(self) -> PolicyStateStatistics:
        with self._lock:
            return PolicyStateStatistics(
                hits=self._hits,
                misses=self._misses,
                fallbacks=self._fallbacks,
                fetches=self._fetches,
                fetch_errors=self._errors,
                fetches_skipped=self._skipped,
                evictions=self._cache.evictions,
                entries=len(self._cache),
                bytes=self._cache.bytes,
                max_bytes=self._cache.max_bytes,
                pending=self._running,
            )

    def close(self) -> None:
        """Start no more background reads and let the worker threads end."""
        with self._lock:
            self._closed = True
        self._workers.stop()
