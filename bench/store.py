"""Where a benchmark's results go: a summary in ``bench/results/`` (committed), the
whole result in ``bench/results/raw/`` (ignored by git).

The committed JSON keeps what the published tables and plots need; the raw
parts (timelines, per-probe searches, per-request samples: the keys a
benchmark names) are left out of it and kept, with everything else, in the raw
file of the same name. The summary says what was moved where (its ``raw``
entry), and :func:`load` puts the raw parts back when the raw file is there and
belongs to the same run.

A key path is dotted, ``*`` standing for every item of a list or every value
of a mapping: ``"timeline.samples"``, ``"rows.*.probes"``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .harness import RESULTS

RAW = RESULTS / "raw"


def raw_path(path: Path) -> Path:
    """The raw file beside a results file: ``<folder>/raw/<name>``."""
    return path.parent / "raw" / path.name


def _drop(node: Any, keys: list[str]) -> None:
    head, rest = keys[0], keys[1:]
    if head == "*":
        children = node.values() if isinstance(node, dict) else node
    elif isinstance(node, dict) and head in node:
        if not rest:
            del node[head]
            return
        children = [node[head]]
    else:
        return
    for child in children:
        if rest and isinstance(child, dict | list):
            _drop(child, rest)


def strip(result: dict[str, Any], raw_keys: Sequence[str]) -> dict[str, Any]:
    """A deep copy of ``result`` without the parts at ``raw_keys`` (nor its ``raw`` entry)."""
    out = copy.deepcopy(result)
    out.pop("raw", None)
    for key in raw_keys:
        _drop(out, key.split("."))
    return out


def save(
    path: Path,
    result: dict[str, Any],
    raw_keys: Sequence[str],
    *,
    indent: int = 1,
    default: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Write the summary of ``result`` to ``path`` and all of it to its raw file;
    the summary is returned (what a report renders from the committed file)."""
    full = {k: v for k, v in result.items() if k != "raw"}
    raw = raw_path(path)
    summary = strip(full, raw_keys)
    summary["raw"] = {"file": f"raw/{raw.name}", "moved": list(raw_keys)}
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(full, indent=indent, default=default))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=indent, default=default))
    return summary


def load(path: Path) -> dict[str, Any]:
    """A results file, with its raw parts when its raw file is there and is of the
    same run (the summary of the raw file is the committed one), else the summary."""
    summary: dict[str, Any] = json.loads(path.read_text())
    moved = summary.get("raw", {}).get("moved")
    raw = raw_path(path)
    if moved is None or not raw.exists():
        return summary
    full: dict[str, Any] = json.loads(raw.read_text())
    mine = {k: v for k, v in summary.items() if k != "raw"}
    # Compared as text: NaN (a straggler run's missing error) is not equal to itself.
    same = _text(strip(full, moved)) == _text(mine)
    return full if same else summary


def _text(result: dict[str, Any]) -> str:
    return json.dumps(result, sort_keys=True, default=str)


def has_raw(result: dict[str, Any], *keys: str) -> bool:
    """Whether ``result`` holds the raw part at every dotted key (no ``*``)."""
    for key in keys:
        node: Any = result
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
    return True
