"""The config store interface: applications, model versions, links and replicas.

Every method is synchronous and thread-safe. Records go in and come out as
the frozen specs of :mod:`clipper.types`; what a store returns is never
shared with its own state, so callers may keep it.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

from clipper.exceptions import NotFoundError, ValidationError
from clipper.types import AppOptions, AppSpec, InputType, ModelOptions, ModelSpec, RolloutSpec

# A joint policy-state update: {uid: stored state or None} -> {uid: new state}.
StatesUpdate = Callable[[dict[str, dict[str, Any] | None]], Mapping[str, dict[str, Any]]]
# Policy states by uid, as stored.
States = dict[str, dict[str, Any]]


class ConfigStore(abc.ABC):
    """Where the management side keeps the deployment's configuration.

    ``generation()`` rises on every call that changes something, so readers
    (the query frontend, the replica managers) can poll it cheaply and reload
    only when it moved. Calls that raise or find nothing to do leave it alone.
    Policy states are the exception: they are not configuration, they change
    with every feedback call, so writing them leaves the generation as it is
    and tells no watcher (deleting an application still counts, once).
    """

    # Applications

    @abc.abstractmethod
    def add_app(self, spec: AppSpec) -> None:
        """Register an application; ValidationError if the name is taken."""

    @abc.abstractmethod
    def get_app(self, name: str) -> AppSpec | None:
        """Return the application called ``name``, or None."""

    @abc.abstractmethod
    def list_apps(self) -> list[AppSpec]:
        """Return every application, sorted by name."""

    @abc.abstractmethod
    def update_app(self, spec: AppSpec) -> None:
        """Replace the record of an existing application; NotFoundError if absent."""

    @abc.abstractmethod
    def delete_app(self, name: str) -> bool:
        """Delete an application and its links; False if there was none."""

    # Models

    @abc.abstractmethod
    def add_model(self, spec: ModelSpec, make_current: bool = True) -> None:
        """Add a model version, optionally making it the current one.

        ValidationError if that (name, version) already exists.
        """

    @abc.abstractmethod
    def update_model(self, spec: ModelSpec) -> None:
        """Replace the record of an existing model version.

        Everything but the (name, version) key is replaced: input type, labels,
        container, data path, batch size and options. Whether it is the
        model's current version and its replica count stay as they were.
        NotFoundError if that (name, version) does not exist.
        """

    @abc.abstractmethod
    def get_model(self, name: str, version: str) -> ModelSpec | None:
        """Return one model version, or None."""

    @abc.abstractmethod
    def list_models(self, name: str | None = None) -> list[ModelSpec]:
        """Return model versions (of one model if ``name`` is given).

        Sorted by model name, then by the order the versions were added.
        """

    @abc.abstractmethod
    def delete_model_version(self, name: str, version: str) -> bool:
        """Delete a model version; False if there was none.

        Deleting the current version leaves the model without one; deleting
        the last version also unlinks the model from every application.
        """

    @abc.abstractmethod
    def get_current_version(self, name: str) -> str | None:
        """Return the model's current version, or None."""

    @abc.abstractmethod
    def set_current_version(self, name: str, version: str) -> None:
        """Make ``version`` the model's current one; NotFoundError if it does not exist."""

    # Links

    @abc.abstractmethod
    def add_links(self, app: str, models: list[str]) -> None:
        """Link models to an application, keeping order; already linked ones are skipped.

        NotFoundError if the application does not exist.
        """

    @abc.abstractmethod
    def remove_links(self, app: str, models: list[str]) -> None:
        """Unlink models from an application; ones not linked are ignored.

        NotFoundError if the application does not exist.
        """

    @abc.abstractmethod
    def get_links(self, app: str) -> list[str]:
        """Return the models linked to an application in link order; [] if unknown."""

    @abc.abstractmethod
    def apps_linked_to(self, model: str) -> list[str]:
        """Return the names of the applications linked to a model, sorted."""

    # Replicas

    @abc.abstractmethod
    def set_num_replicas(self, name: str, version: str, n: int) -> None:
        """Set a model version's replica count.

        NotFoundError if the version does not exist; ValidationError if n < 0.
        """

    @abc.abstractmethod
    def get_num_replicas(self, name: str, version: str) -> int:
        """Return a model version's replica count (1 unless set); NotFoundError if absent."""

    # Policy states: what a selection policy learned, per (application, user)

    @abc.abstractmethod
    def get_policy_state(self, app: str, uid: str) -> dict[str, Any] | None:
        """Return the state stored for (``app``, ``uid``), or None.

        ``uid`` "" is the application's shared state. None too for an unknown
        application. The dict is the caller's own.
        """

    def update_policy_state(
        self,
        app: str,
        uid: str,
        update: Callable[[dict[str, Any] | None], dict[str, Any]],
        *,
        max_user_states: int = 0,
    ) -> dict[str, Any]:
        """Atomically replace the state of (``app``, ``uid``) with ``update(current)``.

        ``current`` is the stored state (None if there is none), a copy that
        ``update`` may change and return. What it returns is stored and
        returned, again as a copy; it must be a JSON object, else
        ValidationError. Concurrent updates of the same state, from threads
        or from other processes sharing the store, never lose one another:
        the read, ``update`` and the write form one step (``update`` may be
        called more than once, with fresh states, if the store retries).
        ``update`` runs while the state is locked, so it must be quick and
        must not call the store. If it raises, nothing is stored and the
        exception propagates. NotFoundError if the application does not
        exist. Neither the generation nor ``watch`` callbacks see the change.
        ``max_user_states`` as in :meth:`update_policy_states`.
        """
        return self.update_policy_states(
            app, [uid], lambda cur: {uid: update(cur[uid])}, max_user_states=max_user_states
        )[uid]

    @abc.abstractmethod
    def update_policy_states(
        self, app: str, uids: Sequence[str], update: StatesUpdate, *, max_user_states: int = 0
    ) -> States:
        """Atomically replace several states of one application, in one step.

        ``update`` gets ``{uid: current}`` for every uid of ``uids`` (distinct,
        at least one; ``current`` as in :meth:`update_policy_state`) and
        returns ``{uid: new state}`` for each of them, all stored together or
        none; the stored states come back as copies. Feedback updates a
        user's state and the application's shared one this way. Otherwise as
        :meth:`update_policy_state`; ValidationError if ``update`` returns
        other uids than it was given.

        The store remembers when each user state was last written. With
        ``max_user_states`` > 0 (0: no limit), the application keeps at most
        that many user states (uid "", the shared state, never counts and is
        never removed): when this write takes the count past it, the least
        recently written user states are deleted in the same atomic step, so
        random uids cannot grow the store without bound while active users
        keep theirs. A removed user is then a new user again: the next
        feedback starts its state from the application's shared one, and
        queries meanwhile use the shared state. The states written by this
        call are the most recent, so they are removed only when the call
        writes more user states than the limit. ValidationError if
        ``max_user_states`` is not an integer >= 0.
        """

    @abc.abstractmethod
    def delete_policy_states(self, app: str) -> int:
        """Delete every policy state of an application; return how many there were.

        Deleting an application deletes its states too.
        """

    # Rollouts: at most one per model, keyed by the model's name

    @abc.abstractmethod
    def put_rollout(self, spec: RolloutSpec) -> None:
        """Store the rollout of ``spec.model``, replacing the one it had."""

    @abc.abstractmethod
    def list_rollouts(self) -> list[RolloutSpec]:
        """Return every rollout, sorted by model name."""

    @abc.abstractmethod
    def delete_rollout(self, model: str) -> bool:
        """Delete a model's rollout and its evidence; False if it had none."""

    @abc.abstractmethod
    def save_rollout_evidence(self, model: str, evidence: dict[str, Any]) -> None:
        """Keep the query path's figures of a model's rollout (a JSON object).

        Like policy states, not configuration: the generation stays as it is.
        Evidence of a model without a rollout is not kept.
        """

    @abc.abstractmethod
    def get_rollout_evidence(self, model: str) -> dict[str, Any] | None:
        """Return what :meth:`save_rollout_evidence` last kept for ``model``, or None."""

    # Housekeeping

    @abc.abstractmethod
    def generation(self) -> int:
        """Return the change counter; it rises with every successful change."""

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from any thread) when another writer may have changed the store.

        The default store has a single writer and never calls it.
        """
        # Deliberately a no-op rather than abstract: only shared stores have other writers.
        return None

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store's resources; calling it again does nothing."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Helpers shared by the implementations, so that both accept and refuse the same values.


def dump_json(value: Any, what: str) -> str:
    """Serialize ``value`` to JSON, or raise ValidationError naming ``what``."""
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValidationError(f"{what} must be JSON-serializable: {e}") from None


def check_options(options: object, kind: type[AppOptions] | type[ModelOptions]) -> dict[str, Any]:
    """Return the JSON object of ``options`` (``to_json``) if it is a ``kind``,
    else raise ValidationError."""
    if not isinstance(options, kind):
        raise ValidationError(f"options must be {kind.__name__}, got {type(options).__name__}")
    return options.to_json()


def _json_value(value: Any, what: str) -> Any:
    # Validates and deep-copies in one go, and normalizes as a JSON round trip
    # does (tuples become lists), so every store keeps exactly the same value.
    return json.loads(dump_json(value, what))


# Records: a spec as the stores keep it. A record is a dict keyed by the spec's
# field names whose values are plain JSON (str, int, list, dict, None); each
# store persists it as it likes (Redis: one JSON document; SQLite: one column
# per field, the structured ones as JSON text; memory: the dict itself).
# These four functions are the only place that spells out the conversion. Options
# are stored as the JSON object of their ``to_json`` (the options the user set),
# as every earlier release stored its options dict, and read back with
# ``from_record``, which loads any such object (see AppOptions.from_record).

APP_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(AppSpec))
MODEL_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ModelSpec))
# The fields whose record values are JSON lists or objects (or None) rather than scalars.
APP_STRUCTURED_FIELDS = frozenset({"input_shape", "policy_params", "options"})
MODEL_STRUCTURED_FIELDS = frozenset({"labels", "options"})


def app_to_record(spec: AppSpec) -> dict[str, Any]:
    """Return the record of ``spec``; ValidationError naming the field it cannot store.

    The record shares nothing mutable with ``spec``.
    """
    record = {name: getattr(spec, name) for name in APP_FIELDS}
    shape = spec.input_shape
    record["input_type"] = InputType(spec.input_type).value
    record["input_shape"] = _json_value(list(shape) if shape is not None else None, "input_shape")
    record["policy_params"] = _json_value(spec.policy_params, "policy_params")
    record["options"] = _json_value(check_options(spec.options, AppOptions), "options")
    return record


def app_from_record(record: Mapping[str, Any]) -> AppSpec:
    """Return the AppSpec of a record; it shares nothing mutable with ``record``.

    A field missing from the record (one written before the field existed)
    takes the field's default. A malformed record raises KeyError, TypeError
    or ValueError.
    """
    fields = {name: record[name] for name in APP_FIELDS if name in record}
    shape = fields.get("input_shape")
    fields["input_type"] = InputType(record["input_type"])
    fields["input_shape"] = tuple(shape) if shape is not None else None
    fields["policy_params"] = copy.deepcopy(record.get("policy_params", {}))
    fields["options"] = AppOptions.from_record(copy.deepcopy(record.get("options", {})))
    return AppSpec(**fields)


def model_to_record(spec: ModelSpec) -> dict[str, Any]:
    """Return the record of ``spec``; ValidationError naming the field it cannot store.

    The record shares nothing mutable with ``spec``.
    """
    record = {name: getattr(spec, name) for name in MODEL_FIELDS}
    record["input_type"] = InputType(spec.input_type).value
    record["labels"] = _json_value(list(spec.labels), "labels")
    record["options"] = _json_value(check_options(spec.options, ModelOptions), "options")
    return record


def model_from_record(record: Mapping[str, Any]) -> ModelSpec:
    """Return the ModelSpec of a record; it shares nothing mutable with ``record``.

    A field missing from the record (one written before the field existed)
    takes the field's default. A malformed record raises KeyError, TypeError
    or ValueError.
    """
    fields = {name: record[name] for name in MODEL_FIELDS if name in record}
    fields["input_type"] = InputType(record["input_type"])
    fields["labels"] = tuple(record.get("labels", ()))
    fields["options"] = ModelOptions.from_record(copy.deepcopy(record.get("options", {})))
    return ModelSpec(**fields)


def rollout_to_json(spec: RolloutSpec) -> str:
    """The JSON text a store keeps for a rollout; ValidationError unless a RolloutSpec."""
    if not isinstance(spec, RolloutSpec):
        raise ValidationError(f"a rollout must be a RolloutSpec, got {type(spec).__name__}")
    return dump_json(spec.to_record(), "rollout")


def rollout_from_json(text: str | bytes) -> RolloutSpec:
    """The RolloutSpec of stored JSON text (ValueError, KeyError or TypeError if malformed)."""
    return RolloutSpec.from_record(json.loads(text))


def dump_evidence(evidence: object) -> str:
    """The JSON text of a rollout's evidence; ValidationError unless a JSON object."""
    if not isinstance(evidence, Mapping) or not all(isinstance(k, str) for k in evidence):
        raise ValidationError(
            f"rollout evidence must be a JSON object, got {type(evidence).__name__}"
        )
    return dump_json(dict(evidence), "rollout evidence")


def load_evidence(text: str | bytes) -> dict[str, Any]:
    """The evidence stored as ``text``."""
    evidence = json.loads(text)
    if not isinstance(evidence, dict):
        raise ValueError(f"stored rollout evidence is not a JSON object: {text!r:.80}")
    return evidence


# The longest uid a policy state may have, in UTF-8 bytes (the HTTP frontends
# refuse longer ones already; this is the store's own line of defence).
MAX_UID_BYTES = 256


def check_uid(uid: object) -> str:
    """Return ``uid`` if it can name a policy state, else raise ValidationError.

    A uid is a string of at most MAX_UID_BYTES bytes in UTF-8.
    """
    if not isinstance(uid, str):
        raise ValidationError(f"policy state uid must be a string, got {type(uid).__name__}")
    try:
        size = len(uid.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError("policy state uid must be valid Unicode text") from None
    if size > MAX_UID_BYTES:
        raise ValidationError(
            f"policy state uid must be at most {MAX_UID_BYTES} bytes in UTF-8, got {size}"
        )
    return uid


def check_max_user_states(n: object) -> int:
    """Return ``n`` if it can cap an application's user states (0: no cap)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValidationError(f"max_user_states must be an integer, got {type(n).__name__}")
    if n < 0:
        raise ValidationError(f"max_user_states must be >= 0, got {n}")
    return n


def dump_policy_state(state: object) -> str:
    """Return the JSON text of a policy state; ValidationError unless it is a JSON object."""
    if not isinstance(state, Mapping):
        raise ValidationError(f"policy state must be a JSON object, got {type(state).__name__}")
    for key in state:
        if not isinstance(key, str):
            raise ValidationError(f"policy state keys must be strings, got {key!r}")
    return dump_json(dict(state), "policy state")


def check_uids(uids: Sequence[str]) -> list[str]:
    """Return ``uids`` as a list if they can name policy states to update together."""
    if isinstance(uids, str | bytes) or not isinstance(uids, Sequence):
        raise ValidationError(f"policy state uids must be a list, got {type(uids).__name__}")
    out = [check_uid(uid) for uid in uids]
    if not out:
        raise ValidationError("policy state uids must not be empty")
    if len(set(out)) != len(out):
        raise ValidationError(f"policy state uids must be distinct, got {out!r}")
    return out


def dump_policy_states(uids: Sequence[str], states: object) -> dict[str, str]:
    """Return the JSON text of each uid's new state, as returned by an update;
    ValidationError unless it names exactly ``uids``, each with a JSON object."""
    if not isinstance(states, Mapping) or set(states) != set(uids):
        got = list(states) if isinstance(states, Mapping) else type(states).__name__
        raise ValidationError(
            f"a policy state update must return states for {list(uids)!r}, got {got!r}"
        )
    return {uid: dump_policy_state(states[uid]) for uid in uids}


def load_policy_state(text: str | bytes) -> dict[str, Any]:
    """Return the policy state stored as ``text``; ValueError if it is not a JSON object."""
    state = json.loads(text)
    if not isinstance(state, dict):
        raise ValueError(f"stored policy state is not a JSON object: {text!r:.80}")
    return state


def check_replicas(n: int) -> int:
    """Return ``n`` if it is a valid replica count, else raise ValidationError."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValidationError(f"number of replicas must be an integer, got {type(n).__name__}")
    if n < 0:
        raise ValidationError(f"number of replicas must be >= 0, got {n}")
    return n


def duplicate_app(name: str) -> ValidationError:
    return ValidationError(f"application {name!r} already exists")


def duplicate_model(name: str, version: str) -> ValidationError:
    return ValidationError(f"model {name!r} version {version!r} already exists")


def missing_app(name: str) -> NotFoundError:
    return NotFoundError(f"application {name!r} does not exist")


def missing_version(name: str, version: str) -> NotFoundError:
    return NotFoundError(f"model {name!r} has no version {version!r}")
