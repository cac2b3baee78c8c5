"""Policy state per (app, user), cached in memory, kept in the config store.

The query path reads states from memory; feedback updates them through the
store's atomic read-modify-write (a user's state and the app's shared one in
one step), so concurrent feedback (from this or another frontend) never loses
an update. Cached states are re-read after
``ttl_s``, so updates made by other frontends arrive within that time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ..exceptions import StoreError

log = logging.getLogger("clipper.selection")

State = dict[str, Any]
SHARED = ""  # the uid of the app-wide state


class StateBackend(Protocol):
    def get_policy_state(self, app: str, uid: str) -> State | None: ...

    def update_policy_states(
        self,
        app: str,
        uids: Sequence[str],
        update: Callable[[dict[str, State | None]], Mapping[str, State]],
    ) -> dict[str, State]: ...


class PolicyStates:
    """A read-through cache of policy states."""

    def __init__(
        self,
        backend: StateBackend,
        *,
        ttl_s: float = 1.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._cache: dict[tuple[str, str], tuple[float, State | None]] = {}
        self._warned = float("-inf")

    def get(self, app: str, uid: str, initial: Callable[[], State]) -> State:
        """The user's state, else the app's shared state, else ``initial()``."""
        for key in ((app, uid), (app, SHARED)) if uid != SHARED else ((app, SHARED),):
            state = self._read(key)
            if state is not None:
                return state
        return initial()

    def _read(self, key: tuple[str, str]) -> State | None:
        now = self.clock()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        try:
            state = self.backend.get_policy_state(*key)
        except StoreError as exc:
            # The store is down: keep answering from what we last knew.
            if hit is None or now - self._warned > 10:
                log.warning("policy state unavailable (%s); using the last known state", exc)
                self._warned = now
            return hit[1] if hit is not None else None
        if len(self._cache) >= self.max_entries:
            self._cache.clear()  # crude, but bounded; states are re-read on demand
        self._cache[key] = (now, state)
        return state

    def update(
        self,
        app: str,
        uids: Sequence[str],
        update: Callable[[dict[str, State | None]], Mapping[str, State]],
    ) -> dict[str, State]:
        """Atomically update states of one app in the store (one step for all of
        ``uids``) and refresh the cache."""
        states = self.backend.update_policy_states(app, uids, update)
        now = self.clock()
        for uid, state in states.items():
            self._cache[(app, uid)] = (now, state)
        return states

    def clear(self) -> None:
        """Forget cached states (after a configuration change, e.g. a new policy)."""
        self._cache.clear()
