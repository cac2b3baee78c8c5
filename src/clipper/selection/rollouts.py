"""The rollouts' runtime: routing, shadow copies, evidence and the bandit's decisions.

One :class:`RolloutRouter` per server (``server.rollouts``). The query
processor asks it which version of a model answers a query
(:meth:`RolloutRouter.version_for`), tells it what each query of a model
under rollout became (:meth:`RolloutRouter.observe`) and hands it the labels
that ``/update`` brings (:meth:`RolloutRouter.feedback_plan`,
:meth:`RolloutRouter.observe_feedback`). The decisions themselves are pure
(:mod:`clipper.selection.rollout`); this module times, remembers and acts.

Shadow copies never touch the answer: a copy is submitted to the new version
one event-loop turn after the query's answer is settled (so the frontend's
reply is already on its way), with its own deadline, and only while the new
version's queue holds fewer than :data:`SHADOW_QUEUE_PER_REPLICA` tasks per
live replica (and the base version's queue is not above that either): under
load, copies are the first work dropped (counted as ``dropped``). The base
and new versions run on their own replicas, so a copy never queues ahead of
a real query.

Once a second (:meth:`RolloutRouter.tick`, on the metrics' sampler) the router
follows the catalog's rollouts (loading stored evidence for one it has not
seen, so the judge's figures survive a restart), refreshes the bandits'
shares, saves changed evidence every ``save_interval_s`` (in a thread) and
asks the judge of each bandit rollout, which is also asked at each label and
at each failure of the new version (so a guard acts at once); a decision
calls the management service's ``stop_rollout`` and is logged with the
figures behind it.

Each frontend keeps its own evidence; with several frontends on one Redis
store the last one to save wins the stored copy (the judge on each frontend
sees its own share of the traffic).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from ..batching.dispatcher import Dispatcher
from ..cache.prediction_cache import input_digest
from ..exceptions import ValidationError
from ..store.catalog import Catalog
from ..types import DefaultReason, ModelId, Outcome, RolloutSpec, reason_of
from . import rollout
from .combine import LOSS_SCALE, loss, outputs_equal
from .rollout import Decision, Evidence, VersionFigures

log = logging.getLogger("clipper.rollouts")

SHADOW_QUEUE_PER_REPLICA = 4
# Which version answered which (model, uid, input): how a label finds the version
# it scores. Entries beyond this many go, oldest first (their labels are not scored).
SERVED_MEMORY = 50_000


class EvidenceStore(Protocol):
    def save_rollout_evidence(self, model: str, evidence: dict[str, Any]) -> None: ...

    def get_rollout_evidence(self, model: str) -> dict[str, Any] | None: ...


class RolloutStopper(Protocol):
    def stop_rollout(
        self, model: str, promote: bool = False, reason: str = "by hand"
    ) -> Awaitable[dict[str, Any]]: ...


@dataclass(slots=True)
class _Live:
    """One running rollout as this frontend sees it."""

    spec: RolloutSpec
    evidence: Evidence = field(default_factory=Evidence)
    share: float = 0.0
    loaded: bool = False  # the stored evidence has been read (and merged)
    dirty: bool = False
    deciding: bool = False  # a decision is on its way to the service

    def figures(self, version: str) -> VersionFigures | None:
        if version == self.spec.new_version:
            return self.evidence.new
        if version == self.spec.base_version:
            return self.evidence.base
        return None


@dataclass(frozen=True, slots=True)
class FeedbackPlan:
    """What a label for one model under rollout is scored against."""

    served: ModelId  # the version that answered (its output goes to the policy)
    shadow: ModelId | None  # shadow mode: the new version, scored beside it


def _identity(spec: RolloutSpec) -> list[Any]:
    # Stored evidence belongs to one rollout: a later rollout of the same model
    # must not inherit a stale blob that a last save left behind.
    return [spec.new_version, spec.base_version, spec.started_at]


def _merge(into: VersionFigures, other: VersionFigures) -> None:
    into.queries += other.queries
    into.errors += other.errors
    into.slo_misses += other.slo_misses
    into.feedback += other.feedback
    into.loss_sum += other.loss_sum
    into.latencies.extend(other.latencies)


def _merge_evidence(into: Evidence, other: Evidence) -> None:
    _merge(into.base, other.base)
    _merge(into.new, other.new)
    for name in ("shadow_dropped", "compared", "agreed", "paired"):
        setattr(into, name, getattr(into, name) + getattr(other, name))
    into.paired_loss_base += other.paired_loss_base
    into.paired_loss_new += other.paired_loss_new


class RolloutRouter:
    """Routes queries of models under rollout and judges the rollouts."""

    def __init__(
        self,
        catalog: Catalog,
        dispatcher: Dispatcher,
        store: EvidenceStore,
        service: RolloutStopper | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        unix_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        save_interval_s: float = 2.0,
        is_autoscaled: Callable[[ModelId], bool] = lambda _model: False,
        follower: bool = False,
    ) -> None:
        self.catalog = catalog
        self.dispatcher = dispatcher
        self.store = store
        self.service = service
        self.clock = clock  # the query processor's clock: deadlines are on it
        self.unix_clock = unix_clock
        self.rng = rng or random.Random()
        self.save_interval_s = save_interval_s
        self.is_autoscaled = is_autoscaled
        self.active: dict[str, _Live] = {}
        self.decisions: list[dict[str, Any]] = []  # the last few, newest last
        self._served: OrderedDict[tuple[str, str, bytes], str] = OrderedDict()
        self._next_save = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        # Several worker processes (``--workers``): a worker's router follows
        # (counts its evidence, takes the shares its supervisor sends, decides
        # and saves nothing); the supervisor's judges on every worker's evidence.
        self.follower = follower
        self._peer_evidence: dict[int, dict[str, tuple[list[Any], Evidence]]] = {}
        self._peer_totals: dict[str, tuple[list[Any], Evidence]] = {}

    # -- the query path --------------------------------------------------------------

    def _ready(self, model: ModelId) -> bool:
        return self.dispatcher.live_replicas(model) > 0 or self.is_autoscaled(model)

    def version_for(self, name: str, current: str, uid: str | None) -> str:
        """The version of ``name`` that answers a query of ``uid`` (``current``
        unless a canary or bandit rollout sends it to the new version; a new
        version without a live replica answers nothing)."""
        live = self.active.get(name)
        if live is None or current != live.spec.base_version:
            return current
        if not rollout.answers_with_new(live.share, name, uid, self.rng):
            return current
        new = live.spec.new_version
        return new if self._ready(ModelId(name, new)) else current

    def observe(
        self,
        available: dict[str, ModelId],
        inputs: list[Any],
        futures: list[dict[str, asyncio.Future[Outcome]]],
        uid: str | None,
        start: float,
        deadline: float,
        use_cache: bool,
        result: asyncio.Future[Any],
    ) -> None:
        """Follow the queries just submitted for the models under rollout: each
        outcome is counted for its version, and a shadow rollout's copies are
        sent once ``result`` (the request's answer) is settled."""
        for name, model in available.items():
            live = self.active.get(name)
            if live is None:
                continue
            figures = live.figures(model.version)
            if figures is None:
                continue
            mirror: list[tuple[Any, asyncio.Future[Outcome]]] = []
            two_way = live.spec.mode != "shadow"
            for x, fs in zip(inputs, futures, strict=True):
                fut = fs.get(name)
                if fut is None:
                    continue
                self._follow(live, figures, fut, start, deadline)
                if two_way:
                    self._remember(name, uid, x, model.version)
                elif rollout.mirrored(live.spec, self.rng):
                    mirror.append((x, fut))
            if mirror:
                new = ModelId(name, live.spec.new_version)
                shadow = (live, new, mirror, deadline - start, use_cache)
                result.add_done_callback(partial(self._after_answer, shadow))

    def _follow(
        self,
        live: _Live,
        figures: VersionFigures,
        fut: asyncio.Future[Outcome],
        start: float,
        deadline: float,
    ) -> None:
        def done(f: asyncio.Future[Outcome]) -> None:
            now = self.clock()
            outcome = f.result()
            live.dirty = True
            if outcome.ok and now <= deadline:
                figures.observe(now - start)
                return
            if outcome.ok or outcome.overloaded or reason_of(outcome) is DefaultReason.SLO:
                figures.observe(None)
            else:
                figures.observe(None, error=True)
            if figures is live.evidence.new and live.spec.mode == "bandit":
                self._judge(live)  # a guard may act now, not at the next tick

        if fut.done():
            done(fut)
        else:
            fut.add_done_callback(done)

    def _remember(self, name: str, uid: str | None, x: Any, version: str) -> None:
        key = (name, uid or "", input_digest(x))
        served = self._served
        served[key] = version
        served.move_to_end(key)
        if len(served) > SERVED_MEMORY:
            served.popitem(last=False)

    def _after_answer(self, shadow: tuple[Any, ...], result: asyncio.Future[Any]) -> None:
        if result.cancelled() or result.exception() is not None:  # shed (503): no copies
            live, mirror = shadow[0], shadow[2]
            live.evidence.shadow_dropped += len(mirror)
            return
        # One more turn: the frontend's own callback (the reply) goes first.
        asyncio.get_running_loop().call_soon(self._shadow, *shadow)

    def _shadow(
        self,
        live: _Live,
        new: ModelId,
        mirror: list[tuple[Any, asyncio.Future[Outcome]]],
        budget: float,
        use_cache: bool,
    ) -> None:
        if self.active.get(new.name) is not live:  # stopped meanwhile
            return
        replicas = self.dispatcher.live_replicas(new)
        base = ModelId(new.name, live.spec.base_version)
        bound = SHADOW_QUEUE_PER_REPLICA * max(1, replicas)
        base_bound = SHADOW_QUEUE_PER_REPLICA * max(1, self.dispatcher.live_replicas(base))
        for x, base_fut in mirror:
            if (
                replicas == 0
                or self.dispatcher.queued(new) >= bound
                or self.dispatcher.queued(base) > base_bound
            ):
                live.evidence.shadow_dropped += 1
                live.dirty = True
                continue
            start = self.clock()
            fut = self.dispatcher.submit(new, x, start + budget, use_cache=use_cache)
            if fut.done() and fut.result().overloaded:  # refused at once: shed, not a miss
                live.evidence.shadow_dropped += 1
                continue
            self._follow(live, live.evidence.new, fut, start, start + budget)
            fut.add_done_callback(partial(self._compare, live, base_fut))

    @staticmethod
    def _compare(live: _Live, base: asyncio.Future[Outcome], new: asyncio.Future[Outcome]) -> None:
        if not base.done():
            return
        b, n = base.result(), new.result()
        if b.ok and n.ok:
            live.evidence.compared += 1
            live.evidence.agreed += outputs_equal(b.output, n.output)

    # -- feedback --------------------------------------------------------------------

    def feedback_plan(
        self, available: dict[str, ModelId], input: Any, uid: str | None
    ) -> dict[str, FeedbackPlan]:
        """For each available model under rollout: the version a label for
        ``input`` scores (the one that answered this user's query, if remembered,
        else the one that would answer it now) and, for shadow, the new one."""
        plans: dict[str, FeedbackPlan] = {}
        for name, model in available.items():
            live = self.active.get(name)
            if live is None or model.version != live.spec.base_version:
                continue
            if live.spec.mode == "shadow":
                new = ModelId(name, live.spec.new_version)
                plans[name] = FeedbackPlan(model, new if self._ready(new) else None)
                continue
            version = self._served.get((name, uid or "", input_digest(input)))
            if version is None:
                version = self.version_for(name, model.version, uid)
            plans[name] = FeedbackPlan(ModelId(name, version), None)
        return plans

    def observe_feedback(
        self,
        plans: dict[str, FeedbackPlan],
        outcomes: dict[ModelId, Outcome],
        label: Any,
        params: dict[str, Any],
    ) -> None:
        """Score each planned version's output for the labelled input, with the
        app's policy's loss (``zero_one`` unless its params name another)."""
        kind = params.get("loss")
        kind = kind if isinstance(kind, str) else "zero_one"
        scale = params.get("loss_scale")
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            scale = LOSS_SCALE.default

        def scored(model: ModelId | None) -> float | None:
            outcome = outcomes.get(model) if model is not None else None
            if outcome is None or not outcome.ok:
                return None
            try:
                return loss(outcome.output, label, kind, float(scale))
            except ValueError:  # a label the loss cannot read: not evidence
                return None

        for name, plan in plans.items():
            live = self.active.get(name)
            if live is None:
                continue
            served = scored(plan.served)
            figures = live.figures(plan.served.version)
            if served is None or figures is None:
                continue
            figures.observe_loss(served)
            live.dirty = True
            shadow = scored(plan.shadow)
            if shadow is not None:
                live.evidence.new.observe_loss(shadow)
                live.evidence.observe_pair(served, shadow)
            if live.spec.mode == "bandit":  # a label may settle it: judge now
                self._judge(live)

    def _judge(self, live: _Live) -> None:
        if self.follower:  # the supervisor sends the share
            return
        evidence = self._combined(live)
        live.share = rollout.new_share(live.spec, evidence, self.unix_clock())
        if live.spec.mode == "bandit" and live.loaded and not live.deciding:
            decision = rollout.judge(live.spec, evidence)
            if decision is not None:
                self._decide(live, decision)

    # -- several worker processes ------------------------------------------------------

    def _combined(self, live: _Live) -> Evidence:
        """The rollout's evidence: this process's, plus its workers' (``--workers``)."""
        peers = self._peer_totals.get(live.spec.model)
        if peers is None or peers[0] != _identity(live.spec):
            return live.evidence
        combined = copy.deepcopy(live.evidence)
        _merge_evidence(combined, peers[1])
        return combined

    def export_evidence(self) -> dict[str, tuple[list[Any], Evidence]]:
        """What a worker sends its supervisor: each rollout's evidence (cumulative)."""
        return {m: (_identity(live.spec), live.evidence) for m, live in self.active.items()}

    def set_peer_evidence(
        self, worker: int, evidence: dict[str, tuple[list[Any], Evidence]] | None
    ) -> None:
        """A worker's latest evidence (the supervisor's side), kept per worker and
        summed; None: the worker exited, and what it counted went with it."""
        if evidence is None:
            self._peer_evidence.pop(worker, None)
        else:
            self._peer_evidence[worker] = evidence
        totals: dict[str, tuple[list[Any], Evidence]] = {}
        for per_worker in self._peer_evidence.values():
            for model, (identity, counted) in per_worker.items():
                held = totals.get(model)
                if held is None or held[0] != identity:
                    totals[model] = (identity, copy.deepcopy(counted))
                else:
                    _merge_evidence(held[1], counted)
        self._peer_totals = totals

    def shares(self) -> dict[str, float]:
        """Each rollout's current share of queries for the new version."""
        return {m: live.share for m, live in self.active.items()}

    def set_shares(self, shares: dict[str, float]) -> None:
        """The supervisor's shares (a worker's side)."""
        for model, share in shares.items():
            live = self.active.get(model)
            if live is not None:
                live.share = share

    # -- once a second ---------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """Follow the catalog, refresh shares, save evidence, let bandits decide
        (on their guards; labels are judged as they arrive)."""
        now = self.clock() if now is None else now
        try:  # on the metrics' sampler: what fails here must not stop its other work
            self.sync()
            for live in list(self.active.values()):
                self._judge(live)
        except Exception:
            log.exception("the rollouts' tick failed")
        if now >= self._next_save:
            self._next_save = now + self.save_interval_s
            self._spawn(self.save())

    def sync(self) -> None:
        """Follow the rollouts in the catalog: start new ones (their stored
        evidence is read in the background), update changed specs, forget ended ones."""
        wanted = self.catalog.snapshot.rollouts
        for model in list(self.active):
            if model not in wanted:
                del self.active[model]
        for model, spec in wanted.items():
            live = self.active.get(model)
            if live is not None and _identity(live.spec) == _identity(spec):
                if live.spec != spec:  # a new fraction, limits or steps
                    live.spec = spec
                    live.share = rollout.new_share(spec, live.evidence, self.unix_clock())
                continue
            live = _Live(spec)
            live.share = rollout.new_share(spec, None, self.unix_clock())
            self.active[model] = live
            self._spawn(self._load(live))

    async def _load(self, live: _Live) -> None:
        if self.follower:  # the supervisor holds what was saved
            live.loaded = True
            return
        try:
            record = await asyncio.to_thread(self.store.get_rollout_evidence, live.spec.model)
        except Exception:
            log.exception("reading the evidence of the rollout of %s failed", live.spec.model)
            record = None
        if record is not None and record.get("rollout") == _identity(live.spec):
            try:
                stored = Evidence.from_record(record)
            except (KeyError, TypeError, ValueError):
                log.warning("malformed stored evidence of %s's rollout: ignored", live.spec.model)
            else:
                _merge_evidence(stored, live.evidence)
                live.evidence = stored
                log.info(
                    "rollout of %s:%s resumed with stored evidence (%d + %d labels)",
                    live.spec.model,
                    live.spec.new_version,
                    stored.base.feedback,
                    stored.new.feedback,
                )
        live.loaded = True

    async def save(self) -> None:
        """Save the evidence of every rollout that changed (in a thread)."""
        if self.follower:
            return
        batch = []
        for live in self.active.values():
            if live.loaded and (live.dirty or live.spec.model in self._peer_totals):
                live.dirty = False
                evidence = self._combined(live)
                record = {"rollout": _identity(live.spec), **evidence.to_record()}
                batch.append((live.spec.model, record))
        if not batch:
            return

        def write() -> None:
            for model, record in batch:
                if model in self.catalog.snapshot.rollouts:  # not once it has ended
                    self.store.save_rollout_evidence(model, record)

        try:
            await asyncio.to_thread(write)
        except Exception:
            log.exception("saving rollout evidence failed (retried at the next save)")
            for live in self.active.values():
                live.dirty = True

    def _decide(self, live: _Live, decision: Decision) -> None:
        spec = live.spec
        verdict = "promote" if decision.promote else "roll back"
        log.warning(
            "rollout_decision model=%s new_version=%s base_version=%s decision=%s reason=%r "
            "figures=%s",
            spec.model,
            spec.new_version,
            spec.base_version,
            verdict,
            decision.reason,
            {k: round(v, 6) for k, v in decision.figures.items()},
        )
        self.decisions.append(
            {
                "model": spec.model,
                "new_version": spec.new_version,
                "decision": verdict,
                "reason": decision.reason,
                "figures": decision.figures,
                "at": self.unix_clock(),
            }
        )
        del self.decisions[:-20]
        if self.service is None:
            return
        live.deciding = True
        self._spawn(self._stop(live, decision))

    async def _stop(self, live: _Live, decision: Decision) -> None:
        assert self.service is not None
        try:
            await self.service.stop_rollout(
                live.spec.model, promote=decision.promote, reason=f"bandit: {decision.reason}"
            )
        except ValidationError as exc:  # another frontend ended it first
            log.info("the rollout of %s had ended already: %s", live.spec.model, exc)
        except Exception:
            log.exception("acting on the decision for the rollout of %s failed", live.spec.model)
            live.deciding = False  # asked again at the next tick

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Save what changed and wait for work in flight (at shutdown)."""
        await self.save()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)

    # -- visibility ------------------------------------------------------------------

    def rollout_report(self, model: str) -> dict[str, Any] | None:
        """Live figures of ``model``'s rollout per version (None: none runs here)."""
        live = self.active.get(model)
        if live is None:
            return None
        out = rollout.report(live.spec, self._combined(live), live.share)
        out["evidence_loaded"] = live.loaded
        last = [d for d in self.decisions if d["model"] == model]
        if last:
            out["decision"] = last[-1]
        return out

    def snapshot(self) -> list[tuple[RolloutSpec, Evidence, float]]:
        """(spec, evidence, new version's share) of each rollout, for the metrics."""
        return [(live.spec, self._combined(live), live.share) for live in self.active.values()]
