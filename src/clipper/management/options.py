"""Per-app and per-model options: what the management API accepts.

The options, their types, defaults and validation are defined once, by
:class:`clipper.types.AppOptions` and :class:`clipper.types.ModelOptions`
(beside the specs, so the frontends, the selection layer and the managers read
them without importing this layer). In brief:

App options:
- ``cache`` (bool, default true): use the prediction cache; turn it off for
  non-deterministic models.
- ``overload`` (``"default"`` or ``"503"``, default ``"default"``): when a
  model's queue is full, answer with the default output, or refuse with 503.
- ``api_keys`` (list of strings): queries must carry one in ``X-Api-Key``.
  Only their SHA-256 digests are stored (as ``api_key_sha256``); an empty
  list removes the requirement.

Model options (per version; each overrides the server's setting):
- ``batching``: ``"aimd"``, ``"quantile"`` or ``"fixed"``.
- ``max_batch_delay_ms``: delayed batching bound, 0 to 1000.
- ``queue_capacity``: queries that may wait, 1 to 1000000.
- ``memory_limit_mb``: the replica's address-space limit (local manager), 256
  to 1048576; a model past it gets MemoryError and its container restarts.
- ``min_replicas``, ``max_replicas`` (0 to 64): autoscale between these
  (``max_replicas`` turns it on; ``min_replicas`` defaults to 1 and may be 0);
  ``scale_down_after_s`` (1 to 86400, default 60): idle time before scaling down.
- Ray manager only: ``ray_num_cpus``, ``ray_num_gpus`` (numbers >= 0),
  ``ray_memory_mb`` (integer >= 1), ``ray_resources`` (name -> amount > 0),
  ``ray_placement`` (``"spread"`` or ``"pack"``), ``ray_max_restarts`` (>= -1).

The two functions below give the JSON form (what the store keeps and the
management API returns); the service itself works with the typed options.
"""

from __future__ import annotations

from typing import Any

from ..types import APP_OPTION_KEYS, MODEL_OPTION_KEYS, AppOptions, ModelOptions

__all__ = [
    "APP_OPTION_KEYS",
    "MODEL_OPTION_KEYS",
    "AppOptions",
    "ModelOptions",
    "validate_app_options",
    "validate_model_options",
]


def validate_app_options(options: Any) -> dict[str, Any]:
    """``options`` checked as :meth:`AppOptions.parse` does, in their stored JSON form."""
    return AppOptions.parse(options).to_json()


def validate_model_options(options: Any) -> dict[str, Any]:
    """``options`` checked as :meth:`ModelOptions.parse` does, in their stored JSON form."""
    return ModelOptions.parse(options).to_json()
