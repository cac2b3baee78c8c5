"""Rich renderings of what the management API returns (pure: data in, renderable out).

Every table fits the width of the console that prints it (``COLUMNS``, else the
terminal's, else 80): names stay whole (never wrapped or cut, so they can
be copied), other columns wrap; when even that is too wide, the least useful
columns are left out and the table's caption says which (``--json`` has every
field).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# Rich is imported where a table is made: a command that prints none skips it.
if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult
    from rich.table import Table
    from rich.text import JustifyMethod

CHECK = "✓"


@dataclass(frozen=True)
class Col:
    """A column of a :class:`FitTable`."""

    header: str
    # When the table is too wide, columns are left out lowest ``keep`` first
    # (the rightmost of equals first); 0: never left out.
    keep: int = 0
    # Cells wrap at spaces only, and a column is never narrower than its longest
    # word: a name (or each name of a list) stays whole. ``fold`` marks free text
    # (a default output, a path), which may be cut anywhere to fit.
    fold: bool = False
    justify: JustifyMethod = "left"
    style: str | None = None


# Below this a foldable column is not narrowed further (it is left out instead).
_FOLD_MIN = 12


def _border(columns: int) -> int:
    """Width of a boxed table's frame and padding: ``| a | b |`` (one space each side)."""
    return 3 * columns + 1


def fit_columns(
    columns: Sequence[Col], rows: Sequence[Sequence[str]], width: int, show_header: bool = True
) -> tuple[list[int], list[int]]:
    """Which columns to show at ``width`` and how wide (contents only): ``(indices, widths)``.

    A column's minimum is its longest word (a whole name must fit on one line;
    the header may wrap at spaces), or for free text at most ``_FOLD_MIN``; its
    natural width is its longest line. Columns are left out, lowest ``keep``
    first, until the minima fit; the room left goes to the columns that need
    the least of it to show their contents unwrapped.
    """

    from rich.cells import cell_len

    def words(text: str) -> list[int]:
        return [cell_len(w) for w in text.split()] or [0]

    natural, minimum = [], []
    for i, col in enumerate(columns):
        cells = [str(row[i]) for row in rows]
        header_words = words(col.header) if show_header else [0]
        longest_cell = max((cell_len(c) for c in cells), default=0)
        natural.append(max(cell_len(col.header) if show_header else 0, longest_cell, 1))
        longest_word = max((max(words(c)) for c in cells), default=0)
        least = min(longest_word, _FOLD_MIN) if col.fold else longest_word
        minimum.append(max(least, max(header_words), 1))
    kept = list(range(len(columns)))
    while _border(len(kept)) + sum(minimum[i] for i in kept) > width:
        droppable = [i for i in kept if columns[i].keep > 0]
        if not droppable:
            break  # even the essential columns do not fit: show them whole anyway
        kept.remove(min(reversed(droppable), key=lambda i: columns[i].keep))
    widths = {i: minimum[i] for i in kept}
    spare = width - _border(len(kept)) - sum(widths.values())
    for i in sorted(kept, key=lambda i: (natural[i] - minimum[i], i)):
        grow = min(max(spare, 0), natural[i] - minimum[i])
        widths[i] += grow
        spare -= grow
    return kept, [widths[i] for i in kept]


class FitTable:
    """A table that lays itself out for the width it is printed at (see the module)."""

    def __init__(
        self,
        title: str,
        columns: Sequence[Col],
        rows: Sequence[Sequence[str]],
        *,
        show_header: bool = True,
        title_justify: JustifyMethod = "center",
    ) -> None:
        self.title = title
        self.columns = list(columns)
        self.rows = [list(r) for r in rows]
        self.show_header = show_header
        self.title_justify = title_justify

    def table(self, width: int) -> Table:
        """The Rich table laid out for ``width`` columns."""
        from rich.table import Table

        kept, widths = fit_columns(self.columns, self.rows, width, self.show_header)
        left_out = [c.header for i, c in enumerate(self.columns) if i not in kept]
        table = Table(
            title=self.title,
            show_header=self.show_header,
            title_justify=self.title_justify,
            caption=f"Left out to fit {width} columns: {', '.join(left_out)} (--json shows all)"
            if left_out
            else None,
        )
        for i, w in zip(kept, widths, strict=True):
            col = self.columns[i]
            table.add_column(
                col.header,
                justify=col.justify,
                style=col.style,
                width=w,
                no_wrap=False,
                overflow="fold" if col.fold else "ellipsis",
            )
        for row in self.rows:
            table.add_row(*(row[i] for i in kept))
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table(options.max_width)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def format_uptime(seconds: float) -> str:
    """``3725.2`` → ``1h 2m 5s``; ``93784`` → ``1d 2h 3m 4s``."""
    total = max(int(seconds), 0)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m")]
    out = [f"{n}{unit}" for i, (n, unit) in enumerate(parts) if n or any(p[0] for p in parts[:i])]
    return " ".join([*out, f"{secs}s"])


def format_slo(micros: Any) -> str:
    """Microseconds as milliseconds, without a needless fraction: 100000 → ``100``."""
    if not isinstance(micros, int | float):
        return _cell(micros)
    ms = micros / 1000
    return f"{ms:g}"


def apps_table(apps: list[Mapping[str, Any]]) -> FitTable:
    columns = [
        Col("Name"),
        Col("Input type", keep=4),
        Col("SLO ms", keep=3, justify="right"),
        Col("Default output", keep=1, fold=True),
        Col("Linked models", keep=5),
        Col("Policy", keep=2),
    ]
    rows = [
        [
            _cell(a.get("name")),
            _cell(a.get("input_type")),
            format_slo(a.get("latency_slo_micros")),
            _cell(a.get("default_output")),
            _cell(a.get("linked_models")),
            _cell(a.get("selection_policy")),
        ]
        for a in apps
    ]
    return FitTable("Applications", columns, rows)


def models_table(
    models: list[Mapping[str, Any]], wanted: Mapping[tuple[str, str], int | None]
) -> FitTable:
    """``wanted`` maps (model, version) to its requested replica count; an
    autoscaled version (``max_replicas`` in its options) shows its range instead,
    since the autoscaler, not the stored count, decides how many run."""
    columns = [
        Col("Name"),
        Col("Version"),
        Col("Current", keep=5, justify="center"),
        Col("Input type", keep=2),
        Col("Batch size", keep=1),
        Col("Replicas wanted", keep=3),
    ]
    rows = []
    for m in models:
        key = (str(m.get("model_name")), str(m.get("model_version")))
        batch = m.get("batch_size")
        rows.append(
            [
                key[0],
                key[1],
                CHECK if m.get("is_current_version") else "",
                _cell(m.get("input_type")),
                "default" if batch == -1 else _cell(batch),
                _replicas_wanted(m, wanted.get(key)),
            ]
        )
    return FitTable("Models", columns, rows)


def _replicas_wanted(model: Mapping[str, Any], stored: int | None) -> str:
    from ..types import ModelOptions  # not needed to build the command line

    try:
        options = ModelOptions.from_record(model.get("options") or {})
    except ValueError:  # not an object: show the stored count
        return _cell(stored)
    if options.max_replicas is not None:
        return f"auto {options.min_replicas}-{options.max_replicas}"
    return _cell(stored)


def replicas_table(replicas: list[Mapping[str, Any]]) -> FitTable:
    """The replica label is ``<model>-<version>-<n>``: at a narrow width the Model and
    Version columns, which it repeats, are the first left out."""
    columns = [
        Col("Model", keep=1),
        Col("Version", keep=1),
        Col("Replica"),
        Col("PID", keep=3),
        Col("Live"),
        Col("Restarts", keep=4),
        Col("Max batch", keep=2),
        Col("Batch ms", keep=2),
    ]
    # A Device column when a replica was placed or says what it runs on.
    devices = [replica_device(r) for r in replicas]
    if any(devices):
        columns.insert(3, Col("Device", keep=5))
    rows = []
    for r, device in zip(replicas, devices, strict=True):
        latency = r.get("latency_estimate_ms")
        rows.append(
            [
                _cell(r.get("model_name")),
                _cell(r.get("model_version")),
                _cell(r.get("replica")),
                _cell(r.get("pid")),
                CHECK if r.get("live") else "✗",
                _cell(r.get("restarts")),
                _cell(r.get("max_batch_size")),
                _cell(
                    f"{latency:.1f}" if isinstance(latency, int | float) and latency > 0 else None
                ),
            ]
        )
        if any(devices):
            rows[-1].insert(3, _cell(device))
    return FitTable("Replicas", columns, rows)


def replica_device(replica: Mapping[str, Any]) -> str | None:
    """What a replica runs on, in a few words: the device its model reports
    (with ONNX Runtime's provider), else its placement; ``!`` flags a fallback
    or a placement that could not be made (the status says why)."""
    runtime = replica.get("runtime")
    runtime = runtime if isinstance(runtime, Mapping) else {}
    device = runtime.get("device") or replica.get("device")
    if replica.get("error"):
        return "! unplaced"
    if not device:
        return None
    provider = str(runtime.get("provider") or "").removesuffix("ExecutionProvider")
    words = [str(device)]
    if provider:
        words.append(provider)
    if runtime.get("precision") not in (None, "fp32"):
        words.append(str(runtime["precision"]))
    if runtime.get("warning"):
        words.append("!")
    return " ".join(words)


def status_summary(
    info: Mapping[str, Any], host: str, apps: list[Any], models: list[Mapping[str, Any]]
) -> dict[str, Any]:
    """The figures ``clipper status`` shows (also its ``--json``)."""
    replicas = list(info.get("replicas") or [])
    return {
        "server": f"http://{host}:{info.get('management_port')}",
        "pid": info.get("pid"),
        "uptime_s": info.get("uptime_s"),
        "query_port": info.get("query_port"),
        "management_port": info.get("management_port"),
        "rpc_port": info.get("rpc_port"),
        "state_dir": info.get("state_dir"),
        "store": info.get("store"),
        "manager": info.get("manager"),
        "apps": len(apps),
        "models": len({m.get("model_name") for m in models}),
        "model_versions": len(models),
        "replicas_live": sum(1 for r in replicas if r.get("live")),
        "replicas": len(replicas),
    }


def status_table(summary: Mapping[str, Any]) -> FitTable:
    uptime = summary.get("uptime_s")
    rows = [
        ("Management API", summary.get("server")),
        ("PID", summary.get("pid")),
        ("Uptime", format_uptime(uptime) if isinstance(uptime, int | float) else uptime),
        (
            "Ports",
            f"query {summary.get('query_port')}, management {summary.get('management_port')}, "
            f"RPC {summary.get('rpc_port')}",
        ),
        ("State folder", summary.get("state_dir")),
        ("Store", summary.get("store") or "sqlite (state folder)"),
        ("Manager", summary.get("manager")),
        ("Applications", summary.get("apps")),
        ("Models", f"{summary.get('models')} ({summary.get('model_versions')} versions)"),
        ("Replicas", f"{summary.get('replicas_live')} live of {summary.get('replicas')}"),
    ]
    return FitTable(
        "Clipper is running",
        [Col("Field", style="bold"), Col("Value", fold=True)],
        [[name, _cell(value)] for name, value in rows],
        show_header=False,
        title_justify="left",
    )


def _share(rollout: Mapping[str, Any]) -> str:
    share = rollout.get("fraction_now", rollout.get("fraction"))
    if not isinstance(share, int | float):
        return _cell(share)
    percent = f"{share * 100:.3g}%"
    return f"copy {percent}" if rollout.get("mode") == "shadow" else percent


def rollouts_table(rollouts: Sequence[Mapping[str, Any]], now: float) -> FitTable:
    """The rollouts running (``get_rollouts``); ``now`` (unix time) gives their age."""
    columns = [
        Col("Model"),
        Col("Mode"),
        Col("From", keep=3),
        Col("To"),
        Col("Share", keep=4, justify="right"),
        Col("Running", keep=2),
        Col("Schedule / limits", keep=1, fold=True),
    ]
    rows = []
    for r in rollouts:
        started = r.get("started_at")
        age = format_uptime(now - started) if isinstance(started, int | float) else None
        steps = r.get("steps") or []
        limits = r.get("limits") or {}
        plan = [f"{s:g}s: {f * 100:.3g}%" for s, f in steps if isinstance(s, int | float)]
        plan += [f"{k}={v:g}" for k, v in sorted(limits.items()) if isinstance(v, int | float)]
        rows.append(
            [
                _cell(r.get("model")),
                _cell(r.get("mode")),
                _cell(r.get("base_version")),
                _cell(r.get("new_version")),
                _share(r),
                _cell(age),
                ", ".join(plan) or "-",
            ]
        )
    return FitTable("Rollouts", columns, rows)
