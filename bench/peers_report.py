"""What ``bench/peers.py`` reports: the summary of its rows (medians, ratios per
repeat, the verdict on issue 11's targets), the Markdown section of
docs/benchmarks.md and the goodput plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

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


def _med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(rows: list[dict[str, Any]], ceiling: dict[str, Any], kinds: list[str]) -> dict:
    def get(srv: str, kind: str, repeat: int) -> dict[str, Any] | None:
        for r in rows:
            if r["server"] == srv and r["model"] == kind and r["repeat"] == repeat:
                return r
        return None

    repeats = sorted({r["repeat"] for r in rows})
    out: dict[str, Any] = {}
    for kind in kinds:
        per: dict[str, Any] = {}
        for srv in ("clipper", "naive", *PEER_KEYS):
            every = [r for r in rows if r["server"] == srv and r["model"] == kind]
            if not every:
                continue
            rs = [r for r in every if r.get("goodput") is not None]
            failures = [r["failed"] for r in every if r.get("failed")]
            if not rs:
                per[srv] = {"failed": failures[0], "failures": failures}
                continue
            gp = [r["goodput"] for r in rs]
            cpu = [
                r["at_goodput"]["server_cpu_per_query_us"]
                + r["at_goodput"]["replica_cpu_per_query_us"]
                for r in rs
                if r["at_goodput"]
            ]
            per[srv] = {
                "goodput_median": statistics.median(gp),
                "goodput_min": min(gp),
                "goodput_max": max(gp),
                "goodputs": gp,
                "cpu_us_per_query_at_goodput": _med(cpu),
                "low_p50_ms": _med([r["low_load"]["load"]["p50_ms"] for r in rs]),
                "low_p99_ms": _med([r["low_load"]["load"]["p99_ms"] for r in rs]),
                "low_answered": sum(r["low_load"]["load"].get("completed", 1) for r in rs),
                "generator_util_at_goodput": _med(
                    [r["at_goodput"]["load"]["generator_cpu_util"] for r in rs if r["at_goodput"]]
                ),
            }
            if failures:
                per[srv]["failures"] = failures
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
            c, n, e = get("clipper", kind, rep), get("naive", kind, rep), get("echo", "noop", rep)
            if c and n and n["goodput"]:
                ratios["vs_naive"].append(c["goodput"] / n["goodput"])
            if c and e and e["goodput"]:
                ratios["vs_echo"].append(c["goodput"] / e["goodput"])
            if c and kind in ceiling:
                ratios["vs_model_ceiling"].append(c["goodput"] / ceiling[kind]["ceiling_qps"])
            # The best batching peer of this repeat (of those that ran).
            peers = [(r["goodput"], key) for key in PEER_KEYS if (r := get(key, kind, rep))]
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
        out["echo"] = {
            "goodput_median": statistics.median(r["goodput"] for r in echo),
            "goodputs": [r["goodput"] for r in echo],
            "low_p50_ms": _med([r["low_load"]["load"]["p50_ms"] for r in echo]),
            "low_p99_ms": _med([r["low_load"]["load"]["p99_ms"] for r in echo]),
            "generator_util_at_goodput": _med(
                [r["at_goodput"]["load"]["generator_cpu_util"] for r in echo if r["at_goodput"]]
            ),
        }
    closed: dict[str, list[float]] = {"clipper": [], "naive": [], "echo": [], "gen_util": []}
    closed |= {key: [] for key in PEER_KEYS}
    ratio_closed: list[float] = []
    for rep in repeats:
        for srv in ("clipper", "naive", "echo", *PEER_KEYS):
            r = get(srv, "noop", rep)
            if r and r.get("closed_loop"):
                closed[srv].append(r["closed_loop"]["achieved_rate"])
                if srv == "echo":
                    closed["gen_util"].append(r["closed_loop"]["generator_cpu_util"])
        c, e = get("clipper", "noop", rep), get("echo", "noop", rep)
        if c and e and c["closed_loop"] and e["closed_loop"]:
            ratio_closed.append(
                c["closed_loop"]["achieved_rate"] / e["closed_loop"]["achieved_rate"]
            )
    out["closed_loop_noop"] = {k: _med(v) for k, v in closed.items()} | {
        "clipper_vs_echo": _med(ratio_closed),
        "per_repeat": closed | {"clipper_vs_echo": ratio_closed},
    }
    return out


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


def fmt(v: float | None, digits: int = 0, suffix: str = "") -> str:
    return "-" if v is None else f"{v:.{digits}f}{suffix}"


def _verdict(value: float | None, target: float, higher: bool = True) -> str:
    if value is None:
        return "not measured"
    ok = value >= target if higher else value <= target
    return "**met**" if ok else "**not met**"


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


def render_markdown(result: dict[str, Any]) -> str:
    info, s, ov = result["machine"], result["summary"], result["overhead"]
    opts = result["options"]
    echo = s.get("echo", {})
    peers = [k for k in result.get("peers", []) if k in PEERS]
    labels = {k: PEERS[k].label for k in peers}
    if peers:
        cfg: dict[str, Any] = result.get("peer_batching", {})
        sizes = ", ".join(
            f"{LABELS[k]} {cfg[k]['max_batch_size']}" for k in result["kinds"] if k in cfg
        )
        first: dict[str, Any] = next(iter(cfg.values()), {})
        peer_txt = (
            "Batching peers, each from its own virtual environment, the whole process tree "
            "pinned to the server's core: "
            + "; ".join(f"{labels[k]} {_peer_versions(result, k)}" for k in peers)
            + f". Their batching, the same for all three: max batch size {sizes}, "
            f"max wait {fmt(first.get('batch_wait_ms'), 1)} ms ({first.get('rule', '')})."
        )
    else:
        peer_txt = "The batching peers (MLServer, LitServe, Ray Serve) were **not measured**."
    lines = [
        "## Clipper beside a naive FastAPI server, batching peers and the HTTP ceiling "
        "(generated by `make bench-peers`)",
        "",
        f"Run {info['date_utc']} on {info['cpu_model']} ({info['cpu_count']} cores), "
        f"Python {info['python']}, numpy {info['packages'].get('numpy', '?')}, "
        f"uvicorn {info['packages'].get('uvicorn', '?')}; naive server: FastAPI "
        f"{result['naive_versions'].get('fastapi', '?')}, pydantic "
        f"{result['naive_versions'].get('pydantic', '?')}; {info['pinning']} (each server "
        f"alone on that core, frontend and model together); Clipper at "
        f"{info['git'].get('measured', '?')} with AIMD batching, cache off. Goodput = highest "
        f"Poisson rate with p99 ≤ {opts['slo_ms']:.0f} ms, no default outputs, no errors; "
        f"{opts['repeats']} repeat(s), medians (min-max); ratios are medians of per-repeat "
        f"ratios. Load average {info['loadavg_start'][0]:.1f} at the start, "
        f"{info.get('loadavg_end', [0])[0]:.1f} at the end (a shared machine: other jobs ran). "
        + peer_txt,
        "",
        "| model | model batch-1 (ms) | model-only ceiling (q/s, best batch) | Clipper goodput "
        "| naive FastAPI goodput | "
        + "".join(f"{labels[k]} goodput | " for k in peers)
        + "echo ceiling (no model) | Clipper / naive "
        + ("| Clipper / best batching peer " if peers else "")
        + "| Clipper / echo | Clipper / model ceiling "
        "| CPU µs/query at goodput (Clipper / naive) |",
        "|---|---:|---:|---:|---:|"
        + "---:|" * len(peers)
        + "---:|---:|"
        + ("---:|" if peers else "")
        + "---:|---:|---:|",
    ]
    failures: list[str] = []
    for kind in result["kinds"]:
        k = s.get(kind)
        if not k or "clipper" not in k:
            continue
        c, n = k["clipper"], k.get("naive", {})
        r = k["ratios"]
        ceil = result["model_ceiling"].get(kind, {})
        ceiling_txt = "- (no work)"
        if kind != "noop" and ceil:
            ceiling_txt = f"{ceil['ceiling_qps']:.0f} (b={ceil['best_batch_size']})"
        best = k.get("best_peer")
        best_txt = fmt(r.get("vs_best_peer"), 2, "x") + (f" ({PEERS[best].label})" if best else "")
        if best and r.get("vs_best_peer") is None and k[best].get("goodput_median") == 0:
            best_txt = "∞ (every peer 0)"
        lines.append(
            f"| {LABELS[kind]} | {fmt(k['model_batch1_ms'], 3)} | {ceiling_txt} "
            f"| {c['goodput_median']:.0f} ({c['goodput_min']:.0f}-{c['goodput_max']:.0f}) "
            f"| {_gp(n)} | "
            + "".join(f"{_gp(k.get(p))} | " for p in peers)
            + f"{fmt(echo.get('goodput_median'))} "
            f"| {fmt(r['vs_naive'], 2, 'x')} "
            + (f"| {best_txt} " if peers else "")
            + f"| {fmt(r['vs_echo'], 2)} "
            f"| {fmt(r['vs_model_ceiling'], 2) if kind != 'noop' else '-'} "
            f"| {fmt(c.get('cpu_us_per_query_at_goodput'))} / "
            f"{fmt(n.get('cpu_us_per_query_at_goodput'))} |"
        )
        for p in peers:
            for why in dict.fromkeys(k.get(p, {}).get("failures", [])):
                failures.append(f"- {labels[p]}, {LABELS[kind]}: failed: {oneline(why)}")
    if failures:
        lines += ["", "Peers that failed (the run went on without them):", "", *failures]
    if peers:
        lines += [
            "",
            "The batching peers in detail (goodput as above; CPU of the whole process tree; "
            f"latency at {LOW_RATE:.0f} queries/s; answers checked against the model "
            f"in-process, {CHECK_COUNT} queries sent at once):",
            "",
            "| model | peer | max batch / wait (ms) [a full batch in-process, ms] | goodput "
            "| Clipper / peer "
            "| CPU µs/query at goodput | p50 / p99 at low load (ms) | processes pinned |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for kind in result["kinds"]:
            k = s.get(kind, {})
            cfg = result.get("peer_batching", {}).get(kind, {})
            for p in peers:
                v = k.get(p)
                if not v:
                    continue
                pinned = [
                    row["pinned"]["processes"]
                    for row in result["rows"]
                    if row["server"] == p and row["model"] == kind and row.get("pinned")
                ]
                lines.append(
                    f"| {LABELS[kind]} | {labels[p]} "
                    f"| {cfg.get('max_batch_size', '-')} / {fmt(cfg.get('batch_wait_ms'), 1)} "
                    f"[{fmt(cfg.get('batch_ms_in_process'), 2)}] "
                    f"| {_gp(v)} | {fmt(k.get('ratios', {}).get(f'vs_{p}'), 2, 'x')} "
                    f"| {fmt(v.get('cpu_us_per_query_at_goodput'))} "
                    + (
                        f"| {fmt(v.get('low_p50_ms'), 2)} / {fmt(v.get('low_p99_ms'), 2)} "
                        if v.get("low_answered", 1)
                        else "| no answer in time "
                    )
                    + f"| {max(pinned) if pinned else '-'} |"
                )
    lines += [
        "",
        f"Low load ({LOW_RATE:.0f} queries/s, Clipper; overhead = latency minus the model's "
        f"own time for one query, in-process, called as often ({1000 / LOW_RATE:.0f} ms apart, "
        "its caches as cold as in the server; in brackets: minus its time back to back); the "
        "echo server's latency at the same rate is the floor of loopback, HTTP and the "
        "generator):",
        "",
        "| model | model alone at this rate, p50 (ms) | p50 (ms) | p99 (ms) | p50 overhead (ms) "
        "| p99 overhead (ms) | naive p50 / p99 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in result["kinds"]:
        o = ov.get(kind)
        if not o:
            continue
        n = s[kind].get("naive", {})
        warm = (
            (o["p50_overhead_warm_ms"], o["p99_overhead_warm_ms"])
            if "p50_overhead_warm_ms" in o
            else None
        )
        lines.append(
            f"| {LABELS[kind]} | {fmt(o.get('model_paced_ms'), 3)} "
            f"| {o['p50_ms']:.2f} | {o['p99_ms']:.2f} "
            f"| {o['p50_overhead_ms']:.2f}"
            + (f" ({warm[0]:.2f})" if warm else "")
            + f" | {o['p99_overhead_ms']:.2f}"
            + (f" ({warm[1]:.2f})" if warm else "")
            + f" | {fmt(n.get('low_p50_ms'), 2)} / {fmt(n.get('low_p99_ms'), 2)} |"
        )
    if "echo_floor" in ov:
        e = ov["echo_floor"]
        lines.append(f"| echo (no model) | - | {e['p50_ms']:.2f} | {e['p99_ms']:.2f} | - | - | - |")
    cl = s.get("closed_loop_noop", {})
    peer_closed = "".join(f", {labels[p]} {fmt(cl.get(p))}/s" for p in peers)
    lines += [
        "",
        f"Closed loop, {opts['closed_clients']} clients, no-op model: Clipper "
        f"{fmt(cl.get('clipper'))}/s, naive {fmt(cl.get('naive'))}/s{peer_closed}, echo "
        f"{fmt(cl.get('echo'))}/s (generator CPU {fmt((cl.get('gen_util') or 0) * 100)} % of "
        f"its core against echo); Clipper / echo = {fmt(cl.get('clipper_vs_echo'), 2)}.",
        "",
        "**Against the targets of issue 11** (computed from the table):",
        "",
    ]
    for kind, target in TARGET_VS_NAIVE.items():
        if kind in s and "clipper" in s[kind]:
            v = s[kind]["ratios"]["vs_naive"]
            lines.append(
                f"- {LABELS[kind]}: goodput ≥ {target:.0f}x naive: {_verdict(v, target)} "
                f"({fmt(v, 2)}x, {fmt(v / target * 100 if v else None)} % of the target)."
            )
    for kind, target in TARGET_VS_PEER.items():
        if kind not in s or "clipper" not in s[kind]:
            continue
        v = s[kind]["ratios"].get("vs_best_peer")
        best = s[kind].get("best_peer")
        head = f"- {LABELS[kind]}: goodput ≥ {target:.0f}x the best batching peer: "
        if not peers:
            lines.append(head + "not measured (no peer was run).")
        elif v is None and best and s[kind][best].get("goodput_median") == 0:
            c = s[kind]["clipper"]["goodput_median"]
            lines.append(
                head
                + (
                    f"**met**, degenerate ({c:.0f}/s against 0"
                    if c
                    else "not measured (0 against 0"
                )
                + ": no batching peer met the SLO at any rate tried, down to 10 queries/s)."
            )
        elif v is None:
            why = "every peer failed" if not best else "a peer failed in every repeat"
            lines.append(head + f"not measured ({why}).")
        else:
            lines.append(
                head + f"{_verdict(v, target)} ({v:.2f}x against "
                f"{labels.get(best or '', best or '?')}, {v / target * 100:.0f} % of the target)."
            )
    for kind in ("mlp", "mlp-heavy"):
        o = ov.get(kind)
        if o:
            lines.append(
                f"- {LABELS[kind]} overhead at {LOW_RATE:.0f}/s: p50 ≤ {TARGET_P50_MS:.0f} ms: "
                f"{_verdict(o['p50_overhead_ms'], TARGET_P50_MS, higher=False)} "
                f"({o['p50_overhead_ms']:.2f} ms); p99 ≤ {TARGET_P99_MS:.0f} ms: "
                f"{_verdict(o['p99_overhead_ms'], TARGET_P99_MS, higher=False)} "
                f"({o['p99_overhead_ms']:.2f} ms)"
                + (
                    f"; above the model back to back: {o['p50_overhead_warm_ms']:.2f} / "
                    f"{o['p99_overhead_warm_ms']:.2f} ms."
                    if "p50_overhead_warm_ms" in o
                    else "."
                )
            )
    v = cl.get("clipper_vs_echo")
    lines += [
        f"- Frontend ceiling (no-op model, closed loop) ≥ {TARGET_FRONTEND:.0%} of the bare "
        f"ASGI echo server: {_verdict(v, TARGET_FRONTEND)} ({fmt(v * 100 if v else None)} %; "
        "measured with the Python generator, not wrk).",
        "",
        "![Goodput per server and model](img/peers-goodput.png)",
        "",
        "Where the server's time goes: [the hot-path profile](profile.md).",
    ]
    return "\n".join(lines)


def oneline(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split()).replace("|", "/")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def write_markdown(result: dict[str, Any], extra: str) -> None:
    section = render_markdown(result) + ("\n\n" + extra.strip() if extra.strip() else "")
    write_doc_section("peers", section, DOC)


PEER_COLORS = {"mlserver": "#e6550d", "litserve": "#756bb1", "rayserve": "#31a354"}


def write_plot(result: dict[str, Any], path: Path = IMG / "peers-goodput.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    kinds = [k for k in result["kinds"] if k in s and "clipper" in s[k]]
    peers = [k for k in result.get("peers", []) if k in PEERS]
    width = 4.2 + 0.9 * len(peers)
    fig, axes = plt.subplots(1, len(kinds), figsize=(width * len(kinds), 4.4), squeeze=False)
    echo = s.get("echo", {}).get("goodput_median")
    for ax, kind in zip(axes[0], kinds, strict=True):
        k = s[kind]
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
        if (
            kind != "noop"
            and k.get("model_ceiling_qps")
            and k["model_ceiling_qps"] < 3 * max([*med, echo or 0])
        ):
            ax.axhline(
                k["model_ceiling_qps"],
                color="red",
                linestyle=":",
                linewidth=1,
                label="model-only ceiling",
            )
        ax.set_title(f"{LABELS[kind]}: goodput, p99 ≤ {result['options']['slo_ms']:.0f} ms")
        ax.set_ylabel("queries / s (median, min-max)")
        ax.tick_params(axis="x", labelsize=8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
