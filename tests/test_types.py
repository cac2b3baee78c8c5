import dataclasses
import hashlib
import math
import pickle
import subprocess
import sys

import numpy as np
import orjson
import pytest

from clipper.exceptions import InputError, ValidationError
from clipper.frontend import inputs as inputs_module
from clipper.frontend.inputs import parse_predict_body
from clipper.frontend.oip import _INPUT_DATATYPES
from clipper.frontend.oip_request import app_queries, parse_infer_request
from clipper.frontend.oip_tensors import DATATYPES as OIP_DATATYPES
from clipper.rpc import protocol
from clipper.settings import Settings
from clipper.types import (
    APP_OPTION_KEYS,
    MODEL_OPTION_KEYS,
    NUMERIC_FORMATS,
    AppOptions,
    AppSpec,
    InputType,
    ModelOptions,
    ModelSpec,
    validate_app_name,
    validate_name,
)


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


# -- app and model options ----------------------------------------------------------------

KEY = "k" * 16
DIGEST = hashlib.sha256(KEY.encode()).hexdigest()


def test_options_default_to_what_the_readers_used_to_assume():
    app = AppOptions()
    assert (app.cache, app.overload, app.api_key_sha256) == (True, "default", ())
    model = ModelOptions()
    # Unset: the server's settings apply (batching, delay, capacity), or no limit.
    assert (model.batching, model.max_batch_delay_ms, model.queue_capacity) == (None, None, None)
    assert model.memory_limit_mb is None and not model.autoscaled
    assert (model.min_replicas, model.max_replicas, model.scale_down_after_s) == (1, None, 60.0)
    assert (model.ray_num_cpus, model.ray_num_gpus, model.ray_memory_mb) == (None, None, None)
    assert (model.ray_resources, model.ray_placement, model.ray_max_restarts) == ({}, "spread", -1)
    assert app.to_json() == {} and model.to_json() == {}
    assert AppSpec("a", InputType.DOUBLES, "-1", 1000).options == app
    assert ModelSpec("m", "1", InputType.DOUBLES).options == model


@pytest.mark.parametrize(
    ("given", "rendered"),
    [
        ({}, {}),
        ({"cache": True}, {"cache": True}),  # set to its default: still rendered
        ({"cache": False, "overload": "503"}, {"cache": False, "overload": "503"}),
        ({"api_keys": [KEY]}, {"api_key_sha256": [DIGEST]}),
        ({"api_keys": []}, {"api_key_sha256": []}),
        ({"api_key_sha256": [DIGEST], "api_keys": ["j" * 16]},
         {"api_key_sha256": [hashlib.sha256(b"j" * 16).hexdigest()]}),
        ({"overload": "default", "api_key_sha256": [DIGEST]},
         {"overload": "default", "api_key_sha256": [DIGEST]}),
    ],
)  # fmt: skip
def test_app_options_parse_and_render_only_what_was_set(given, rendered):
    options = AppOptions.parse(given)
    assert options.to_json() == rendered
    assert list(options.to_json()) == sorted(rendered)  # by key, as the stores keep them
    assert AppOptions.from_record(options.to_json()) == options  # the store's round trip
    assert AppOptions.parse(options.to_json()) == options  # set_app_options merges this
    assert options.extra == {}


def test_app_options_are_typed_fields():
    options = AppOptions.parse({"cache": False, "overload": "503", "api_keys": [KEY]})
    assert options.cache is False and options.overload == "503"
    assert options.api_key_sha256 == (DIGEST,)
    assert options.explicit == {"cache", "overload", "api_key_sha256"}
    assert options == AppOptions(cache=False, overload="503", api_key_sha256=(DIGEST,))
    # Set to the default, or left unset: different JSON, so not equal.
    assert AppOptions.parse({"cache": True}) != AppOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.cache = True  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(options)) == options


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"batching": "quantile", "max_batch_delay_ms": 2.5, "queue_capacity": 10},
        {"batching": "aimd", "max_batch_delay_ms": 0, "memory_limit_mb": 256},
        {"max_replicas": 2},
        {"min_replicas": 0, "max_replicas": 0, "scale_down_after_s": 1},
        {"min_replicas": 1, "max_replicas": 64, "scale_down_after_s": 60},
        {"ray_num_cpus": 0, "ray_num_gpus": 0.5, "ray_memory_mb": 1, "ray_max_restarts": -1},
        {"ray_resources": {"b": 1, "a": 0.25}, "ray_placement": "spread"},
        {"ray_resources": {}, "ray_placement": "pack", "ray_max_restarts": 0},
    ],
)
def test_model_options_parse_and_render_only_what_was_set(given):
    options = ModelOptions.parse(given)
    assert options.to_json() == given  # values as given: 0 stays an int, 2.5 a float
    assert [type(v) for v in options.to_json().values()] == [type(given[k]) for k in sorted(given)]
    assert list(options.to_json()) == sorted(given)
    assert ModelOptions.from_record(options.to_json()) == options
    assert ModelOptions.parse(options.to_json()) == options
    for name, value in given.items():
        assert getattr(options, name) == value
    assert options.autoscaled == ("max_replicas" in given)


def test_model_options_share_nothing_with_the_json_they_came_from():
    given = {"ray_resources": {"a": 1}}
    options = ModelOptions.parse(given)
    given["ray_resources"]["a"] = 5
    assert options.ray_resources == {"a": 1}
    options.to_json()["ray_resources"]["a"] = 7
    assert options.ray_resources == {"a": 1}


# Every refusal, with the words the management API has always answered with.
APP_KNOWN = ", ".join(APP_OPTION_KEYS)
MODEL_KNOWN = ", ".join(MODEL_OPTION_KEYS)
APP_ERRORS = [
    (["cache"], "app options must be a JSON object"),
    (None, "app options must be a JSON object"),
    ({"colour": 1}, f"unknown app option(s) colour; known: {APP_KNOWN}"),
    ({"b": 1, "a": 2, "cache": 3}, f"unknown app option(s) a, b; known: {APP_KNOWN}"),
    ({"api_keys": "k" * 20}, "option 'api_keys' must be a list of strings of 16+ characters"),
    ({"api_keys": ["short"]}, "option 'api_keys' must be a list of strings of 16+ characters"),
    ({"api_keys": [1]}, "option 'api_keys' must be a list of strings of 16+ characters"),
    ({"api_key_sha256": "x"}, "option 'api_key_sha256' must be a list of SHA-256 hex digests"),
    ({"api_key_sha256": ["ab"]}, "option 'api_key_sha256' must be a list of SHA-256 hex digests"),
    ({"cache": 1}, "option 'cache' must be true or false"),
    ({"cache": None}, "option 'cache' must be true or false"),
    ({"cache": "no", "overload": "drop"}, "option 'cache' must be true or false"),
    ({"overload": "drop"}, "option 'overload' must be one of default, 503"),
    ({"overload": 503}, "option 'overload' must be one of default, 503"),
    ({"api_keys": ["x"], "cache": 1}, "option 'api_keys' must be"),
]
MODEL_ERRORS = [
    ("fast", "model options must be a JSON object"),
    ({"gpu": True}, f"unknown model option(s) gpu; known: {MODEL_KNOWN}"),
    ({"batching": "greedy"}, "option 'batching' must be one of aimd, quantile, fixed"),
    ({"batching": None}, "option 'batching' must be one of aimd, quantile, fixed"),
    ({"max_batch_delay_ms": -1}, "option 'max_batch_delay_ms' must be a number from 0 to 1000"),
    ({"max_batch_delay_ms": True}, "option 'max_batch_delay_ms' must be a number from 0 to 1000"),
    ({"max_batch_delay_ms": float("nan")}, "option 'max_batch_delay_ms' must be a number from"),
    ({"queue_capacity": 0}, "option 'queue_capacity' must be an integer from 1 to 1e+06"),
    ({"queue_capacity": 2.0}, "option 'queue_capacity' must be an integer from 1 to 1e+06"),
    (
        {"memory_limit_mb": 255},
        "option 'memory_limit_mb' must be an integer from 256 to 1.04858e+06",
    ),
    (
        {"min_replicas": -1, "max_replicas": 2},
        "option 'min_replicas' must be an integer from 0 to 64",
    ),
    ({"max_replicas": 65}, "option 'max_replicas' must be an integer from 0 to 64"),
    (
        {"max_replicas": 4, "scale_down_after_s": 0},
        "option 'scale_down_after_s' must be a number from 1 to 86400",
    ),
    ({"min_replicas": 0}, "autoscaling options need 'max_replicas'"),
    ({"min_replicas": 1}, "autoscaling options need 'max_replicas'"),
    ({"scale_down_after_s": 60}, "autoscaling options need 'max_replicas'"),
    ({"max_replicas": 0}, "option 'min_replicas' must not exceed 'max_replicas'"),
    (
        {"min_replicas": 3, "max_replicas": 2},
        "option 'min_replicas' must not exceed 'max_replicas'",
    ),
    ({"ray_num_cpus": "two"}, "option 'ray_num_cpus' must be a number from 0 to 1024"),
    ({"ray_num_gpus": 1025}, "option 'ray_num_gpus' must be a number from 0 to 1024"),
    ({"ray_memory_mb": 1.5}, "option 'ray_memory_mb' must be an integer from 1 to 1.67772e+07"),
    ({"ray_max_restarts": -2}, "option 'ray_max_restarts' must be an integer from -1 to 1e+06"),
    ({"ray_placement": "everywhere"}, "option 'ray_placement' must be one of spread, pack"),
    (
        {"ray_resources": ["node_b"]},
        "option 'ray_resources' must map resource names to amounts > 0",
    ),
    (
        {"ray_resources": {"node_b": 0}},
        "option 'ray_resources' must map resource names to amounts > 0",
    ),
    (
        {"ray_resources": {"n": True}},
        "option 'ray_resources' must map resource names to amounts > 0",
    ),
    # Several wrong: the first in the order the checks have always run in.
    ({"batching": "x", "ray_num_cpus": -1}, "option 'ray_num_cpus' must be"),
    ({"queue_capacity": 0, "memory_limit_mb": 1}, "option 'memory_limit_mb' must be"),
    ({"memory_limit_mb": 1, "min_replicas": 2}, "autoscaling options need 'max_replicas'"),
    ({"min_replicas": 2, "ray_placement": "x"}, "option 'ray_placement' must be"),
]


@pytest.mark.parametrize(("given", "message"), APP_ERRORS)
def test_app_options_are_refused_with_the_words_they_always_were(given, message):
    with pytest.raises(ValidationError) as info:
        AppOptions.parse(given)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(("given", "message"), MODEL_ERRORS)
def test_model_options_are_refused_with_the_words_they_always_were(given, message):
    with pytest.raises(ValidationError) as info:
        ModelOptions.parse(given)
    assert str(info.value).startswith(message)


def test_options_built_in_code_are_checked_the_same_way():
    with pytest.raises(ValidationError, match="option 'overload' must be one of default, 503"):
        AppOptions(overload="drop")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="option 'queue_capacity' must be an integer"):
        ModelOptions(queue_capacity=0)
    with pytest.raises(ValidationError, match="autoscaling options need 'max_replicas'"):
        ModelOptions(min_replicas=0)
    # Set in code, a value other than the default counts as set.
    assert ModelOptions(min_replicas=0, max_replicas=2).to_json() == {
        "max_replicas": 2,
        "min_replicas": 0,
    }
    assert AppOptions(cache=False).to_json() == {"cache": False}


def test_a_record_of_the_previous_release_loads():
    # What the management API stored before options were typed: the validated dict.
    app_record = {"api_key_sha256": [DIGEST], "cache": False, "overload": "503"}
    app = AppOptions.from_record(app_record)
    assert app == AppOptions(cache=False, overload="503", api_key_sha256=(DIGEST,))
    assert app.to_json() == app_record and app.extra == {}
    model_record = {
        "batching": "fixed",
        "max_batch_delay_ms": 5,
        "max_replicas": 3,
        "memory_limit_mb": 2048,
        "min_replicas": 0,
        "queue_capacity": 100,
        "ray_resources": {"node_b": 1},
        "scale_down_after_s": 120,
    }
    model = ModelOptions.from_record(model_record)
    assert model == ModelOptions.parse(model_record)
    assert model.to_json() == model_record and model.extra == {}
    assert AppOptions.from_record({}) == AppOptions()
    assert ModelOptions.from_record({}) == ModelOptions()


def test_a_record_is_never_refused_for_what_it_holds_only_set_aside():
    # Unknown keys (a newer release, a hand-written record) and values this release
    # would refuse are kept as stored, rendered back, and not read: the defaults apply.
    record = {"cache": "yes", "overload": "503", "team": {"name": "x"}}
    app = AppOptions.from_record(record)
    assert (app.cache, app.overload) == (True, "503")
    assert app.extra == {"cache": "yes", "team": {"name": "x"}}
    assert app.to_json() == record
    # A management change re-checks the whole: the stored bad value is named.
    with pytest.raises(ValidationError, match="unknown app option"):
        AppOptions.parse({**app.to_json(), "overload": "default"})
    model = ModelOptions.from_record(
        {"queue_capacity": 0, "ray_placement": "x", "batching": "aimd"}
    )
    assert (model.queue_capacity, model.ray_placement, model.batching) == (None, "spread", "aimd")
    assert model.to_json() == {"batching": "aimd", "queue_capacity": 0, "ray_placement": "x"}


@pytest.mark.parametrize("record", [[], "x", None, {1: True}])
def test_a_record_whose_options_are_not_an_object_is_malformed(record):
    for cls in (AppOptions, ModelOptions):
        with pytest.raises(ValueError, match="stored options must be a JSON object"):
            cls.from_record(record)


def test_the_specs_render_their_options_json():
    app = AppSpec("a", InputType.DOUBLES, "-1", 1000, options=AppOptions.parse({"cache": False}))
    assert app.to_json()["options"] == {"cache": False}
    model = ModelSpec("m", "1", InputType.DOUBLES, options=ModelOptions(queue_capacity=3))
    assert model.to_json()["options"] == {"queue_capacity": 3}
    assert ModelSpec("m", "1", InputType.DOUBLES).to_json()["options"] == {}
