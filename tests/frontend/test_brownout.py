"""The frontend's brownout (issue #28): while the event loop runs late, a share of
predict requests is answered before its body is parsed."""

import asyncio
import logging
import time

import orjson

from clipper.frontend.brownout import BROWNOUT, Brownout
from clipper.frontend.query import QueryFrontend
from clipper.http.server import Request, Response
from clipper.store.catalog import AppRoute
from clipper.types import AppOptions, AppSpec, DefaultReason, InputType


def test_the_share_follows_the_lag_with_hysteresis(caplog):
    caplog.set_level(logging.INFO, logger="clipper.overload")
    b = Brownout(high_s=0.003, low_s=0.001, up=0.1, down=0.02, streak=3, min_requests=8,
                 rng=lambda: 0.5)  # fmt: skip

    def probe(lag: float, now: float, requests: int = 10, inflight: int = 20) -> None:
        b.requests = requests
        b.inflight = inflight
        b.observe_lag(lag, now)

    probe(0.0005, 0.0)
    assert b.share == 0.0 and not b.sheds()
    # A stall with little traffic (a deploy, a collection) sheds nothing.
    for t in range(1, 10):
        probe(0.050, t * 0.005, requests=2)
    assert b.share == 0.0
    # Nor does one client sending back to back, however fast: one request in
    # flight at a time, nothing of it waits unread.
    for t in range(1, 10):
        probe(0.050, t * 0.005, requests=50, inflight=1)
    assert b.share == 0.0
    # Late twice while busy: not yet; from the third late probe in a row, it grows.
    for t in range(10, 18):
        probe(0.010, t * 0.005)
    assert abs(b.share - 0.6) < 1e-9
    b.requests = 0
    assert b.sheds() and b.shed == 1  # 0.5 < 0.6
    probe(0.002, 0.1)  # between low and high while busy: hold
    assert abs(b.share - 0.6) < 1e-9
    assert abs(b.budget_s(0.020) - (0.020 - b.lag_s)) < 1e-9
    for t in range(30):
        probe(0.0, 0.2 + t * 0.005)
    assert b.share == 0.0 and not b.sheds()
    starts = [r for r in caplog.records if "saturated" in r.getMessage()]
    assert len(starts) == 1 and starts[0].levelno == logging.WARNING
    assert not any("caught up" in r.getMessage() for r in caplog.records)
    probe(0.0, 20.0)  # quiet for 10 s: the episode ends, once
    probe(0.0, 21.0)
    ends = [r for r in caplog.records if "caught up" in r.getMessage()]
    assert len(ends) == 1 and "1 requests answered unread" in ends[0].getMessage()


def test_by_default_one_late_busy_probe_starts_shedding_and_the_share_comes_back_slowly():
    # Three late probes in a row to start and 0.02 back per probe swung between
    # shedding and not under a steady overload: the queue built up in between.
    b = Brownout(rng=lambda: 0.5)

    def probe(lag: float, now: float) -> None:
        b.requests = b.min_requests
        b.inflight = b.min_inflight
        b.observe_lag(lag, now)

    probe(b.high_s * 2, 0.0)
    assert abs(b.share - b.up) < 1e-9
    for t in range(1, 5):
        probe(b.high_s * 2, t * 0.005)
    assert abs(b.share - 5 * b.up) < 1e-9  # 0.5
    for t in range(10):  # caught up: 50 ms later, most of the share is still there
        probe(0.0, 0.1 + t * 0.005)
    assert abs(b.share - (5 * b.up - 10 * b.down)) < 1e-9
    assert b.share > 0.39


def test_the_probe_slows_down_while_the_frontend_is_far_from_saturated():
    b = Brownout(interval_s=0.005, idle_interval_s=0.05, min_requests=8, high_s=0.003,
                 low_s=0.001)  # fmt: skip

    def probe(requests: int, window: float, lag: float = 0.0) -> float:
        b.requests = requests
        b.inflight = 20
        b.observe_lag(lag, 0.0, window)
        return b.next_interval()

    assert probe(0, 0.005) == 0.05  # idle: every 50 ms
    assert probe(30, 0.05) == 0.05  # 600/s: under half the busy rate (1,600/s)
    assert probe(40, 0.05) == 0.005  # 800/s: half of it, probe often again
    assert probe(3, 0.005) == 0.05
    assert probe(0, 0.05, lag=0.004) == 0.005  # a late loop: often, whatever the traffic
    # Busy is a rate: 8 requests in a 50 ms window are not 8 in 5 ms.
    for _ in range(5):
        probe(8, 0.05, lag=0.010)
    assert b.share == 0.0
    for _ in range(3):
        probe(80, 0.05, lag=0.010)
    assert b.share > 0.0 and b.next_interval() == 0.005  # shedding: often


def test_the_probe_sees_a_blocked_loop():
    async def main() -> float:
        b = Brownout(interval_s=0.005, up=0.5, streak=1, min_requests=0, min_inflight=0)
        b.start()
        try:
            await asyncio.sleep(0.012)
            time.sleep(0.05)  # the loop is held: the probe runs 40+ ms late
            await asyncio.sleep(0.012)
            return b.share
        finally:
            b.stop()

    assert asyncio.run(main()) >= 0.3  # up by 0.5, then down 0.01 per punctual probe


def test_requests_being_answered_are_counted_until_their_answer():
    async def main() -> list[int]:
        b = Brownout()
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        b.answering(first)
        b.answering(second)
        seen = [b.inflight]
        first.set_result([])
        await asyncio.sleep(0)
        seen.append(b.inflight)
        second.cancel()  # the client left: it still ends
        await asyncio.sleep(0)
        seen.append(b.inflight)
        return seen

    assert asyncio.run(main()) == [2, 1, 0]


class _Observer:
    def __init__(self):
        self.predictions = []
        self.overloaded = []

    def observe_predictions(self, app, latency_s, predictions):
        self.predictions.extend(predictions)

    def observe_overload(self, app):
        self.overloaded.append(app)


class _Processor:
    def __init__(self):
        self.observer = _Observer()
        self.ids = iter(range(100, 200))

    def next_query_id(self):
        return next(self.ids)


class _Catalog:
    def __init__(self, *routes):
        self.routes = {r.spec.name: r for r in routes}

    def app(self, name):
        return self.routes.get(name)


def _request(path: str, body: bytes) -> Request:
    r = Request("POST", path, b"", [])
    r.body = body
    return r


def test_a_shed_request_gets_the_default_unread_or_a_503():
    shed_all = Brownout(rng=lambda: 0.0)
    shed_all.share = 1.0
    plain = AppSpec("a", InputType.DOUBLES, "nope", 20_000)
    strict = AppSpec("b", InputType.DOUBLES, "x", 20_000, options=AppOptions(overload="503"))
    processor = _Processor()
    frontend = QueryFrontend(
        _Catalog(AppRoute(plain, ("m",)), AppRoute(strict, ("m",))),
        processor,  # type: ignore[arg-type]
        brownout=shed_all,
    )
    # Not even valid JSON: it is not read.
    r = frontend.handle(_request("/a/predict", b"{not json"))
    assert isinstance(r, Response) and r.status == 200
    body = orjson.loads(r.body)
    assert body == {
        "query_id": 100,
        "output": "nope",
        "default": True,
        "default_explanation": BROWNOUT,
    }
    (p,) = processor.observer.predictions
    assert p.default and p.reason is DefaultReason.OVERLOADED and p.query_id == 100
    assert orjson.loads(frontend.handle(_request("/a/predict", b"{}")).body)["query_id"] == 101
    r = frontend.handle(_request("/b/predict", b"{}"))
    assert r.status == 503 and orjson.loads(r.body)["error"] == "overloaded"
    assert processor.observer.overloaded == ["b"]
    assert shed_all.shed == 3


def test_a_late_loop_takes_the_lag_off_the_budget():
    b = Brownout(low_s=0.001, streak=1, min_requests=0, min_inflight=0)
    assert b.budget_s(0.020) is None  # punctual
    b.observe_lag(0.008)
    assert abs(b.budget_s(0.020) - 0.012) < 1e-9
    b.observe_lag(0.0)  # it decays, not drops
    assert 0.0 < b.lag_s < 0.008
    for _ in range(50):
        b.observe_lag(0.0)
    assert b.budget_s(0.020) is None
    b.observe_lag(0.050)
    assert b.budget_s(0.020) == 0.0


def test_the_lag_comes_off_the_budget_before_any_shedding():
    # Not busy enough to shed (too few requests), but a query read now still
    # waited unread for about the lag, and its deadline timer fires that late.
    b = Brownout(low_s=0.001, min_requests=1000)
    b.observe_lag(0.006)
    assert b.share == 0.0
    assert abs(b.budget_s(0.020) - 0.014) < 1e-9
    b.observe_lag(0.0005)
    assert b.budget_s(0.020) is not None  # the estimate decays, not drops
