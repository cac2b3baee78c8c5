"""Faults injected into real processes: killed, frozen and misbehaving model containers.

One server for the module; each test deploys its own app and model, so a
fault in one never reaches another. Every query has a client timeout: a
query that hangs fails the test instead of stalling it.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import os
import signal
import time
from pathlib import Path

import cloudpickle
import pytest

from tests.helpers import Clipper, pid_alive, wait_for
from tests.reliability import models
from tests.reliability.support import (
    NO_MODELS,
    QUEUE_FULL,
    REPLICA_LOST,
    SLO_MISSED,
    Answer,
    concurrently,
    deploy,
    model_stats,
    replicas_of,
    rss_bytes,
    stopped,
    timed_predict,
)

pytestmark = pytest.mark.slow

# Default explanations that may answer a query whose replica died or froze.
FAULT_REASONS = (NO_MODELS, SLO_MISSED, REPLICA_LOST, QUEUE_FULL)


@pytest.fixture(scope="module")
def clipper(tmp_path_factory):
    server = Clipper(tmp_path_factory.mktemp("faults")).start()
    yield server
    server.stop()


def in_flight(clipper: Clipper, model: str) -> int:
    stats = model_stats(clipper, model)
    return int(stats["in_flight_batches"]) if stats else 0


def assert_answered(answer: Answer, expected: float, default: str, slo_s: float) -> None:
    """A 200 within the SLO (plus scheduling margin): the right output, or the
    default with an explanation that names a fault."""
    assert answer.status == 200, answer.body
    assert answer.elapsed < slo_s + 2.0, f"answered after {answer.elapsed:.2f}s"
    body = answer.body
    if body["default"]:
        assert body["output"] == default
        assert any(r in body["default_explanation"] for r in FAULT_REASONS), body
    else:
        assert body["output"] == expected


def test_kill_9_a_replica_mid_batch_its_queries_are_retried_on_the_other(clipper):
    deploy(
        clipper, "kill-one", "kill-one", models.make_sleeper(0.3), replicas=2, slo_micros=10_000_000
    )
    victim, survivor = clipper.wait_live("kill-one", 2)[:2]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(timed_predict, clipper, "kill-one", {"input": [float(i), 1.0]})
            for i in range(40)
        ]
        wait_for(lambda: in_flight(clipper, "kill-one") == 2, 30, "both replicas busy")
        os.kill(victim["pid"], signal.SIGKILL)
        answers = [f.result() for f in futures]

    # Nothing lost, nothing late, no 5xx: the lost batch ran again on the survivor.
    for i, answer in enumerate(answers):
        assert answer.status == 200, answer.body
        assert answer.elapsed < 10.0
        assert answer.body["default"] is False, answer.body
        assert answer.body["output"] == float(i) + 1.0
    # The manager restarts the victim: a new process, counted, live again.
    restarted = wait_for(
        lambda: [
            r
            for r in replicas_of(clipper, "kill-one")
            if r["replica"] == victim["replica"] and r["live"] and r["pid"] != victim["pid"]
        ],
        60,
        "the killed replica to be restarted",
    )[0]
    assert restarted["restarts"] >= 1
    assert not pid_alive(victim["pid"])
    survivor_now = [r for r in replicas_of(clipper, "kill-one") if r["pid"] == survivor["pid"]]
    assert survivor_now and survivor_now[0]["restarts"] == 0
    assert timed_predict(clipper, "kill-one", {"input": [5.0]}).body["output"] == 5.0


def test_kill_every_replica_defaults_say_why_then_recovery(clipper, tmp_path):
    gate = tmp_path / "gate"  # while it exists, restarted replicas cannot come up
    slo_s = 1.0
    deploy(
        clipper,
        "kill-all",
        "kill-all",
        models.make_gated(str(gate)),
        replicas=2,
        slo_micros=int(slo_s * 1e6),
        default="all gone",
    )
    before = clipper.wait_live("kill-all", 2)
    assert timed_predict(clipper, "kill-all", {"input": [1.0]}).body["output"] == 1.0

    gate.touch()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [
            pool.submit(timed_predict, clipper, "kill-all", {"input": [float(i), 0.5]})
            for i in range(6)
        ]
        wait_for(lambda: in_flight(clipper, "kill-all") >= 1, 30, "a batch in flight")
        for replica in before:
            os.kill(replica["pid"], signal.SIGKILL)
        answers = [f.result() for f in futures]
    for i, answer in enumerate(answers):
        assert_answered(answer, float(i) + 0.5, "all gone", slo_s)

    # The manager restarts both (the gate holds them before they register).
    wait_for(
        lambda: all(r["restarts"] >= 1 and not r["live"] for r in replicas_of(clipper, "kill-all")),
        30,
        "both replicas restarted and not yet live",
    )
    down = [timed_predict(clipper, "kill-all", {"input": [float(i)]}) for i in range(3)]
    for answer in down:
        assert answer.status == 200
        assert answer.body["default"] is True and answer.body["output"] == "all gone"
        assert answer.body["default_explanation"] == NO_MODELS
        assert answer.elapsed < slo_s  # no model to wait for: answered at once

    gate.unlink()
    clipper.wait_live("kill-all", 2)
    wait_for(
        lambda: timed_predict(clipper, "kill-all", {"input": [2.0, 2.0]}).body["output"] == 4.0,
        30,
        "answers from the restarted replicas",
    )
    assert {r["pid"] for r in replicas_of(clipper, "kill-all")}.isdisjoint(
        {r["pid"] for r in before}
    )


def test_a_frozen_replica_is_removed_by_the_heartbeat_timeout_and_rejoins(clipper):
    slo_s = 1.0
    deploy(
        clipper,
        "frozen",
        "frozen",
        models.whoami,
        replicas=2,
        slo_micros=int(slo_s * 1e6),
        default="frozen default",
    )
    frozen, other = clipper.wait_live("frozen", 2)[:2]
    answers: list[Answer] = []

    def load(seconds: float) -> None:
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            i += 1
            answers.append(timed_predict(clipper, "frozen", {"input": [time.monotonic(), i]}))

    with stopped(frozen["pid"]):
        frozen_at = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            loaders = [pool.submit(load, 2.0) for _ in range(4)]
            # The frontend hears nothing from it and removes it (3 s by default).
            wait_for(
                lambda: (
                    not next(
                        r for r in replicas_of(clipper, "frozen") if r["pid"] == frozen["pid"]
                    )["live"]
                ),
                15,
                "the frozen replica to be removed",
            )
            removed_after = time.monotonic() - frozen_at
            for f in loaders:
                f.result()
        # Every query was answered by the other replica or by the deadline path.
        assert answers
        for answer in answers:
            assert answer.status == 200, answer.body
            assert answer.elapsed < slo_s + 2.0
            if answer.body["default"]:
                assert answer.body["output"] == "frozen default"
                assert any(r in answer.body["default_explanation"] for r in FAULT_REASONS)
            else:
                assert answer.body["output"] == other["pid"]
        assert 2.0 < removed_after < 15.0
        # Once removed, queries go to the other replica only, and in time.
        for i in range(4):
            answer = timed_predict(clipper, "frozen", {"input": [-1.0, i]})
            assert answer.body == {**answer.body, "output": other["pid"], "default": False}
        # A hang is not a crash: the manager did not restart it.
        record = next(r for r in replicas_of(clipper, "frozen") if r["pid"] == frozen["pid"])
        assert record["restarts"] == 0 and pid_alive(frozen["pid"])

    # SIGCONT: it registers again by itself and takes work again.
    clipper.wait_live("frozen", 2)

    def pair() -> set[int]:
        got = concurrently(
            lambda i: timed_predict(clipper, "frozen", {"input": [time.monotonic(), i]}), 4, 4
        )
        return {a.body["output"] for a in got if not a.body["default"]}

    wait_for(lambda: frozen["pid"] in pair(), 30, "the thawed replica to answer queries")


def test_a_replica_stuck_in_predict_forever_is_replaced(clipper):
    slo_s = 0.5
    deploy(
        clipper,
        "stuck",
        "stuck",
        models.make_hanging(),
        slo_micros=int(slo_s * 1e6),
        default="stuck default",
    )
    (replica,) = clipper.wait_live("stuck")
    try:
        stuck = timed_predict(clipper, "stuck", {"input": [13.0]})
        assert stuck.status == 200 and stuck.body["default"] is True  # by the deadline
        assert stuck.elapsed < slo_s + 2.0
        # The model must come back: the stuck replica removed and restarted (or
        # another started), within a bound far beyond any sane batch (40 SLOs).
        wait_for(
            lambda: timed_predict(clipper, "stuck", {"input": [1.0]}).body["default"] is False,
            20,
            "the model to answer again",
        )
    finally:
        # Never leave a stuck process for the server's shutdown to wait on.
        with contextlib.suppress(ProcessLookupError):
            os.kill(replica["pid"], signal.SIGKILL)


def test_a_replica_stuck_holding_the_gil_is_killed_and_restarted(clipper):
    slo_s = 0.5
    deploy(
        clipper,
        "gil",
        "gil",
        models.make_gil_holding(),
        slo_micros=int(slo_s * 1e6),
        default="gil default",
    )
    (replica,) = clipper.wait_live("gil")
    try:
        stuck = timed_predict(clipper, "gil", {"input": [13.0]})
        assert stuck.status == 200 and stuck.body["default"] is True  # by the deadline
        assert stuck.elapsed < slo_s + 2.0
        # Its own watchdog cannot run: the server removes it for silence (3 s),
        # gives it the batch time limit (5 s here) to come back, then has the
        # manager kill it; the manager starts a new process.
        wait_for(
            lambda: any(
                r["live"] and r["pid"] not in (None, replica["pid"])
                for r in replicas_of(clipper, "gil")
            ),
            60,
            "a new process of the hung replica to be live",
        )
        assert not pid_alive(replica["pid"])
        (record,) = replicas_of(clipper, "gil")
        assert record["restarts"] >= 1

        def answered() -> Answer | None:
            answer = timed_predict(clipper, "gil", {"input": [1.0]})
            return answer if answer.body["default"] is False else None

        # Its first answer (a cold process on a busy machine may miss one SLO).
        answer = wait_for(answered, 30, "the new process to answer")
        assert answer.status == 200 and answer.body["output"] == 1.0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(replica["pid"], signal.SIGKILL)


def test_a_model_with_the_wrong_number_of_outputs_errs_for_that_batch_only(clipper):
    deploy(clipper, "miscount", "miscount", models.wrong_count, default="bad count")
    (replica,) = clipper.wait_live("miscount")
    bad = timed_predict(clipper, "miscount", {"input": [1.0]})
    assert bad.status == 200 and bad.body["default"] is True
    assert bad.body["output"] == "bad count"
    assert "2 outputs for 1 inputs" in bad.body["default_explanation"]
    batch = timed_predict(clipper, "miscount", {"input_batch": [[1.0], [2.0], [3.0]]})
    assert batch.status == 200
    assert all(
        p["default"] and "outputs for" in p["default_explanation"]
        for p in batch.body["batch_predictions"]
    )
    # The container keeps serving: same process, no restart, a right answer next.
    good = timed_predict(clipper, "miscount", {"input": [7.0]})
    assert good.body == {**good.body, "output": 7, "default": False}
    (now,) = replicas_of(clipper, "miscount")
    assert now["pid"] == replica["pid"] and now["restarts"] == 0 and now["live"]


def test_a_model_that_raises_on_some_inputs_keeps_serving_the_others(clipper):
    deploy(clipper, "raises", "raises", models.picky, default="refused")
    (replica,) = clipper.wait_live("raises")
    bad = timed_predict(clipper, "raises", {"input": [-1.0]})
    assert bad.status == 200 and bad.body["default"] is True
    assert "ValueError" in bad.body["default_explanation"]
    assert "negative input" in bad.body["default_explanation"]
    mixed = timed_predict(clipper, "raises", {"input_batch": [[-2.0], [2.0]]})
    assert mixed.status == 200
    first, second = mixed.body["batch_predictions"]
    assert first["default"] is True and "ValueError" in first["default_explanation"]
    # The good input shares the batch's fate, or was batched apart and answered.
    assert second["default"] is True or second["output"] == 2.0
    for i in range(5):
        good = timed_predict(clipper, "raises", {"input": [float(i)]})
        assert good.body == {**good.body, "output": float(i), "default": False}
    (now,) = replicas_of(clipper, "raises")
    assert now["pid"] == replica["pid"] and now["restarts"] == 0 and now["live"]


def vm_size_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) // 1024
    raise AssertionError(f"no VmSize for pid {pid}")


def test_a_leaking_model_errs_for_that_batch_and_serving_continues(clipper):
    # The address space a container of this environment needs, measured on a
    # first version that has no limit; the second version gets 256 MiB more.
    deploy(clipper, "leaky", "leaky", models.leaky, default="leaked")
    (probe,) = clipper.wait_live("leaky")
    limit_mb = vm_size_mb(probe["pid"]) + 256
    clipper.conn.add_model(
        {
            "model_name": "leaky",
            "model_version": "2",
            "input_type": "doubles",
            "model_data": base64.b64encode(cloudpickle.dumps(models.leaky)).decode(),
            "options": {"memory_limit_mb": limit_mb},
        }
    )
    (replica,) = clipper.wait_live("leaky", version="2")
    start_rss = rss_bytes(replica["pid"])

    answers = []
    for i in range(1, 40):
        answer = timed_predict(clipper, "leaky", {"input": [float(i)]})
        assert answer.status == 200, answer.body
        answers.append(answer.body)
        if answer.body["default"]:
            break
        assert answer.body["output"] == i  # it holds i chunks: a real, growing leak
        if i == 4:
            assert rss_bytes(replica["pid"]) - start_rss > 48 * 1024 * 1024
    # The batch that hit the limit is an error, named as such, for that query only.
    failed = answers[-1]
    assert failed["default"] is True and failed["output"] == "leaked", answers
    assert "MemoryError" in failed["default_explanation"]
    assert 5 < len(answers) < 25  # about 256 MiB / 16 MiB batches in
    # Then the model serves again: restarted by its manager with a clean heap.
    wait_for(
        lambda: timed_predict(clipper, "leaky", {"input": [1000.0]}).body["output"] == 1,
        60,
        "the leaking model to serve again",
    )
    (now,) = replicas_of(clipper, "leaky", "2")
    assert now["live"] and now["restarts"] >= 1 and now["pid"] != replica["pid"]


def test_outputs_json_cannot_carry_are_an_error_for_that_query_only(clipper):
    deploy(clipper, "odd", "odd", models.odd_outputs, default="odd default")
    for value in (1.0, 2.0, 1.0):  # the third: a bad output must not be cached as an answer
        answer = timed_predict(clipper, "odd", {"input": [value]})
        assert answer.status == 200, answer.body
        assert answer.body["default"] is True and answer.body["output"] == "odd default"
        assert answer.body["default_explanation"]
    # One input's bad output never hides the others' answers.
    batch = timed_predict(clipper, "odd", {"input_batch": [[1.0], [3.0]]})
    assert batch.status == 200, batch.body
    bad, good = batch.body["batch_predictions"]
    assert bad["default"] is True and good == {**good, "output": 3.0, "default": False}
    # Integer keys are fine: JSON carries them as strings, as json.dumps does.
    keyed = timed_predict(clipper, "odd", {"input": [4.0]})
    assert keyed.body["output"] == {"1": "one", "2": "two"}
