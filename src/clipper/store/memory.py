"""An in-process config store: plain dicts behind a lock. The test double."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from clipper.exceptions import StoreError
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
from clipper.types import AppSpec, ModelId, ModelSpec, RolloutSpec

# The store keeps records (see base.py), not specs: making one checks and copies
# the values as the other stores do, so all of them accept the same values, and
# every read builds a fresh spec, so callers never share the stored state.
Record = dict[str, Any]
SHARED = ""  # the uid of an application's shared policy state


class MemoryStore(ConfigStore):
    """A :class:`ConfigStore` that lives in memory and is lost with the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._apps: dict[str, Record] = {}
        # model name -> version -> record; dicts keep the order versions were added in.
        self._versions: dict[str, dict[str, Record]] = {}
        self._current: dict[str, str] = {}
        self._replicas: dict[ModelId, int] = {}
        self._links: dict[str, list[str]] = {}
        # app -> uid -> policy state as JSON text, so every read decodes a fresh copy;
        # least recently written first (the order the user-state cap removes them in).
        self._states: dict[str, OrderedDict[str, str]] = {}
        # model -> rollout as JSON text, and its evidence as JSON text.
        self._rollouts: dict[str, str] = {}
        self._evidence: dict[str, str] = {}
        self._generation = 0

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise StoreError("the memory store is closed")
            yield

    def _changed(self) -> None:
        self._generation += 1

    # Applications

    def add_app(self, spec: AppSpec) -> None:
        """Register an application; ValidationError if the name is taken."""
        record = app_to_record(spec)
        with self._locked():
            if spec.name in self._apps:
                raise duplicate_app(spec.name)
            self._apps[spec.name] = record
            self._links[spec.name] = []
            self._changed()

    def get_app(self, name: str) -> AppSpec | None:
        """Return the application called ``name``, or None."""
        with self._locked():
            record = self._apps.get(name)
            return app_from_record(record) if record is not None else None

    def list_apps(self) -> list[AppSpec]:
        """Return every application, sorted by name."""
        with self._locked():
            return [app_from_record(self._apps[name]) for name in sorted(self._apps)]

    def update_app(self, spec: AppSpec) -> None:
        """Replace the record of an existing application; NotFoundError if absent."""
        record = app_to_record(spec)
        with self._locked():
            if spec.name not in self._apps:
                raise missing_app(spec.name)
            self._apps[spec.name] = record
            self._changed()

    def delete_app(self, name: str) -> bool:
        """Delete an application and its links; False if there was none."""
        with self._locked():
            if self._apps.pop(name, None) is None:
                return False
            self._links.pop(name, None)
            self._states.pop(name, None)
            self._changed()
            return True

    # Models

    def add_model(self, spec: ModelSpec, make_current: bool = True) -> None:
        """Add a model version, optionally making it the current one."""
        record = model_to_record(spec)
        with self._locked():
            versions = self._versions.setdefault(spec.name, {})
            if spec.version in versions:
                raise duplicate_model(spec.name, spec.version)
            versions[spec.version] = record
            if make_current:
                self._current[spec.name] = spec.version
            self._changed()

    def update_model(self, spec: ModelSpec) -> None:
        """Replace the record of an existing model version; NotFoundError if absent."""
        record = model_to_record(spec)
        with self._locked():
            versions = self._versions.get(spec.name, {})
            if spec.version not in versions:
                raise missing_version(spec.name, spec.version)
            # The current version and the replica count live apart, so they stay.
            versions[spec.version] = record
            self._changed()

    def get_model(self, name: str, version: str) -> ModelSpec | None:
        """Return one model version, or None."""
        with self._locked():
            record = self._versions.get(name, {}).get(version)
            return model_from_record(record) if record is not None else None

    def list_models(self, name: str | None = None) -> list[ModelSpec]:
        """Return model versions, sorted by name, then by the order they were added."""
        with self._locked():
            names = sorted(self._versions) if name is None else [name]
            return [
                model_from_record(record)
                for n in names
                for record in self._versions.get(n, {}).values()
            ]

    def delete_model_version(self, name: str, version: str) -> bool:
        """Delete a model version; False if there was none."""
        with self._locked():
            versions = self._versions.get(name, {})
            if versions.pop(version, None) is None:
                return False
            self._replicas.pop(ModelId(name, version), None)
            if self._current.get(name) == version:
                del self._current[name]
            if not versions:
                del self._versions[name]
                for linked in self._links.values():
                    if name in linked:
                        linked.remove(name)
            self._changed()
            return True

    def get_current_version(self, name: str) -> str | None:
        """Return the model's current version, or None."""
        with self._locked():
            return self._current.get(name)

    def set_current_version(self, name: str, version: str) -> None:
        """Make ``version`` the model's current one; NotFoundError if it does not exist."""
        with self._locked():
            if version not in self._versions.get(name, {}):
                raise missing_version(name, version)
            self._current[name] = version
            self._changed()

    # Links

    def add_links(self, app: str, models: list[str]) -> None:
        """Link models to an application, keeping order; already linked ones are skipped."""
        with self._locked():
            linked = self._links.get(app)
            if linked is None:
                raise missing_app(app)
            new = [m for m in dict.fromkeys(models) if m not in linked]
            if new:
                linked.extend(new)
                self._changed()

    def remove_links(self, app: str, models: list[str]) -> None:
        """Unlink models from an application; ones not linked are ignored."""
        with self._locked():
            linked = self._links.get(app)
            if linked is None:
                raise missing_app(app)
            dropped = set(models)
            kept = [m for m in linked if m not in dropped]
            if len(kept) != len(linked):
                self._links[app] = kept
                self._changed()

    def get_links(self, app: str) -> list[str]:
        """Return the models linked to an application in link order; [] if unknown."""
        with self._locked():
            return list(self._links.get(app, []))

    def apps_linked_to(self, model: str) -> list[str]:
        """Return the names of the applications linked to a model, sorted."""
        with self._locked():
            return sorted(app for app, linked in self._links.items() if model in linked)

    # Replicas

    def set_num_replicas(self, name: str, version: str, n: int) -> None:
        """Set a model version's replica count."""
        check_replicas(n)
        with self._locked():
            if version not in self._versions.get(name, {}):
                raise missing_version(name, version)
            self._replicas[ModelId(name, version)] = n
            self._changed()

    def get_num_replicas(self, name: str, version: str) -> int:
        """Return a model version's replica count (1 unless set); NotFoundError if absent."""
        with self._locked():
            if version not in self._versions.get(name, {}):
                raise missing_version(name, version)
            return self._replicas.get(ModelId(name, version), 1)

    # Policy states (not configuration: they leave the generation alone)

    def get_policy_state(self, app: str, uid: str) -> dict[str, Any] | None:
        """Return the state stored for (``app``, ``uid``), or None."""
        check_uid(uid)
        with self._locked():
            states = self._states.get(app)
            text = states.get(uid) if states is not None else None
        return load_policy_state(text) if text is not None else None

    def update_policy_states(
        self, app: str, uids: Sequence[str], update: StatesUpdate, *, max_user_states: int = 0
    ) -> States:
        """Atomically replace several states of one application, in one step;
        past ``max_user_states`` user states, the least recently written go."""
        uids = check_uids(uids)
        cap = check_max_user_states(max_user_states)
        with self._locked():
            if app not in self._apps:
                raise missing_app(app)
            states = self._states.get(app, OrderedDict())
            current = {u: load_policy_state(states[u]) if u in states else None for u in uids}
            texts = dump_policy_states(uids, update(current))
            for uid, text in texts.items():
                states[uid] = text
                states.move_to_end(uid)
            self._states[app] = states
            if cap:
                users = len(states) - (SHARED in states)
                for _ in range(users - cap):
                    # The shared state is written with every feedback, so it is
                    # seldom first in line; skip it when it is.
                    oldest = next(uid for uid in states if uid != SHARED)
                    del states[oldest]
        return {u: load_policy_state(text) for u, text in texts.items()}

    def delete_policy_states(self, app: str) -> int:
        """Delete every policy state of an application; return how many there were."""
        with self._locked():
            return len(self._states.pop(app, {}))

    # Rollouts

    def put_rollout(self, spec: RolloutSpec) -> None:
        """Store the rollout of ``spec.model``, replacing the one it had."""
        text = rollout_to_json(spec)
        with self._locked():
            self._rollouts[spec.model] = text
            self._changed()

    def list_rollouts(self) -> list[RolloutSpec]:
        """Return every rollout, sorted by model name."""
        with self._locked():
            texts = [self._rollouts[m] for m in sorted(self._rollouts)]
        return [rollout_from_json(text) for text in texts]

    def delete_rollout(self, model: str) -> bool:
        """Delete a model's rollout and its evidence; False if it had none."""
        with self._locked():
            self._evidence.pop(model, None)
            if self._rollouts.pop(model, None) is None:
                return False
            self._changed()
            return True

    def save_rollout_evidence(self, model: str, evidence: dict[str, Any]) -> None:
        """Keep the figures of a model's rollout (the generation stays)."""
        text = dump_evidence(evidence)
        with self._locked():
            if model in self._rollouts:
                self._evidence[model] = text

    def get_rollout_evidence(self, model: str) -> dict[str, Any] | None:
        """Return the evidence last kept for ``model``, or None."""
        with self._locked():
            text = self._evidence.get(model)
        return load_evidence(text) if text is not None else None

    # Housekeeping

    def generation(self) -> int:
        """Return the change counter."""
        with self._locked():
            return self._generation

    def close(self) -> None:
        """Mark the store closed; later calls raise StoreError."""
        with self._lock:
            self._closed = True
