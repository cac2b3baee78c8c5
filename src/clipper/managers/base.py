"""The container-manager interface every backend implements (local processes, Ray actors).

A manager *starts* replicas and keeps them running; whether a replica is
*live* is the RPC layer's business (it registered and keeps heartbeating).
The management service calls :meth:`ContainerManager.reconcile` after every
change with the full desired state, so a manager is a reconciler: it starts
what is missing, stops what is no longer wanted, restarts what crashed.

The contract tests in ``tests/managers/contract.py`` pin this behaviour down;
every implementation passes them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, runtime_checkable

from ..types import ModelId, ModelSpec

REPLICA_FIELDS = ("model_name", "model_version", "replica", "pid", "restarts")
"""Keys every dict of :meth:`ContainerManager.replicas` carries (a backend may add more)."""


Desired = dict[ModelId, tuple[ModelSpec, int]]
Scale = Callable[[ModelId, ModelSpec | None, int], Awaitable[None]]


async def reconcile_counts(running: Iterable[ModelId], desired: Desired, scale: Scale) -> None:
    """The reconcile loop both backends share: versions no longer wanted go to
    zero replicas (``spec`` None), then each wanted one to its count."""
    for model in list(running):
        if model not in desired:
            await scale(model, None, 0)
    for model, (spec, count) in desired.items():
        await scale(model, spec, count)


def replica_label(model: ModelId | ModelSpec, index: int) -> str:
    """The label a replica registers with: ``<name>-<version>-<index>``.

    The server matches a manager's replicas to the RPC layer's live ones by
    (model version, label), so every manager labels replicas this way.
    """
    return f"{model.name}-{model.version}-{index}"


@runtime_checkable
class ContainerManager(Protocol):
    """Starts, restarts and stops model replicas; never decides liveness."""

    async def reconcile(self, desired: dict[ModelId, tuple[ModelSpec, int]]) -> None:
        """Make each model version run its desired number of replicas.

        Model versions missing from ``desired`` have all their replicas
        stopped. Returns once the change is under way (replicas started or
        stopped), not once new replicas have registered.
        """
        ...

    def replicas(self) -> list[dict[str, Any]]:
        """The replicas this manager runs, one dict each with :data:`REPLICA_FIELDS`.

        ``pid`` is the replica's process id once known (else None);
        ``restarts`` counts how often it was restarted after a crash.
        """
        ...

    def replica_unresponsive(self, label: str, pid: int) -> bool:
        """End a replica's process that is alive but no longer answers; it restarts.

        The RPC layer calls this (through the server) for a replica it removed
        for missing heartbeats that has not registered again within its grace:
        a ``predict`` stuck in C code that holds the GIL (the container's own
        watchdog thread then cannot run either) or a frozen process. Only the
        replica labelled ``label`` whose process is ``pid`` is ended, so a
        report about a container this manager did not start, or one already
        restarted, does nothing. True when a process was ended.
        """
        ...

    async def stop_all(self) -> None:
        """Stop every replica this manager started; afterwards none runs."""
        ...
