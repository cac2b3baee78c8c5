"""Pure helpers of the command line: inputs, query bodies, error lines, log diffs."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import CliError

# Flags of ``python -m clipper.server`` that say where the server runs: ``clipper start``
# reads them (after the command) so that both modes, and the printed address, agree.
_ADDRESS_FLAGS = {
    "--host": str,
    "--query-port": int,
    "--management-port": int,
    "--rpc-port": int,
    "--state-dir": Path,
}


def split_server_args(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Split ``start``'s extra args into address overrides (``Target`` field names)
    and the rest, passed to the server untouched."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for flag, kind in _ADDRESS_FLAGS.items():
        parser.add_argument(flag, type=kind)
    try:
        known, rest = parser.parse_known_args(args)
    except argparse.ArgumentError as exc:
        raise CliError(str(exc)) from exc
    return {k: v for k, v in vars(known).items() if v is not None}, rest


def parse_input_json(text: str) -> Any:
    """The query input: one JSON value (``[1, 2]``, ``"text"``, ``{"a": 1}``)."""
    if not text.strip():
        raise CliError("no input: give a JSON value as an argument or on stdin")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"the input is not valid JSON: {exc}") from exc


# What to type for each input type, when the input given is not JSON.
_EXAMPLES = {
    "integers": "a JSON array of integers, such as '[1, 2, 3]'",
    "floats": "a JSON array of numbers, such as '[0.5, 1, 2.5]'",
    "doubles": "a JSON array of numbers, such as '[0.5, 1, 2.5]'",
    "bytes": "a base64 string in JSON quotes, such as '\"aGVsbG8=\"'",
    "json": "any JSON value",
}


def parse_query_input(text: str, input_type: Callable[[], str | None], batch: bool = False) -> Any:
    """``clipper query``'s input: a JSON value; or, when the text is not JSON and the
    app takes strings, the text itself (``clipper query shout hello``).

    ``input_type()`` names the app's input type (None if unknown); it is called
    only when the text is not JSON, so a JSON input costs no lookup. Otherwise
    the error says what to type for the app.
    """
    if not text.strip():
        raise CliError("no input: give a JSON value as an argument or on stdin")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        error = exc
    itype = input_type()
    plain = text.removesuffix("\n").removesuffix("\r")  # a line piped on stdin
    if itype == "strings" and not batch:
        return plain
    quoted = shlex.quote(json.dumps(plain)) if len(plain) <= 60 and "\n" not in plain else None
    if batch:
        hint = "--batch takes a JSON array of inputs"
        if itype == "strings":
            hint += ', such as \'["hello", "world"]\''
    elif itype is None or itype == "strings":
        hint = "give a JSON value; a string goes in quotes"
        hint += f", such as {quoted}" if quoted else ""
    else:
        hint = f"the application takes {itype}: give {_EXAMPLES.get(itype, 'a JSON value')}"
        if itype == "json" and quoted:
            hint += f" (a string goes in quotes: {quoted})"
    raise CliError(f"the input is not valid JSON ({error}): {hint}") from error


def build_query_body(value: Any, batch: bool = False, version: str | None = None) -> dict[str, Any]:
    """The ``/{app}/predict`` body: ``{"input": X}`` or, with ``batch``, ``{"input_batch": X}``."""
    if batch:
        if not isinstance(value, list):
            raise CliError("--batch needs a JSON array of inputs")
        body: dict[str, Any] = {"input_batch": value}
    else:
        body = {"input": value}
    if version is not None:
        body["version"] = version
    return body


def error_line(status: int, text: str) -> str:
    """One line describing a failed HTTP answer, from Clipper's ``{"error", "cause"}``."""
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and ("error" in payload or "cause" in payload):
        parts = [str(payload[k]) for k in ("error", "cause") if payload.get(k)]
        detail = ": ".join(parts)
    else:
        detail = " ".join(text.split())[:300] or "(empty response)"
    return f"HTTP {status}: {detail}"


def parse_shape(text: str) -> list[int]:
    """``64`` → ``[64]``; ``28,28`` or ``28x28`` → ``[28, 28]``."""
    parts = [p for p in re.split(r"[,x\s]+", text.strip()) if p]
    try:
        shape = [int(p) for p in parts]
    except ValueError:
        shape = []
    if not shape or any(d <= 0 for d in shape):
        raise CliError(f"--input-shape must be positive integers such as 64 or 28,28, not {text!r}")
    return shape


def new_log_lines(previous: list[str], current: list[str]) -> list[str]:
    """The lines of ``current`` not already seen at the end of ``previous``.

    Both are the last lines of a growing log (same window size): the longest
    suffix of ``previous`` that starts ``current`` is what was seen before.
    """
    for k in range(min(len(previous), len(current)), 0, -1):
        if previous[len(previous) - k :] == current[:k]:
            return current[k:]
    return current


def load_function(path: Path, name: str) -> Callable[..., Any]:
    """Import the Python file ``path`` under a unique module name and return its
    function ``name``; the module is registered with cloudpickle so that the
    function (and what it references in the file) is pickled by value."""
    import hashlib

    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"_clipper_cli_model_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise CliError(f"cannot load {path} as Python source")
    import cloudpickle  # only ``deploy`` needs it: not imported to build the command line

    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # As `python FILE` would: the file's folder is on sys.path while it runs,
    # so the modules of the user's own beside it import (and travel by value).
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise CliError(f"{path}: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(str(path.parent))
    cloudpickle.register_pickle_by_value(module)
    func = getattr(module, name, None)
    if func is None:
        raise CliError(f"{path} defines no '{name}'")
    if not callable(func):
        raise CliError(f"'{name}' in {path} is not callable")
    return func


def read_pickle(path: Path) -> bytes:
    """The bytes of a cloudpickled model file, checked to look like a pickle."""
    data = path.read_bytes()
    if not data.startswith(b"\x80"):
        raise CliError(f"{path} is not a pickle file (protocol 2 or later)")
    return data
