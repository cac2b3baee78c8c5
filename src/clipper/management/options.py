"""Validation of per-app and per-model options (pure).

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
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..exceptions import ValidationError


def _number(value: Any, name: str, low: float, high: float, integer: bool = False) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ValidationError(f"option '{name}' must be {kind} from {low:g} to {high:g}")
    return value


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValidationError(f"option '{name}' must be one of {', '.join(choices)}")
    return str(value)


def _check_known(options: Any, known: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(options, dict):
        raise ValidationError(f"{what} options must be a JSON object")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValidationError(
            f"unknown {what} option(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return dict(options)


def validate_app_options(options: Any) -> dict[str, Any]:
    out = _check_known(options, ("cache", "overload", "api_keys", "api_key_sha256"), "app")
    if "api_keys" in out:
        keys = out.pop("api_keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) and len(k) >= 16 for k in keys):
            raise ValidationError("option 'api_keys' must be a list of strings of 16+ characters")
        out["api_key_sha256"] = [hashlib.sha256(k.encode()).hexdigest() for k in keys]
    digests = out.get("api_key_sha256", [])
    if not isinstance(digests, list) or not all(
        isinstance(d, str) and len(d) == 64 for d in digests
    ):
        raise ValidationError("option 'api_key_sha256' must be a list of SHA-256 hex digests")
    if "cache" in out and not isinstance(out["cache"], bool):
        raise ValidationError("option 'cache' must be true or false")
    if "overload" in out:
        out["overload"] = _choice(out["overload"], "overload", ("default", "503"))
    return out


def validate_model_options(options: Any) -> dict[str, Any]:
    known = (
        "batching",
        "max_batch_delay_ms",
        "queue_capacity",
        "memory_limit_mb",
        "min_replicas",
        "max_replicas",
        "scale_down_after_s",
        "ray_num_cpus",
        "ray_num_gpus",
        "ray_memory_mb",
        "ray_resources",
        "ray_placement",
        "ray_max_restarts",
    )
    out = _check_known(options, known, "model")
    for name in ("ray_num_cpus", "ray_num_gpus"):
        if name in out:
            _number(out[name], name, 0, 1024)
    if "ray_memory_mb" in out:
        _number(out["ray_memory_mb"], "ray_memory_mb", 1, 1 << 24, integer=True)
    if "ray_max_restarts" in out:
        _number(out["ray_max_restarts"], "ray_max_restarts", -1, 1_000_000, integer=True)
    if "ray_placement" in out:
        out["ray_placement"] = _choice(out["ray_placement"], "ray_placement", ("spread", "pack"))
    if "ray_resources" in out:
        res = out["ray_resources"]
        if not isinstance(res, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v > 0
            for k, v in res.items()
        ):
            raise ValidationError("option 'ray_resources' must map resource names to amounts > 0")
    for name in ("min_replicas", "max_replicas"):
        if name in out:
            _number(out[name], name, 0, 64, integer=True)
    if "scale_down_after_s" in out:
        _number(out["scale_down_after_s"], "scale_down_after_s", 1, 86400)
    if ("min_replicas" in out or "scale_down_after_s" in out) and "max_replicas" not in out:
        raise ValidationError("autoscaling options need 'max_replicas'")
    if out.get("min_replicas", 1 if "max_replicas" in out else 0) > out.get("max_replicas", 64):
        raise ValidationError("option 'min_replicas' must not exceed 'max_replicas'")
    if "memory_limit_mb" in out:
        _number(out["memory_limit_mb"], "memory_limit_mb", 256, 1_048_576, integer=True)
    if "batching" in out:
        out["batching"] = _choice(out["batching"], "batching", ("aimd", "quantile", "fixed"))
    if "max_batch_delay_ms" in out:
        _number(out["max_batch_delay_ms"], "max_batch_delay_ms", 0, 1000)
    if "queue_capacity" in out:
        _number(out["queue_capacity"], "queue_capacity", 1, 1_000_000, integer=True)
    return out
