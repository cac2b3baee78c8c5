"""Shared value types: input types, names, and the records of the config store.

A leaf module: no I/O, no imports from the rest of the package, so that the
model container side can import it beside the RPC protocol. It does not
import numpy either (the admin client and the CLI import it): the numeric
input types' table holds numpy's names, and numpy is imported only when a
consumer asks for a dtype object.
"""

from __future__ import annotations

import base64
import functools
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

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
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_type": self.input_type.value,
            "default_output": self.default_output,
            "latency_slo_micros": self.slo_micros,
            "input_shape": list(self.input_shape) if self.input_shape is not None else None,
            "selection_policy": self.policy,
            "policy_params": dict(self.policy_params),
            "options": dict(self.options),
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
    options: dict[str, Any] = field(default_factory=dict)

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
            "options": dict(self.options),
            "is_current_version": current_version == self.version,
        }


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
    # The ensemble's agreement was below the app's ``min_confidence``.
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
