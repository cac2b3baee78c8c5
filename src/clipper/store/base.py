"""The config store interface: applications, model versions, links and replicas.

Every method is synchronous and thread-safe. Records go in and come out as
the frozen specs of :mod:`clipper.types`; what a store returns is never
shared with its own state, so callers may keep it.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable
from typing import Any, Self

from clipper.exceptions import NotFoundError, ValidationError
from clipper.types import AppSpec, ModelSpec


class ConfigStore(abc.ABC):
    """Where the management side keeps the deployment's configuration.

    ``generation()`` rises on every call that changes something, so readers
    (the query frontend, the replica managers) can poll it cheaply and reload
    only when it moved. Calls that raise or find nothing to do leave it alone.
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
