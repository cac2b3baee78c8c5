"""The routes a handler really dispatches, found by asking it; and the checks
that a port's OpenAPI description lists exactly those.

No hand-kept list: the candidate path segments are the string constants the
dispatch code itself compares against (read from its source with ``ast``,
the module-level names it uses resolved, plus its routing tables' keys), and
each candidate path is sent to the handler. A path is served unless the
handler answers its "no route" 404. A served path's segments that still
dispatch when replaced by an unknown word are parameters (``{}``).
"""

from __future__ import annotations

import ast
import inspect
import itertools
import re
import textwrap
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from clipper.http.server import Request, Response

SEGMENT = re.compile(r"[A-Za-z0-9_.-]{1,64}")
UNKNOWN = "zq-unknown-7"  # a word no dispatcher knows
PARAM = "{}"

Probe = Callable[[str, str], Response | None]  # (method, path) -> answer; None: no route


def vocabulary(*functions: Callable[..., Any], tables: Iterable[Iterable[str]] = ()) -> set[str]:
    """The path segments ``functions`` compare requests against: their string
    constants (not the keys of dict literals: those are answers' fields) and the
    string globals they name, split on "/"; and the keys of ``tables``."""
    words: set[str] = set()

    def add(text: str) -> None:
        words.update(s for s in text.split("/") if SEGMENT.fullmatch(s))

    for function in functions:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        dict_keys = {
            id(k) for node in ast.walk(tree) if isinstance(node, ast.Dict) for k in node.keys
        }
        names = getattr(function, "__globals__", {})
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) not in dict_keys:
                    add(node.value)
            elif isinstance(node, ast.Name) and isinstance(names.get(node.id), str):
                add(names[node.id])
    for table in tables:
        for key in table:
            add(key)
    return words - {"GET", "POST", "HEAD", "PUT", "DELETE", "PATCH"}


def explore(probe: Probe, words: Iterable[str], depth: int, prefix: str = "") -> set[str]:
    """Every path of at most ``depth`` segments of ``words`` (after ``prefix``) that
    ``probe`` serves to GET, as templates (parameters as ``{}``)."""
    words = sorted(words)
    found: set[str] = set()
    for n in range(1, depth + 1):
        for segments in itertools.product(words, repeat=n):
            path = prefix + "/" + "/".join(segments)
            if probe("GET", path) is not None:
                found.add(template(probe, prefix, list(segments)))
    return found


def template(probe: Probe, prefix: str, segments: list[str]) -> str:
    """The path with each segment that dispatches whatever its value as ``{}``."""
    shape = list(segments)
    for i in range(len(segments)):
        trial = [*segments[:i], UNKNOWN, *segments[i + 1 :]]
        if probe("GET", prefix + "/" + "/".join(trial)) is not None:
            shape[i] = PARAM
    return prefix + "/" + "/".join(shape)


def no_route(response: Response) -> bool:
    """The handlers' answer for a path they do not dispatch."""
    if response.status != 404:
        return False
    try:
        body = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return False
    text = f"{body.get('error', '')} {body.get('cause', '')}"
    return "no route" in text or "no dashboard resource" in text


def run(answer: Any) -> Response:
    """A handler's answer, now: a Response, or its coroutine stepped once. One
    that waits (or fails) past its first step got past routing: dispatched."""
    if isinstance(answer, Response):
        return answer
    if inspect.iscoroutine(answer):
        try:
            answer.send(None)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        except Exception:
            return DISPATCHED
        answer.close()
    return DISPATCHED


DISPATCHED = Response(202, b"{}")  # past routing, not answered in the probe


def request(method: str, path: str, headers: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request(method, path, b"", raw, b"")


def described(doc: dict[str, Any]) -> dict[str, re.Pattern[str]]:
    """The described paths, each as a pattern its concrete paths match."""
    patterns = {}
    for path in doc["paths"]:
        parts = re.split(r"(\{[^}]+\})", path)
        regex = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
        patterns[path] = re.compile(regex)
    return patterns


def undescribed(served: Iterable[str], doc: dict[str, Any]) -> list[str]:
    """Served templates no described path covers (a parameter must meet a parameter)."""
    patterns = described(doc)
    missing = []
    for served_path in served:
        concrete = served_path.replace(PARAM, UNKNOWN)
        matches = [p for p, rx in patterns.items() if rx.fullmatch(concrete)]
        # A parameter of the served path must be a parameter of the description.
        ok = [
            p
            for p in matches
            if all(
                d.startswith("{")
                for s, d in zip(served_path.split("/"), p.split("/"), strict=True)
                if s == PARAM
            )
        ]
        if not ok:
            missing.append(served_path)
    return sorted(missing)


def sample(path: str, values: dict[str, str]) -> str:
    """A concrete path for a described one: each parameter by ``values``."""
    return re.sub(r"\{([^}]+)\}", lambda m: values[m.group(1)], path)
