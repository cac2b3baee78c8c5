"""Metrics, the dashboard's JSON and the logs of a real server under a known load."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clipper.deployers.python import deploy_python_closure
from tests.cli.runner import cli_env, global_args
from tests.helpers import Clipper, wait_for
from tests.observability import models

pytestmark = pytest.mark.slow

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(clipper: Clipper) -> Samples:
    r = clipper.http.get(f"{clipper.query_url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def deploy(
    clipper: Clipper, app: str, model: str | None, func: Any, slo: int = 1_000_000, **kw: Any
) -> None:
    clipper.conn.register_application(app, "doubles", "-1", slo, **kw)
    if model is not None:
        deploy_python_closure(clipper.conn, model, "1", "doubles", func)
        clipper.conn.link_model_to_app(app, model)
        clipper.wait_live(model)


def test_counts_equal_the_queries_sent(clipper: Clipper) -> None:
    deploy(clipper, "obs-count", "obs-sum", models.total)
    for i in range(40):
        r = clipper.predict("obs-count", {"input": [float(i), 0.5]})
        assert r.status_code == 200 and r.json()["default"] is False
    for b in range(3):
        batch = [[1000.0 + 10 * b + j] for j in range(5)]
        assert clipper.predict("obs-count", {"input_batch": batch}).status_code == 200
    got = scrape(clipper)
    app, mv = {"app": "obs-count"}, {"model": "obs-sum", "version": "1"}
    assert value(got, "clipper_app_requests_total", **app) == 43
    assert value(got, "clipper_app_queries_total", **app) == 55
    assert value(got, "clipper_app_request_latency_seconds_count", **app) == 43
    defaults = got["clipper_app_default_outputs_total"]
    assert sum(v for k, v in defaults.items() if ("app", "obs-count") in k) == 0
    # Every input was new: the model computed each, in batches the histogram counts.
    stats = next(m for m in clipper.status()["models"] if m["model"] == "obs-sum:1")
    assert value(got, "clipper_model_predictions_total", **mv) == 55
    assert value(got, "clipper_model_batches_total", **mv) == stats["batches"]
    assert value(got, "clipper_model_batch_size_count", **mv) == stats["batches"]
    assert value(got, "clipper_model_batch_size_sum", **mv) == 55
    assert value(got, "clipper_replica_up", replica="obs-sum-1-0", **mv) == 1
    wait_for(  # weights are re-read once a second
        lambda: (
            value(scrape(clipper), "clipper_selection_weight", app="obs-count", model="obs-sum")
            == 1
        ),
        5,
        "obs-sum's selection weight",
    )
    # Repeats are answered by the cache (global: reported once, without labels).
    for i in range(10):
        clipper.predict("obs-count", {"input": [float(i), 0.5]})
    again = scrape(clipper)
    assert value(again, "clipper_cache_hits_total") - value(got, "clipper_cache_hits_total") == 10
    assert value(again, "clipper_model_predictions_total", **mv) == 55
    # inspect_instance reports the same figures.
    figures = clipper.conn.inspect_instance()["metrics"]
    assert figures["apps"]["obs-count"]["queries"] == 65
    assert figures["apps"]["obs-count"]["requests"] == 53
    assert figures["batch_sizes"]["obs-sum:1"]["count"] == stats["batches"]
    assert figures["batch_sizes"]["obs-sum:1"]["sum"] == 55


def test_default_outputs_are_counted_by_reason(clipper: Clipper) -> None:
    deploy(clipper, "obs-err", "obs-picky", models.picky)
    deploy(clipper, "obs-slow", "obs-sleepy", models.sleepy, slo=50_000)
    deploy(clipper, "obs-none", None, None)
    for x in (-1.0, -2.0, -3.0, 1.0, 2.0):
        clipper.predict("obs-err", {"input": [x]})
    for x in (1.0, 2.0, 3.0):
        body = clipper.predict("obs-slow", {"input": [x]}).json()
        assert body["default"] is True
    for x in (1.0, 2.0):
        clipper.predict("obs-none", {"input": [x]})
    for x in (5.0, 6.0):
        r = clipper.http.post(
            f"{clipper.query_url}/obs-err/update", json={"uid": "u", "input": [x], "label": x}
        )
        assert r.json() == {"accepted": True}
    r = clipper.http.post(
        f"{clipper.query_url}/obs-none/update", json={"uid": "u", "input": [1.0], "label": 1}
    )
    assert r.json()["accepted"] is False
    got = scrape(clipper)
    defaults = {
        dict(k)["reason"]: v
        for k, v in got["clipper_app_default_outputs_total"].items()
        if dict(k)["app"] in ("obs-err", "obs-slow", "obs-none") and v
    }
    assert defaults == {"model_error": 3, "slo": 3, "no_models": 2}
    assert value(got, "clipper_app_feedback_total", app="obs-err", accepted="true") == 2
    assert value(got, "clipper_app_feedback_total", app="obs-none", accepted="false") == 1
    assert value(got, "clipper_model_batch_errors_total", model="obs-picky", version="1") == 3


def test_selection_weights_follow_feedback(clipper: Clipper) -> None:
    conn = clipper.conn
    conn.register_application("obs-vote", "doubles", "-1", 1_000_000, selection_policy="exp4")
    for name, func in (("obs-parity", models.parity), ("obs-seven", models.constant)):
        deploy_python_closure(clipper.conn, name, "1", "doubles", func)
        clipper.conn.link_model_to_app("obs-vote", name)
        clipper.wait_live(name)
    for i in range(20):  # the parity model is always right, the other always wrong
        r = clipper.http.post(
            f"{clipper.query_url}/obs-vote/update",
            json={"uid": "u", "input": [float(i)], "label": i % 2},
        )
        assert r.json() == {"accepted": True}

    def weights() -> tuple[float, float] | None:
        got = scrape(clipper)
        good = value(got, "clipper_selection_weight", app="obs-vote", model="obs-parity")
        bad = value(got, "clipper_selection_weight", app="obs-vote", model="obs-seven")
        return (good, bad) if good > 0.75 else None  # eta 0.1: ~0.88 after 20

    good, bad = wait_for(weights, 10, "the weights to favour the parity model")
    assert good + bad == pytest.approx(1.0)


def load(url: str, stop: threading.Event, body: dict[str, Any]) -> None:
    with httpx.Client(timeout=10) as http:
        i = 0
        while not stop.is_set():
            http.post(url, json={**body, "input": [float(i % 50)]})
            i += 1


def test_dashboard_series_move_while_queries_run(clipper: Clipper) -> None:
    deploy(clipper, "obs-dash", "obs-dash-sum", models.total, slo=20_000)
    summary = f"{clipper.admin_url}/dashboard/api/summary"
    stop = threading.Event()
    worker = threading.Thread(
        target=load, args=(f"{clipper.query_url}/obs-dash/predict", stop, {}), daemon=True
    )
    worker.start()
    try:

        def moving() -> dict[str, Any] | None:
            body = clipper.http.get(summary).json()
            last = body["samples"][-1] if body["samples"] else {}
            app = last.get("apps", {}).get("obs-dash")
            return body if app and app["qps"] > 0 and app["p99_ms"] is not None else None

        first = wait_for(moving, 15, "the dashboard's series to show obs-dash's queries")
        t0 = first["samples"][-1]["t"]
        newer = wait_for(
            lambda: clipper.http.get(summary, params={"since": t0}).json()["samples"],
            5,
            "a newer sample",
        )
    finally:
        stop.set()
        worker.join(10)
    assert all(s["t"] > t0 for s in newer)
    assert newer[-1]["apps"]["obs-dash"]["qps"] > 0
    app = next(a for a in first["apps"] if a["name"] == "obs-dash")
    assert app["slo_ms"] == 20 and app["models"] == ["obs-dash-sum"]
    row = next(m for m in first["models"] if m["model"] == "obs-dash-sum")
    assert row["live"] == 1 and row["dead"] == 0 and row["current"] is True
    assert "obs-dash-sum:1" in first["samples"][-1]["models"]
    assert len(first["samples"]) <= first["history"]


def test_logs_follow_shows_events_and_slo_miss_summaries(clipper: Clipper) -> None:
    deploy(clipper, "obs-late", "obs-late-m", models.sleepy, slo=30_000)
    lines: queue.Queue[str] = queue.Queue()
    follow = subprocess.Popen(
        [sys.executable, "-m", "clipper", *global_args(clipper.cm), "logs", "--follow",
         "--interval", "0.2", "-n", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env(),
    )  # fmt: skip
    assert follow.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(x) for x in follow.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    seen: list[str] = []

    def expect(fragment: str, timeout: float = 30, count: int = 1) -> list[str]:
        """Wait until ``count`` lines holding ``fragment`` were printed; return them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in seen if fragment in line]
            if len(found) >= count:
                return found
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=0.5))
        raise AssertionError(f"`clipper logs --follow` showed no {fragment!r}: {seen}")

    def misses() -> int:  # the 4 misses may straddle two 10-second summaries
        found = [line for line in seen if "slo_misses app=obs-late " in line]
        return sum(int(line.split(" count=")[1].split()[0]) for line in found)

    try:
        for x in range(4):
            assert clipper.predict("obs-late", {"input": [float(x)]}).json()["default"]
        line = expect("slo_misses app=obs-late ")[0]
        assert "WARNING" in line and "reasons=slo:" in line and "interval_s=10" in line
        if misses() < 4:
            expect("slo_misses app=obs-late ", count=2)
        assert misses() == 4
        (replica,) = clipper.live_replicas("obs-late-m")
        os.kill(replica["pid"], signal.SIGKILL)
        expect("restarting replica obs-late-m-1-0")
        expect("replica obs-late-m-1-0 of obs-late-m:1 joined")
        deploy_python_closure(clipper.conn, "obs-late-m", "2", "doubles", models.total)
        clipper.conn.set_model_version("obs-late-m", "1")
        expect("model obs-late-m now serves version 1")
    finally:
        follow.terminate()
        follow.wait(10)
        reader.join(5)
        follow.stdout.close()
