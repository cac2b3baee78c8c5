"""The rollout case of ``make bench-selection`` (issue #27), also ``python -m bench.rollout``.

Part 1, queries until a correct decision (a simulation over the pure judge,
as the policies' cases are judged on their own figures). A base version
right 80 % of the time meets a new version 2 points better (82 %), 2 points
worse (78 %) or equal (80 %: every decision is wrong). Every query gets a
label. Two ways of sending queries to the new version, judged by the same
sequential test (``clipper.selection.rollout.judge``, default limits:
confidence 0.95, at least 100 labels per version):

* ``bandit``: the bandit rollout's own share (``rollout.new_share``): 5 % at
  first, then P(new better), held between 5 % and one half;
* ``canary 5 %``: a fixed 5 % of the queries, as a canary that a person
  watches.

Queries arrive in blocks of 50 (each version's share of a block is a binomial
draw); the judge looks after each block. A run ends at a decision or after
``horizon`` queries (then it is counted as undecided). Reported per case:
the median and 90th percentile of the queries (and labels) until the
decision, the share of runs whose decision was right, and how many queries
the new version answered before it (the users a worse version reached).

Part 2, what a shadow costs the answers (a real server; ``--no-shadow-p99``
skips it). One app, a model whose two versions answer in ~1 ms; Poisson
arrivals at a fixed rate, client latency percentiles with the shadow rollout
off and on (every query copied to the new version), alternating, a few runs
each. Both versions' replicas share the machine's cores with the server and
the load generator, so this measures the whole cost, CPU included.

Writes bench/results/rollout.json and the ``rollout`` section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np

from clipper.selection import rollout
from clipper.types import RolloutSpec

from .harness import BENCHMARKS_DOC, RESULTS, BenchServer, CpuPlan, write_doc_section

BASE_ACCURACY = 0.80
CASES = {"better": 0.82, "worse": 0.78, "equal": 0.80}
STRATEGIES = ("bandit", "canary 5 %")
BLOCK = 50


def simulate(
    strategy: str, p_base: float, p_new: float, horizon: int, rng: np.random.Generator
) -> dict[str, Any]:
    """One run: until the judge decides or ``horizon`` queries have passed."""
    spec = RolloutSpec.build("m", "1", "2", "bandit", 0.05)
    evidence = rollout.Evidence()
    queries = served_new = 0
    share = 0.05
    while queries < horizon:
        if strategy == "bandit":
            share = rollout.new_share(spec, evidence, 0.0)
        n_new = int(rng.binomial(BLOCK, share))
        n_base = BLOCK - n_new
        for figures, n, p in ((evidence.new, n_new, p_new), (evidence.base, n_base, p_base)):
            if n:
                figures.feedback += n
                figures.loss_sum += n - int(rng.binomial(n, p))
        queries += BLOCK
        served_new += n_new
        decision = rollout.judge(spec, evidence)
        if decision is not None:
            return {
                "queries": queries,
                "labels": evidence.base.feedback + evidence.new.feedback,
                "labels_new": evidence.new.feedback,
                "served_new": served_new,
                "promote": decision.promote,
            }
    return {"queries": None, "served_new": served_new, "promote": None}


def run_simulation(runs: int, horizon: int, seed: int = 27) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for case, p_new in CASES.items():
        for strategy in STRATEGIES:
            rng = np.random.default_rng([seed, zlib_key(case), zlib_key(strategy)])
            results = [simulate(strategy, BASE_ACCURACY, p_new, horizon, rng) for _ in range(runs)]
            out[f"{case}/{strategy}"] = summarise(case, results)
    return out


def zlib_key(text: str) -> int:
    import zlib

    return zlib.crc32(text.encode())


def summarise(case: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    decided = [r for r in results if r["promote"] is not None]
    right = {"better": True, "worse": False}.get(case)
    correct = [r for r in decided if right is not None and r["promote"] is right]

    def pct(values: list[float], q: float) -> float | None:
        return float(np.percentile(values, q)) if values else None

    return {
        "runs": len(results),
        "decided": len(decided),
        "correct": len(correct),
        "promoted": sum(1 for r in decided if r["promote"]),
        "rolled_back": sum(1 for r in decided if not r["promote"]),
        # Over the decided runs (a run that never decides is "undecided", not a number).
        "queries_p50": pct([r["queries"] for r in decided], 50),
        "queries_p90": pct([r["queries"] for r in decided], 90),
        "labels_p50": pct([r["labels"] for r in decided], 50),
        "labels_new_p50": pct([r["labels_new"] for r in decided], 50),
        "served_new_p50": pct([r["served_new"] for r in results], 50),
    }


# -- part 2: shadow on vs off ----------------------------------------------------------


def _admin(server: BenchServer, route: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"http://{server.host}:{server.admin_port}/admin/{route}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **server.admin_headers},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def shadow_p99(
    rate: float, duration_s: float, repeats: int, log: Callable[[str], None]
) -> dict[str, Any]:
    from clipper.deployers.python import deploy_python_closure

    from . import loadgen

    def total(xs: Any) -> list[float]:
        time.sleep(0.001)
        return [float(sum(x)) for x in xs]

    cpus = CpuPlan.choose(False)
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    with BenchServer(["--log-level", "WARNING"], cpus, log) as server:
        conn = server.conn
        conn.register_application("sh", "doubles", "-1", 1_000_000)
        deploy_python_closure(conn, "shm", "1", "doubles", total)
        conn.link_model_to_app("sh", "shm")
        deploy_python_closure(conn, "shm", "2", "doubles", total)
        conn.set_model_version("shm", "1")
        inputs = [[float(i), 1.0, 2.0] for i in range(5000)]  # distinct: no cache hits
        workload = loadgen.Workload.predict(server.host, server.query_port, "sh", inputs)

        async def measure() -> dict[str, Any]:
            pool = loadgen.Pool(server.host, server.query_port)
            try:
                await pool.warm(32)
                result = await loadgen.run_open(
                    pool, workload, rate, duration_s, connections=32, warmup_s=1.0
                )
            finally:
                pool.close()
            return result.to_dict()

        asyncio.run(measure())  # warm-up, not counted: replicas and batch sizes settle
        for i in range(repeats):
            for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
                if mode == "on":
                    _admin(
                        server,
                        "start_rollout",
                        {"model_name": "shm", "model_version": "2", "mode": "shadow"},
                    )
                result = asyncio.run(measure())
                if mode == "on":
                    figures = _admin(server, "get_rollouts", {})[0]["figures"]
                    result["shadow"] = figures.get("shadow")
                    result["new_queries"] = figures["new"]["queries"]
                    _admin(server, "stop_rollout", {"model_name": "shm"})
                runs[mode].append(result)
                log(f"shadow {mode}: p50 {result['p50_ms']:.2f} p99 {result['p99_ms']:.2f} ms")
    return {
        "rate": rate,
        "duration_s": duration_s,
        "repeats": repeats,
        "runs": runs,
        "p50_ms": {m: statistics.median(r["p50_ms"] for r in rs) for m, rs in runs.items()},
        "p99_ms": {m: statistics.median(r["p99_ms"] for r in rs) for m, rs in runs.items()},
        "copies_sent": [r.get("new_queries") for r in runs["on"]],
        "copies_dropped": [(r.get("shadow") or {}).get("dropped") for r in runs["on"]],
    }


# -- the report ------------------------------------------------------------------------


def _n(value: float | None) -> str:
    return "undecided" if value is None else f"{value:,.0f}"


def _reading(sim: dict[str, Any], runs: int) -> list[str]:
    def ratio(case: str) -> str:
        bandit, canary = sim[f"{case}/bandit"], sim[f"{case}/canary 5 %"]
        if not bandit["queries_p50"] or not canary["queries_p50"]:
            return "n/a"
        return f"{canary['queries_p50'] / bandit['queries_p50']:.1f}x"

    wrong = [sim[f"equal/{s}"]["decided"] for s in STRATEGIES]
    return [
        f"Reading: the bandit promoted the better version after {ratio('better')} fewer "
        f"queries than the fixed 5 % canary (medians) and rolled the worse one back after "
        f"{ratio('worse')} fewer: a promising version earns up to half of the queries, "
        "which is where the test decides fastest, while a worse one sinks back to 5 %, so "
        "its rollback is paid for mostly at the canary's pace, with about as few users "
        "exposed. Between equal versions the test decided (wrongly) in "
        f"{wrong[0]}/{runs} bandit and {wrong[1]}/{runs} canary runs within the horizon, "
        "inside the 5 % it allows.",
    ]


def render_markdown(result: dict[str, Any]) -> str:
    sim = result["simulation"]
    opts = result["options"]
    lines = [
        "## Rollouts: queries until a correct decision (issue #27)",
        "",
        f"Simulated over the pure judge (`bench/rollout.py`): a base version right "
        f"{BASE_ACCURACY:.0%} of the time against a new one 2 points better, 2 points worse, "
        f"or equal; every query labelled; {opts['runs']} runs per row, at most "
        f"{opts['horizon']:,} queries each. Both rows of a case use the same sequential test "
        "(confidence 0.95, 100 labels per version at least); only how queries reach the new "
        "version differs.",
        "",
        "| new version | sending | right decisions | wrong | undecided | queries to decide "
        "(median / p90) | labels (median) | queries the new version answered (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in CASES:
        for strategy in STRATEGIES:
            s = sim[f"{case}/{strategy}"]
            wrong = s["decided"] - s["correct"]
            right = "-" if case == "equal" else f"{s['correct']}/{s['runs']}"
            lines.append(
                f"| {case} | {strategy} | {right} | {wrong}/{s['runs']} | "
                f"{s['runs'] - s['decided']}/{s['runs']} | {_n(s['queries_p50'])} / "
                f"{_n(s['queries_p90'])} | {_n(s['labels_p50'])} | {_n(s['served_new_p50'])} |"
            )
    lines += ["", *_reading(sim, opts["runs"])]
    shadow = result.get("shadow")
    if shadow:
        p50, p99 = shadow["p50_ms"], shadow["p99_ms"]
        lines += [
            "",
            f"Shadow on vs off (a real server, {shadow['rate']:.0f} queries/s Poisson, "
            f"{shadow['duration_s']:.0f} s per run, {shadow['repeats']} runs each, alternating; "
            "a 1 ms model, every query copied to the new version): client p50 "
            f"{p50['off']:.2f} ms off, {p50['on']:.2f} ms on; p99 {p99['off']:.2f} ms off, "
            f"{p99['on']:.2f} ms on (medians of the runs). Copies sent per run: "
            f"{shadow['copies_sent']}; dropped (the new version busy): "
            f"{shadow['copies_dropped']}. Per run, p99 off "
            f"{[round(r['p99_ms'], 2) for r in shadow['runs']['off']]} ms, on "
            f"{[round(r['p99_ms'], 2) for r in shadow['runs']['on']]} ms: the server, both "
            "versions' replicas and the load generator share the machine's cores, so the "
            "difference is to be read against the spread between runs.",
        ]
    lines += ["", f"Measured {result['measured_at']}; {result['elapsed_s']:.0f} s."]
    return "\n".join(lines)


def run(
    *,
    quick: bool = False,
    runs: int | None = None,
    horizon: int | None = None,
    shadow: bool = True,
    write_docs: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The whole case; ``bench.selection`` calls it after its own parts."""
    t0 = time.perf_counter()
    runs = runs or (40 if quick else 200)
    horizon = horizon or 600_000
    log(f"rollout: simulating {runs} runs per case, up to {horizon:,} queries each")
    result: dict[str, Any] = {
        "benchmark": "rollout",
        "options": {"runs": runs, "horizon": horizon, "quick": quick},
        "simulation": run_simulation(runs, horizon),
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if shadow:
        result["shadow"] = shadow_p99(
            rate=200.0, duration_s=5.0 if quick else 15.0, repeats=2 if quick else 3, log=log
        )
    result["elapsed_s"] = round(time.perf_counter() - t0, 1)
    result["markdown"] = render_markdown(result)
    out = RESULTS / ("rollout-quick.json" if quick else "rollout.json")
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    log(f"wrote {out}")
    if write_docs:
        write_doc_section("rollout", result["markdown"], BENCHMARKS_DOC)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rollout", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer runs, short shadow runs")
    parser.add_argument("--runs", type=int, help="simulated runs per case")
    parser.add_argument("--horizon", type=int, help="queries per run at most")
    parser.add_argument("--no-shadow-p99", action="store_true", help="skip the live shadow part")
    parser.add_argument("--docs", action="store_true", help="with --quick: write the docs too")
    args = parser.parse_args(argv)
    result = run(
        quick=args.quick,
        runs=args.runs,
        horizon=args.horizon,
        shadow=not args.no_shadow_p99,
        write_docs=not args.quick or args.docs,
    )
    print("\n" + result["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
