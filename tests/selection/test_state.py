"""``PolicyStates``: a byte-bounded LRU of policy states, filled in the background.

The fake backends here block on ``threading.Event``s, so the tests can hold a
store read in flight and check that the query path does not wait for it. The
clock is injected; nothing sleeps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from clipper.exceptions import StoreError
from clipper.selection.state import (
    ENTRY_OVERHEAD,
    SHARED,
    Entry,
    PolicyStates,
    StateCache,
    state_size,
)

State = dict[str, Any]
WAIT = 10.0  # seconds: only ever reached when something is wrong


def initial() -> State:
    return {"w": "initial"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Backend:
    """States in a dict; reads of the uids in ``blocked`` wait for ``gate``.

    A read takes its value before it waits, as a read that reached the store
    before a later write would.
    """

    def __init__(self, states: dict[tuple[str, str], State] | None = None) -> None:
        self.states = dict(states or {})
        self.blocked: set[str] = set()
        self.gate = threading.Event()
        self.failing = False
        self.reads: list[tuple[str, str]] = []
        self.caps: list[int] = []
        self._lock = threading.Lock()

    def get_policy_state(self, app: str, uid: str) -> State | None:
        with self._lock:
            self.reads.append((app, uid))
            value = self.states.get((app, uid))
        if uid in self.blocked and not self.gate.wait(WAIT):
            raise AssertionError("the gate was never opened")
        if self.failing:
            raise StoreError("the store is down")
        return dict(value) if value is not None else None

    def update_policy_states(
        self,
        app: str,
        uids: Sequence[str],
        update: Callable[[dict[str, State | None]], Mapping[str, State]],
        *,
        max_user_states: int = 0,
    ) -> dict[str, State]:
        if self.failing:
            raise StoreError("the store is down")
        with self._lock:
            self.caps.append(max_user_states)
            new = update({u: self.states.get((app, u)) for u in uids})
            for uid, state in new.items():
                self.states[(app, uid)] = dict(state)
            return {uid: dict(state) for uid, state in new.items()}


def settle(states: PolicyStates) -> None:
    assert states.wait_fetches(WAIT), "background reads did not finish"


# -- the byte-bounded LRU -----------------------------------------------------------------


def entry(size: int, state: State | None = None) -> Entry:
    return Entry(state if state is not None else {"x": size}, size, 0.0)


def test_the_least_recently_used_user_goes_first() -> None:
    cache = StateCache(300)
    for uid in ("a", "b", "c"):
        assert cache.put(("app", uid), entry(100))
    assert cache.get(("app", "a")) is not None  # a is now the most recently used
    assert cache.peek(("app", "b")) is not None  # peeking changes nothing
    assert cache.put(("app", "d"), entry(100))
    assert [uid for uid in "abcd" if ("app", uid) in cache] == ["a", "c", "d"]
    assert cache.put(("app", "e"), entry(150))  # needs two places: c and a go
    assert [uid for uid in "abcde" if ("app", uid) in cache] == ["d", "e"]
    assert (cache.bytes, len(cache), cache.evictions) == (250, 2, 3)


def test_bytes_are_accounted_on_replace_pop_and_clear() -> None:
    cache = StateCache(1000)
    cache.put(("app", "u"), entry(100))
    cache.put(("app", "u"), entry(40))
    cache.put(("app", SHARED), entry(60))
    assert (cache.bytes, len(cache)) == (100, 2)
    popped = cache.pop(("app", "u"))
    assert popped is not None and popped.size == 40
    assert cache.pop(("app", "u")) is None
    assert cache.bytes == 60
    cache.clear()
    assert (cache.bytes, len(cache), cache.evictions) == (0, 0, 0)


def test_shared_states_stay_while_any_user_state_can_go() -> None:
    cache = StateCache(300)
    cache.put(("app", SHARED), entry(100))
    cache.put(("app", "u1"), entry(100))
    cache.put(("app", "u2"), entry(100))
    cache.put(("other", SHARED), entry(100))  # u1 goes, not app's shared state
    assert ("app", SHARED) in cache and ("app", "u1") not in cache
    # A user too big to fit beside the shared states is the one left out.
    assert not cache.put(("app", "big"), entry(250))
    assert ("app", SHARED) in cache and ("other", SHARED) in cache
    assert cache.bytes == 200
    # Only shared states left: then the least recently used of them goes.
    cache.get(("app", SHARED))
    cache.put(("third", SHARED), entry(150))
    assert ("other", SHARED) not in cache and ("app", SHARED) in cache
    assert cache.bytes == 250


def test_an_entry_larger_than_the_budget_is_not_kept() -> None:
    cache = StateCache(100)
    cache.put(("app", "u"), entry(50))
    assert not cache.put(("app", "u"), entry(101))
    assert ("app", "u") not in cache and cache.bytes == 0


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_the_budget_must_be_positive(size: Any) -> None:
    with pytest.raises(ValueError, match="positive"):
        StateCache(size)


def test_state_size_follows_the_json_size() -> None:
    small = state_size("app", "u", {"w": [0.5]})
    big = state_size("app", "u", {"w": [0.5] * 1000})
    assert ENTRY_OVERHEAD < small < big
    assert big - small == len(", 0.5".replace(" ", "")) * 999
    assert state_size("app", "u", None) == ENTRY_OVERHEAD + 4


def test_many_random_users_stay_within_the_budget() -> None:
    budget = 40 * ENTRY_OVERHEAD
    backend = Backend({("a", SHARED): {"w": "shared"}})
    backend.states.update({("a", f"u{i}"): {"w": [i] * 20} for i in range(300)})
    states = PolicyStates(backend, max_bytes=budget)
    for i in range(300):
        states.get("a", f"u{i}", initial)
        if i % 50 == 0:
            settle(states)
    settle(states)
    stats = states.statistics()
    assert stats.bytes <= budget and stats.evictions > 200
    assert states.get("a", "never-seen", initial) == {"w": "shared"}  # shared state kept
    assert states.get("a", "u299", initial) == {"w": [299] * 20}


# -- the query path never waits for the store -------------------------------------------


def test_a_new_user_gets_the_shared_state_at_once_then_their_own() -> None:
    backend = Backend({("a", SHARED): {"w": "shared"}, ("a", "alice"): {"w": "alice"}})
    backend.blocked.add("alice")
    states = PolicyStates(backend)
    started = time.monotonic()
    assert states.get("a", "alice", initial) == {"w": "shared"}
    assert states.get("a", "alice", initial) == {"w": "shared"}
    assert time.monotonic() - started < WAIT / 2  # the reads of alice are still blocked
    stats = states.statistics()
    assert stats.fallbacks == 2 and stats.pending == 1
    assert backend.reads.count(("a", "alice")) == 1  # one read in flight per state
    backend.gate.set()
    settle(states)
    assert states.get("a", "alice", initial) == {"w": "alice"}
    stats = states.statistics()
    assert stats.fallbacks == 2 and stats.pending == 0 and stats.fetch_errors == 0


def test_a_user_without_a_stored_state_uses_the_shared_one_without_fallback() -> None:
    backend = Backend({("a", SHARED): {"w": "shared"}})
    states = PolicyStates(backend)
    states.get("a", "bob", initial)
    settle(states)
    before = states.statistics().fallbacks
    assert states.get("a", "bob", initial) == {"w": "shared"}
    assert states.statistics().fallbacks == before
    assert backend.reads.count(("a", "bob")) == 1  # "none" is remembered too


def test_the_first_read_of_an_app_waits_briefly_for_its_shared_state() -> None:
    backend = Backend({("a", SHARED): {"w": "shared"}})
    states = PolicyStates(backend, first_read_timeout_s=WAIT)
    assert states.get("a", SHARED, initial) == {"w": "shared"}
    assert states.statistics().fallbacks == 0


def test_the_first_read_waits_once_and_no_longer_than_its_bound() -> None:
    backend = Backend({("a", SHARED): {"w": "shared"}})
    backend.blocked.add(SHARED)
    states = PolicyStates(backend, first_read_timeout_s=0.3)
    started = time.monotonic()
    assert states.get("a", "u", initial) == {"w": "initial"}
    first = time.monotonic() - started
    started = time.monotonic()
    assert states.get("a", "u", initial) == {"w": "initial"}
    second = time.monotonic() - started
    assert 0.25 <= first < WAIT / 2 and second < 0.25
    backend.gate.set()
    settle(states)
    assert states.get("a", "u", initial) == {"w": "shared"}


def test_expired_states_are_served_while_a_fresh_read_runs() -> None:
    clock = Clock()
    backend = Backend()
    states = PolicyStates(backend, ttl_s=1.0, clock=clock)
    states.update("a", [SHARED, "u"], lambda cur: {u: {"v": 1} for u in cur})
    backend.states[("a", "u")] = {"v": 2}  # another frontend's feedback
    assert states.get("a", "u", initial) == {"v": 1}
    assert backend.reads == []  # fresh: no read
    clock.now += 1.0
    backend.blocked.add("u")
    assert states.get("a", "u", initial) == {"v": 1}  # stale, served while refreshed
    assert states.statistics().fallbacks == 0
    backend.gate.set()
    settle(states)
    assert states.get("a", "u", initial) == {"v": 2}


def test_a_read_that_began_before_a_write_does_not_undo_it() -> None:
    backend = Backend({("a", SHARED): {"v": 0}, ("a", "u"): {"v": 0}})
    backend.blocked.add("u")
    states = PolicyStates(backend)
    states.get("a", "u", initial)  # the read of u took {"v": 0} and waits
    states.update("a", [SHARED, "u"], lambda cur: {u: {"v": 1} for u in cur})
    backend.gate.set()
    settle(states)
    assert states.get("a", "u", initial) == {"v": 1}


def test_clear_drops_states_and_the_reads_in_flight() -> None:
    backend = Backend({("a", SHARED): {"v": 0}, ("a", "u"): {"v": 0}})
    backend.blocked.add("u")
    states = PolicyStates(backend)
    states.get("a", "u", initial)
    states.clear()
    assert states.statistics().entries == 0
    backend.gate.set()
    settle(states)
    assert states.statistics().entries == 0  # the old read's result was dropped
    states.get("a", "u", initial)
    settle(states)
    assert states.get("a", "u", initial) == {"v": 0}


def test_background_reads_are_bounded() -> None:
    backend = Backend({("a", SHARED): {"v": 0}})
    backend.blocked.update(f"u{i}" for i in range(5))
    states = PolicyStates(backend, max_pending_fetches=2)
    states.get("a", SHARED, initial)
    settle(states)
    for i in range(5):
        assert states.get("a", f"u{i}", initial) == {"v": 0}
    stats = states.statistics()
    assert (stats.fetches, stats.pending, stats.fetches_skipped) == (3, 2, 3)
    backend.gate.set()
    settle(states)
    states.get("a", "u4", initial)
    assert states.statistics().fetches == 4  # room again


def test_a_store_outage_serves_the_last_known_states_and_backs_off() -> None:
    clock = Clock()
    backend = Backend()
    states = PolicyStates(backend, ttl_s=1.0, retry_after_s=5.0, clock=clock)
    states.update("a", [SHARED, "u"], lambda cur: {u: {"v": 1} for u in cur})
    backend.failing = True
    clock.now += 2.0
    assert states.get("a", "u", initial) == {"v": 1}  # a refresh starts, and fails
    settle(states)
    assert states.statistics().fetch_errors >= 1
    reads = len(backend.reads)
    # A new user while the store fails: the shared state, and no read for now.
    assert states.get("a", "new", initial) == {"v": 1}
    assert states.get("a", "u", initial) == {"v": 1}
    settle(states)
    assert len(backend.reads) == reads
    stats = states.statistics()
    assert stats.fallbacks == 1 and stats.fetches_skipped >= 2
    # Past the back-off the store is tried again; it is back.
    backend.failing = False
    backend.states[("a", "new")] = {"v": "new"}
    clock.now += 5.0
    states.get("a", "new", initial)
    settle(states)
    assert states.get("a", "new", initial) == {"v": "new"}


def test_fallbacks_are_logged_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    backend = Backend({("a", SHARED): {"v": 0}})
    backend.blocked.update({"u1", "u2", "u3"})
    states = PolicyStates(backend, log_interval_s=60.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="clipper.selection"):
        states.get("a", "u1", initial)
        states.get("a", "u2", initial)
        clock.now += 61.0
        states.get("a", "u3", initial)
    said = [r.getMessage() for r in caplog.records if "less specific state" in r.getMessage()]
    assert len(said) == 2 and all("app 'a'" in line for line in said)
    assert not any("u1" in line or "u3" in line for line in said)  # no uids in the log
    assert states.statistics().fallbacks == 3
    backend.gate.set()
    settle(states)


def test_update_passes_the_user_state_cap_to_the_store() -> None:
    backend = Backend()
    states = PolicyStates(backend, max_user_states=7)
    states.update("a", [SHARED, "u"], lambda cur: {u: {"v": 1} for u in cur})
    assert backend.caps == [7]
    assert states.get("a", "u", initial) == {"v": 1}


@pytest.mark.parametrize("cap", [-1, 1.5])
def test_the_user_state_cap_must_be_a_count(cap: Any) -> None:
    with pytest.raises(ValueError, match="max_user_states"):
        PolicyStates(Backend(), max_user_states=cap)


def test_close_stops_background_reads() -> None:
    backend = Backend({("a", SHARED): {"v": 0}})
    states = PolicyStates(backend)
    states.close()
    assert states.get("a", "u", initial) == {"w": "initial"}
    assert backend.reads == [] and states.statistics().fetches_skipped == 2
