"""The generated sections of docs/benchmarks.md, rendered from the committed results.

Each benchmark writes its section (between ``<!-- name:start -->`` and
``<!-- name:end -->``) from its results JSON; this renders them all again from
the files in bench/results/ (the summaries, without their raw parts), without
running anything:

- ``python -m bench.docs_sections``: check that every section is what its
  results render to (exit status 1 and a diff when one is not);
- ``--write``: rewrite the sections that differ;
- ``--out DIR``: also write each rendered section to ``DIR/<name>.md``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import (
    batching,
    cache,
    gpu,
    grpc_oip,
    lowload,
    ops,
    overload,
    peers,
    peers_report,
    rollout,
    selection,
    workers,
    wrk,
)
from .harness import BENCHMARKS_DOC, RESULTS, ROOT, write_doc_section


def _peers(result: dict[str, Any]) -> str:
    return peers_report.section(result, peers.READING)


# section name: (results file, renderer)
SECTIONS: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "batching": ("batching.json", batching.render_markdown),
    "ops": ("ops.json", ops.render),
    "cache": ("cache.json", cache.render_markdown),
    "peers": ("peers.json", _peers),
    "wrk": ("wrk.json", wrk.render),
    "grpc": ("grpc.json", grpc_oip.render),
    "selection": ("selection.json", selection.render_markdown),
    "rollout": ("rollout.json", rollout.render_markdown),
    "gpu": ("gpu.json", gpu.render),
    "overload": ("overload.json", overload.render),
    "workers": ("workers.json", workers.render),
    "lowload": ("lowload.json", lowload.render),
}


def render(name: str, results: Path = RESULTS) -> str:
    """Section ``name`` as its committed results render it."""
    file, renderer = SECTIONS[name]
    return renderer(json.loads((results / file).read_text()))


def published(name: str, doc: Path = BENCHMARKS_DOC) -> str | None:
    """Section ``name`` as the page has it, or None when it has none."""
    start, end = f"<!-- {name}:start -->\n", f"\n<!-- {name}:end -->"
    text = doc.read_text()
    if start not in text or end not in text:
        return None
    return text.split(start, 1)[1].split(end, 1)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.docs_sections",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--write", action="store_true", help="rewrite the sections that differ")
    parser.add_argument("--out", type=Path, help="also write each section to DIR/<name>.md")
    args = parser.parse_args(argv)
    differ = []
    for name in SECTIONS:
        text = render(name)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{name}.md").write_text(text)
        page = published(name)
        if page == text:
            print(f"{name}: the same")
            continue
        differ.append(name)
        print(f"{name}: differs from {SECTIONS[name][0]}")
        diff = difflib.unified_diff(
            (page or "").splitlines(keepends=True),
            text.splitlines(keepends=True),
            "docs/benchmarks.md",
            f"rendered from bench/results/{SECTIONS[name][0]}",
        )
        sys.stdout.writelines(diff)
        if args.write:
            write_doc_section(name, text, BENCHMARKS_DOC)
            print(f"  rewrote the {name} section of {BENCHMARKS_DOC.relative_to(ROOT)}")
    return 1 if differ and not args.write else 0


if __name__ == "__main__":
    sys.exit(main())
