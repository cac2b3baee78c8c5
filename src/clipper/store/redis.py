"""A config store in Redis, shared by several frontends, with change notifications.

Data model, every key under ``{prefix}:`` (``clipper`` unless told otherwise)::

    {prefix}:generation        string  the change counter (INCR)
    {prefix}:apps              hash    app name -> AppSpec record (JSON)
    {prefix}:links:{app}       list    the models linked to an app, in link order
    {prefix}:linked:{model}    set     the apps a model is linked to (reverse index)
    {prefix}:models            set     the names of models with at least one version
    {prefix}:versions:{model}  list    a model's versions, in the order they were added
    {prefix}:specs:{model}     hash    version -> ModelSpec record (JSON)
    {prefix}:replicas:{model}  hash    version -> replica count (absent: 1)
    {prefix}:current           hash    model name -> current version
    {prefix}:pstate:{app}      hash    uid -> policy state (JSON object; uid "" is shared)
    {prefix}:pstate-age:{app}  zset    user uid -> write sequence (higher: written later)
    {prefix}:rollouts          hash    model name -> RolloutSpec record (JSON)
    {prefix}:rollout-evidence  hash    model name -> the rollout's evidence (JSON object)

Every change is one Lua script: Redis runs a script alone, so its checks and
its writes form one step that no other client (in any process) can interleave
with, and a reader never sees half of it. Each script checks everything before
writing anything, so a refused change leaves no trace. A script that changes
something ends by INCRing the generation and PUBLISHing the new value on
``{prefix}:changes``, inside the same atomic step, so a notification can never
go missing between the write and the publish. Reads of more than one key go
through a script or a MULTI/EXEC block too, so they see a single state.

Policy states are the exception: they are not configuration, so writing
them neither INCRs the generation nor publishes. An update is a
read-modify-write whose modification is Python code, so it cannot be a
script: it WATCHes the state's hash (and the apps hash, so a state is never
written after its app was deleted), reads, runs the update, and writes in
MULTI/EXEC, starting over if another client touched a watched key meanwhile.
The write inside MULTI/EXEC is one script (WRITE_POLICY_STATES) that also
keeps the app's age set and, past the user-state cap, removes the least
recently written user states, all in the same atomic step.

The scripts build key names from the prefix, so this needs a single Redis
server (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from clipper.exceptions import StoreError, ValidationError
from clipper.store.base import (
    ConfigStore,
    States,
    StatesUpdate,
    app_from_record,
    app_to_record,
    check_max_user_states,
    check_replicas,
    check_uid,
    check_uids,
    dump_evidence,
    dump_json,
    dump_policy_states,
    duplicate_app,
    duplicate_model,
    load_evidence,
    load_policy_state,
    missing_app,
    missing_version,
    model_from_record,
    model_to_record,
    rollout_from_json,
    rollout_to_json,
)
from clipper.types import AppSpec, ModelSpec, RolloutSpec

from . import redis_scripts as scripts

log = logging.getLogger(__name__)

# Seconds. Generous enough for a loaded server, short enough that a dead one
# turns into a StoreError instead of a hung management request.
CONNECT_TIMEOUT = 5.0
SOCKET_TIMEOUT = 10.0
# The watcher's reconnection back-off (seconds), and how often it looks up
# from a quiet subscription to see whether close() asked it to stop.
BACKOFF_START = 0.1
BACKOFF_MAX = 5.0
POLL_INTERVAL = 0.2
JOIN_TIMEOUT = 10.0
# How often update_policy_states starts over after losing a race before it
# gives up, and its jittered exponential back-off between attempts (seconds).
STATE_UPDATE_ATTEMPTS = 100
STATE_RETRY_DELAY_START = 0.0005
STATE_RETRY_DELAY_MAX = 0.02
# Updates of one state from threads of one store take turns on a local lock
# (one of this many, by key), so only other processes make them start over.
STATE_LOCK_STRIPES = 64


def redact_url(url: str) -> str:
    """Return ``url`` fit for messages and logs: no password, no query options."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable Redis URL>"
    if ":" in host:
        host = f"[{host}]"  # IPv6
    netloc = host if port is None else f"{host}:{port}"
    if parts.username:
        netloc = f"{parts.username}{':***' if parts.password else ''}@{netloc}"
    elif parts.password:
        netloc = f":***@{netloc}"
    return f"{parts.scheme}://{netloc}{parts.path}"


# Each record is one JSON document: a record of base.py, serialized. One written
# before a field existed lacks its key, and reads back with the field's default.


def _app_record(spec: AppSpec) -> str:
    return dump_json(app_to_record(spec), "application")


def _app_from_record(record: str) -> AppSpec:
    return app_from_record(json.loads(record))


def _model_record(spec: ModelSpec) -> str:
    return dump_json(model_to_record(spec), "model")


def _model_from_record(record: str) -> ModelSpec:
    return model_from_record(json.loads(record))


def _client(url: str) -> redis.Redis:
    # No automatic retries: a retried script may run twice if the connection
    # dropped after Redis ran it, and then add_app would report its own success
    # as "already exists". The pool already replaces connections that a Redis
    # restart closed when it hands them out, so retries would buy little.
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
    )


class RedisStore(ConfigStore):
    """A :class:`ConfigStore` kept in the Redis server at ``url``, under ``prefix``.

    Several processes may share one store; each change is a single atomic Lua
    script (see the module docstring), and ``watch`` tells each of them when
    another one changed something. Redis errors become :class:`StoreError`.
    """

    def __init__(self, url: str, *, prefix: str = "clipper") -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ValidationError(
                f"the Redis key prefix must be a non-empty string, got {prefix!r}"
            )
        self.url = url
        self.prefix = prefix
        self.channel = f"{prefix}:changes"
        self._where = redact_url(url)
        # In-flight calls, so that close() can wait for them instead of pulling
        # the pool from under them (the pool would reopen connections nobody closes).
        self._cond = threading.Condition()
        self._active = 0
        self._closed = False
        self._callbacks: list[Callable[[], None]] = []
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self._state_locks = [threading.Lock() for _ in range(STATE_LOCK_STRIPES)]
        try:
            self._redis = _client(url)
        except ValueError as e:  # redis-py's word for a URL it cannot read
            raise ValidationError(f"invalid Redis URL {self._where}: {e}") from None
        try:
            self._redis.ping()
            register = self._redis.register_script
            self._add_app = register(scripts.PRELUDE + scripts.ADD_APP)
            self._update_app = register(scripts.PRELUDE + scripts.UPDATE_APP)
            self._delete_app = register(scripts.PRELUDE + scripts.DELETE_APP)
            self._add_model = register(scripts.PRELUDE + scripts.ADD_MODEL)
            self._update_model = register(scripts.PRELUDE + scripts.UPDATE_MODEL)
            self._delete_model_version = register(scripts.PRELUDE + scripts.DELETE_MODEL_VERSION)
            self._set_current_version = register(scripts.PRELUDE + scripts.SET_CURRENT_VERSION)
            self._add_links = register(scripts.PRELUDE + scripts.ADD_LINKS)
            self._remove_links = register(scripts.PRELUDE + scripts.REMOVE_LINKS)
            self._set_num_replicas = register(scripts.PRELUDE + scripts.SET_NUM_REPLICAS)
            self._list_models = register(scripts.LIST_MODELS)
            self._put_rollout = register(scripts.PRELUDE + scripts.PUT_ROLLOUT)
            self._delete_rollout = register(scripts.PRELUDE + scripts.DELETE_ROLLOUT)
            self._save_evidence = register(scripts.PRELUDE + scripts.SAVE_ROLLOUT_EVIDENCE)
        except (redis.RedisError, OSError) as e:
            self._redis.close()
            self._closed = True
            raise StoreError(f"cannot reach the Redis config store at {self._where}: {e}") from e

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @contextmanager
    def _calling(self, what: str) -> Iterator[redis.Redis]:
        with self._cond:
            if self._closed:
                raise StoreError(f"Redis config store {self._where} is closed")
            self._active += 1
        try:
            yield self._redis
        except (redis.RedisError, OSError) as e:
            # OSError: socket and TLS trouble that redis-py lets through as is.
            raise StoreError(f"Redis config store {self._where}: cannot {what}: {e}") from e
        except (ValueError, KeyError, TypeError) as e:
            # Only a record this module did not write (or a foreign key) gets here.
            raise StoreError(
                f"Redis config store {self._where}: cannot {what}: malformed record: {e!r}"
            ) from e
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    # Applications

    def add_app(self, spec: AppSpec) -> None:
        """Register an application; ValidationError if the name is taken."""
        record = _app_record(spec)
        with self._calling("add an application"):
            result = self._add_app(args=[self.prefix, spec.name, record])
        if result == scripts.EXISTS:
            raise duplicate_app(spec.name)
        self._check_changed(result)

    def get_app(self, name: str) -> AppSpec | None:
        """Return the application called ``name``, or None."""
        with self._calling("read an application") as r:
            record = cast(str | None, r.hget(self._key("apps"), name))
            return _app_from_record(record) if record is not None else None

    def list_apps(self) -> list[AppSpec]:
        """Return every application, sorted by name."""
        with self._calling("list applications") as r:
            records = cast(list[str], r.hvals(self._key("apps")))
            return sorted((_app_from_record(rec) for rec in records), key=lambda a: a.name)

    def update_app(self, spec: AppSpec) -> None:
        """Replace the record of an existing application; NotFoundError if absent."""
        record = _app_record(spec)
        with self._calling("update an application"):
            result = self._update_app(args=[self.prefix, spec.name, record])
        if result == scripts.MISSING:
            raise missing_app(spec.name)
        self._check_changed(result)

    def delete_app(self, name: str) -> bool:
        """Delete an application and its links; False if there was none."""
        with self._calling("delete an application"):
            result = self._delete_app(args=[self.prefix, name])
        return self._check_changed(result)

    # Models

    def add_model(self, spec: ModelSpec, make_current: bool = True) -> None:
        """Add a model version, optionally making it the current one."""
        record = _model_record(spec)
        flag = "1" if make_current else "0"
        with self._calling("add a model version"):
            result = self._add_model(args=[self.prefix, spec.name, spec.version, record, flag])
        if result == scripts.EXISTS:
            raise duplicate_model(spec.name, spec.version)
        self._check_changed(result)

    def update_model(self, spec: ModelSpec) -> None:
        """Replace the record of an existing model version; NotFoundError if absent."""
        record = _model_record(spec)
        with self._calling("update a model version"):
            result = self._update_model(args=[self.prefix, spec.name, spec.version, record])
        if result == scripts.MISSING:
            raise missing_version(spec.name, spec.version)
        self._check_changed(result)

    def get_model(self, name: str, version: str) -> ModelSpec | None:
        """Return one model version, or None."""
        with self._calling("read a model version") as r:
            record = cast(str | None, r.hget(self._key("specs", name), version))
            return _model_from_record(record) if record is not None else None

    def list_models(self, name: str | None = None) -> list[ModelSpec]:
        """Return model versions, sorted by name, then by the order they were added."""
        args = [self.prefix] if name is None else [self.prefix, name]
        with self._calling("list models"):
            records = cast(list[str], self._list_models(args=args))
            specs = [_model_from_record(rec) for rec in records]
        # A stable sort: each model's versions keep the order the script gave them.
        return sorted(specs, key=lambda m: m.name)

    def delete_model_version(self, name: str, version: str) -> bool:
        """Delete a model version; False if there was none."""
        with self._calling("delete a model version"):
            result = self._delete_model_version(args=[self.prefix, name, version])
        return self._check_changed(result)

    def get_current_version(self, name: str) -> str | None:
        """Return the model's current version, or None."""
        with self._calling("read the current version") as r:
            return cast(str | None, r.hget(self._key("current"), name))

    def set_current_version(self, name: str, version: str) -> None:
        """Make ``version`` the model's current one; NotFoundError if it does not exist."""
        with self._calling("set the current version"):
            result = self._set_current_version(args=[self.prefix, name, version])
        if result == scripts.MISSING:
            raise missing_version(name, version)
        self._check_changed(result)

    # Links

    def add_links(self, app: str, models: list[str]) -> None:
        """Link models to an application, keeping order; already linked ones are skipped."""
        with self._calling("link models"):
            result = self._add_links(args=[self.prefix, app, *models])
        if result == scripts.MISSING:
            raise missing_app(app)
        self._check_changed(result)

    def remove_links(self, app: str, models: list[str]) -> None:
        """Unlink models from an application; ones not linked are ignored."""
        with self._calling("unlink models"):
            result = self._remove_links(args=[self.prefix, app, *models])
        if result == scripts.MISSING:
            raise missing_app(app)
        self._check_changed(result)

    def get_links(self, app: str) -> list[str]:
        """Return the models linked to an application in link order; [] if unknown."""
        with self._calling("read links") as r:
            return cast(list[str], r.lrange(self._key("links", app), 0, -1))

    def apps_linked_to(self, model: str) -> list[str]:
        """Return the names of the applications linked to a model, sorted."""
        with self._calling("read links") as r:
            return sorted(cast(set[str], r.smembers(self._key("linked", model))))

    # Replicas

    def set_num_replicas(self, name: str, version: str, n: int) -> None:
        """Set a model version's replica count."""
        check_replicas(n)
        with self._calling("set the number of replicas"):
            result = self._set_num_replicas(args=[self.prefix, name, version, n])
        if result == scripts.MISSING:
            raise missing_version(name, version)
        self._check_changed(result)

    def get_num_replicas(self, name: str, version: str) -> int:
        """Return a model version's replica count (1 unless set); NotFoundError if absent."""
        with self._calling("read the number of replicas") as r:
            # MULTI/EXEC, so a concurrent delete cannot fall between the two reads.
            pipe = r.pipeline(transaction=True)
            pipe.hexists(self._key("specs", name), version)
            pipe.hget(self._key("replicas", name), version)
            exists, n = pipe.execute()
        if not exists:
            raise missing_version(name, version)
        return int(n) if n is not None else 1

    # Policy states (not configuration: no generation, no notification)

    def get_policy_state(self, app: str, uid: str) -> dict[str, Any] | None:
        """Return the state stored for (``app``, ``uid``), or None."""
        check_uid(uid)
        with self._calling("read a policy state") as r:
            text = cast(str | None, r.hget(self._key("pstate", app), uid))
            return load_policy_state(text) if text is not None else None

    def update_policy_states(
        self, app: str, uids: Sequence[str], update: StatesUpdate, *, max_user_states: int = 0
    ) -> States:
        """Atomically replace several states of one application, in one step;
        past ``max_user_states`` user states, the least recently written go.

        Optimistic: when another client changes the app's states (or the
        apps) between the read and the write, it starts over, calling
        ``update`` again with the new states, up to STATE_UPDATE_ATTEMPTS
        times; then StoreError. Threads of this store updating the same
        states take turns instead, so they do not make each other retry.
        """
        uids = check_uids(uids)
        cap = check_max_user_states(max_user_states)
        # Every stripe the states fall on, always taken in the same order.
        stripes = sorted({hash((app, uid)) % STATE_LOCK_STRIPES for uid in uids})
        with contextlib.ExitStack() as held:
            for stripe in stripes:
                held.enter_context(self._state_locks[stripe])
            for attempt in range(STATE_UPDATE_ATTEMPTS):
                if attempt:
                    delay = min(STATE_RETRY_DELAY_START * 2**attempt, STATE_RETRY_DELAY_MAX)
                    time.sleep(random.uniform(0, delay))
                states = self._try_update_states(app, uids, update, cap)
                if states is not None:
                    return states
        raise StoreError(
            f"Redis config store {self._where}: cannot update the policy states of "
            f"{app!r} users {uids!r}: still contended after {STATE_UPDATE_ATTEMPTS} attempts"
        )

    def _try_update_states(
        self,
        app: str,
        uids: list[str],
        update: StatesUpdate,
        cap: int,
    ) -> dict[str, dict[str, Any]] | None:
        """One WATCH/MULTI/EXEC attempt; None if another client got in between."""
        apps, key = self._key("apps"), self._key("pstate", app)
        # What update() or the check of its result raise must reach the caller
        # as is, not as the StoreError that _calling makes of a ValueError.
        failure: Exception | None = None
        with self._calling("update policy states") as r, r.pipeline(transaction=True) as pipe:
            pipe.watch(apps, key)  # and until MULTI, the pipe runs commands at once
            if not pipe.hexists(apps, app):
                failure = missing_app(app)
            else:
                texts = cast(list[str | None], pipe.hmget(key, uids))
                current = {
                    u: load_policy_state(t) if t is not None else None
                    for u, t in zip(uids, texts, strict=True)
                }
                try:
                    new = dump_policy_states(uids, update(current))
                except Exception as e:
                    failure = e
                else:
                    pipe.multi()
                    pairs = [part for item in new.items() for part in item]
                    # EVAL, not EVALSHA: a script missing from Redis's cache
                    # (after a restart) could not be loaded inside MULTI.
                    args = [self.prefix, app, str(cap), *pairs]
                    pipe.eval(scripts.WRITE_POLICY_STATES, 0, *args)
                    try:
                        pipe.execute()
                    except redis.WatchError:
                        return None
                    return {u: load_policy_state(text) for u, text in new.items()}
        assert failure is not None  # every path that did not return set it
        raise failure

    def delete_policy_states(self, app: str) -> int:
        """Delete every policy state of an application; return how many there were."""
        with self._calling("delete policy states") as r:
            pipe = r.pipeline(transaction=True)
            key = self._key("pstate", app)
            pipe.hlen(key)
            pipe.delete(key, self._key("pstate-age", app))
            count, _ = pipe.execute()
            return int(count)

    # Rollouts

    def put_rollout(self, spec: RolloutSpec) -> None:
        """Store the rollout of ``spec.model``, replacing the one it had."""
        record = rollout_to_json(spec)
        with self._calling("store a rollout"):
            result = self._put_rollout(args=[self.prefix, spec.model, record])
        self._check_changed(result)

    def list_rollouts(self) -> list[RolloutSpec]:
        """Return every rollout, sorted by model name."""
        with self._calling("list rollouts") as r:
            records = cast(list[str], r.hvals(self._key("rollouts")))
            return sorted((rollout_from_json(rec) for rec in records), key=lambda s: s.model)

    def delete_rollout(self, model: str) -> bool:
        """Delete a model's rollout and its evidence; False if it had none."""
        with self._calling("delete a rollout"):
            result = self._delete_rollout(args=[self.prefix, model])
        return self._check_changed(result)

    def save_rollout_evidence(self, model: str, evidence: dict[str, Any]) -> None:
        """Keep the figures of a model's rollout (no generation, no notification)."""
        text = dump_evidence(evidence)
        with self._calling("save rollout evidence"):
            self._save_evidence(args=[self.prefix, model, text])

    def get_rollout_evidence(self, model: str) -> dict[str, Any] | None:
        """Return the evidence last kept for ``model``, or None."""
        with self._calling("read rollout evidence") as r:
            text = cast(str | None, r.hget(self._key("rollout-evidence"), model))
            return load_evidence(text) if text is not None else None

    # Housekeeping

    def generation(self) -> int:
        """Return the change counter, as stored in Redis (0 before the first change)."""
        with self._calling("read the generation") as r:
            value = cast(str | None, r.get(self._key("generation")))
            return int(value) if value is not None else 0

    def _check_changed(self, result: object) -> bool:
        # A change returns the new generation; anything else but a no-op is a bug.
        if result == scripts.NOOP:
            return False
        if isinstance(result, int) and not isinstance(result, bool):
            return True
        raise StoreError(f"Redis config store {self._where}: unexpected reply {result!r}")

    # Change notifications

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from a background thread) whenever the store may have changed.

        That is: after every change by any writer, this one included, and once
        after each reconnection to Redis, since changes made while the watcher
        was cut off went unannounced. The first call starts the watcher and
        returns once it has subscribed (or failed its first attempt, after
        which it keeps retrying with back-off and calls back when it gets
        through), so changes made after ``watch`` returns are never missed.
        Exceptions from ``callback`` are logged and otherwise ignored.
        """
        with self._cond:
            if self._closed:
                raise StoreError(f"Redis config store {self._where} is closed")
            self._callbacks.append(callback)
            if self._watcher is not None:
                return
            first_attempt = threading.Event()
            self._watcher = threading.Thread(
                target=self._watch_loop,
                args=(first_attempt,),
                name=f"clipper-store-watch-{self.prefix}",
                daemon=True,
            )
            self._watcher.start()
        # Bounded: one attempt lasts at most the connect and socket timeouts.
        first_attempt.wait()

    def _notify(self) -> None:
        with self._cond:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("config store watch callback %r failed", callback)

    def _watch_loop(self, first_attempt: threading.Event) -> None:
        delay = BACKOFF_START
        # The first subscription needs no resync: watch() waits for it, so its
        # caller reads the store after it. Any later one follows a gap.
        resync = False

        def subscribed() -> None:
            nonlocal delay
            delay = BACKOFF_START
            first_attempt.set()
            if resync:
                log.info("config store watcher reconnected to %s", self._where)
                self._notify()

        while not self._stop.is_set():
            try:
                self._listen(subscribed)
                return  # close() asked it to stop
            except Exception as e:
                # Anything at all, so that the watcher outlives odd replies and bugs too.
                if self._stop.is_set():
                    return
                log.warning(
                    "config store watcher lost %s (%s); reconnecting in %.1f s",
                    self._where,
                    e,
                    delay,
                )
            finally:
                first_attempt.set()
            resync = True
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, BACKOFF_MAX)

    def _listen(self, subscribed: Callable[[], None]) -> None:
        """Subscribe, report it, then forward messages until stopped or cut off."""
        client = _client(self.url)
        pubsub = client.pubsub()
        try:
            pubsub.subscribe(self.channel)
            self._await_subscription(pubsub)
            subscribed()
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=POLL_INTERVAL)
                if message is not None and message["type"] == "message":
                    self._notify()
        finally:
            pubsub.close()
            client.close()

    def _await_subscription(self, pubsub: redis.client.PubSub) -> None:
        # subscribe() only sends the command; until Redis confirms it, a
        # change could be published without reaching us.
        deadline = time.monotonic() + SOCKET_TIMEOUT
        while time.monotonic() < deadline:
            if self._stop.is_set():
                raise StoreError("the store is closing")
            message = pubsub.get_message(timeout=POLL_INTERVAL)
            if message is not None and message["type"] == "subscribe":
                return
        raise StoreError(f"no confirmation of SUBSCRIBE {self.channel} from {self._where}")

    def close(self) -> None:
        """Stop the watcher and close the connections; later calls raise StoreError."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            # Calls already running finish first (each within the socket timeout).
            self._cond.wait_for(lambda: self._active == 0)
            watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(JOIN_TIMEOUT)
            if watcher.is_alive():
                log.warning("config store watcher for %s did not stop", self._where)
        self._redis.close()
