"""The runtime isolates the inputs a model fails on, and logs model errors with
their traceback (rate-limited). Pure: no sockets, fake clocks."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from clipper.container.runtime import ErrorLog, isolate_failures, run_predict
from clipper.rpc import protocol as p


def batch(rows: list[list[float]], **extra: Any) -> tuple[dict[str, Any], list[bytes]]:
    fields, frames = p.encode_inputs("doubles", [np.array(r, dtype=float) for r in rows])
    header = p.parse_header(p.make(p.BATCH, id=5, input_type="doubles", **fields, **extra))
    return header, [bytes(f) for f in frames]


def decoded(frames: p.Frames) -> p.BatchResult:
    header = p.parse_header(frames[0])
    if header.get("ok") is not True:
        p.bound_error(header)
    return p.decode_result(header, [bytes(f) for f in frames[1:]])


class Picky:
    """Raises on a batch holding a negative first feature; counts its calls."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, xs: Any) -> list[float]:
        self.calls.append(len(xs))
        for x in xs:
            if x[0] < 0:
                raise ValueError(f"negative first feature: {x[0]}")
        return [float(x.sum()) for x in xs]


def test_a_batch_that_succeeds_costs_one_call_and_names_no_errors():
    model = Picky()
    header, frames = batch([[1, 2], [3, 4], [5, 6]])
    out = run_predict(model, 5, header, frames, input_errors=True)
    assert model.calls == [3]
    result = p.parse_header(out[0])
    assert result["ok"] is True and "errors" not in result and "bad_outputs" not in result
    assert decoded(out) == [3.0, 7.0, 11.0]


def test_one_bad_input_fails_alone_with_its_own_error():
    model = Picky()
    header, frames = batch([[4, 1], [-3, 2], [5, 5], [6, 6], [7, 7], [8, 8], [9, 9], [1, 1]])
    got = decoded(run_predict(model, 5, header, frames, input_errors=True))
    assert isinstance(got, p.PartialOutputs) and got.failed == 1
    assert got[1] == p.ModelRaised("ValueError", "negative first feature: -3.0")
    assert [got[i] for i in (0, 2, 3, 4, 5, 6, 7)] == [5.0, 10.0, 12.0, 14.0, 16.0, 18.0, 2.0]
    # Bisection: the batch, then two halves per level down to the bad input.
    assert model.calls == [8, 4, 4, 2, 2, 1, 1]


def test_each_bad_input_names_its_own_error():
    model = Picky()
    header, frames = batch([[-3, 2], [4, 1], [-7, 0]])
    got = decoded(run_predict(model, 5, header, frames, input_errors=True))
    assert isinstance(got, p.PartialOutputs) and got.failed == 2
    assert got[0] == p.ModelRaised("ValueError", "negative first feature: -3.0")
    assert got[1] == 5.0
    assert got[2] == p.ModelRaised("ValueError", "negative first feature: -7.0")


def test_an_older_frontend_gets_the_whole_batch_failed_as_before():
    model = Picky()
    header, frames = batch([[-3, 2], [4, 1]])
    got = decoded(run_predict(model, 5, header, frames))  # input_errors not announced
    assert got == p.ModelRaised("ValueError", "negative first feature: -3.0")
    assert model.calls == [2]


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        (lambda xs: [1.0], "predict returned 1 outputs for 2 inputs"),
        (lambda xs: "one string", "one output per input"),
    ],
)
def test_a_broken_contract_fails_the_batch_without_retries(model, fragment):
    calls = []

    def counted(xs):
        calls.append(len(xs))
        return model(xs)

    header, frames = batch([[1, 2], [3, 4]])
    got = decoded(run_predict(counted, 5, header, frames, input_errors=True))
    assert isinstance(got, p.ModelRaised) and fragment in got.message
    assert calls == [2]  # splitting would not help: not retried


def test_an_output_that_cannot_be_sent_fails_its_input_only():
    header, frames = batch([[1, 2], [3, 4], [5, 6]])
    got = decoded(
        run_predict(lambda xs: [1, object(), 2**70], 5, header, frames, input_errors=True)
    )
    assert isinstance(got, p.PartialOutputs) and got.failed == 2 and got[0] == 1
    assert (
        isinstance(got[1], p.BadResult) and "cannot encode object of type object" in got[1].reason
    )
    assert isinstance(got[2], p.BadResult) and "cannot be sent" in got[2].reason


def test_isolation_stops_at_the_deadline_and_says_so():
    now = [0.0]

    def slow_picky(xs):
        now[0] += 0.1 * len(xs)  # 100 ms per input, on the fake clock
        if any(x[0] < 0 for x in xs):
            raise ValueError("negative")
        return [1.0] * len(xs)

    rows = [[1.0]] * 7 + [[-1.0]]
    header, frames = batch(rows, deadline_s=1.0)
    got = decoded(
        run_predict(slow_picky, 5, header, frames, input_errors=True, clock=lambda: now[0])
    )
    # 0.8 s for the batch; a half (0.4 s) would end past the 1 s deadline: no split.
    assert isinstance(got, p.PartialOutputs) and got.failed == 8
    assert all(isinstance(o, p.ModelRaised) and "not isolated" in o.message for o in got)


def test_isolate_failures_without_a_deadline_finds_every_bad_input():
    inputs = np.array([[v] for v in (1, -1, 2, -2, 3, 4, -5)], dtype=float)
    model = Picky()
    out = isolate_failures(model, inputs, 7, ValueError("first"))
    bad = [i for i, o in enumerate(out) if not isinstance(o, float)]
    assert bad == [1, 3, 6]
    assert [out[i] for i in (0, 2, 4, 5)] == [1.0, 2.0, 3.0, 4.0]


def test_too_many_errors_to_name_fall_back_to_one_for_the_batch():
    header, frames = batch([[-1.0]] * 3000)
    # Each input's error is long and distinct; 3000 of them overflow the header budget.

    def always(xs):
        raise ValueError("x" * 2000 if len(xs) > 1 else f"bad row {id(xs)} " + "y" * 2000)

    out = run_predict(always, 5, header, frames, input_errors=True)
    assert len(out[0]) <= p.MAX_HEADER_BYTES
    got = decoded(out)
    assert isinstance(got, (p.PartialOutputs, p.ModelRaised))


# -- the replica's error log ----------------------------------------------------------------


def raise_from_the_model(value: float) -> None:
    raise ValueError(f"negative first feature: {value}")


def test_model_errors_are_logged_with_the_models_traceback(caplog):
    caplog.set_level(logging.WARNING, logger="clipper.container")

    def model(xs):
        for x in xs:
            if x[0] < 0:
                raise_from_the_model(float(x[0]))
        return [1.0] * len(xs)

    header, frames = batch([[-3, 2], [4, 1]])
    run_predict(model, 94, header, frames, input_errors=True, errors=ErrorLog())
    (record,) = caplog.records
    text = record.getMessage()
    assert text.startswith(
        "batch 94, input 1 of 2 failed: ValueError: negative first feature: -3.0"
    )
    assert "Traceback (most recent call last)" in text
    assert f'File "{__file__}"' in text and "in raise_from_the_model" in text
    assert "runtime.py" not in text  # the runtime's own frames are left out


def test_error_tracebacks_are_rate_limited_per_type(caplog):
    caplog.set_level(logging.WARNING, logger="clipper.container")
    now = [0.0]
    errors = ErrorLog(tracebacks=2, window_s=60.0, clock=lambda: now[0])
    for i in range(5):
        try:
            raise_from_the_model(float(-i))
        except ValueError as exc:
            errors.failed(f"batch {i}", "ValueError", str(exc), exc)
    errors.failed("batch 9", "KeyError", "'x'", None)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3  # 2 ValueErrors and the KeyError
    assert sum("Traceback" in m for m in messages) == 2
    caplog.clear()
    now[0] = 61.0
    errors.flush()
    assert [r.getMessage() for r in caplog.records] == [
        "3 more model errors of type ValueError in 60 s (logged: the first 2, with tracebacks)"
    ]


def test_nan_and_infinity_fail_their_input_in_the_replica():
    header, frames = batch([[1.0], [2.0], [3.0]])
    model = lambda xs: [float("nan"), 1.0, [float("-inf")]]  # noqa: E731
    out = run_predict(model, 5, header, frames, input_errors=True)
    result = p.parse_header(out[0])
    assert result["finite"] is True  # checked here: the frontend need not scan
    assert result["bad_outputs"] == [
        [0, "an output holding NaN, which JSON cannot carry"],
        [2, "an output holding -Infinity, which JSON cannot carry"],
    ]
    got = decoded(out)
    assert isinstance(got, p.PartialOutputs) and got.failed == 2 and got[1] == 1.0


def test_a_checked_result_is_not_scanned_again_and_an_older_frontend_gets_it_as_before():
    header, frames = batch([[1.0]])
    out = run_predict(lambda xs: [0.5], 5, header, frames, input_errors=True)
    assert p.parse_header(out[0])["finite"] is True
    old = run_predict(lambda xs: [float("nan")], 5, header, frames)
    assert "finite" not in p.parse_header(old[0]) and "bad_outputs" not in p.parse_header(old[0])
