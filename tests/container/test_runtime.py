"""The container runtime: minimal imports, batch handling, errors as data."""

import subprocess
import sys

import numpy as np
import pytest

from clipper.container.runtime import as_predict_fn, run_predict
from clipper.rpc import protocol as p


def test_the_container_imports_nothing_of_the_frontend():
    code = (
        "import sys, clipper.container.__main__\n"
        "heavy = {'uvicorn', 'httpx', 'orjson', 'typer', 'rich', 'sqlite3', 'uvloop',"
        " 'httptools'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
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
