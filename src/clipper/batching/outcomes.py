"""How a queued task ends when its model gives it no output (pure).

Each failure carries a ``DefaultReason`` (a fixed label, for the metrics) and
an explanation (for people) that names the model version; the query
processor answers such a query with the app's default output.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..rpc.protocol import BadResult, BatchResult, ModelRaised, count_mismatch
from ..types import DefaultReason, Failure, ModelId, Outcome, json_default

REPLICA_LOST = "the replica computing it was lost"
EXPIRED = "the latency SLO passed while the query waited in the queue (every replica was busy)"
# A query not computed because its batch would end past the SLO, by the model's
# recent batch latency (the first batch of a replica may be slow: it loads).
TOO_SLOW = "the latency SLO would pass before a batch could finish"
QUEUE_FULL = "the model's queue is full (overloaded)"
SHED = "overloaded: shed at arrival"

_PLAIN = frozenset({int, float, str, bool, type(None)})


def queue_full() -> Failure:
    return Failure(DefaultReason.OVERLOADED, QUEUE_FULL, True)  # True: overloaded


def shed(model: ModelId, waiting: int, budget_s: float) -> Failure:
    """Refused at arrival: the ``waiting`` queries ahead take every batch the
    replicas can finish within ``budget_s`` (an overload: a 503 where the app asks)."""
    why = (
        f"{model}: {SHED} ({waiting} queries wait ahead of it, more than its replicas "
        f"can compute in the {budget_s * 1000:.0f} ms left); not queued"
    )
    return Failure(DefaultReason.OVERLOADED, why, True)


def expired(model: ModelId) -> Failure:
    return Failure(DefaultReason.SLO, f"{model}: {EXPIRED}")


def refused(
    model: ModelId, deadline: float, now: float, replicas: int, estimate_s: float
) -> Failure:
    """A task taken off the queue uncomputed: expired, or due before even the
    fastest replica (``estimate_s``: its batch latency) could finish it."""
    if deadline <= now:
        return expired(model)
    whose = "its" if replicas == 1 else "its fastest replica's"
    why = (
        f"{model}: {TOO_SLOW} ({whose} recent batches took about {estimate_s * 1000:.0f} ms, "
        f"{(deadline - now) * 1000:.0f} ms were left); not computed"
    )
    return Failure(DefaultReason.SLO, why)


def replica_lost(model: ModelId, reason: str) -> Failure:
    return Failure(DefaultReason.MODEL_ERROR, f"{model}: {REPLICA_LOST} ({reason})")


def not_encoded(exc: Exception) -> Failure:
    """The batch could not be encoded (the inputs were validated: a bug, not a client error)."""
    return Failure(DefaultReason.OTHER, f"could not encode the batch: {exc}")


def outputs_or_error(model: ModelId, result: BatchResult, inputs: int) -> list[Any] | str:
    """A batch's outputs, one per input, or why its queries get none (a
    model error: the model raised, or returned something unusable)."""
    if isinstance(result, ModelRaised):
        return f"model {model} raised {result.error_type}: {result.message}"
    if isinstance(result, BadResult):
        return f"{model} returned a bad result: {result.reason}"
    if len(result) != inputs:
        return f"{model} returned a bad result: {count_mismatch(len(result), inputs)}"
    return result


def batch_outcomes(model: ModelId, result: BatchResult, inputs: int) -> list[Outcome]:
    """Each input's outcome from its batch's result, as the dispatcher settles
    them (``test_predict_function`` shows a user the same)."""
    outputs = outputs_or_error(model, result, inputs)
    if isinstance(outputs, str):
        return [Failure(DefaultReason.MODEL_ERROR, outputs) for _ in range(inputs)]
    return [checked(model, output) for output in outputs]


def checked(model: ModelId, output: Any) -> Outcome:
    """The output as an Outcome, or an error if JSON cannot carry it (that query
    only: it must neither break the response nor enter the cache). In a
    ``PartialOutputs``, a failed input's place holds its model error."""
    if type(output) in _PLAIN:  # the common case: no trial encoding on the hot path
        return Outcome(output=output)
    if isinstance(output, ModelRaised):  # isolated: the model raised on this input
        return Failure(
            DefaultReason.MODEL_ERROR, f"model {model} raised {output.error_type}: {output.message}"
        )
    if isinstance(output, BadResult):  # this input's output cannot be used
        return Failure(
            DefaultReason.MODEL_ERROR,
            f"model {model} returned {output.reason}",
        )
    try:
        orjson.dumps(output, default=json_default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        # Counted as "other", as the metrics always have (not as a model error).
        return Failure(
            DefaultReason.OTHER, f"model {model} returned an output JSON cannot carry: {exc}"
        )
    return Outcome(output=output)
