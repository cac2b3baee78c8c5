"""``QueryProcessor.predict_soon``: the query port's callback path, with a real
dispatcher and a scripted replica (no sockets; the RPC layer is tested elsewhere),
on fake timers: a deadline passes when a test moves the clock, not by waiting.

It must settle its future in every case, by the deadline: the model's answer,
the default when the model is too late, an error for a bad version pin, and an
exception (never a hang) when something on the way raises.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from clipper.batching.controllers import FixedBatchSize
from clipper.batching.dispatcher import QUEUE_FULL, Dispatcher, ModelConfig
from clipper.cache.prediction_cache import PredictionCache
from clipper.exceptions import ValidationError
from clipper.rpc.server import Replica
from clipper.selection.processor import COLD, NO_MODELS, SLO_MISSED, Prediction, QueryProcessor
from clipper.selection.state import PolicyStates
from clipper.store.catalog import Catalog
from clipper.store.memory import MemoryStore
from clipper.timers import FakeTimers
from clipper.types import AppOptions, AppSpec, DefaultReason, InputType, ModelId, ModelSpec

MODEL = ModelId("m", "1")


def config_store(app_options: dict[str, Any] | None = None, policy: str = "single") -> MemoryStore:
    """The embedded store with one app ``a`` (SLO 50 ms) linked to model ``m:1``."""
    store = MemoryStore()
    store.add_model(ModelSpec("m", "1", InputType.DOUBLES))
    options = AppOptions.parse(app_options or {})
    spec = AppSpec("a", InputType.DOUBLES, "-1", 50_000, policy=policy, options=options)
    store.add_app(spec)
    store.add_links("a", ["m"])
    return store


class Observer:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.seen: list[tuple[str, list[Prediction]]] = []

    def observe_predictions(self, app: str, latency_s: float, predictions: list[Prediction]):
        if self.fail:
            raise RuntimeError("the observer broke")
        self.seen.append((app, predictions))

    def observe_overload(self, app: str) -> None:
        if self.fail:
            raise RuntimeError("the observer broke on an overload")

    def observe_feedback(self, app: str, accepted: bool) -> None: ...


def setup(
    answer: bool,
    observer: Observer | None = None,
    app_options: dict[str, Any] | None = None,
    queue_capacity: int = 10_000,
    policy: str = "single",
    cache: PredictionCache | None = None,
) -> tuple[QueryProcessor, Any]:
    """A processor whose dispatcher has one replica of ``m:1``, both on the same
    fake timers (``processor.timers``); the replica answers each batch with each
    input's sum, on the next loop turn (or never)."""
    timers = FakeTimers(1000.0)
    config = ModelConfig(FixedBatchSize(64), queue_capacity=queue_capacity)
    dispatcher = Dispatcher(configure=lambda _model: config, timers=timers, cache=cache)
    replica = Replica(b"r", MODEL, "doubles", None, "test", time.time(), time.time())

    class Transport:
        def send_batch(
            self,
            to: Replica,
            batch_id: int,
            inputs: Any,
            time_limit_s: Any = None,
            deadline_s: Any = None,
        ) -> bool:
            if answer:
                outputs = [float(x.sum()) for x in inputs]
                loop = asyncio.get_running_loop()
                loop.call_soon(dispatcher.batch_done, to, batch_id, outputs)
            return True

    dispatcher.set_transport(Transport())
    dispatcher.replica_joined(replica)
    store = config_store(app_options, policy)
    catalog = Catalog(store)
    states = PolicyStates(store)
    processor = QueryProcessor(catalog, dispatcher, states, observer=observer, timers=timers)
    return processor, catalog.app("a")


async def at_deadline(processor: QueryProcessor, seconds: float) -> None:
    """Let the loop run what is ready, then move the clock ``seconds`` on."""
    await asyncio.sleep(0)
    assert isinstance(processor.timers, FakeTimers)
    processor.timers.advance(seconds)


def x(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def run(fn):
    return asyncio.run(asyncio.wait_for(fn(), 30))


def test_the_models_answer_settles_the_future_and_is_observed():
    observer = Observer()

    async def main():
        processor, route = setup(answer=True, observer=observer)
        return await processor.predict_soon(route, [x(1, 2), x(3, 4)])

    predictions = run(main)
    assert [(x.output, x.default) for x in predictions] == [(3.0, False), (7.0, False)]
    assert all(x.reason is None and x.explanation is None for x in predictions)
    assert [app for app, _ in observer.seen] == ["a"]


def test_a_model_too_late_gets_the_default_at_the_deadline():
    async def main():
        processor, route = setup(answer=False)
        future = processor.predict_soon(route, [x(1)], timeout_s=0.05)
        await at_deadline(processor, 0.049)
        assert not future.done()  # not before the deadline
        await at_deadline(processor, 0.001)
        assert future.done()  # at it
        return await future

    predictions = run(main)
    assert predictions[0].default and predictions[0].output == "-1"
    assert predictions[0].explanation == SLO_MISSED
    assert predictions[0].reason is DefaultReason.SLO


def test_no_live_model_answers_the_default_at_once():
    async def main():
        processor, route = setup(answer=True)
        processor.dispatcher.replica_left(processor.dispatcher.replicas()[0], "gone")
        return await processor.predict_soon(route, [x(1)])

    (prediction,) = run(main)
    assert prediction.default and prediction.explanation == NO_MODELS
    assert prediction.reason is DefaultReason.NO_MODELS
    assert "reason" not in prediction.to_json()  # the JSON answer is what it always was


def test_a_cold_model_gets_the_default_with_its_own_explanation_counted_as_no_models():
    async def main():
        processor, route = setup(answer=True)
        processor.dispatcher.replica_left(processor.dispatcher.replicas()[0], "scaled to zero")
        processor.is_autoscaled = lambda _model: True  # a replica is starting
        future = processor.predict_soon(route, [x(1)], timeout_s=0.05)
        await at_deadline(processor, 0.05)
        return await future

    (prediction,) = run(main)
    assert prediction.default and prediction.explanation == COLD
    assert prediction.reason is DefaultReason.NO_MODELS


def test_a_full_queue_answers_the_default_with_the_queues_explanation():
    async def main():
        processor, route = setup(answer=True, queue_capacity=1)
        return await processor.predict_soon(route, [x(1), x(2)])

    first, refused = run(main)
    assert not first.default and first.output == 1.0
    assert refused.default and refused.explanation == QUEUE_FULL
    assert refused.reason is DefaultReason.OVERLOADED


def test_a_bad_version_pin_raises_before_anything_is_sent():
    async def main():
        processor, route = setup(answer=True)
        with pytest.raises(ValidationError, match="no version '7'"):
            processor.predict_soon(route, [x(1)], version="7")
        return processor.dispatcher.busy()

    assert run(main) is False


def test_an_exception_on_the_way_fails_the_future_rather_than_hang():
    async def main():
        processor, route = setup(answer=True, observer=Observer(fail=True))
        return await asyncio.gather(processor.predict_soon(route, [x(1)]), return_exceptions=True)

    (outcome,) = run(main)
    assert isinstance(outcome, RuntimeError) and "observer broke" in str(outcome)


def test_a_cancelled_wait_leaves_the_models_work_alone():
    async def main():
        processor, route = setup(answer=False)
        waiting = asyncio.ensure_future(processor.predict(route, [x(1)], timeout_s=0.05))
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await at_deadline(processor, 0.1)  # the deadline passes: nothing may raise
        await asyncio.sleep(0)
        return waiting.cancelled()

    assert run(main) is True


def test_an_observer_that_fails_on_an_overload_fails_the_future_rather_than_hang():
    async def main():
        processor, route = setup(False, Observer(fail=True), {"overload": "503"}, queue_capacity=1)
        first = processor.predict_soon(route, [x(1)], timeout_s=0.05)
        second = processor.predict_soon(route, [x(2), x(3)], timeout_s=0.05)
        await at_deadline(processor, 0.05)
        return await asyncio.gather(first, second, return_exceptions=True)

    first, second = run(main)
    assert isinstance(second, RuntimeError) and "overload" in str(second)
    assert isinstance(first, RuntimeError) and "overload" not in str(first)


class RecordingStates:
    """A policy-state backend that records each atomic update it is asked for."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.steps: list[list[str]] = []

    def get_policy_state(self, app: str, uid: str) -> Any:
        return self.store.get_policy_state(app, uid)

    def update_policy_states(self, app: str, uids: Any, update: Any, **kw: Any) -> Any:
        self.steps.append(list(uids))
        return self.store.update_policy_states(app, uids, update, **kw)


def test_feedback_updates_the_users_and_the_apps_state_in_one_step():
    async def main():
        processor, route = setup(answer=True, policy="ucb1")
        recording = RecordingStates(processor.states.backend)
        processor.states.backend = recording
        store = recording.store
        answers = []
        # The model answers the sum: 3.0 is right for (1, 2), 5.0 wrong.
        answers.append(await processor.feedback(route, "alice", x(1, 2), 5.0))
        alice = store.get_policy_state("a", "alice")
        assert alice == store.get_policy_state("a", "")
        app_before = store.get_policy_state("a", "")
        answers.append(await processor.feedback(route, "", x(1, 2), 3.0))
        # A new user starts from the app's state as it was, in the same step.
        app_now = store.get_policy_state("a", "")
        answers.append(await processor.feedback(route, "bob", x(1, 2), 3.0))
        bob = store.get_policy_state("a", "bob")
        return answers, recording.steps, alice, app_before, app_now, bob, store

    answers, steps, alice, app_before, app_now, bob, store = run(main)
    assert answers == [{"accepted": True}] * 3
    assert steps == [["", "alice"], [""], ["", "bob"]]
    assert alice is not None and app_now != app_before
    assert store.get_policy_state("a", "alice") == alice  # untouched by the others
    # bob's state is the app's (as it was before bob) after one observation,
    # and so is the app's new state: equal.
    assert bob == store.get_policy_state("a", "")
    assert bob != app_now


class BlockedUserReads:
    """A policy-state backend whose reads of users' states wait for ``gate``."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.gate = threading.Event()

    def get_policy_state(self, app: str, uid: str) -> Any:
        if uid and not self.gate.wait(30):
            raise AssertionError("the gate was never opened")
        return self.store.get_policy_state(app, uid)

    def update_policy_states(self, app: str, uids: Any, update: Any, **kw: Any) -> Any:
        return self.store.update_policy_states(app, uids, update, **kw)


def test_a_query_never_waits_for_a_users_state_from_the_store():
    """A user's state not in memory: the query is answered (from the app's
    shared state) while the store read of it is still blocked."""

    async def main():
        processor, route = setup(answer=True, policy="exp4")
        blocked = BlockedUserReads(processor.states.backend)
        processor.states.backend = blocked
        blocked.store.update_policy_state("a", "alice", lambda _: {"not": "an exp4 state"})
        try:
            predictions = await processor.predict_soon(route, [x(1, 2)], uid="alice")
            fallbacks = processor.states.statistics().fallbacks
        finally:
            blocked.gate.set()
        assert await asyncio.to_thread(processor.states.wait_fetches, 30)
        return predictions, fallbacks

    predictions, fallbacks = run(main)
    assert [(p.output, p.default) for p in predictions] == [(3.0, False)]
    assert fallbacks == 1


def count_batches(processor: QueryProcessor) -> list[int]:
    """Wrap the dispatcher's transport to count the inputs sent to the model."""
    sent: list[int] = []
    transport = processor.dispatcher._transport  # the scripted one from setup()
    send = transport.send_batch

    def counting(to: Any, batch_id: int, inputs: Any, *args: Any, **kw: Any) -> bool:
        sent.append(len(inputs))
        return send(to, batch_id, inputs, *args, **kw)

    transport.send_batch = counting  # type: ignore[method-assign]
    return sent


@pytest.mark.parametrize(
    ("policy", "cache", "evaluations"),
    [("single", True, 0), ("exp4", True, 0), ("exp4", False, 1), ("ucb1", True, 0)],
)
def test_what_one_feedback_costs_in_model_evaluations(policy, cache, evaluations):
    """After a prediction for the input, feedback re-runs the model only when its
    output is not cached; ``single`` learns nothing and runs nothing. (One linked
    model here: a policy that picks one of several pays for the others.)"""

    async def main():
        processor, route = setup(
            answer=True, policy=policy, app_options={"cache": cache}, cache=PredictionCache()
        )
        sent = count_batches(processor)
        answers = await processor.predict(route, [x(1, 2)])
        assert answers[0].output == 3.0
        before = sum(sent)
        reply = await processor.feedback(route, "", x(1, 2), 3.0)
        return reply, sum(sent) - before

    reply, cost = run(main)
    assert reply == {"accepted": True}
    assert cost == evaluations
