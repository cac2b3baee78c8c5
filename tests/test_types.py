import math
import subprocess
import sys

import numpy as np
import orjson
import pytest

from clipper.exceptions import InputError
from clipper.frontend import inputs as inputs_module
from clipper.frontend.inputs import parse_predict_body
from clipper.frontend.oip import _INPUT_DATATYPES
from clipper.frontend.oip_request import app_queries, parse_infer_request
from clipper.frontend.oip_tensors import DATATYPES as OIP_DATATYPES
from clipper.rpc import protocol
from clipper.settings import Settings
from clipper.types import NUMERIC_FORMATS, AppSpec, InputType, validate_app_name, validate_name


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("i", "integers"),
        ("ints", "integers"),
        ("int", "integers"),
        ("f", "floats"),
        ("d", "doubles"),
        ("double", "doubles"),
        ("DOUBLES", "doubles"),
        ("b", "bytes"),
        ("s", "strings"),
        ("str", "strings"),
        ("strings", "strings"),
        ("json", "json"),
    ],
)
def test_clipper_aliases_map_to_canonical_names(alias, canonical):
    assert InputType.parse(alias).value == canonical


@pytest.mark.parametrize("bad", ["tensor", "", 3, None])
def test_unknown_input_types_name_the_accepted_ones(bad):
    with pytest.raises(ValueError, match="input_type"):
        InputType.parse(bad)


@pytest.mark.parametrize("name", ["a", "digits", "m-1.2_x", "9", "a" * 63])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "-a", "a-", "a b", "a/b", "a" * 64, "é", 5])
def test_invalid_names(name):
    with pytest.raises(ValueError):
        validate_name(name)


@pytest.mark.parametrize("name", ["v2", "health", "ready", "metrics", "admin", "dashboard"])
def test_reserved_app_names(name):
    with pytest.raises(ValueError, match="reserved"):
        validate_app_name(name)


def test_settings_from_env_and_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPPER_QUERY_PORT", "2000")
    monkeypatch.setenv("CLIPPER_HOME", str(tmp_path))
    s = Settings.from_env(management_port=3000)
    assert (s.query_port, s.management_port, s.rpc_port) == (2000, 3000, 7000)
    assert s.state_dir == tmp_path.resolve()
    assert s.store == f"sqlite:///{tmp_path.resolve()}/clipper.db"
    assert s.rpc_address == "tcp://127.0.0.1:7000"


@pytest.mark.parametrize("name", ["v2\n", "m\n", "a\nb", "digits\r", "\nm", "m\x00"])
def test_names_are_matched_whole_a_trailing_newline_included(name):
    with pytest.raises(ValueError, match="invalid"):
        validate_name(name)
    with pytest.raises(ValueError, match="invalid"):
        validate_app_name(name)


# -- the numeric input types' one table, and the three readers that must agree ------------

_F32_NEAR = float(np.nextafter(NUMERIC_FORMATS[InputType.FLOATS].overflow, 0.0))


def _boundaries() -> list[tuple[InputType, str, bool]]:
    """(type, JSON literal, accepted) at each edge of each numeric type's range."""
    cases = []
    for t, f in NUMERIC_FORMATS.items():
        if f.integral:
            lo, hi = int(f.min_value), int(f.max_value)
            cases += [(t, str(lo), True), (t, str(hi), True)]
            cases += [(t, str(lo - 1), False), (t, str(hi + 1), False), (t, "0.5", False)]
        else:
            cases += [(t, repr(f.max_value), True), (t, repr(-f.max_value), True)]
            if f.overflow < math.inf:  # floats: above max_value, below overflow, rounds to max
                cases += [(t, repr(_F32_NEAR), True), (t, repr(-_F32_NEAR), True)]
                cases += [(t, repr(f.overflow), False), (t, repr(-f.overflow), False)]
            cases += [(t, "1e309", False), (t, "-1e309", False)]  # beyond float64
    return cases


def _rest(t: InputType, literal: str) -> list[np.ndarray] | None:
    """What the query parser makes of the literal, on each of its paths (the
    flat simdjson one, the batch one, the element-by-element authority)."""
    bodies = [f'{{"input": [{literal}]}}', f'{{"input_batch": [[{literal}], [{literal}]]}}']
    results: list[np.ndarray | None] = []
    for body in bodies:
        try:
            results += parse_predict_body(body.encode(), t, None).inputs
        except InputError:
            results.append(None)
    try:
        value = orjson.loads(f"[{literal}]")
    except orjson.JSONDecodeError:  # not a float64: no JSON value to walk
        pass
    else:
        try:
            results.append(inputs_module._parse_numeric_slow(value, t, "input"))
        except InputError:
            results.append(None)
    refused = [r is None for r in results]
    assert all(refused) or not any(refused), results  # every path answers the same
    return None if refused[0] else [r for r in results if r is not None]


def _oip(t: InputType, literal: str) -> list[np.ndarray] | None:
    """What ``/v2`` makes of it: as the type's own datatype (INT32, FP32, FP64)
    and as the widest of its kind (INT64, FP64), converted to the app's dtype."""
    spec = AppSpec("a", t, "-1", 100_000, input_shape=(1,))
    own = _INPUT_DATATYPES[t]
    wide = "INT64" if NUMERIC_FORMATS[t].integral else "FP64"
    results = []
    for datatype in (own, wide):
        tensor = f'{{"name": "x", "datatype": "{datatype}", "shape": [1, 1], "data": [{literal}]}}'
        try:
            request = parse_infer_request(f'{{"inputs": [{tensor}]}}'.encode(), None, spec)
            results.append(app_queries(request.tensor, spec)[0])
        except InputError:
            results.append(None)
    assert (results[0] is None) == (results[1] is None), results  # both datatypes agree
    return None if results[0] is None else results


def test_the_table_is_the_one_every_reader_uses():
    for t in InputType:
        f = NUMERIC_FORMATS.get(t)
        assert t.numeric is f and t.is_numeric == (f is not None)
        if f is None:
            continue
        assert protocol.NUMERIC_DTYPES[t.value] == f.dtype
        assert inputs_module._DTYPES[t] == f.np_dtype
        assert OIP_DATATYPES[_INPUT_DATATYPES[t]] == f.np_dtype
        if f.integral:
            assert (f.min_value, f.max_value) == (
                int(np.iinfo(f.np_dtype).min),
                int(np.iinfo(f.np_dtype).max),
            )
        else:
            assert f.max_value == -f.min_value == float(np.finfo(f.np_dtype).max)


def test_importing_the_types_does_not_import_numpy():
    code = "import sys, clipper.types; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(("input_type", "literal", "accepted"), _boundaries())
def test_rest_oip_and_rpc_agree_with_the_table_at_its_edges(input_type, literal, accepted):
    rest, oip = _rest(input_type, literal), _oip(input_type, literal)
    assert (rest is not None, oip is not None) == (accepted, accepted)
    if not accepted:
        return
    assert rest is not None and oip is not None
    expected = np.array([float(literal) if "." in literal or "e" in literal else int(literal)])
    expected = expected.astype(NUMERIC_FORMATS[input_type].np_dtype)
    for arr in [*rest, *oip]:
        assert arr.dtype == expected.dtype and arr.tolist() == expected.tolist()
    # The RPC carries what the parsers made, bit for bit, in the same dtype.
    fields, frames = protocol.encode_inputs(input_type.value, [*rest, *oip])
    header = protocol.parse_header(protocol.make(protocol.BATCH, id=1, **fields))
    decoded = protocol.decode_inputs(header, [bytes(f) for f in frames])
    assert decoded.dtype == expected.dtype
    assert decoded.tobytes() == np.stack([expected] * len(decoded)).tobytes()
