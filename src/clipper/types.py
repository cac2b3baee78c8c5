"""Shared value types: input types, names, app and model options, and the
records of the config store.

A leaf module: no I/O, no imports from the rest of the package but its
exceptions (a leaf too), so that the model container side can import it
beside the RPC protocol. It does not import numpy either (the admin client
and the CLI import it): the numeric input types' table holds numpy's names,
and numpy is imported only when a consumer asks for a dtype object.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeGuard, cast, get_args

from .exceptions import ValidationError

if TYPE_CHECKING:
    import numpy as np


class InputType(StrEnum):
    """Clipper's canonical input types, plus ``json``."""

    INTEGERS = "integers"
    FLOATS = "floats"
    DOUBLES = "doubles"
    BYTES = "bytes"
    STRINGS = "strings"
    JSON = "json"

    @functools.cached_property
    def is_numeric(self) -> bool:
        # Cached on the member: read once per request on the hot path.
        return self in NUMERIC_FORMATS

    @functools.cached_property
    def numeric(self) -> NumericFormat | None:
        """How values of this type are held and checked; None unless numeric."""
        return NUMERIC_FORMATS.get(self)

    @classmethod
    def parse(cls, name: str) -> InputType:
        """Return the canonical type for a name or one of Clipper's aliases.

        Raises ``ValueError`` naming the accepted names for anything else.
        """
        if isinstance(name, InputType):
            return name
        if not isinstance(name, str):
            raise ValueError(f"input_type must be a string, got {type(name).__name__}")
        canonical = _INPUT_TYPE_ALIASES.get(name.strip().lower())
        if canonical is None:
            raise ValueError(
                f"unknown input_type {name!r}; expected one of "
                + ", ".join(t.value for t in InputType)
            )
        return canonical


_INPUT_TYPE_ALIASES: dict[str, InputType] = {
    # Clipper's clipper_admin accepted these spellings (util.py, datatypes.hpp).
    **{a: InputType.INTEGERS for a in ("integers", "integer", "ints", "int", "i")},
    **{a: InputType.FLOATS for a in ("floats", "float", "f")},
    **{a: InputType.DOUBLES for a in ("doubles", "double", "d")},
    **{a: InputType.BYTES for a in ("bytes", "byte", "b")},
    **{a: InputType.STRINGS for a in ("strings", "string", "str", "strs", "s")},
    **{a: InputType.JSON for a in ("json", "j")},
}


@dataclass(frozen=True)
class NumericFormat:
    """A numeric input type's values: their dtype, what JSON number becomes one,
    and the range accepted.

    The one table (:data:`NUMERIC_FORMATS`) that the query parser, the Open
    Inference Protocol parser and the RPC protocol read; each binds what it
    needs at import, so nothing here is looked up per query.
    """

    dtype: str
    """numpy's little-endian name of the dtype a model receives (a batch is an
    array of it) and the RPC frames carry (``"<i4"``)."""
    integral: bool
    """Whether only integer literals are valid: a JSON number with a fraction
    (``1.5``, ``1e3``) is refused. Integer literals are valid for every type."""
    min_value: int | float
    """The smallest (most negative) value the dtype holds."""
    max_value: int | float
    """The largest value the dtype holds."""
    overflow: float
    """For a float dtype, the smallest magnitude of a float64 that does not fit:
    it would round to inf. A value is accepted when it is finite and its
    magnitude is below this (so values just above ``max_value`` round to it).
    Integers are bounded by ``min_value`` and ``max_value`` instead (inf here)."""

    @functools.cached_property
    def np_dtype(self) -> np.dtype[Any]:
        """``dtype`` as a numpy dtype object (numpy is imported on first use)."""
        import numpy

        return numpy.dtype(self.dtype)


_FLT_MAX = (2 - 2.0**-23) * 2.0**127
# The smallest float64 magnitude that rounds to inf as float32: FLT_MAX plus
# half an ulp (2**103); the tie rounds to even, which is up, since FLT_MAX's
# mantissa is odd. Smaller values round to FLT_MAX without an overflow.
_F32_OVERFLOW = 2.0**128 - 2.0**103
_DBL_MAX = sys.float_info.max

NUMERIC_FORMATS: Mapping[InputType, NumericFormat] = MappingProxyType(
    {
        InputType.INTEGERS: NumericFormat("<i4", True, -(2**31), 2**31 - 1, math.inf),
        InputType.FLOATS: NumericFormat("<f4", False, -_FLT_MAX, _FLT_MAX, _F32_OVERFLOW),
        InputType.DOUBLES: NumericFormat("<f8", False, -_DBL_MAX, _DBL_MAX, math.inf),
    }
)
"""The numeric input types (``integers``, ``floats``, ``doubles``) and their formats."""

# Matched with fullmatch: "$" would also accept a trailing newline ("v2\n").
_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?")
RESERVED_APP_NAMES = frozenset({"v2", "health", "ready", "metrics", "admin", "dashboard"})


def validate_name(name: object, what: str = "name") -> str:
    """Check an app, model or version name against DESIGN.md's rule.

    Lowercase letters, digits, ``-``, ``_`` and ``.``, starting and ending with
    a letter or digit, at most 63 characters. Raises ``ValueError``.
    """
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a string, got {type(name).__name__}")
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid {what} {name!r}: use 1-63 lowercase letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return name


def validate_app_name(name: object) -> str:
    validate_name(name, "app name")
    assert isinstance(name, str)
    if name in RESERVED_APP_NAMES:
        raise ValueError(f"app name {name!r} is reserved")
    return name


@dataclass(frozen=True)
class ModelId:
    """A model version: the unit that has a queue, a batcher and replicas."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


# -- app and model options ------------------------------------------------------------
#
# Typed, each with its default, and validated here and nowhere else. The management
# API's JSON becomes options through ``parse`` (strict: its error messages are part
# of the API), the config store's JSON through ``from_record`` (tolerant: a stored
# record always loads); ``to_json`` renders what the store keeps and the management
# API returns: the options the user set (even to their default value), never the
# defaults of the others. Readers use the fields; nothing is parsed per query.

OverloadMode = Literal["default", "503"]
BatchingPolicy = Literal["aimd", "quantile", "fixed"]
Precision = Literal["fp32", "fp16", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
RayPlacement = Literal["spread", "pack"]
OVERLOAD_MODES: tuple[str, ...] = get_args(OverloadMode)
BATCHING_POLICIES: tuple[str, ...] = get_args(BatchingPolicy)
RAY_PLACEMENTS: tuple[str, ...] = get_args(RayPlacement)

APP_OPTION_KEYS: tuple[str, ...] = ("cache", "overload", "api_keys", "api_key_sha256")
"""The keys ``AppOptions.parse`` accepts (``api_keys`` is stored as its digests)."""
MODEL_OPTION_KEYS: tuple[str, ...] = (
    "batching",
    "max_batch_delay_ms",
    "queue_capacity",
    "memory_limit_mb",
    "min_replicas",
    "max_replicas",
    "scale_down_after_s",
    "ray_num_cpus",
    "ray_num_gpus",
    "ray_memory_mb",
    "ray_resources",
    "ray_placement",
    "ray_max_restarts",
    "devices",
    "precision",
)
"""The keys ``ModelOptions.parse`` accepts."""

_Check = Callable[[Any], Any]  # a value -> the value to keep, or ValidationError


def _number(value: Any, name: str, low: float, high: float, integer: bool = False) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ValidationError(f"option '{name}' must be {kind} from {low:g} to {high:g}")
    return value


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValidationError(f"option '{name}' must be one of {', '.join(choices)}")
    return str(value)


def _boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(f"option '{name}' must be true or false")
    return value


def _digests(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(d, str) and len(d) == 64 for d in value
    ):
        raise ValidationError("option 'api_key_sha256' must be a list of SHA-256 hex digests")
    return tuple(value)


def _resources(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v > 0
        for k, v in value.items()
    ):
        raise ValidationError("option 'ray_resources' must map resource names to amounts > 0")
    return dict(value)  # a copy: shares nothing with the caller's JSON


def _devices(value: Any) -> Any:
    """A ``devices`` option, its syntax checked (placement is the manager's):
    a list becomes a tuple, the rest is kept as given."""
    from .managers.devices import parse_devices  # pure; no GPU library

    try:
        parse_devices(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    return tuple(value) if isinstance(value, list) else value


def _between(name: str, low: float, high: float, integer: bool = False) -> _Check:
    return lambda value: _number(value, name, low, high, integer)


def _one_of(name: str, choices: tuple[str, ...]) -> _Check:
    return lambda value: _choice(value, name, choices)


def _flag(name: str) -> _Check:
    return lambda value: _boolean(value, name)


def _accepts(check: _Check, value: Any) -> bool:
    try:
        check(value)
    except ValidationError:
        return False
    return True


# Each class's checks, in the order they run: with several bad options, the error
# names the first bad one in this order (the management API's messages).
_APP_CHECKS: dict[str, _Check] = {
    "api_key_sha256": _digests,
    "cache": _flag("cache"),
    "overload": _one_of("overload", OVERLOAD_MODES),
}
_MODEL_CHECKS: dict[str, _Check] = {
    "ray_num_cpus": _between("ray_num_cpus", 0, 1024),
    "ray_num_gpus": _between("ray_num_gpus", 0, 1024),
    "ray_memory_mb": _between("ray_memory_mb", 1, 1 << 24, integer=True),
    "ray_max_restarts": _between("ray_max_restarts", -1, 1_000_000, integer=True),
    "ray_placement": _one_of("ray_placement", RAY_PLACEMENTS),
    "ray_resources": _resources,
    "min_replicas": _between("min_replicas", 0, 64, integer=True),
    "max_replicas": _between("max_replicas", 0, 64, integer=True),
    "scale_down_after_s": _between("scale_down_after_s", 1, 86400),
    # (the autoscaling options are checked together here: see _check_autoscaling)
    "memory_limit_mb": _between("memory_limit_mb", 256, 1_048_576, integer=True),
    "batching": _one_of("batching", BATCHING_POLICIES),
    "max_batch_delay_ms": _between("max_batch_delay_ms", 0, 1000),
    "queue_capacity": _between("queue_capacity", 1, 1_000_000, integer=True),
    "devices": _devices,
    "precision": _one_of("precision", PRECISIONS),
}
_AUTOSCALING_CHECKED_AFTER = "scale_down_after_s"


def _known_keys(options: object, known: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(options, dict):
        raise ValidationError(f"{what} options must be a JSON object")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValidationError(
            f"unknown {what} option(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return dict(options)


def _defaults(cls: type) -> dict[str, Any]:
    """Each option field of ``cls`` and its default."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in ("explicit", "extra"):
            factory = f.default_factory
            out[f.name] = factory() if factory is not dataclasses.MISSING else f.default
    return out


def _post_init(options: AppOptions | ModelOptions, defaults: Mapping[str, Any]) -> None:
    """Complete ``explicit`` and check each field (normalized in place: tuples, copies)."""
    stray = options.explicit - defaults.keys()
    if stray:
        raise ValueError(f"explicit names no option field: {', '.join(sorted(stray))}")
    explicit = options.explicit | {n for n, d in defaults.items() if getattr(options, n) != d}
    object.__setattr__(options, "explicit", frozenset(explicit))
    object.__setattr__(options, "extra", dict(options.extra))
    checks = _APP_CHECKS if isinstance(options, AppOptions) else _MODEL_CHECKS
    for name, check in checks.items():
        value = getattr(options, name)
        if value is not None or name in explicit:  # None: an optional option left unset
            checked = check(value)
            if checked is not value:
                object.__setattr__(options, name, checked)
        if name == _AUTOSCALING_CHECKED_AFTER:
            assert isinstance(options, ModelOptions)
            _check_autoscaling(options)


def _check_autoscaling(options: ModelOptions) -> None:
    if options.max_replicas is None and (
        "min_replicas" in options.explicit or "scale_down_after_s" in options.explicit
    ):
        raise ValidationError("autoscaling options need 'max_replicas'")
    if options.max_replicas is not None and options.min_replicas > options.max_replicas:
        raise ValidationError("option 'min_replicas' must not exceed 'max_replicas'")


def _split_record(
    record: object, checks: Mapping[str, _Check]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A stored options object: (the options this release reads, the rest as stored)."""
    if not isinstance(record, Mapping) or not all(isinstance(k, str) for k in record):
        raise ValidationError(f"stored options must be a JSON object, got {record!r:.80}")
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in record.items():
        check = checks.get(name)
        if check is not None and _accepts(check, value):
            known[name] = value
        else:
            extra[name] = value
    return known, extra


def _render(options: AppOptions | ModelOptions) -> dict[str, Any]:
    out: dict[str, Any] = dict(options.extra)
    for name in options.explicit:
        value = getattr(options, name)
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        out[name] = value
    return dict(sorted(out.items()))  # as the stores give it back (sorted keys)


@dataclass(frozen=True, slots=True, kw_only=True)
class AppOptions:
    """An application's options (``AppSpec.options``).

    Build them with :meth:`parse` (the management API's JSON) or
    :meth:`from_record` (the config store's); a direct call checks the values
    the same way. Equal when the same options were set to the same values.
    """

    cache: bool = True
    """Use the prediction cache; turn it off for non-deterministic models."""
    overload: OverloadMode = "default"
    """When a model's queue is full: answer with the default output
    (``"default"``), or refuse the query with 503 (``"503"``)."""
    api_key_sha256: tuple[str, ...] = ()
    """The SHA-256 hex digests of the app's API keys: when there are any, its
    queries must carry one of the keys in ``X-Api-Key``. Set from ``api_keys``
    (a list of strings of 16+ characters, never stored); an empty list removes
    the requirement."""
    explicit: frozenset[str] = field(default=frozenset(), repr=False)
    """The options the user set, which :meth:`to_json` renders even at their
    default value; a field set to another value than its default is always in it."""
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, hash=False)
    """What a stored record holds that this release does not read (an unknown
    key, or a value it would refuse), kept as stored and rendered by
    :meth:`to_json`; always empty for options that came through :meth:`parse`."""

    def __post_init__(self) -> None:
        _post_init(self, _APP_DEFAULTS)

    @classmethod
    def parse(cls, options: object) -> AppOptions:
        """The options of a management request's JSON object; ValidationError
        naming the first option that is unknown or wrong."""
        values = _known_keys(options, APP_OPTION_KEYS, "app")
        if "api_keys" in values:
            keys = values.pop("api_keys")
            if not isinstance(keys, list) or not all(
                isinstance(k, str) and len(k) >= 16 for k in keys
            ):
                raise ValidationError(
                    "option 'api_keys' must be a list of strings of 16+ characters"
                )
            values["api_key_sha256"] = [hashlib.sha256(k.encode()).hexdigest() for k in keys]
        return cls(**values, explicit=frozenset(values))

    @classmethod
    def from_record(cls, options: object) -> AppOptions:
        """The options a config store record holds (a JSON object), as written by
        :meth:`to_json` of this or any earlier release: what this release cannot
        read is kept aside in ``extra``, so a record always loads.
        ValidationError only if ``options`` is not a JSON object."""
        known, extra = _split_record(options, _APP_CHECKS)
        return cls(**known, explicit=frozenset(known), extra=extra)

    def to_json(self) -> dict[str, Any]:
        """The JSON object the store keeps and the management API returns: the
        options set (``api_keys`` as their digests) and ``extra``, by key."""
        return _render(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelOptions:
    """A model version's options (``ModelSpec.options``).

    The batching and queueing options override the server's settings; unset
    (None), the server's setting applies (it is resolved where the model's
    batching is configured, not here). Built and rendered as
    :class:`AppOptions` are.
    """

    batching: BatchingPolicy | None = None
    """The batch-size controller: ``"aimd"``, ``"quantile"`` or ``"fixed"``."""
    max_batch_delay_ms: float | None = None
    """The delayed-batching bound, 0 to 1000 ms."""
    queue_capacity: int | None = None
    """How many queries may wait, 1 to 1000000."""
    memory_limit_mb: int | None = None
    """The replica's address-space limit (local manager), 256 to 1048576; a
    model past it gets MemoryError and its container restarts."""
    min_replicas: int = 1
    """Autoscaling's minimum, 0 to 64 (needs ``max_replicas``)."""
    max_replicas: int | None = None
    """Autoscaling's maximum, 0 to 64; set, the model version is autoscaled."""
    scale_down_after_s: float = 60.0
    """Idle time before autoscaling removes a replica, 1 to 86400 s (needs
    ``max_replicas``)."""
    ray_num_cpus: float | None = None
    """Ray manager: CPUs reserved per replica (0 to 1024; unset: Ray's default)."""
    ray_num_gpus: float | None = None
    """Ray manager: GPUs per replica (0 to 1024)."""
    ray_memory_mb: int | None = None
    """Ray manager: memory reserved per replica (a scheduling request), >= 1."""
    ray_resources: Mapping[str, float] = field(default_factory=dict, hash=False)
    """Ray manager: custom resources per replica, name -> amount > 0."""
    ray_placement: RayPlacement = "spread"
    """Ray manager: ``"spread"`` replicas over nodes, or ``"pack"`` (Ray decides)."""
    ray_max_restarts: int = -1
    """Ray manager: Ray's restarts of a crashed replica, -1 (no bound) to 1000000."""
    devices: str | float | tuple[str | float, ...] | None = None
    """Where each replica runs: ``"cpu"``, ``"cuda"`` (one GPU each, spread),
    ``"cuda:I[,J]"``, ``"cuda:all"``, a number of GPUs per replica (0.5: two
    replicas share one) or a list with one entry per replica; unset, replicas
    inherit the server's environment. Placed by the manager (local: each
    replica's ``CUDA_VISIBLE_DEVICES``; Ray: ``num_gpus``); see
    :mod:`clipper.managers.devices`. Not with ``ray_num_gpus``."""
    precision: Precision | None = None
    """The deployers' floating-point precision on a GPU: ``"fp32"`` (unset),
    ``"fp16"`` or ``"bf16"``; a replica on the CPU computes in fp32."""
    explicit: frozenset[str] = field(default=frozenset(), repr=False)
    """As :attr:`AppOptions.explicit`."""
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, hash=False)
    """As :attr:`AppOptions.extra`."""

    def __post_init__(self) -> None:
        _post_init(self, _MODEL_DEFAULTS)
        if self.devices is not None and self.ray_num_gpus is not None:
            raise ValidationError(
                "options 'devices' and 'ray_num_gpus' both place GPUs: give 'devices' only "
                "(the Ray manager maps it to num_gpus)"
            )

    @property
    def autoscaled(self) -> bool:
        """Whether the autoscaler decides the replica count (``max_replicas`` is set)."""
        return self.max_replicas is not None

    @classmethod
    def parse(cls, options: object) -> ModelOptions:
        """As :meth:`AppOptions.parse`."""
        values = _known_keys(options, MODEL_OPTION_KEYS, "model")
        return cls(**values, explicit=frozenset(values))

    @classmethod
    def from_record(cls, options: object) -> ModelOptions:
        """As :meth:`AppOptions.from_record`."""
        known, extra = _split_record(options, _MODEL_CHECKS)
        return cls(**known, explicit=frozenset(known), extra=extra)

    def to_json(self) -> dict[str, Any]:
        """As :meth:`AppOptions.to_json`."""
        return _render(self)


_APP_DEFAULTS = _defaults(AppOptions)
_MODEL_DEFAULTS = _defaults(ModelOptions)


@dataclass(frozen=True)
class AppSpec:
    """An application as the config store holds it."""

    name: str
    input_type: InputType
    default_output: str
    slo_micros: int
    input_shape: tuple[int, ...] | None = None
    policy: str = "single"
    policy_params: dict[str, Any] = field(default_factory=dict)
    options: AppOptions = field(default_factory=AppOptions)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_type": self.input_type.value,
            "default_output": self.default_output,
            "latency_slo_micros": self.slo_micros,
            "input_shape": list(self.input_shape) if self.input_shape is not None else None,
            "selection_policy": self.policy,
            "policy_params": dict(self.policy_params),
            "options": self.options.to_json(),
        }


@dataclass(frozen=True)
class ModelSpec:
    """One deployed version of a model."""

    name: str
    version: str
    input_type: InputType
    labels: tuple[str, ...] = ()
    container_name: str = "python-closure"
    model_data_path: str = ""
    batch_size: int = -1  # -1: the server's default maximum batch size
    options: ModelOptions = field(default_factory=ModelOptions)

    @property
    def id(self) -> ModelId:
        return ModelId(self.name, self.version)

    def to_json(self, current_version: str | None = None) -> dict[str, Any]:
        return {
            "model_name": self.name,
            "model_version": self.version,
            "input_type": self.input_type.value,
            "labels": list(self.labels),
            "container_name": self.container_name,
            "model_data_path": self.model_data_path,
            "batch_size": self.batch_size,
            "options": self.options.to_json(),
            "is_current_version": current_version == self.version,
        }


# -- rollouts --------------------------------------------------------------------------

RolloutMode = Literal["shadow", "canary", "bandit"]
ROLLOUT_MODES: tuple[str, ...] = get_args(RolloutMode)
ROLLOUT_LIMIT_KEYS: tuple[str, ...] = (
    "confidence",
    "max_error_rate",
    "max_slo_miss_rate",
    "max_loss_increase",
    "min_feedback",
)
"""The keys of a bandit rollout's ``limits`` (each optional; the query path
documents and applies the defaults)."""
DEFAULT_CANARY_FRACTION = 0.05
"""The share of queries a canary or bandit rollout starts with."""
MAX_ROLLOUT_STEPS = 100

# Each limit's range: (low, high, low is excluded).
_LIMIT_RANGES: dict[str, tuple[float, float, bool]] = {
    "confidence": (0.5, 1.0, True),  # the sequential test's: 1 - its error, above a coin toss
    "max_error_rate": (0.0, 1.0, False),
    "max_slo_miss_rate": (0.0, 1.0, False),
    "max_loss_increase": (0.0, 1e9, False),
    "min_feedback": (0.0, 1e9, False),
}


def _real(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _rollout_fraction(value: object, what: str = "fraction") -> float:
    if not _real(value) or not 0 < value <= 1:
        raise ValidationError(f"{what} must be a number in (0, 1], got {value!r}")
    return float(value)


def _rollout_limits(limits: object) -> dict[str, float]:
    if not isinstance(limits, Mapping):
        raise ValidationError("limits must be a JSON object of limit name -> number")
    unknown = sorted(str(k) for k in set(limits) - set(ROLLOUT_LIMIT_KEYS))
    if unknown:
        raise ValidationError(
            f"unknown rollout limit(s) {', '.join(unknown)}; known: {', '.join(ROLLOUT_LIMIT_KEYS)}"
        )
    out: dict[str, float] = {}
    for key in ROLLOUT_LIMIT_KEYS:
        if key not in limits:
            continue
        value = limits[key]
        low, high, open_low = _LIMIT_RANGES[key]
        if not _real(value) or value > high or value < low or (open_low and value == low):
            bracket = "(" if open_low else "["
            raise ValidationError(
                f"limits: '{key}' must be a number in {bracket}{low:g}, {high:g}], got {value!r}"
            )
        if key == "min_feedback" and value != int(value):
            raise ValidationError(f"limits: 'min_feedback' must be a whole number, got {value!r}")
        out[key] = float(value)
    return out


def _rollout_steps(steps: object) -> tuple[tuple[float, float], ...]:
    rule = "steps must be a list of [seconds after the start, fraction] pairs"
    if isinstance(steps, str | bytes | Mapping) or not isinstance(steps, list | tuple):
        raise ValidationError(rule)
    if len(steps) > MAX_ROLLOUT_STEPS:
        raise ValidationError(f"steps: at most {MAX_ROLLOUT_STEPS} steps, got {len(steps)}")
    out: list[tuple[float, float]] = []
    for i, step in enumerate(steps):
        if isinstance(step, str | bytes) or not isinstance(step, list | tuple) or len(step) != 2:
            raise ValidationError(f"{rule}; step {i} is {step!r}")
        seconds, fraction = step
        if not _real(seconds) or seconds < 0:
            raise ValidationError(
                f"steps: step {i}'s seconds must be a number >= 0, got {seconds!r}"
            )
        if out and seconds <= out[-1][0]:
            raise ValidationError(
                f"steps: the seconds must increase; step {i} ({seconds:g} s) is not after "
                f"step {i - 1} ({out[-1][0]:g} s)"
            )
        out.append((float(seconds), _rollout_fraction(fraction, f"steps: step {i}'s fraction")))
    return tuple(out)


@dataclass(frozen=True)
class RolloutSpec:
    """A rollout of a model's new version, as the config store holds it.

    ``fraction`` is the share of queries the new version answers (canary,
    bandit: its starting exploration share) or is sent a copy of (shadow).
    Build one from user input with :meth:`build`, which checks every field;
    :meth:`from_record` reads what the store kept.
    """

    model: str
    base_version: str
    """The model's current version when the rollout started."""
    new_version: str
    mode: RolloutMode
    fraction: float
    limits: Mapping[str, float] = field(default_factory=dict, hash=False)
    """A bandit rollout's decision limits (keys of :data:`ROLLOUT_LIMIT_KEYS`)."""
    steps: tuple[tuple[float, float], ...] = ()
    """A canary's schedule: (seconds after ``started_at``, fraction from then on)."""
    started_at: float = 0.0
    """Unix time."""

    @classmethod
    def build(
        cls,
        model: str,
        base_version: str,
        new_version: str,
        mode: object,
        fraction: object = None,
        limits: object = None,
        steps: object = None,
        started_at: float = 0.0,
    ) -> RolloutSpec:
        """A checked spec from user input; ValidationError naming the bad field.

        ``fraction`` None takes the mode's default (every query for shadow,
        :data:`DEFAULT_CANARY_FRACTION` otherwise); ``limits`` is for bandit
        rollouts only and ``steps`` for canaries only.
        """
        try:
            validate_name(model, "model name")
            validate_name(base_version, "model version")
            validate_name(new_version, "model version")
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        if mode not in ROLLOUT_MODES:
            raise ValidationError(f"mode must be one of {', '.join(ROLLOUT_MODES)}, got {mode!r}")
        if fraction is None:
            fraction = 1.0 if mode == "shadow" else DEFAULT_CANARY_FRACTION
        checked_limits = _rollout_limits({} if limits is None else limits)
        if checked_limits and mode != "bandit":
            raise ValidationError(f"limits apply to bandit rollouts only, not to {mode!r}")
        checked_steps = _rollout_steps([] if steps is None else steps)
        if checked_steps and mode != "canary":
            raise ValidationError(f"steps apply to canary rollouts only, not to {mode!r}")
        return cls(
            model,
            base_version,
            new_version,
            cast(RolloutMode, mode),  # checked above
            _rollout_fraction(fraction),
            checked_limits,
            checked_steps,
            float(started_at),
        )

    def fraction_at(self, now: float) -> float:
        """The share in force at unix time ``now``: the last step reached, else ``fraction``."""
        share = self.fraction
        for seconds, fraction in self.steps:
            if now - self.started_at >= seconds:
                share = fraction
            else:
                break
        return share

    def to_record(self) -> dict[str, Any]:
        """The JSON object the store keeps (and the management API shows)."""
        return {
            "model": self.model,
            "base_version": self.base_version,
            "new_version": self.new_version,
            "mode": self.mode,
            "fraction": self.fraction,
            "limits": dict(self.limits),
            "steps": [[s, f] for s, f in self.steps],
            "started_at": self.started_at,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RolloutSpec:
        """The spec of a stored record (KeyError, TypeError or ValueError if malformed)."""
        if record["mode"] not in ROLLOUT_MODES:
            raise ValueError(f"unknown rollout mode {record['mode']!r}")
        return cls(
            str(record["model"]),
            str(record["base_version"]),
            str(record["new_version"]),
            record["mode"],
            float(record["fraction"]),
            {str(k): float(v) for k, v in dict(record.get("limits") or {}).items()},
            tuple((float(s), float(f)) for s, f in record.get("steps") or ()),
            float(record.get("started_at", 0.0)),
        )


@dataclass(slots=True)
class Outcome:
    """What one model version made of one query: an output, or why not."""

    output: Any = None
    error: str | None = None  # a human explanation when there is no output
    overloaded: bool = False  # refused because the model's queue was full

    @property
    def ok(self) -> bool:
        return self.error is None


# Why a query got the app's default output. The values are the ``reason`` label
# of ``clipper_app_default_outputs_total`` and the keys of ``default_outputs`` in
# ``/admin/status``: dashboards and alerts depend on them, so they never change
# (docs/observability.md). Here, with the shared types, so that every layer that
# answers with a default (the selection layer, and the abstraction layer below
# it) names its reason without importing a layer above it.
class DefaultReason(StrEnum):
    """Why a query was answered with the default output (in the metrics' order)."""

    # No model answered within the SLO, the query's deadline passed in a queue, or
    # its batch would have ended past the deadline (so it was not computed).
    SLO = "slo"
    # The model raised, returned a malformed result, or its replica was lost.
    MODEL_ERROR = "model_error"
    # No linked model with a current version and a live replica (or a model
    # scaled to zero whose first replica was not ready in time).
    NO_MODELS = "no_models"
    # A model's queue was full (for an app that answers with its default, not 503).
    OVERLOADED = "overloaded"
    # The ensemble's confidence was below the app's ``min_confidence``.
    LOW_CONFIDENCE = "low_confidence"
    # Anything else (a server-side encoding failure, for example).
    OTHER = "other"


@dataclass(slots=True, init=False)
class Failure(Outcome):
    """An :class:`~clipper.types.Outcome` without output: its ``error`` explains
    it to people, its ``reason`` classifies it for the metrics."""

    reason: DefaultReason = DefaultReason.OTHER  # always set by __init__

    def __init__(self, reason: DefaultReason, error: str, overloaded: bool = False) -> None:
        # Positional and by hand: made per query when a model is overloaded or late.
        self.output = None
        self.error = error
        self.overloaded = overloaded
        self.reason = reason


def reason_of(outcome: Outcome) -> DefaultReason:
    """The reason a failed outcome reports (``OTHER`` when it names none)."""
    return outcome.reason if isinstance(outcome, Failure) else DefaultReason.OTHER


def json_default(obj: Any) -> Any:
    """orjson ``default`` for model outputs: bytes as text, else as base64."""
    if isinstance(obj, bytes):
        try:
            return obj.decode()
        except UnicodeDecodeError:
            return base64.b64encode(obj).decode()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")
