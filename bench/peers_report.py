"""What ``bench/peers.py`` reports: the summary of its rows (medians, ratios per
repeat, the verdict on issue 11's targets), the Markdown section of
docs/benchmarks.md and the goodput plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from . import report
from .batching import Probe
from .harness import BENCHMARKS_DOC, IMG, write_doc_section
from .peer_envs import PEER_KEYS, PEERS

DOC = BENCHMARKS_DOC
# What a run measures, shared with bench/peers.py.
INPUT_POOL = 500
LOW_RATE = 50.0
CEILING_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SERVERS = ("clipper", "naive", "echo")  # the baselines, beside the batching peers
LABELS = {"mlp": "light MLP", "mlp-heavy": "heavy MLP", "noop": "no-op"}
DESCRIBE = {
    "mlp": "784→512→512→10, float32, fixed seed",
    "mlp-heavy": "784→2048→2048→10, float32, fixed seed",
    "noop": "answers 0; 784 values per query like the others",
}
# Targets of issue 11 (light: ≥3x naive and ≥10x the best batching peer; heavy: ≥5x
# naive and ≥9x the best batching peer; overhead p50 ≤ 1 ms, p99 ≤ 3 ms above the
# model's own time for one query at that rate; frontend ≥ 80 % of echo).
TARGET_VS_NAIVE = {"mlp": 3.0, "mlp-heavy": 5.0}
TARGET_VS_PEER = {"mlp": 10.0, "mlp-heavy": 9.0}  # x the best batching peer's goodput
TARGET_P50_MS, TARGET_P99_MS, TARGET_FRONTEND = 1.0, 3.0, 0.8
# Queries sent at once (so they are batched) to check a server's answers.
CHECK_COUNT = 32


def plain(obj: Any) -> Any:
    if isinstance(obj, Probe):
        d = dict(obj.__dict__)
        d["load"] = {k: v for k, v in d["load"].items() if k != "error_samples"} | {
            "error_samples": d["load"].get("error_samples", [])[:2]
        }
        return d
    return obj


# -- summary ---------------------------------------------------------------------------------

Rows = list[dict[str, Any]]
_med = report.median


def _find(rows: Rows, srv: str, kind: str, repeat: int) -> dict[str, Any] | None:
    """The row of one server, model and repeat."""
    for r in rows:
        if r["server"] == srv and r["model"] == kind and r["repeat"] == repeat:
            return r
    return None


def summarise(rows: Rows, ceiling: dict[str, Any], kinds: list[str]) -> dict:
    repeats = sorted({r["repeat"] for r in rows})
    out: dict[str, Any] = {}
    for kind in kinds:
        per: dict[str, Any] = {}
        for srv in ("clipper", "naive", *PEER_KEYS):
            every = [r for r in rows if r["server"] == srv and r["model"] == kind]
            if every:
                per[srv] = _server_summary(every)
        ratios, best_per_repeat, skipped = _ratios(rows, kind, repeats, ceiling)
        measured = [k for k in PEER_KEYS if "goodput_median" in per.get(k, {})]
        if measured:
            per["best_peer"] = max(measured, key=lambda k: per[k]["goodput_median"])
            per["best_peer_per_repeat"] = best_per_repeat
            if skipped:
                per["best_peer_repeats_skipped"] = skipped
        per["ratios"] = {k: _med(v) for k, v in ratios.items()} | {"per_repeat": ratios}
        per["model_ceiling_qps"] = ceiling.get(kind, {}).get("ceiling_qps")
        per["model_batch1_ms"] = ceiling.get(kind, {}).get("batch1_ms")
        out[kind] = per
    echo = [r for r in rows if r["server"] == "echo"]
    if echo:
        out["echo"] = _echo_summary(echo)
    out["closed_loop_noop"] = _closed_loop(rows, repeats)
    return out


def _server_summary(every: Rows) -> dict[str, Any]:
    """One server's repeats on one model: goodput (median, range), CPU, low-load latency."""
    rs = [r for r in every if r.get("goodput") is not None]
    failures = [r["failed"] for r in every if r.get("failed")]
    if not rs:
        return {"failed": failures[0], "failures": failures}
    gp = [r["goodput"] for r in rs]
    at = [r["at_goodput"] for r in rs if r["at_goodput"]]
    out = {
        "goodput_median": statistics.median(gp),
        "goodput_min": min(gp),
        "goodput_max": max(gp),
        "goodputs": gp,
        "cpu_us_per_query_at_goodput": _med(
            [p["server_cpu_per_query_us"] + p["replica_cpu_per_query_us"] for p in at]
        ),
        "low_p50_ms": _med([r["low_load"]["load"]["p50_ms"] for r in rs]),
        "low_p99_ms": _med([r["low_load"]["load"]["p99_ms"] for r in rs]),
        "low_answered": sum(r["low_load"]["load"].get("completed", 1) for r in rs),
        "generator_util_at_goodput": _med([p["load"]["generator_cpu_util"] for p in at]),
    }
    if failures:
        out["failures"] = failures
    return out


def _ratios(
    rows: Rows, kind: str, repeats: list[int], ceiling: dict[str, Any]
) -> tuple[dict[str, list[float]], list[str], list[int]]:
    """Clipper's goodput over the others', per repeat; the best batching peer of
    each repeat; the repeats left out of the best-peer ratio."""
    ratios: dict[str, list[float]] = {
        "vs_naive": [],
        "vs_echo": [],
        "vs_model_ceiling": [],
        "vs_best_peer": [],
    }
    best_per_repeat: list[str] = []
    # Peers measured in some repeat: a repeat in which one of them failed has
    # no best peer (its best would be a lesser one), so no ratio either.
    ever = {
        r["server"]
        for r in rows
        if r["server"] in PEERS and r["model"] == kind and r.get("goodput") is not None
    }
    skipped: list[int] = []
    for rep in repeats:
        c, n = _find(rows, "clipper", kind, rep), _find(rows, "naive", kind, rep)
        e = _find(rows, "echo", "noop", rep)
        if c and n and n["goodput"]:
            ratios["vs_naive"].append(c["goodput"] / n["goodput"])
        if c and e and e["goodput"]:
            ratios["vs_echo"].append(c["goodput"] / e["goodput"])
        if c and kind in ceiling:
            ratios["vs_model_ceiling"].append(c["goodput"] / ceiling[kind]["ceiling_qps"])
        # The best batching peer of this repeat (of those that ran).
        peers = [(r["goodput"], key) for key in PEER_KEYS if (r := _find(rows, key, kind, rep))]
        peers = [(g, key) for g, key in peers if g is not None]
        if c and peers and {key for _, key in peers} < ever:
            skipped.append(rep)
        elif c and peers:
            best, key = max(peers)
            best_per_repeat.append(key)
            if best > 0:
                ratios["vs_best_peer"].append(c["goodput"] / best)
            for g, key in peers:
                if g:
                    ratios.setdefault(f"vs_{key}", []).append(c["goodput"] / g)
    return ratios, best_per_repeat, skipped


def _echo_summary(echo: Rows) -> dict[str, Any]:
    return {
        "goodput_median": statistics.median(r["goodput"] for r in echo),
        "goodputs": [r["goodput"] for r in echo],
        "low_p50_ms": _med([r["low_load"]["load"]["p50_ms"] for r in echo]),
        "low_p99_ms": _med([r["low_load"]["load"]["p99_ms"] for r in echo]),
        "generator_util_at_goodput": _med(
            [r["at_goodput"]["load"]["generator_cpu_util"] for r in echo if r["at_goodput"]]
        ),
    }


def _closed_loop(rows: Rows, repeats: list[int]) -> dict[str, Any]:
    """The no-op model's closed-loop rates per server, and Clipper / echo per repeat."""
    closed: dict[str, list[float]] = {"clipper": [], "naive": [], "echo": [], "gen_util": []}
    closed |= {key: [] for key in PEER_KEYS}
    ratio_closed: list[float] = []
    for rep in repeats:
        for srv in ("clipper", "naive", "echo", *PEER_KEYS):
            r = _find(rows, srv, "noop", rep)
            if r and r.get("closed_loop"):
                closed[srv].append(r["closed_loop"]["achieved_rate"])
                if srv == "echo":
                    closed["gen_util"].append(r["closed_loop"]["generator_cpu_util"])
        c, e = _find(rows, "clipper", "noop", rep), _find(rows, "echo", "noop", rep)
        if c and e and c["closed_loop"] and e["closed_loop"]:
            ratio_closed.append(
                c["closed_loop"]["achieved_rate"] / e["closed_loop"]["achieved_rate"]
            )
    return {k: _med(v) for k, v in closed.items()} | {
        "clipper_vs_echo": _med(ratio_closed),
        "per_repeat": closed | {"clipper_vs_echo": ratio_closed},
    }


def overhead(rows: list[dict[str, Any]], ceiling: dict[str, Any], kinds: list[str]) -> dict:
    out: dict[str, Any] = {}
    for kind in kinds:
        rs = [r for r in rows if r["server"] == "clipper" and r["model"] == kind]
        if not rs or kind not in ceiling:
            continue
        own = ceiling[kind]["batch1_ms"]
        # Older results have no paced timing: fall back to the back-to-back one.
        paced = ceiling[kind].get("paced_batch1_ms", [own, own])[0]
        p50 = [r["low_load"]["load"]["p50_ms"] for r in rs]
        p99 = [r["low_load"]["load"]["p99_ms"] for r in rs]
        out[kind] = {
            "rate": LOW_RATE,
            "model_batch1_ms": own,
            "model_paced_ms": paced,
            "p50_ms": statistics.median(p50),
            "p99_ms": statistics.median(p99),
            # Above the model's own time at this rate (called in-process as often).
            "p50_overhead_ms": statistics.median(p50) - paced,
            "p99_overhead_ms": statistics.median(p99) - paced,
            # Above its time back to back (warm caches): the stricter reading.
            "p50_overhead_warm_ms": statistics.median(p50) - own,
            "p99_overhead_warm_ms": statistics.median(p99) - own,
            "p50_per_repeat": p50,
            "p99_per_repeat": p99,
            "defaults": sum(r["low_load"]["load"]["defaults"] for r in rs),
        }
    echo = [r for r in rows if r["server"] == "echo"]
    if echo:
        out["echo_floor"] = {
            "p50_ms": statistics.median(r["low_load"]["load"]["p50_ms"] for r in echo),
            "p99_ms": statistics.median(r["low_load"]["load"]["p99_ms"] for r in echo),
            "note": "the bare ASGI echo server at the same rate: loopback, HTTP and the "
            "generator's own share of every latency",
        }
    return out


# -- outputs -------------------------------------------------------------------------------

# The raw parts of a result: in bench/results/raw/ only (bench/store.py). A row
# keeps what identifies it, its goodput, failure and pinning; its probes (the
# search, the one at goodput, at low load, closed loop) are raw.
RAW_KEYS = ("rows.*.probes", "rows.*.at_goodput", "rows.*.low_load", "rows.*.closed_loop")
FIGURE = ("Goodput per server and model", "peers-goodput.png")
fmt = report.fmt


def _gp(v: dict[str, Any] | None) -> str:
    """A goodput cell: median (min-max), or why it was not measured."""
    if not v:
        return "-"
    if "goodput_median" not in v:
        return "**failed** (see below)"
    txt = f"{v['goodput_median']:.0f} ({v['goodput_min']:.0f}-{v['goodput_max']:.0f})"
    if v.get("failures"):
        txt += f", failed in {len(v['failures'])} repeat(s)"
    return txt


def _peer_versions(result: dict[str, Any], key: str) -> str:
    v = result.get("peer_versions", {}).get(key, {})
    main = v.get(PEERS[key].versions[0])
    if not main:
        return "version unknown"
    rest = ", ".join(f"{p} {ver}" for p, ver in v.items() if p != PEERS[key].versions[0])
    return f"{main} ({rest})" if rest else main


def _peers(result: dict[str, Any]) -> dict[str, str]:
    """The batching peers run, by key, with their labels."""
    return {k: PEERS[k].label for k in result.get("peers", []) if k in PEERS}


def render_markdown(result: dict[str, Any]) -> str:
    return report.blocks(
        "## Clipper beside a naive FastAPI server, batching peers and the HTTP ceiling "
        "(generated by `make bench-peers`)",
        _settings(result),
        _goodput_table(result),
        *_failures(result),
        *_peer_details(result),
        *_low_load(result),
        _closed_loop_line(result),
        "**Against the targets of issue 11** (computed from the table):",
        _targets(result),
        report.figure(*FIGURE),
        "Where the server's time goes: [the hot-path profile](profile.md).",
    )


def _settings(result: dict[str, Any]) -> str:
    info, opts, naive = result["machine"], result["options"], result["naive_versions"]
    return (
        f"Run {info['date_utc']} on {report.machine(info)}, "
        f"{report.versions(info, 'numpy', 'uvicorn')}; naive server: FastAPI "
        f"{naive.get('fastapi', '?')}, pydantic {naive.get('pydantic', '?')}; "
        f"{info['pinning']} (each server alone on that core, frontend and model together); "
        f"Clipper at {report.measured(info)} with AIMD batching, cache off. Goodput = "
        f"highest Poisson rate with p99 ≤ {opts['slo_ms']:.0f} ms, no default outputs, no "
        f"errors; {opts['repeats']} repeat(s), medians (min-max); ratios are medians of "
        f"per-repeat ratios. Load average {report.loadavg(info)} (a shared machine: other "
        "jobs ran). " + _peer_settings(result)
    )


def _peer_settings(result: dict[str, Any]) -> str:
    peers = _peers(result)
    if not peers:
        labels = [peer.label for peer in PEERS.values()]
        return f"The batching peers ({', '.join(labels)}) were **not measured**."
    cfg: dict[str, Any] = result.get("peer_batching", {})
    sizes = ", ".join(
        f"{LABELS[k]} {cfg[k]['max_batch_size']}" for k in result["kinds"] if k in cfg
    )
    first: dict[str, Any] = next(iter(cfg.values()), {})
    together = {2: "both", 3: "all three", 4: "all four"}.get(len(peers), "all")
    batching = f"Their batching, the same for {together}" if len(peers) > 1 else "Its batching"
    return (
        "Batching peers, each from its own virtual environment, the whole process tree "
        "pinned to the server's core: "
        + "; ".join(f"{label} {_peer_versions(result, k)}" for k, label in peers.items())
        + f". {batching}: max batch size {sizes}, "
        f"max wait {fmt(first.get('batch_wait_ms'), 1)} ms ({first.get('rule', '')})."
    )


def _goodput_table(result: dict[str, Any]) -> list[str]:
    peers = _peers(result)
    head = [
        "model",
        "model batch-1 (ms)",
        "model-only ceiling (q/s, best batch)",
        "Clipper goodput",
        "naive FastAPI goodput",
        *(f"{label} goodput" for label in peers.values()),
        "echo ceiling (no model)",
        "Clipper / naive",
        *(["Clipper / best batching peer"] if peers else []),
        "Clipper / echo",
        "Clipper / model ceiling",
        "CPU µs/query at goodput (Clipper / naive)",
    ]
    rows = [
        _goodput_row(result, kind, peers)
        for kind in result["kinds"]
        if "clipper" in result["summary"].get(kind, {})
    ]
    return report.table(head, "l" + "r" * (len(head) - 1), rows)


def _goodput_row(result: dict[str, Any], kind: str, peers: dict[str, str]) -> list[str]:
    k = result["summary"][kind]
    c, n, r = k["clipper"], k.get("naive", {}), k["ratios"]
    ceil = result["model_ceiling"].get(kind, {})
    ceiling_txt = "- (no work)"
    if kind != "noop" and ceil:
        ceiling_txt = f"{ceil['ceiling_qps']:.0f} (b={ceil['best_batch_size']})"
    best = k.get("best_peer")
    best_txt = fmt(r.get("vs_best_peer"), 2, "x") + (f" ({PEERS[best].label})" if best else "")
    if best and r.get("vs_best_peer") is None and k[best].get("goodput_median") == 0:
        best_txt = "∞ (every peer 0)"
    return [
        LABELS[kind],
        fmt(k["model_batch1_ms"], 3),
        ceiling_txt,
        f"{c['goodput_median']:.0f} ({c['goodput_min']:.0f}-{c['goodput_max']:.0f})",
        _gp(n),
        *(_gp(k.get(p)) for p in peers),
        fmt(result["summary"].get("echo", {}).get("goodput_median")),
        fmt(r["vs_naive"], 2, "x"),
        *([best_txt] if peers else []),
        fmt(r["vs_echo"], 2),
        fmt(r["vs_model_ceiling"], 2) if kind != "noop" else "-",
        f"{fmt(c.get('cpu_us_per_query_at_goodput'))} / "
        f"{fmt(n.get('cpu_us_per_query_at_goodput'))}",
    ]


def _failures(result: dict[str, Any]) -> list[report.Block]:
    """The peers that failed, and why (once per reason)."""
    s, peers = result["summary"], _peers(result)
    failures = [
        f"- {label}, {LABELS[kind]}: failed: {oneline(why)}"
        for kind in result["kinds"]
        if "clipper" in s.get(kind, {})
        for p, label in peers.items()
        for why in dict.fromkeys(s[kind].get(p, {}).get("failures", []))
    ]
    if not failures:
        return []
    return ["Peers that failed (the run went on without them):", failures]


def _peer_details(result: dict[str, Any]) -> list[report.Block]:
    peers = _peers(result)
    if not peers:
        return []
    head = (
        "model",
        "peer",
        "max batch / wait (ms) [a full batch in-process, ms]",
        "goodput",
        "Clipper / peer",
        "CPU µs/query at goodput",
        "p50 / p99 at low load (ms)",
        "processes pinned",
    )
    rows = [
        _peer_row(result, kind, p, label)
        for kind in result["kinds"]
        for p, label in peers.items()
        if result["summary"].get(kind, {}).get(p)
    ]
    return [
        "The batching peers in detail (goodput as above; CPU of the whole process tree; "
        f"latency at {LOW_RATE:.0f} queries/s; answers checked against the model "
        f"in-process, {CHECK_COUNT} queries sent at once):",
        report.table(head, "llrrrrrr", rows),
    ]


def _peer_row(result: dict[str, Any], kind: str, p: str, label: str) -> list[str]:
    k = result["summary"][kind]
    v = k[p]
    cfg = result.get("peer_batching", {}).get(kind, {})
    pinned = [
        row["pinned"]["processes"]
        for row in result["rows"]
        if row["server"] == p and row["model"] == kind and row.get("pinned")
    ]
    low = (
        f"{fmt(v.get('low_p50_ms'), 2)} / {fmt(v.get('low_p99_ms'), 2)}"
        if v.get("low_answered", 1)
        else "no answer in time"
    )
    return [
        LABELS[kind],
        label,
        f"{cfg.get('max_batch_size', '-')} / {fmt(cfg.get('batch_wait_ms'), 1)} "
        f"[{fmt(cfg.get('batch_ms_in_process'), 2)}]",
        _gp(v),
        fmt(k.get("ratios", {}).get(f"vs_{p}"), 2, "x"),
        fmt(v.get("cpu_us_per_query_at_goodput")),
        low,
        str(max(pinned)) if pinned else "-",
    ]


def _low_load(result: dict[str, Any]) -> list[report.Block]:
    s, ov = result["summary"], result["overhead"]
    head = (
        "model",
        "model alone at this rate, p50 (ms)",
        "p50 (ms)",
        "p99 (ms)",
        "p50 overhead (ms)",
        "p99 overhead (ms)",
        "naive p50 / p99 (ms)",
    )
    rows = [
        _overhead_row(kind, ov[kind], s[kind].get("naive", {}))
        for kind in result["kinds"]
        if ov.get(kind)
    ]
    if "echo_floor" in ov:
        e = ov["echo_floor"]
        rows.append(["echo (no model)", "-", f"{e['p50_ms']:.2f}", f"{e['p99_ms']:.2f}", *"---"])
    return [
        f"Low load ({LOW_RATE:.0f} queries/s, Clipper; overhead = latency minus the model's "
        f"own time for one query, in-process, called as often ({1000 / LOW_RATE:.0f} ms "
        "apart, its caches as cold as in the server; in brackets: minus its time back to "
        "back); the echo server's latency at the same rate is the floor of loopback, HTTP "
        "and the generator):",
        report.table(head, "lrrrrrr", rows),
    ]


def _overhead_row(kind: str, o: dict[str, Any], n: dict[str, Any]) -> list[str]:
    warm = "p50_overhead_warm_ms" in o
    return [
        LABELS[kind],
        fmt(o.get("model_paced_ms"), 3),
        f"{o['p50_ms']:.2f}",
        f"{o['p99_ms']:.2f}",
        f"{o['p50_overhead_ms']:.2f}" + (f" ({o['p50_overhead_warm_ms']:.2f})" if warm else ""),
        f"{o['p99_overhead_ms']:.2f}" + (f" ({o['p99_overhead_warm_ms']:.2f})" if warm else ""),
        f"{fmt(n.get('low_p50_ms'), 2)} / {fmt(n.get('low_p99_ms'), 2)}",
    ]


def _closed_loop_line(result: dict[str, Any]) -> str:
    cl = result["summary"].get("closed_loop_noop", {})
    peer_closed = "".join(f", {label} {fmt(cl.get(p))}/s" for p, label in _peers(result).items())
    return (
        f"Closed loop, {result['options']['closed_clients']} clients, no-op model: Clipper "
        f"{fmt(cl.get('clipper'))}/s, naive {fmt(cl.get('naive'))}/s{peer_closed}, echo "
        f"{fmt(cl.get('echo'))}/s (generator CPU {fmt((cl.get('gen_util') or 0) * 100)} % of "
        f"its core against echo); Clipper / echo = {fmt(cl.get('clipper_vs_echo'), 2)}."
    )


def _targets(result: dict[str, Any]) -> list[str]:
    """One line per target of issue 11: met or not, and by how much."""
    s = result["summary"]
    lines = [
        _target_vs_naive(kind, target, s[kind]["ratios"]["vs_naive"])
        for kind, target in TARGET_VS_NAIVE.items()
        if kind in s and "clipper" in s[kind]
    ]
    lines += [
        _target_vs_peer(result, kind, target)
        for kind, target in TARGET_VS_PEER.items()
        if kind in s and "clipper" in s[kind]
    ]
    lines += [
        _target_overhead(kind, o)
        for kind in ("mlp", "mlp-heavy")
        if (o := result["overhead"].get(kind))
    ]
    v = s.get("closed_loop_noop", {}).get("clipper_vs_echo")
    lines.append(
        f"- Frontend ceiling (no-op model, closed loop) ≥ {TARGET_FRONTEND:.0%} of the bare "
        f"ASGI echo server: {report.verdict(v, TARGET_FRONTEND)} "
        f"({fmt(v * 100 if v else None)} %; measured with the Python generator, not wrk)."
    )
    return lines


def _target_vs_naive(kind: str, target: float, v: float | None) -> str:
    return (
        f"- {LABELS[kind]}: goodput ≥ {target:.0f}x naive: {report.verdict(v, target)} "
        f"({fmt(v, 2)}x, {fmt(v / target * 100 if v else None)} % of the target)."
    )


def _target_vs_peer(result: dict[str, Any], kind: str, target: float) -> str:
    k = result["summary"][kind]
    v = k["ratios"].get("vs_best_peer")
    best = k.get("best_peer")
    head = f"- {LABELS[kind]}: goodput ≥ {target:.0f}x the best batching peer: "
    if not _peers(result):
        return head + "not measured (no peer was run)."
    if v is None and best and k[best].get("goodput_median") == 0:
        c = k["clipper"]["goodput_median"]
        return (
            head
            + (f"**met**, degenerate ({c:.0f}/s against 0" if c else "not measured (0 against 0")
            + ": no batching peer met the SLO at any rate tried, down to 10 queries/s)."
        )
    if v is None:
        why = "every peer failed" if not best else "a peer failed in every repeat"
        return head + f"not measured ({why})."
    label = _peers(result).get(best or "", best or "?")
    return (
        head + f"{report.verdict(v, target)} ({v:.2f}x against {label}, "
        f"{v / target * 100:.0f} % of the target)."
    )


def _target_overhead(kind: str, o: dict[str, Any]) -> str:
    p50, p99 = o["p50_overhead_ms"], o["p99_overhead_ms"]
    return (
        f"- {LABELS[kind]} overhead at {LOW_RATE:.0f}/s: p50 ≤ {TARGET_P50_MS:.0f} ms: "
        f"{report.verdict(p50, TARGET_P50_MS, higher=False)} ({p50:.2f} ms); "
        f"p99 ≤ {TARGET_P99_MS:.0f} ms: {report.verdict(p99, TARGET_P99_MS, higher=False)} "
        f"({p99:.2f} ms)"
        + (
            f"; above the model back to back: {o['p50_overhead_warm_ms']:.2f} / "
            f"{o['p99_overhead_warm_ms']:.2f} ms."
            if "p50_overhead_warm_ms" in o
            else "."
        )
    )


def oneline(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split()).replace("|", "/")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def section(result: dict[str, Any], extra: str) -> str:
    """The peers section: the generated part, then the hand-written ``extra``."""
    return report.blocks(render_markdown(result), extra.strip())


def write_markdown(result: dict[str, Any], extra: str) -> None:
    write_doc_section("peers", section(result, extra), DOC)


PEER_COLORS = {
    "mlserver": "#e6550d",
    "litserve": "#756bb1",
    "rayserve": "#31a354",
    "triton": "#8c6d31",
}


def write_plot(result: dict[str, Any], path: Path = IMG / FIGURE[1]) -> None:
    plt = report.pyplot()
    s = result["summary"]
    kinds = [k for k in result["kinds"] if k in s and "clipper" in s[k]]
    if not kinds:  # Clipper not run (--baselines without it): no panel to draw
        return
    peers = list(_peers(result))
    width = 4.2 + 0.9 * len(peers)
    fig, axes = plt.subplots(1, len(kinds), figsize=(width * len(kinds), 4.4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        _goodput_panel(ax, result, kind, peers)
    report.save_figure(fig, path, dpi=100)


def _goodput_panel(ax: Any, result: dict[str, Any], kind: str, peers: list[str]) -> None:
    s = result["summary"]
    k = s[kind]
    echo = s.get("echo", {}).get("goodput_median")
    names = [
        "Clipper\n(AIMD)",
        "naive\nFastAPI",
        *(PEERS[p].label.replace(" ", "\n") for p in peers),
    ]
    vals = [k["clipper"], k.get("naive"), *(k.get(p) for p in peers)]
    ok = [v if v and "goodput_median" in v else None for v in vals]
    med = [v["goodput_median"] if v else 0 for v in ok]
    err = [
        [(v["goodput_median"] - v["goodput_min"]) if v else 0 for v in ok],
        [(v["goodput_max"] - v["goodput_median"]) if v else 0 for v in ok],
    ]
    colors = ["#2171b5", "#999999", *(PEER_COLORS.get(p, "#fdae6b") for p in peers)]
    ax.bar(names, med, yerr=err, capsize=4, color=colors)
    for i, (v, raw) in enumerate(zip(ok, vals, strict=True)):
        if raw and v is None:
            ax.text(i, 0, "failed", ha="center", va="bottom", fontsize=8, color="red")
    if echo:
        ax.axhline(echo, color="green", linestyle="--", linewidth=1, label="echo ceiling")
    ceiling = k.get("model_ceiling_qps")
    if kind != "noop" and ceiling and ceiling < 3 * max([*med, echo or 0]):
        ax.axhline(ceiling, color="red", linestyle=":", linewidth=1, label="model-only ceiling")
    ax.set_title(f"{LABELS[kind]}: goodput, p99 ≤ {result['options']['slo_ms']:.0f} ms")
    ax.set_ylabel("queries / s (median, min-max)")
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=8)
