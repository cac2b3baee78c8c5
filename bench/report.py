"""What the benchmarks' reports share: Markdown blocks and tables, number formats,
the run's settings line, figures, and matplotlib set-up.

A generated section of docs/benchmarks.md is a list of blocks (a paragraph, a
table, a list) separated by one blank line: :func:`blocks` joins them, so a
report is written as the named steps that make its blocks.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# A block: one paragraph (a string) or several lines kept together (a table, a list).
Block = str | Sequence[str]


def blocks(*parts: Block | None) -> str:
    """Markdown blocks, a blank line between each; ``None`` and empty ones left out."""
    out = []
    for part in parts:
        if not part:
            continue
        out.append(part if isinstance(part, str) else "\n".join(part))
    return "\n\n".join(out)


def row(cells: Iterable[str]) -> str:
    """One table row: ``| a | b |``."""
    return "| " + " | ".join(cells) + " |"


def table(head: Sequence[str], align: str, rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table: the header, the alignment line (``align`` has one letter
    per column, ``l`` left or ``r`` right) and the rows."""
    if len(align) != len(head):
        raise ValueError(f"{len(head)} columns, {len(align)} alignments")
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    return [row(head), rule, *(row(r) for r in rows)]


def figure(alt: str, name: str) -> str:
    """A plot of docs/img/ as the benchmarks page shows it."""
    return f"![{alt}](img/{name})"


# -- numbers ------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    """``value`` with ``digits`` decimals, or ``-`` when it was not measured."""
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def times(value: float | None, digits: int = 2) -> str:
    """A ratio as ``1.92x``; empty when there is none."""
    return "" if value is None else f"{value:.{digits}f}x"


def pct(value: float | None, digits: int = 1) -> str:
    """A share as a percentage; ``-`` when missing or NaN."""
    return "-" if value is None or value != value else f"{100 * value:.{digits}f}%"


def names(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def verdict(value: float | None, target: float, higher: bool = True) -> str:
    """Whether ``value`` met ``target`` (at least, or at most when not ``higher``)."""
    if value is None:
        return "not measured"
    ok = value >= target if higher else value <= target
    return "**met**" if ok else "**not met**"


def median(values: Sequence[float]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


# -- the run ------------------------------------------------------------------------------


def machine(info: dict[str, Any], *, memory: bool = False) -> str:
    """``CPU (N cores)`` (with the memory: ``CPU (N cores, M GiB)``)."""
    extra = f", {info['memory_gib']} GiB" if memory else ""
    return f"{info['cpu_model']} ({info['cpu_count']} cores{extra})"


def versions(info: dict[str, Any], *packages: str) -> str:
    """``Python 3.11.7, numpy 2.4.6, ...``: the interpreter and the packages' versions."""
    found = info["packages"]
    return ", ".join([f"Python {info['python']}", *(f"{p} {found.get(p, '?')}" for p in packages)])


def measured(info: dict[str, Any]) -> str:
    """The Clipper commit measured (``+ uncommitted changes`` when so)."""
    return str(info["git"].get("measured", "?"))


def loadavg(info: dict[str, Any]) -> str:
    """The load average at the start and at the end of the run."""
    return (
        f"{info['loadavg_start'][0]:.1f} at the start, "
        f"{info.get('loadavg_end', [0])[0]:.1f} at the end"
    )


# -- plots --------------------------------------------------------------------------------


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> None:
    """Lay ``fig`` out, write it to ``path`` and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
