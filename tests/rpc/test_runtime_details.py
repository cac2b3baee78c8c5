"""The optional ``runtime`` of a ``register``: what a replica says it runs on, bounded."""

from __future__ import annotations

from clipper.container.runtime import prepare_model
from clipper.rpc.server import MAX_RUNTIME_ENTRIES, runtime_details


def test_only_short_printable_strings_are_kept() -> None:
    sent = {
        "device": "cuda:0",
        "provider": "CUDAExecutionProvider",
        "bad\nkey": "x",
        "number": 3,
        "long": "x" * 500,
        "": "empty key",
        "ctl": "a\x1b[31m",
    }
    assert runtime_details(sent) == {"device": "cuda:0", "provider": "CUDAExecutionProvider"}
    assert runtime_details(["device"]) == {} and runtime_details(None) == {}
    many = {f"k{i}": "v" for i in range(50)}
    assert len(runtime_details(many)) == MAX_RUNTIME_ENTRIES


def test_a_models_prepare_hook_runs_once_and_says_what_it_runs_on() -> None:
    calls = []

    def model(xs: list[object]) -> list[int]:
        return [0] * len(xs)

    def prepare() -> dict[str, object]:
        calls.append(1)
        return {"device": "cpu", "precision": 32}

    model.clipper_prepare = prepare  # type: ignore[attr-defined]
    assert prepare_model(model) == {"device": "cpu", "precision": "32"}
    assert prepare_model(lambda xs: xs) == {}  # no hook: nothing to report
    assert calls == [1]
