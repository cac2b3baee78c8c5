"""Query processing: from an app's query to outputs, within the app's SLO.

This is the selection layer's entry point. The ``single`` policy (the
default) sends each query to the current version of the app's one linked
model; the bandit policies plug in here. Every query gets an answer by its
deadline: the model's output, or the app's default output with an
explanation.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..batching.dispatcher import Dispatcher
from ..exceptions import ValidationError
from ..store.catalog import AppRoute, Catalog
from ..types import ModelId, Outcome

NO_MODELS = "No connected models found for query"
SLO_MISSED = "Failed to retrieve a prediction response within the specified latency SLO"


@dataclass(slots=True)
class Prediction:
    """The answer to one query."""

    query_id: int
    output: Any
    default: bool
    explanation: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "query_id": self.query_id,
            "output": self.output,
            "default": self.default,
        }
        if self.default:
            body["default_explanation"] = self.explanation
        return body


class QueryProcessor:
    """Answers queries for apps, using the catalog and the dispatcher."""

    def __init__(
        self,
        catalog: Catalog,
        dispatcher: Dispatcher,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.catalog = catalog
        self.dispatcher = dispatcher
        self.clock = clock
        self._query_ids = itertools.count()

    def resolve_model(self, route: AppRoute, version: str | None) -> ModelId | None:
        """The model version the single policy queries, or None if there is none."""
        if version is not None and len(route.models) != 1:
            raise ValidationError(
                f"a version pin needs an app with exactly one linked model; "
                f"'{route.spec.name}' has {len(route.models)}"
            )
        if not route.models:
            return None
        name = route.models[0]
        if version is not None:
            model = ModelId(name, version)
            if self.catalog.model(model) is None:
                raise ValidationError(f"model '{name}' has no version '{version}'")
            return model
        current = self.catalog.current_version(name)
        return ModelId(name, current) if current is not None else None

    async def predict(
        self, route: AppRoute, inputs: list[Any], version: str | None = None
    ) -> list[Prediction]:
        """Answer every input by the app's deadline; never raises for model trouble."""
        start = self.clock()
        deadline = start + route.spec.slo_micros / 1e6
        default = route.spec.default_output
        ids = [next(self._query_ids) for _ in inputs]
        model = self.resolve_model(route, version)
        if model is None or self.dispatcher.live_replicas(model) == 0:
            return [Prediction(q, default, True, NO_MODELS) for q in ids]
        futures = [self.dispatcher.submit(model, x, deadline) for x in inputs]
        remaining = deadline - self.clock()
        if remaining > 0:
            await asyncio.wait(futures, timeout=remaining)
        out = []
        for qid, fut in zip(ids, futures, strict=True):
            outcome: Outcome | None = fut.result() if fut.done() else None
            if outcome is None:
                out.append(Prediction(qid, default, True, SLO_MISSED))
            elif outcome.ok:
                out.append(Prediction(qid, outcome.output, False))
            else:
                out.append(Prediction(qid, default, True, outcome.error))
        return out
