"""The container runtime: minimal imports, batch handling, errors as data."""

import asyncio
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from clipper.container import runtime as runtime_module
from clipper.container.runtime import ContainerRuntime, as_predict_fn, run_predict
from clipper.rpc import protocol as p
from clipper.rpc.server import RPCServer
from tests.helpers import free_port


def test_the_container_imports_nothing_of_the_frontend():
    # A machine that only runs replicas installs numpy, pyzmq, msgpack and
    # cloudpickle (README): the container must not import the server's side.
    code = (
        "import sys, clipper.container.__main__\n"
        "heavy = {'uvicorn', 'httpx', 'orjson', 'typer', 'rich', 'sqlite3', 'uvloop',"
        " 'httptools', 'simdjson', 'prometheus_client', 'redis', 'ray', 'packaging'}\n"
        "ours = ('clipper.server', 'clipper.http', 'clipper.metrics', 'clipper.cli',"
        " 'clipper.frontend', 'clipper.management', 'clipper.batching', 'clipper.selection',"
        " 'clipper.store', 'clipper.dashboard', 'clipper.admin')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy"
        " or m.startswith(ours)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def batch(inputs, input_type="doubles"):
    fields, frames = p.encode_inputs(input_type, inputs)
    header = p.parse_header(p.make(p.BATCH, id=5, input_type=input_type, **fields))
    return header, [bytes(f) for f in frames]


def test_run_predict_returns_outputs():
    header, frames = batch([np.array([1.0, 2.0]), np.array([3.0, 4.0])])
    out = run_predict(lambda xs: [float(x.sum()) for x in xs], 5, header, frames)
    assert p.parse_header(out[0])["ok"] is True
    assert p.decode_outputs(out[1:], 2) == [3.0, 7.0]


@pytest.mark.parametrize(
    ("model", "error_type", "fragment"),
    [
        (lambda xs: 1 / 0, "ZeroDivisionError", "division"),
        (lambda xs: "not a list", "TypeError", "one output per input"),
        (lambda xs: [1, 2, 3], "ValueError", "3 outputs for 2 inputs"),
        (lambda xs: [object(), object()], "TypeError", "cannot encode"),
    ],
)
def test_model_failures_become_error_results(model, error_type, fragment):
    header, frames = batch([np.array([1.0]), np.array([2.0])])
    out = run_predict(model, 5, header, frames)
    result = p.parse_header(out[0])
    assert result["ok"] is False and result["error_type"] == error_type
    assert fragment in result["error_message"]


def test_objects_with_predict_are_models():
    class Model:
        def predict(self, xs):
            return list(xs)

    assert as_predict_fn(Model())([1]) == [1]
    with pytest.raises(TypeError):
        as_predict_fn(42)


class _Results:
    """A ReplicaListener that keeps what the replica answered."""

    def __init__(self):
        self.joined = []
        self.results = {}

    def replica_joined(self, replica):
        self.joined.append(replica)

    def replica_left(self, replica, reason):
        pass

    def batch_done(self, replica, batch_id, result):
        # As a failure's header read: what the model raised, or why its outputs were bad.
        if isinstance(result, p.ModelRaised):
            result = {"ok": False, "error_type": result.error_type, "error_message": result.message}
        elif isinstance(result, p.BadResult):
            result = {"ok": False, "error_type": "BadResult", "error_message": result.reason}
        self.results[batch_id] = result


def _serve_batches(model, batches, listener=None, **server_settings):
    """A real RPC endpoint and a real runtime (in a thread): send ``batches``
    one after another, as the dispatcher does; returns (outputs, runtime)."""
    address = f"tcp://127.0.0.1:{free_port()}"
    runtime = ContainerRuntime(
        model, address=address, model_name="m", model_version="1", input_type="doubles"
    )
    listener = listener or _Results()

    async def main():
        server = RPCServer(address, listener, **server_settings)
        await server.start()
        thread = threading.Thread(target=runtime.serve_forever, daemon=True)
        thread.start()
        loop = asyncio.get_running_loop()
        try:
            deadline = loop.time() + 30
            while not listener.joined:
                assert loop.time() < deadline, "the replica did not register"
                await asyncio.sleep(0.01)
            identity = listener.joined[0].identity
            for batch_id, inputs in enumerate(batches, 1):
                arrays = [np.asarray(x, dtype=np.float64) for x in inputs]
                fields, frames = p.encode_inputs("doubles", arrays)
                header = p.make(p.BATCH, id=batch_id, input_type="doubles", **fields)
                assert server.send(identity, [header, *frames])
                while batch_id not in listener.results:
                    assert loop.time() < deadline + 30, f"batch {batch_id} not answered"
                    await asyncio.sleep(0.001)
            answers = [listener.results[i] for i in range(1, len(batches) + 1)]
            return answers
        finally:
            runtime.stop()
            await asyncio.to_thread(thread.join, 10)
            await server.stop()

    return asyncio.run(main()), runtime


def test_a_fast_model_runs_on_the_main_thread_after_its_first_batch(monkeypatch):
    # A generous bound: a loaded machine may stall even a trivial first batch.
    monkeypatch.setattr(runtime_module, "INLINE_BELOW_S", 10.0)
    threads = []

    def model(xs):
        threads.append(threading.current_thread().name)
        return [float(sum(x)) for x in xs]

    outputs, runtime = _serve_batches(model, [[[1.0, 2.0]], [[3.0]], [[4.0], [5.0]]])
    assert outputs == [[3.0], [3.0], [4.0, 5.0]]
    # The first batch (latency unknown) goes to the worker; later ones run inline.
    assert threads[0] == "predict"
    assert "predict" not in threads[1:]
    assert runtime.inline_batches == 2 and runtime.batches_served == 3


def test_a_slow_model_stays_on_the_worker_thread(monkeypatch):
    monkeypatch.setattr(runtime_module, "INLINE_BELOW_S", 0.01)
    threads = []

    def model(xs):
        threads.append(threading.current_thread().name)
        time.sleep(0.05)  # always slower than INLINE_BELOW_S: stays on the worker
        return [0 for _ in xs]

    outputs, runtime = _serve_batches(model, [[[1.0]], [[2.0]], [[3.0]]])
    assert outputs == [[0], [0], [0]]
    assert threads == ["predict"] * 3
    assert runtime.inline_batches == 0


def test_a_result_over_the_frontends_size_limit_is_sent_as_an_error():
    runtime = ContainerRuntime(
        lambda xs: ["x" * 5000 for _ in xs],
        address="tcp://127.0.0.1:1",
        model_name="m",
        model_version="1",
        input_type="doubles",
    )
    header, frames = batch([np.array([1.0]), np.array([2.0])])
    assert p.parse_header(runtime._run_batch(5, header, frames)[0])["ok"] is True  # no limit yet
    runtime.max_message_bytes = 4096  # what the frontend's "registered" said
    (out,) = runtime._run_batch(5, header, frames)
    result = p.parse_header(out)
    assert result["ok"] is False and result["id"] == 5
    assert result["error_type"] == p.RESULT_TOO_LARGE
    assert "10,0" in result["error_message"] and "4,096 bytes" in result["error_message"]


def test_an_oversized_result_is_a_model_error_and_the_replica_keeps_serving():
    def model(xs):
        return ["x" * 10_000 if x[0] == 2.0 else "ok" for x in xs]

    listener = _Results()
    outputs, runtime = _serve_batches(
        model, [[[1.0]], [[2.0]], [[3.0]]], listener, max_message_bytes=4096
    )
    assert runtime.max_message_bytes == 4096  # learnt from the registration
    first, too_large, last = outputs
    assert first == ["ok"] and last == ["ok"]
    assert too_large["ok"] is False and too_large["error_type"] == p.RESULT_TOO_LARGE
    assert "over the frontend's RPC size limit of 4,096 bytes" in too_large["error_message"]
    # Not a dropped connection: the same registration answered all three batches.
    assert runtime.batches_served == 3 and len(listener.joined) == 1
