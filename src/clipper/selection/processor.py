"""Query processing: from an app's query to an answer, within the app's SLO.

This is the selection layer's entry point. The app's policy chooses which
linked models to query (one, or all of them for an ensemble); the
abstraction layer (cache, queues, batching) computes; at the deadline the
policy combines what arrived and leaves stragglers out. Every query gets an
answer by its deadline: the models' output, or the app's default output with
an explanation (for people) and a :class:`~.outcome.DefaultReason` (for the
metrics). Feedback (``/update``) teaches the policy, per app and per
user.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..batching.dispatcher import Dispatcher
from ..store.catalog import AppRoute, Catalog
from ..timers import TimerHandle, Timers, timers_for
from ..types import AppSpec, DefaultReason, ModelId, Outcome, reason_of
from .policies import Policy, get_policy
from .state import SHARED, PolicyStates, State

if TYPE_CHECKING:
    from .rollouts import RolloutRouter

NO_MODELS = "No connected models found for query"
COLD = (
    "The model was cold (scaled to zero): a replica is starting, but none was ready "
    "within the latency SLO"
)
SLO_MISSED = "Failed to retrieve a prediction response within the specified latency SLO"
LOW_CONFIDENCE = "The ensemble's confidence ({:.2f}) is below the app's min_confidence ({:.2f})"
# Bound once: reading a member off an Enum class costs ~50 ns on Python 3.11, and
# these are read per query when the models are late or scaled to zero.
_SLO, _NO_MODELS = DefaultReason.SLO, DefaultReason.NO_MODELS


class PredictionObserver(Protocol):
    """What the metrics layer hears of each request (called on the event loop)."""

    def observe_predictions(
        self, app: str, latency_s: float, predictions: list[Prediction]
    ) -> None: ...

    def observe_overload(self, app: str) -> None: ...

    def observe_feedback(self, app: str, accepted: bool) -> None: ...


class Overloaded(Exception):
    """The app sheds load with 503 and a model's queue is full."""


@dataclass(slots=True)
class Prediction:
    """The answer to one query.

    A default answer carries ``explanation`` (the JSON's ``default_explanation``,
    for people) and ``reason`` (a fixed label, for the metrics).
    """

    query_id: int
    output: Any
    default: bool
    explanation: str | None = None
    reason: DefaultReason | None = None  # set when ``default`` is true
    confidence: float | None = None
    missing_models: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "query_id": self.query_id,
            "output": self.output,
            "default": self.default,
        }
        if self.default:
            body["default_explanation"] = self.explanation
        if self.confidence is not None:
            body["confidence"] = round(self.confidence, 6)
        if self.missing_models:
            body["missing_models"] = self.missing_models
        return body


def when_all(
    futures: list[asyncio.Future[Outcome]],
    timeout: float,
    then: Callable[[], None],
    timers: Timers | None = None,
) -> None:
    """Call ``then`` once, from the event loop, when every future is done or
    ``timeout`` seconds have passed (on ``timers``; default: the loop's),
    whichever is first.

    Callbacks only: no task and no waiter per query (a coroutine awaiting
    ``asyncio.wait`` cost about 8 % of the server's CPU per query, a task per
    request another 8 %). The futures are never cancelled: a coalesced one may
    be shared with other queries, and a late one still fills the cache.
    """
    left = len(futures)
    fired = False
    timer: TimerHandle | None = None

    def fire() -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        if timer is not None:
            timer.cancel()
        then()

    def one_done(_future: asyncio.Future[Outcome]) -> None:
        nonlocal left
        left -= 1
        if left == 0:
            fire()

    for future in futures:
        future.add_done_callback(one_done)
    if timers is None:
        timer = asyncio.get_running_loop().call_later(timeout, fire)
    else:
        timer = timers.call_later(timeout, fire)


async def wait_all(
    futures: list[asyncio.Future[Outcome]], timeout: float, timers: Timers | None = None
) -> None:
    """``when_all`` for a coroutine: return when every future is done or
    ``timeout`` seconds passed. Cancelling the wait cancels none of the futures."""
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def release() -> None:
        if not waiter.done():
            waiter.set_result(None)

    when_all(futures, timeout, release, timers)
    await waiter


class QueryProcessor:
    """Answers queries and feedback for apps, using the catalog and the dispatcher."""

    def __init__(
        self,
        catalog: Catalog,
        dispatcher: Dispatcher,
        states: PolicyStates,
        *,
        clock: Callable[[], float] | None = None,
        timers: Timers | None = None,
        rng: random.Random | None = None,
        observer: PredictionObserver | None = None,
        is_autoscaled: Callable[[ModelId], bool] = lambda _model: False,
    ) -> None:
        self.is_autoscaled = is_autoscaled
        self.catalog = catalog
        self.observer = observer
        self.dispatcher = dispatcher
        self.states = states
        self.timers = timers_for(clock, timers)  # each query's deadline timer
        self.clock = self.timers.now
        self.rng = rng or random.Random()
        self._query_ids = itertools.count()
        self._policies: dict[str, tuple[AppSpec, Policy, dict[str, Any]]] = {}
        # Safe rollouts (server.rollouts): which version of a model answers, and
        # what each version's queries and labels became. None: no rollouts.
        self.rollouts: RolloutRouter | None = None

    def next_query_id(self) -> int:
        """A query id, as a query answered here gets (the frontend's brownout)."""
        return next(self._query_ids)

    def policy_for(self, spec: AppSpec) -> tuple[Policy, dict[str, Any]]:
        cached = self._policies.get(spec.name)
        if cached is None or cached[0] is not spec:
            policy = get_policy(spec.policy)
            cached = (spec, policy, policy.validate_params(dict(spec.policy_params)))
            self._policies[spec.name] = cached
        return cached[1], cached[2]

    def _current(self, name: str, uid: str | None = None, routed: bool = True) -> ModelId | None:
        """The version of ``name`` that answers a query of ``uid``: the current
        one, or (``routed``) a rollout's new one for the queries its canary or
        bandit sends there."""
        version = self.catalog.current_version(name)
        if version is None:
            return None
        rollouts = self.rollouts
        if routed and rollouts is not None and name in rollouts.active:
            version = rollouts.version_for(name, version, uid)
        return ModelId(name, version)

    def _available(
        self, route: AppRoute, uid: str | None = None, routed: bool = True
    ) -> dict[str, ModelId]:
        """Linked models with a version to answer ``uid``'s query (see ``_current``)
        and a live replica (or an autoscaled one, which starts when queried), in
        link order."""
        out = {}
        for name in route.models:
            model = self._current(name, uid, routed)
            if model is not None and (
                self.dispatcher.live_replicas(model) > 0 or self.is_autoscaled(model)
            ):
                out[name] = model
        return out

    # -- predictions -----------------------------------------------------------------

    async def predict(
        self,
        route: AppRoute,
        inputs: list[Any],
        version: str | None = None,
        uid: str | None = None,
        timeout_s: float | None = None,
    ) -> list[Prediction]:
        """Answer every input by the app's deadline; never raises for model trouble
        (only ``Overloaded``, for an app that sheds load with 503, and
        ``ValidationError`` for a version pin that names nothing).

        ``timeout_s`` tightens the deadline below the app's SLO (never loosens it).
        """
        return await self.predict_soon(route, inputs, version, uid, timeout_s)

    def predict_soon(
        self,
        route: AppRoute,
        inputs: list[Any],
        version: str | None = None,
        uid: str | None = None,
        timeout_s: float | None = None,
    ) -> asyncio.Future[list[Prediction]]:
        """``predict`` without a coroutine: the queries are submitted now and the
        returned future resolves by the deadline (to the predictions, or to
        ``Overloaded``). The query port's hot path: no task per request.
        A bad version pin raises ``ValidationError`` here, before anything is sent.
        """
        start = self.clock()
        spec = route.spec
        budget = spec.slo_micros / 1e6
        if timeout_s is not None:
            budget = min(budget, max(0.0, timeout_s))
        deadline = start + budget
        ids = [next(self._query_ids) for _ in inputs]
        policy, params = self.policy_for(spec)
        use_cache = spec.options.cache
        if version is not None:
            pinned = self.catalog.pinned(route, version)
            available = {route.models[0]: pinned}
            if self.dispatcher.live_replicas(pinned) == 0 and not self.is_autoscaled(pinned):
                available = {}
        else:
            available = self._available(route, uid)
        result: asyncio.Future[list[Prediction]] = asyncio.get_running_loop().create_future()
        if not available:
            defaults = [
                Prediction(q, spec.default_output, True, NO_MODELS, _NO_MODELS) for q in ids
            ]
            self._resolve(result, spec.name, start, lambda: defaults)
            return result
        names = list(available)
        if len(names) == 1 and not policy.combines:
            chosen = [names for _ in inputs]  # the common case: no policy work per query
            state: State = {}
        else:
            state = self.states.get(spec.name, uid or SHARED, lambda: policy.initial_state(params))
            chosen = [policy.select(state, names, params, self.rng) for _ in inputs]
        cold = {m for m, model in available.items() if self.dispatcher.live_replicas(model) == 0}
        futures = [
            {m: self.dispatcher.submit(available[m], x, deadline, use_cache=use_cache) for m in ms}
            for x, ms in zip(inputs, chosen, strict=True)
        ]
        if self.rollouts is not None and self.rollouts.active and version is None:
            self.rollouts.observe(
                available, inputs, futures, uid, start, deadline, use_cache, result
            )

        def answers() -> list[Prediction]:
            if spec.options.overload == "503":
                for fs in futures:
                    for f in fs.values():
                        if f.done() and f.result().overloaded:  # queue full, or shed
                            raise Overloaded(f.result().error or f"'{spec.name}' is overloaded")
            return [
                self._answer(qid, spec, policy, params, state, ms, fs, cold)
                for qid, ms, fs in zip(ids, chosen, futures, strict=True)
            ]

        def finish() -> None:
            self._resolve(result, spec.name, start, answers)

        pending = [f for fs in futures for f in fs.values() if not f.done()]
        remaining = deadline - self.clock()
        if pending and remaining > 0:
            when_all(pending, remaining, finish, self.timers)
        else:
            finish()
        return result

    def _resolve(
        self,
        result: asyncio.Future[list[Prediction]],
        app: str,
        start: float,
        answers: Callable[[], list[Prediction]],
    ) -> None:
        """Settle ``result`` with ``answers()`` (or what it raised), observed.

        Called from the event loop's callbacks: nothing may escape, or the
        query would never be answered."""
        if result.done():  # its awaiting coroutine was cancelled
            return
        try:
            try:
                predictions = answers()
            except Overloaded:
                if self.observer is not None:
                    self.observer.observe_overload(app)
                raise
            if self.observer is not None:
                self.observer.observe_predictions(app, self.clock() - start, predictions)
        except Exception as exc:  # Overloaded (a 503), or a bug: a 500 rather than a hang
            result.set_exception(exc)
            return
        result.set_result(predictions)

    def _answer(
        self,
        qid: int,
        spec: AppSpec,
        policy: Policy,
        params: dict[str, Any],
        state: State,
        chosen: list[str],
        futures: dict[str, asyncio.Future[Outcome]],
        cold: set[str],
    ) -> Prediction:
        outputs: dict[str, Any] = {}
        failed: Outcome | None = None  # the first model's failure, if any
        for name, fut in futures.items():
            outcome = fut.result() if fut.done() else None
            if outcome is not None and outcome.ok:
                outputs[name] = outcome.output
            elif outcome is not None and outcome.error and failed is None:
                failed = outcome
        if not outputs:
            default = spec.default_output
            if cold and any(m in cold for m in chosen):
                return Prediction(qid, default, True, COLD, _NO_MODELS)
            if failed is not None:
                return Prediction(qid, default, True, failed.error, reason_of(failed))
            return Prediction(qid, default, True, SLO_MISSED, _SLO)
        if len(chosen) == 1 and not policy.combines:
            return Prediction(qid, outputs[chosen[0]], False)
        output, confidence = policy.combine(state, chosen, outputs, params)
        missing = [m for m in chosen if m not in outputs] or None
        reported = confidence if policy.combines else None
        threshold = float(params.get("min_confidence", 0.0))
        if confidence < threshold:
            explanation = LOW_CONFIDENCE.format(confidence, threshold)
            reason = DefaultReason.LOW_CONFIDENCE
            default = spec.default_output
            return Prediction(qid, default, True, explanation, reason, reported, missing)
        return Prediction(qid, output, False, None, None, reported, missing)

    # -- feedback --------------------------------------------------------------------

    async def feedback(self, route: AppRoute, uid: str, input: Any, label: Any) -> dict[str, Any]:
        """Learn from a label: each linked model's output for ``input`` (from the
        cache where present, else computed now) is scored and the policy's state,
        for the user and the app, updated in one atomic step in the store.

        What it costs in model evaluations: none for a policy that does not
        learn (``single``); otherwise one per linked model whose output for
        ``input`` is not in the prediction cache (Exp4 queried them all at
        predict time: none; a policy that picks one model: the others).
        """
        spec = route.spec
        policy, params = self.policy_for(spec)
        available = self._available(route, routed=False)
        if not available:
            self._feedback_seen(spec.name, False)
            return {"accepted": False, "cause": NO_MODELS}
        # A model under rollout is scored in the version that answered this input
        # (and, for a shadow rollout, the new one beside it): the rollout's judge
        # learns from labels even when the app's policy does not.
        plans = {}
        if self.rollouts is not None and self.rollouts.active:
            plans = self.rollouts.feedback_plan(available, input, uid or None)
            available = {m: plans[m].served if m in plans else v for m, v in available.items()}
        if not policy.learns and not plans:
            self._feedback_seen(spec.name, True)
            return {"accepted": True}
        deadline = self.clock() + spec.slo_micros / 1e6
        use_cache = spec.options.cache
        wanted = set(available.values()) if policy.learns else set()
        wanted.update(p.served for p in plans.values())
        wanted.update(p.shadow for p in plans.values() if p.shadow is not None)
        submitted = {
            model: self.dispatcher.submit(model, input, deadline, use_cache=use_cache)
            for model in wanted
        }
        pending = [f for f in submitted.values() if not f.done()]
        remaining = deadline - self.clock()
        if pending and remaining > 0:
            await wait_all(pending, remaining, self.timers)
        outcomes = {model: f.result() for model, f in submitted.items() if f.done()}
        if plans and self.rollouts is not None:
            self.rollouts.observe_feedback(plans, outcomes, label, params)
        if not policy.learns:
            self._feedback_seen(spec.name, True)
            return {"accepted": True}
        outputs = {
            m: outcomes[model].output
            for m, model in available.items()
            if model in outcomes and outcomes[model].ok
        }
        if not outputs:
            self._feedback_seen(spec.name, False)
            return {"accepted": False, "cause": "no linked model answered for this input"}
        models = list(available)

        def learn(states: dict[str, State | None]) -> dict[str, State]:
            # A user without state starts from the app's state as it was. A
            # policy's observe returns a new state, its argument untouched.
            shared = states[SHARED]
            base = shared if shared is not None else policy.initial_state(params)
            return {
                uid: policy.observe(
                    base if state is None else state, models, outputs, label, params
                )
                for uid, state in states.items()
            }

        def apply() -> None:
            self.states.update(spec.name, [SHARED] if uid == SHARED else [SHARED, uid], learn)

        # The store write may touch disk or the network: keep it off the event loop.
        await asyncio.to_thread(apply)
        self._feedback_seen(spec.name, True)
        return {"accepted": True}

    def _feedback_seen(self, app: str, accepted: bool) -> None:
        if self.observer is not None:
            self.observer.observe_feedback(app, accepted)
