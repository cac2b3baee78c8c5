"""Code blocks of the documentation, as the docs tests read and run them.

The rule the docs follow (docs/index.md says it to readers too):

- A ```` ```bash ```` block on an executed page runs, one command at a time,
  against a test server; only ``make`` commands are skipped (CI runs them).
  Comment lines right under a command are its output, which must match
  (see ``output_matches``: JSON compares as JSON, ``query_id`` values may
  differ, ``...`` stands for anything).
- A ```` ```python ```` block either shows an example script, inlined
  under a ``<!-- source: examples/x.py ... -->`` line (the block must be the
  file, character for character; ``test_inlined.py`` checks it), which a
  bash block of the same page must use (``python examples/x.py``, or
  ``--python-file examples/x.py``), or is run as it stands (the README's,
  with the test server's ports).
- Other fences (``console``, ``text``, ``json``, ...) are not run: install
  steps and multi-machine set-ups. Each executed page lists how many it has
  in ``NOT_RUN`` below, so a new one is a decision, not an accident.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"

# Pages whose code blocks run, in the order the tests run them (they share
# one server, so names of apps and models differ from page to page).
EXECUTED = (
    "README.md",
    "docs/getting-started.md",
    "docs/howto/python-closure.md",
    "docs/howto/own-modules.md",
    "docs/howto/sklearn.md",
    "docs/howto/pytorch.md",
    "docs/howto/onnx.md",
    "docs/howto/mlflow.md",
    "docs/howto/rollback.md",
    "docs/howto/rollout.md",
    "docs/howto/scale.md",
    "docs/howto/selection-policy.md",
    "docs/howto/tritonclient.md",
    "docs/howto/grpc.md",
    "docs/reference/rest-api.md",
    "docs/howto/redis-and-ray.md",
)

# Blocks on executed pages that are shown but not run, and why.
NOT_RUN = {
    "docs/getting-started.md": 2,  # installing and `clipper start`; `clipper reset`
    "docs/howto/tritonclient.md": 1,  # pip install tritonclient
    "docs/howto/grpc.md": 2,  # clipper start --grpc-port; pip install tritonclient
    "docs/howto/redis-and-ray.md": 1,  # a Ray cluster of several machines
}

SNIPPET = re.compile(r"--8<--")  # pymdownx.snippets: none any more (pages read on GitHub)
SOURCE = re.compile(r"^\s*<!--\s*source:\s*(\S+)[^>]*-->\s*$")
FENCE = re.compile(r"^(\s*)(`{3,})\s*([\w+-]*)(.*)$")


@dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    source: str | None = None  # the file it is a copy of (``<!-- source: ... -->`` above it)
    info: str = ""  # the rest of the fence's opening line, e.g. ``title="examples/x.py"``


@dataclass
class Command:
    text: str
    line: int  # 1-based line in the page
    expected: list[str] | None = None  # the output lines shown under it, if any


@dataclass
class Page:
    path: str
    blocks: list[Block] = field(default_factory=list)

    @classmethod
    def read(cls, path: str) -> Page:
        return cls(path, parse_blocks((ROOT / path).read_text()))


def parse_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, in order."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, lang = m.group(1), m.group(2), m.group(3)
        above = SOURCE.match(lines[i - 1]) if i > 0 else None
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not (
            lines[i].strip().startswith(ticks) and lines[i].strip().strip("`") == ""
        ):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        source = above.group(1) if above else None
        blocks.append(Block(lang, "\n".join(body) + "\n", start + 1, source, m.group(4).strip()))
        i += 1
    return blocks


def commands(block: Block) -> list[Command]:
    """The commands of a bash block, each with the output shown under it.

    Comment lines right under a command (no blank line between) are its
    expected output, one comment per line of output; other comments are notes.
    """
    out: list[Command] = []
    pending: list[str] = []
    collecting = False
    for offset, raw in enumerate(block.code.splitlines()):
        line = raw.rstrip()
        number = block.line + 1 + offset
        if pending:
            pending.append(line)
            if not line.endswith("\\"):
                out.append(Command("\n".join(pending), number - len(pending) + 1))
                pending, collecting = [], True
            continue
        stripped = line.strip()
        if not stripped:
            collecting = False
        elif stripped.startswith("#"):
            if collecting:
                text = stripped[1:]
                out[-1].expected = [
                    *(out[-1].expected or []),
                    text[1:] if text[:1] == " " else text,
                ]
        elif line.endswith("\\"):
            pending = [line]
        else:
            out.append(Command(_strip_note(line), number))
            collecting = True
    assert not pending, f"a bash block ends with a continued line: {pending!r}"
    return out


def _strip_note(line: str) -> str:
    """``cmd  # note`` -> ``cmd`` (a ``#`` after two spaces starts a note)."""
    return line.split("  #", 1)[0].rstrip() if "  #" in line else line


def is_skipped(command: Command) -> bool:
    return command.text.startswith("make ")


def output_matches(expected: list[str], output: str) -> str | None:
    """None if the output matches the lines shown in the docs, else why not.

    A shown line that is JSON matches JSON equal to it (see ``matches``);
    any other line must be equal, where ``...`` stands for any text.
    """
    actual = output.rstrip().splitlines()
    if len(actual) != len(expected):
        return f"{len(actual)} line(s) of output, the docs show {len(expected)}"
    for want, got in zip(expected, actual, strict=True):
        shown = _as_json(want)
        if shown is not _NOT_JSON:
            if not matches(shown, _as_json(got)):
                return f"output {got!r} does not match {want!r}"
        elif not re.fullmatch(".*".join(map(re.escape, want.split("..."))), got):
            return f"output {got!r} is not {want!r}"
    return None


_NOT_JSON = object()


def _as_json(text: str) -> Any:
    if text[:1] not in ("{", "["):
        return _NOT_JSON
    try:
        return json.loads(text)
    except ValueError:
        return _NOT_JSON


def matches(expected: Any, actual: Any) -> bool:
    """Whether ``actual`` (JSON) matches an expected value from the docs.

    ``"..."`` matches anything; a ``query_id`` may be any integer; a list
    ending in ``"..."`` matches any longer list with that beginning; floats
    match to 4 significant digits.
    """
    if expected == "...":
        return True
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or expected.keys() != actual.keys():
            return False
        return all(
            isinstance(actual[k], int) if k == "query_id" else matches(v, actual[k])
            for k, v in expected.items()
        )
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return False
        if expected and expected[-1] == "...":
            head = expected[:-1]
            return len(actual) >= len(head) and all(map(matches, head, actual))
        return len(expected) == len(actual) and all(map(matches, expected, actual))
    if type(expected) is not type(actual):
        return False
    if isinstance(expected, float):
        return math.isclose(expected, actual, rel_tol=1e-4, abs_tol=1e-6)
    return bool(expected == actual)


def example_runs(page: Page) -> set[str]:
    """Example scripts that the page's bash blocks use (``python examples/x.py``).

    A script in a folder of its own (``python examples/own_module/deploy.py``)
    runs the modules beside it too: it imports them.
    """
    runs = set()
    for block in page.blocks:
        if block.lang == "bash":
            for command in commands(block):
                runs.update(
                    re.findall(r"(?<![\w/.-])(examples/(?:[\w.-]+/)*[\w.-]+\.py)", command.text)
                )
    for script in list(runs):
        folder = (ROOT / script).parent
        if folder != EXAMPLES and folder.is_dir():
            runs.update(str(p.relative_to(ROOT)) for p in folder.glob("*.py"))
    return runs
