"""Rich renderings of what the management API returns (pure: data in, renderable out)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table

from ..types import ModelOptions

CHECK = "✓"


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


def apps_table(apps: list[Mapping[str, Any]]) -> Table:
    table = Table(title="Applications")
    for col in ("Name", "Input type", "SLO ms", "Default output", "Linked models", "Policy"):
        table.add_column(col, justify="right" if col == "SLO ms" else "left")
    for a in apps:
        table.add_row(
            _cell(a.get("name")),
            _cell(a.get("input_type")),
            format_slo(a.get("latency_slo_micros")),
            _cell(a.get("default_output")),
            _cell(a.get("linked_models")),
            _cell(a.get("selection_policy")),
        )
    return table


def models_table(
    models: list[Mapping[str, Any]], wanted: Mapping[tuple[str, str], int | None]
) -> Table:
    """``wanted`` maps (model, version) to its requested replica count; an
    autoscaled version (``max_replicas`` in its options) shows its range instead,
    since the autoscaler, not the stored count, decides how many run."""
    table = Table(title="Models")
    for col in ("Name", "Version", "Current", "Input type", "Batch size", "Replicas wanted"):
        table.add_column(col, justify="center" if col == "Current" else "left")
    for m in models:
        key = (str(m.get("model_name")), str(m.get("model_version")))
        batch = m.get("batch_size")
        table.add_row(
            key[0],
            key[1],
            CHECK if m.get("is_current_version") else "",
            _cell(m.get("input_type")),
            "default" if batch == -1 else _cell(batch),
            _replicas_wanted(m, wanted.get(key)),
        )
    return table


def _replicas_wanted(model: Mapping[str, Any], stored: int | None) -> str:
    try:
        options = ModelOptions.from_record(model.get("options") or {})
    except ValueError:  # not an object: show the stored count
        return _cell(stored)
    if options.max_replicas is not None:
        return f"auto {options.min_replicas}-{options.max_replicas}"
    return _cell(stored)


def replicas_table(replicas: list[Mapping[str, Any]]) -> Table:
    table = Table(title="Replicas")
    for col in ("Model", "Version", "Replica", "PID", "Live", "Restarts", "Max batch", "Batch ms"):
        table.add_column(col)
    for r in replicas:
        latency = r.get("latency_estimate_ms")
        table.add_row(
            _cell(r.get("model_name")),
            _cell(r.get("model_version")),
            _cell(r.get("replica")),
            _cell(r.get("pid")),
            CHECK if r.get("live") else "✗",
            _cell(r.get("restarts")),
            _cell(r.get("max_batch_size")),
            _cell(f"{latency:.1f}" if isinstance(latency, int | float) and latency > 0 else None),
        )
    return table


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


def status_table(summary: Mapping[str, Any]) -> Table:
    table = Table(title="Clipper is running", show_header=False, title_justify="left")
    table.add_column("Field", style="bold")
    table.add_column("Value")
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
    for name, value in rows:
        table.add_row(name, _cell(value))
    return table
