"""Validation of per-app and per-model options (pure).

App options:
- ``cache`` (bool, default true): use the prediction cache; turn it off for
  non-deterministic models.
- ``overload`` (``"default"`` or ``"503"``, default ``"default"``): when a
  model's queue is full, answer with the default output, or refuse with 503.

Model options (per version; each overrides the server's setting):
- ``batching``: ``"aimd"``, ``"quantile"`` or ``"fixed"``.
- ``max_batch_delay_ms``: delayed batching bound, 0 to 1000.
- ``queue_capacity``: queries that may wait, 1 to 1000000.
"""

from __future__ import annotations

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
    out = _check_known(options, ("cache", "overload"), "app")
    if "cache" in out and not isinstance(out["cache"], bool):
        raise ValidationError("option 'cache' must be true or false")
    if "overload" in out:
        out["overload"] = _choice(out["overload"], "overload", ("default", "503"))
    return out


def validate_model_options(options: Any) -> dict[str, Any]:
    out = _check_known(options, ("batching", "max_batch_delay_ms", "queue_capacity"), "model")
    if "batching" in out:
        out["batching"] = _choice(out["batching"], "batching", ("aimd", "quantile", "fixed"))
    if "max_batch_delay_ms" in out:
        _number(out["max_batch_delay_ms"], "max_batch_delay_ms", 0, 1000)
    if "queue_capacity" in out:
        _number(out["queue_capacity"], "queue_capacity", 1, 1_000_000, integer=True)
    return out
