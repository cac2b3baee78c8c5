"""A read-through snapshot of the config store for the query path.

The query frontend must not touch SQLite (or Redis) per query. The catalog
holds immutable snapshots of apps, links and current versions, rebuilt
whenever the store's generation counter moves. Readers take the current
snapshot reference, so a query sees one consistent view even while a
rebuild runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..exceptions import ValidationError
from ..types import AppSpec, ModelId, ModelSpec, RolloutSpec
from .base import ConfigStore

log = logging.getLogger("clipper.catalog")


@dataclass(frozen=True)
class AppRoute:
    """An app with what the query path needs: its spec and linked models."""

    spec: AppSpec
    models: tuple[str, ...]


class UnknownVersion(ValidationError):
    """A version pin (or a management command) names a version the model does not have.

    A ``ValidationError``: a 400 on ``/{app}/predict`` and the management port;
    the ``/v2`` frontend, where an app is a model, answers it as its own 404."""

    def __init__(self, model: ModelId) -> None:
        super().__init__(f"model '{model.name}' has no version '{model.version}'")
        self.model = model


@dataclass(frozen=True)
class Snapshot:
    generation: int
    apps: dict[str, AppRoute]
    current: dict[str, str]
    models: dict[ModelId, ModelSpec]
    rollouts: dict[str, RolloutSpec] = field(default_factory=dict)
    """The rollouts running, by model name."""


class Catalog:
    """The current snapshot of the store, refreshed on change."""

    def __init__(self, store: ConfigStore) -> None:
        self.store = store
        self.snapshot = Snapshot(-1, {}, {}, {})
        self.refresh()

    def refresh(self) -> bool:
        """Rebuild the snapshot if the store changed; True if it did."""
        generation = self.store.generation()
        if generation == self.snapshot.generation:
            return False
        models = {m.id: m for m in self.store.list_models()}
        current = {}
        for name in {m.name for m in models}:
            version = self.store.get_current_version(name)
            if version is not None:
                current[name] = version
        apps = {
            a.name: AppRoute(a, tuple(self.store.get_links(a.name))) for a in self.store.list_apps()
        }
        rollouts = {r.model: r for r in self.store.list_rollouts()}
        self.snapshot = Snapshot(generation, apps, current, models, rollouts)
        log.debug("catalog refreshed to generation %d", generation)
        return True

    def app(self, name: str) -> AppRoute | None:
        return self.snapshot.apps.get(name)

    def current_version(self, model: str) -> str | None:
        return self.snapshot.current.get(model)

    def model(self, model: ModelId) -> ModelSpec | None:
        return self.snapshot.models.get(model)

    def rollout(self, model: str) -> RolloutSpec | None:
        """The rollout running for ``model``, or None."""
        return self.snapshot.rollouts.get(model)

    def pinned(self, route: AppRoute, version: str) -> ModelId:
        """The model version that a ``version`` pin on ``route``'s app names.

        A pin is valid only for an app with exactly one linked model
        (``ValidationError`` otherwise), and only for a version of it that
        exists (:class:`UnknownVersion` otherwise). Every frontend's pin goes
        through here.
        """
        if len(route.models) != 1:
            raise ValidationError(
                f"a version pin needs an app with exactly one linked model; "
                f"'{route.spec.name}' has {len(route.models)}"
            )
        model = ModelId(route.models[0], version)
        if model not in self.snapshot.models:
            raise UnknownVersion(model)
        return model

    def slo_for_model(self, model: str) -> int | None:
        """The tightest SLO among the apps linked to a model (micros)."""
        slos = [r.spec.slo_micros for r in self.snapshot.apps.values() if model in r.models]
        return min(slos) if slos else None
