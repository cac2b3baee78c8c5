"""Model errors apart from SLO misses: the replica logs their traceback (rate-
limited), the server counts them per model version (metrics, status, a log line
of their own)."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from clipper.metrics import Metrics, ServerStatistics
from clipper.types import ModelId
from tests.helpers import Clipper, wait_for
from tests.observability import models
from tests.observability.test_e2e import deploy, scrape, value
from tests.observability.test_metrics import model_stats


def test_model_errors_are_a_counter_of_their_own() -> None:
    stats = [model_stats()]
    metrics = Metrics(lambda: ServerStatistics(1.0, models=stats), registry=CollectorRegistry())
    stats[0] = model_stats().__class__(**{**model_stats().__dict__, "model_errors": 5})
    got = metrics.registry.get_sample_value(
        "clipper_model_errors_total", {"model": "m", "version": "1"}
    )
    assert got == 5


def test_model_errors_are_logged_per_model_version_not_as_slo_misses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="clipper.metrics")
    metrics = Metrics(lambda: ServerStatistics(1.0), registry=CollectorRegistry())
    base = model_stats().__dict__
    failing = model_stats().__class__(
        **{**base, "model_errors": 3, "last_model_error": "model m:1 raised ValueError: no"}
    )
    metrics.log_model_errors([failing])
    metrics.log_model_errors([failing])  # nothing new: nothing logged
    other = model_stats(ModelId("n", "2"))
    metrics.log_model_errors([failing, other])
    assert [r.getMessage() for r in caplog.records] == [
        "model_errors model=m version=1 count=3 interval_s=10"
        ' last="model m:1 raised ValueError: no"'
    ]


@pytest.mark.slow
def test_a_model_error_is_logged_with_its_traceback_and_counted_apart(clipper: Clipper) -> None:
    deploy(clipper, "obs-fail", "obs-fail-m", models.first_feature_positive)
    r = clipper.predict("obs-fail", {"input_batch": [[-3, 2], [4, 1]]})
    bad, good = r.json()["batch_predictions"]
    assert bad["default"] is True
    assert "ValueError: negative first feature: -3.0" in bad["default_explanation"]
    assert good["default"] is False and good["output"] == 5.0
    # The replica's log: the error, with the model's file and line.
    (replica,) = clipper.live_replicas("obs-fail-m")
    log_file = clipper.cm.state_path / "logs" / f"{replica['replica']}.log"
    text = wait_for(
        lambda: (t := log_file.read_text()) and "Traceback" in t and t,
        what="the traceback in the replica's log",
    )
    assert "failed: ValueError: negative first feature: -3.0" in text
    # The file and line of the model's code (shipped by value: cloudpickle drops the
    # file name, the runtime finds it again), and the line itself.
    assert 'observability/models.py", line' in text and "in check_row" in text
    assert 'raise ValueError(f"negative first feature:' in text
    # Counted as a model error, per model version, and not as an SLO miss.
    got = scrape(clipper)
    mv = {"model": "obs-fail-m", "version": "1"}
    assert value(got, "clipper_model_errors_total", **mv) == 1
    assert value(got, "clipper_model_batch_errors_total", **mv) == 1
    stats = next(m for m in clipper.status()["models"] if m["model"] == "obs-fail-m:1")
    assert stats["model_errors"] == 1
    assert "negative first feature: -3.0" in stats["last_model_error"]
    server_log = clipper.cm.state_path / "logs" / "server.log"
    line = wait_for(
        lambda: next(
            (
                x
                for x in server_log.read_text().splitlines()
                if "model_errors model=obs-fail-m " in x
            ),
            None,
        ),
        timeout=90,
        what="the server's model_errors line",
    )
    assert "version=1 count=1" in line and "negative first feature: -3.0" in line
    assert "slo_misses app=obs-fail " not in server_log.read_text()
