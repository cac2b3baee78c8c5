"""The model-selection benchmark (``make bench-selection``): the paper's section 5 claims.

Part 1, error rates. For three data sets that ship inside scikit-learn
(digits, wine, breast cancer) five differently trained classifiers are
fitted on a stratified training split (70%): a scaled logistic regression,
Gaussian naive Bayes, a decision tree of depth 3, a scaled 5-nearest
neighbours and a linear SVM that sees only a random quarter of the
features. Each is deployed with ``deploy_sklearn_model`` to one real
Clipper server (its own container). Per data set, apps are registered: one
``single`` app per model, one ``exp3`` and one ``exp4`` app that link all
five (default policy parameters). The held-out split (30%), shuffled with a
fixed seed and reshuffled on every pass, is streamed to every app as
predict-then-feedback: ``POST /{app}/predict``, then ``POST /{app}/update``
with the true label. An app's online error rate is the share of its answers
that were wrong (a default output counts as wrong). The best single model
is the single app with the lowest online error, chosen in hindsight.

Part 2, stragglers. On a second server (its model replicas pinned to one
CPU, the load generator to another), an ``exp4`` app links three digits
models; one of them (the k-NN model) is a straggler: a batch that holds one
of a fixed 20% of the inputs (by a hash of the input) sleeps 50 ms, over
the 20 ms SLO. Two apps differ only in their SLO: 20 ms (mitigation: at the
deadline the answer is combined from the models that answered, the rest
listed in ``missing_models``) and 1000 ms (no mitigation: every answer
waits for all three models). Both learn their weights from the same
feedback first (on half of the held-out split, the straggler not slow
yet; the cache is off), then answer the other half at a fixed Poisson rate
with the weights frozen (no feedback): client-side latency percentiles and
error rate, ``--repeats`` times (medians reported), the two apps in
alternating order.

Part 3, rollouts (issue #27): ``bench/rollout.py``, run last; it writes its
own bench/results/rollout.json and the rollout section of docs/benchmarks.md.

Writes bench/results/selection.json, the selection section of
docs/benchmarks.md and docs/img/selection-*.png (``--quick``: a short run,
written to bench/results/selection-quick.json only, unless ``--docs``).
The error curves and the straggler runs' latencies go to the raw file of the
same name in bench/results/raw/ only (not committed; bench/store.py); ``--render
FILE`` rewrites the section (and the plots, with the raw file) from saved results.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import statistics
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np

from clipper.deployers.python import deploy_python_closure
from clipper.deployers.sklearn import deploy_sklearn_model
from clipper.selection.ensemble import expected_calibration_error

from . import report, store
from . import rollout as rollout_case
from .harness import (
    BENCHMARKS_DOC,
    IMG,
    RESULTS,
    ROOT,
    BenchServer,
    CpuPlan,
    machine_info,
    own_cpu_seconds,
    pin_tree,
    system_busy_seconds,
    wait_for,
    write_doc_section,
)
from .loadgen import Connection, HTTPError, post_head

DOC = BENCHMARKS_DOC
FLAGS = ["--log-level", "WARNING"]
DEFAULT_OUTPUT = "-1"
FEEDBACK_UID = "bench"
POLICIES = ("exp3", "exp4", "epsilon_greedy", "ucb1", "thompson")
POLICY_LABELS = {
    "exp3": "Exp3",
    "exp4": "Exp4",
    "epsilon_greedy": "ε-greedy",
    "ucb1": "UCB1",
    "thompson": "Thompson",
}
DATASETS = {
    "fifths": "complementary (digits, fifths)",
    "digits": "digits",
    "wine": "wine",
    "cancer": "breast cancer",
}
FIFTHS = tuple(f"fifth{i}" for i in range(5))
MODEL_KEYS = ("logreg", "gnb", "tree3", "knn", "svc-quarter")
MODEL_LABELS = {
    "logreg": "logistic regression (scaled)",
    "gnb": "Gaussian naive Bayes",
    "tree3": "decision tree, depth 3",
    "knn": "5-nearest neighbours (scaled)",
    "svc-quarter": "linear SVM on a random quarter of the features",
    **{k: f"logistic regression on pixel subset {i + 1} of 5" for i, k in enumerate(FIFTHS)},
}
STRAGGLER_MODELS = ("logreg", "gnb", "knn")  # the last one straggles


@dataclass
class Options:
    queries: int = 3000  # per app and data set (the held-out split, repeated)
    accuracy_repeats: int = 3  # fresh apps and a fresh stream order each
    test_size: float = 0.3
    seed: int = 0
    accuracy_slo_ms: float = 1000.0
    slo_ms: float = 20.0  # the straggler experiment's SLO (mitigation on)
    wait_slo_ms: float = 1000.0  # ... and the SLO that waits for every model
    straggle_ms: float = 50.0
    slow_share: float = 0.2
    rate: float = 40.0  # Poisson arrivals per second in the straggler runs
    straggler_queries: int = 500
    warmup_queries: int = 40  # unmeasured, before each straggler run
    repeats: int = 3
    retries: int = 1  # redo a straggler run (once) when other processes disturbed it:
    foreign_limit: float = 0.3  # other processes used more cores than this meanwhile
    quick: bool = False
    pin: bool = True


# -- models --------------------------------------------------------------------------------


def build_models(n_features: int, seed: int) -> dict[str, Any]:
    """The five unfitted classifiers, differing in kind, features and capacity."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(seed)
    quarter = sorted(rng.choice(n_features, max(1, n_features // 4), replace=False).tolist())
    return {
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "gnb": GaussianNB(),
        "tree3": DecisionTreeClassifier(max_depth=3, random_state=seed),
        "knn": make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=5)),
        "svc-quarter": make_pipeline(
            ColumnTransformer([("keep", "passthrough", quarter)]),
            StandardScaler(),
            LinearSVC(max_iter=5000, random_state=seed),
        ),
    }


def build_fifths(n_features: int, seed: int) -> dict[str, Any]:
    """Five scaled logistic regressions, each on a different random fifth of the
    features: complementary models, whose mistakes differ."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    perm = np.random.default_rng(seed).permutation(n_features)
    return {
        key: make_pipeline(
            ColumnTransformer([("keep", "passthrough", sorted(perm[i::5].tolist()))]),
            StandardScaler(),
            LogisticRegression(max_iter=2000),
        )
        for i, key in enumerate(FIFTHS)
    }


@dataclass
class DataSet:
    key: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    models: dict[str, Any]
    offline_error: dict[str, float]

    @classmethod
    def load(cls, key: str, opts: Options) -> DataSet:
        from sklearn import datasets
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.model_selection import train_test_split

        loader = {
            "fifths": datasets.load_digits,
            "digits": datasets.load_digits,
            "wine": datasets.load_wine,
            "cancer": datasets.load_breast_cancer,
        }[key]
        x, y = loader(return_X_y=True)
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=opts.test_size, stratify=y, random_state=opts.seed
        )
        build = build_fifths if key == "fifths" else build_models
        models = build(x.shape[1], opts.seed)
        errors = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for name, model in models.items():
                model.fit(x_train, y_train)
                errors[name] = float(np.mean(model.predict(x_test) != y_test))
        return cls(key, x_train, y_train, x_test, y_test, models, errors)

    def model_name(self, key: str) -> str:
        return f"{self.key}-{key}"

    @property
    def keys(self) -> list[str]:
        """The models' keys, in link order."""
        return list(self.models)


def is_slow(x: Any, share: float) -> bool:
    """Whether the straggler is slow for input ``x``: a fixed ``share`` of inputs, by hash."""
    digest = zlib.crc32(np.ascontiguousarray(x, dtype=np.float64).tobytes())
    return digest % 10_000 < share * 10_000


class Straggler:
    """A fitted classifier that, while ``flag_path`` holds "DELAY_MS SHARE", sleeps
    DELAY_MS in every batch holding an input that :func:`is_slow` picks."""

    def __init__(self, model: Any, flag_path: str) -> None:
        self.model = model
        self.flag_path = flag_path

    def __call__(self, inputs: Any) -> list[int]:
        out = [int(v) for v in self.model.predict(inputs)]
        try:
            with open(self.flag_path) as f:
                delay_ms, share = (float(v) for v in f.read().split())
        except (OSError, ValueError):
            return out
        if any(is_slow(x, share) for x in inputs):
            time.sleep(delay_ms / 1000)
        return out


def set_flag(path: Path, delay_ms: float | None, share: float = 0.0) -> None:
    if delay_ms is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{delay_ms} {share}")
    os.replace(tmp, path)


# -- HTTP ------------------------------------------------------------------------------------


def _body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


class Client:
    """One keep-alive connection to the query frontend (loadgen's HTTP/1.1 client)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.conn = Connection(host, port)

    async def post(self, path: str, body: bytes) -> tuple[int, Any]:
        status, payload = await self.conn.request(
            post_head(self.host, self.port, path, len(body)), body
        )
        try:
            return status, json.loads(payload)
        except ValueError:
            return status, payload.decode(errors="replace")

    def close(self) -> None:
        self.conn.close()


def wrong(doc: Any, label: int) -> bool:
    """An answer that is not the label; a default output or an error is wrong too."""
    return not isinstance(doc, dict) or bool(doc.get("default")) or doc.get("output") != label


# -- part 1: error rates -----------------------------------------------------------------


@dataclass
class AppTrace:
    app: str
    policy: str
    model: str | None  # the single app's model
    outputs: list[Any] = field(default_factory=list)
    wrong: list[int] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    rights: list[int] = field(default_factory=list)  # per answer with a confidence
    defaults: int = 0
    http_errors: int = 0
    feedback_rejected: int = 0

    @property
    def error(self) -> float:
        return sum(self.wrong) / len(self.wrong) if self.wrong else float("nan")


Stream = list[tuple[bytes, bytes, int]]  # (predict body, update body, label)


def make_stream(data: DataSet, count: int, seed: int) -> Stream:
    """The held-out split, reshuffled on every pass, to ``count`` queries."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < count:
        order.extend(rng.permutation(len(data.y_test)).tolist())
    stream = []
    for i in order[:count]:
        x = data.x_test[i].tolist()
        label = int(data.y_test[i])
        stream.append(
            (
                _body({"input": x}),
                _body({"uid": FEEDBACK_UID, "input": x, "label": label}),
                label,
            )
        )
    return stream


async def feed_app(host: str, port: int, trace: AppTrace, stream: Stream) -> None:
    """Predict, then feedback, one input after the other."""
    client = Client(host, port)
    try:
        for predict_body, update_body, label in stream:
            try:
                status, doc = await client.post(f"/{trace.app}/predict", predict_body)
            except (OSError, HTTPError):
                client.close()
                status, doc = 0, None
            if status != 200 or not isinstance(doc, dict):
                trace.http_errors += 1
            elif doc.get("default"):
                trace.defaults += 1
            trace.outputs.append(doc.get("output") if isinstance(doc, dict) else None)
            trace.wrong.append(int(wrong(doc, label)))
            if isinstance(doc, dict) and "confidence" in doc:
                trace.confidence.append(float(doc["confidence"]))
                trace.rights.append(1 - trace.wrong[-1])
            try:
                status, doc = await client.post(f"/{trace.app}/update", update_body)
            except (OSError, HTTPError):
                client.close()
                status, doc = 0, None
            if status != 200 or not isinstance(doc, dict) or not doc.get("accepted"):
                trace.feedback_rejected += 1
    finally:
        client.close()


def feed_all(server: BenchServer, traces: dict[str, AppTrace], stream: Stream) -> None:
    """Feed ``stream`` to every app at once, each on its own connection."""

    async def go() -> None:
        await asyncio.gather(
            *(feed_app(server.host, server.query_port, t, stream) for t in traces.values())
        )

    asyncio.run(go())


def curve(wrong_flags: list[int], points: int = 200) -> list[tuple[int, float]]:
    """Cumulative error rate after n queries, at about ``points`` values of n."""
    cum = np.cumsum(wrong_flags)
    n = len(wrong_flags)
    steps = sorted({max(1, round(n * (i / points) ** 2)) for i in range(1, points + 1)})
    return [(k, float(cum[k - 1] / k)) for k in steps]


def weight_shares(state: dict[str, Any], models: list[str]) -> dict[str, float]:
    """Each model's share of the total weight in a Hedge state (Exp3/Exp4)."""
    logs = state.get("log_weights", {}) if isinstance(state, dict) else {}
    values = [float(logs.get(m, 0.0)) for m in models]
    top = max(values)
    weights = [np.exp(v - top) for v in values]
    total = sum(weights)
    return {m: round(float(w / total), 4) for m, w in zip(models, weights, strict=True)}


def vote_errors(data: DataSet, traces: dict[str, AppTrace], labels: list[int]) -> dict[str, float]:
    """Offline baselines from the single apps' answers: an unweighted majority vote
    (ties to the better model), a vote weighted by each model's log-odds of being
    right (its accuracy over the whole stream, known in hindsight) and the oracle
    (some model was right)."""
    order = sorted(data.keys, key=lambda k: traces[k].error)
    classes = len(set(data.y_train.tolist()))
    weights = {}
    for k in order:
        p = min(max(1 - traces[k].error, 1e-3), 1 - 1e-3)
        weights[k] = max(0.0, np.log(p * (classes - 1) / (1 - p)))
    vote_wrong = weighted_wrong = oracle_wrong = 0
    for i, label in enumerate(labels):
        answers = [traces[k].outputs[i] for k in order]
        counts: dict[str, float] = {}
        scores: dict[str, float] = {}
        for k, a in zip(order, answers, strict=True):
            key = json.dumps(a)
            counts[key] = counts.get(key, 0) + 1
            scores[key] = scores.get(key, 0.0) + weights[k]
        best = max(counts.values())
        winner = next(a for a in answers if counts[json.dumps(a)] == best)
        top = max(scores.values())
        weighted = next(a for a in answers if scores[json.dumps(a)] == top)
        vote_wrong += winner != label
        weighted_wrong += weighted != label
        oracle_wrong += label not in answers
    n = len(labels)
    return {
        "unweighted_vote": vote_wrong / n,
        "weighted_vote": weighted_wrong / n,
        "oracle": oracle_wrong / n,
    }


def run_accuracy(opts: Options, log: Callable[[str], None]) -> dict[str, Any]:
    data = {key: DataSet.load(key, opts) for key in DATASETS}
    out: dict[str, Any] = {}
    with BenchServer(FLAGS, CpuPlan.choose(enabled=False), log) as server:
        conn = server.conn
        t0 = time.perf_counter()
        for ds in data.values():
            for key, model in ds.models.items():
                deploy_sklearn_model(conn, ds.model_name(key), "1", "doubles", model)
        degrading = data["digits"]
        with by_value():
            for key, model in degrading.models.items():
                flagged = Flagged(model, degrade=key == DEGRADED)
                deploy_python_closure(conn, f"deg-{key}", "1", "doubles", flagged)
        names = [ds.model_name(k) for ds in data.values() for k in ds.keys]
        names += [f"deg-{k}" for k in degrading.keys]
        wait_for(
            lambda: (
                {r["model_name"] for r in server.status()["replicas"] if r["live"]} >= set(names)
            ),
            300,
            "a live replica of every model",
        )
        log(f"{len(names)} models live after {time.perf_counter() - t0:.1f}s")
        for ds in data.values():
            runs = []
            for r in range(opts.accuracy_repeats):
                runs.append(accuracy_run(server, ds, opts, r, log))
            out[ds.key] = summarise_accuracy(ds, runs)
        out["degradation"] = run_degradation(server, degrading, opts, log)
    return out


def calibration(trace: AppTrace) -> dict[str, Any]:
    """Expected calibration error and the reliability curve (10 bins) of an app's
    answers with a confidence."""
    bins: list[list[float]] = [[0.0, 0.0, 0.0] for _ in range(10)]
    for c, r in zip(trace.confidence, trace.rights, strict=True):
        b = bins[min(9, int(c * 10))]
        b[0], b[1], b[2] = b[0] + c, b[1] + r, b[2] + 1
    return {
        "ece": expected_calibration_error(trace.confidence, trace.rights),
        "curve": [
            {"bin": i / 10, "confidence": c / n, "right": r / n, "answers": int(n)}
            for i, (c, r, n) in enumerate(bins)
            if n
        ],
    }


def final_errors(server: BenchServer, traces: dict[str, AppTrace], ds: DataSet) -> dict[str, int]:
    """Wrong answers per app in one more pass over the held-out split, in order,
    predictions only: what each app learned, without the cost of learning it."""
    bodies = [
        (_body({"input": x.tolist()}), int(y)) for x, y in zip(ds.x_test, ds.y_test, strict=True)
    ]

    async def one(trace: AppTrace) -> int:
        client = Client(server.host, server.query_port)
        try:
            wrong_count = 0
            for body, label in bodies:
                _, doc = await client.post(f"/{trace.app}/predict", body)
                wrong_count += wrong(doc, label)
            return wrong_count
        finally:
            client.close()

    async def go() -> list[int]:
        return await asyncio.gather(*(one(t) for t in traces.values()))

    return dict(zip(traces, asyncio.run(go()), strict=True))


def accuracy_run(
    server: BenchServer, ds: DataSet, opts: Options, repeat: int, log: Callable[[str], None]
) -> dict[str, Any]:
    conn = server.conn
    slo = int(opts.accuracy_slo_ms * 1000)
    traces: dict[str, AppTrace] = {}
    models = [ds.model_name(k) for k in ds.keys]
    for key in ds.keys:
        app = f"{ds.key}-single-{key}-r{repeat}"
        conn.register_application(app, "doubles", DEFAULT_OUTPUT, slo, selection_policy="single")
        conn.link_model_to_app(app, ds.model_name(key))
        traces[key] = AppTrace(app, "single", key)
    for policy in POLICIES:
        app = f"{ds.key}-{policy.replace('_', '-')}-r{repeat}"
        conn.register_application(app, "doubles", DEFAULT_OUTPUT, slo, selection_policy=policy)
        for m in models:
            conn.link_model_to_app(app, m)
        traces[policy] = AppTrace(app, policy, None)
    stream = make_stream(ds, opts.queries, opts.seed + repeat)
    t0 = time.perf_counter()
    feed_all(server, traces, stream)
    wall = time.perf_counter() - t0
    final = final_errors(server, traces, ds)
    weights = {p: weight_shares(conn.get_policy_state(traces[p].app), models) for p in ("exp3",)}
    labels = [label for _, _, label in stream]
    best = min(ds.keys, key=lambda k: traces[k].error)
    run: dict[str, Any] = {
        "repeat": repeat,
        "wall_s": round(wall, 1),
        "errors": {k: t.error for k, t in traces.items()},
        "final_wrong": final,
        "best_single": best,
        "exp4_mean_confidence": statistics.fmean(traces["exp4"].confidence)
        if traces["exp4"].confidence
        else None,
        "exp4_calibration": calibration(traces["exp4"]),
        "final_weight_shares": weights,
        "defaults": {k: t.defaults for k, t in traces.items()},
        "http_errors": {k: t.http_errors for k, t in traces.items()},
        "feedback_rejected": {k: t.feedback_rejected for k, t in traces.items()},
        "curves": {k: curve(t.wrong) for k, t in traces.items()},
        **vote_errors(ds, traces, labels),
    }
    e = run["errors"]
    log(
        f"{ds.key} r{repeat}: best single {best} {e[best]:.2%}, "
        + ", ".join(f"{p} {e[p]:.2%}" for p in POLICIES)
        + f" (exp4 ECE {run['exp4_calibration']['ece']:.3f}); vote {run['unweighted_vote']:.2%}; "
        f"after learning, wrong of {len(ds.y_test)}: best {final[best]}, exp4 {final['exp4']}; "
        f"{len(traces) * len(stream) * 2} requests in {wall:.1f}s"
    )
    return run


def _error_of(key: str, run: dict[str, Any]) -> float:
    return float(run["errors"][key])


def _final_of(key: str, run: dict[str, Any]) -> float:
    return float(run["final_wrong"][key])


def summarise_accuracy(ds: DataSet, runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(get: Callable[[dict[str, Any]], float]) -> float:
        return float(statistics.median(get(r) for r in runs))

    return {
        "label": DATASETS[ds.key],
        "train": len(ds.y_train),
        "held_out": len(ds.y_test),
        "features": int(ds.x_train.shape[1]),
        "classes": len(set(ds.y_train.tolist())),
        "offline_error": ds.offline_error,
        "best_single_error": med(lambda r: r["errors"][r["best_single"]]),
        "best_single": [r["best_single"] for r in runs],
        "single_errors": {k: med(functools.partial(_error_of, k)) for k in ds.keys},
        **{f"{p}_error": med(functools.partial(_error_of, p)) for p in POLICIES},
        "best_single_final_wrong": med(lambda r: r["final_wrong"][r["best_single"]]),
        **{f"{p}_final_wrong": med(functools.partial(_final_of, p)) for p in POLICIES},
        "exp4_mean_confidence": med(lambda r: r["exp4_mean_confidence"] or 0.0),
        "exp4_ece": med(lambda r: r["exp4_calibration"]["ece"]),
        "unweighted_vote_error": med(lambda r: r["unweighted_vote"]),
        "weighted_vote_error": med(lambda r: r.get("weighted_vote", float("nan"))),
        "oracle_error": med(lambda r: r["oracle"]),
        "runs": runs,
    }


# -- part 1b: a model that degrades ---------------------------------------------------------

DEGRADED = "logreg"  # digits' best model, which turns bad halfway through the stream
RECOVERY_WINDOW = 100  # answers per window when judging recovery
RECOVERY_MARGIN = 0.05  # within 5 points of the best remaining model


class Flagged:
    """A fitted classifier fed inputs with one extra, last element: a flag. The
    model sees the features only; with ``degrade`` set, an input flagged 1 gets
    a wrong class (the prediction plus one, modulo 10)."""

    def __init__(self, model: Any, degrade: bool) -> None:
        self.model = model
        self.degrade = degrade

    def __call__(self, inputs: Any) -> list[int]:
        x = np.asarray(inputs, dtype=np.float64)
        out = [int(v) for v in self.model.predict(x[:, :-1])]
        if self.degrade:
            out = [(v + 1) % 10 if flag else v for v, flag in zip(out, x[:, -1], strict=True)]
        return out


class by_value:
    """Pickle this module's classes by value while deploying (the containers cannot
    import ``bench``); as ``__main__`` it is pickled by value anyway."""

    def __enter__(self) -> None:
        self.module = sys.modules[__name__]
        if self.module.__name__ != "__main__":
            cloudpickle.register_pickle_by_value(self.module)

    def __exit__(self, *exc: object) -> None:
        if self.module.__name__ != "__main__":
            cloudpickle.unregister_pickle_by_value(self.module)


def recovery_queries(wrong_flags: list[int], change: int, reference: float) -> int | None:
    """Queries after ``change`` until a window of the app's answers errs within
    ``RECOVERY_MARGIN`` of ``reference``; None when it never does."""
    for t in range(change, len(wrong_flags) - RECOVERY_WINDOW + 1):
        window = wrong_flags[t : t + RECOVERY_WINDOW]
        if sum(window) / RECOVERY_WINDOW <= reference + RECOVERY_MARGIN:
            return t - change
    return None


def run_degradation(
    server: BenchServer, ds: DataSet, opts: Options, log: Callable[[str], None]
) -> dict[str, Any]:
    """Digits' five models; the best turns bad halfway (inputs flagged from then on).
    One app per adaptive policy, predict-then-feedback, ``accuracy_repeats`` times."""
    conn = server.conn
    slo = int(opts.accuracy_slo_ms * 1000)
    models = [f"deg-{k}" for k in ds.keys]
    change = opts.queries // 2
    runs = []
    for repeat in range(opts.accuracy_repeats):
        rng = np.random.default_rng(opts.seed + 100 + repeat)
        order: list[int] = []
        while len(order) < opts.queries:
            order.extend(rng.permutation(len(ds.y_test)).tolist())
        stream: Stream = []
        for t, i in enumerate(order[: opts.queries]):
            x = [*ds.x_test[i].tolist(), float(t >= change)]
            label = int(ds.y_test[i])
            stream.append(
                (
                    _body({"input": x}),
                    _body({"uid": FEEDBACK_UID, "input": x, "label": label}),
                    label,
                )
            )
        # The best remaining model's error on the stream after the change, offline.
        after = [order[t] for t in range(change, opts.queries)]
        remaining = {
            k: float(np.mean(m.predict(ds.x_test[after]) != ds.y_test[after]))
            for k, m in ds.models.items()
            if k != DEGRADED
        }
        reference = min(remaining.values())
        traces = {}
        for policy in POLICIES:
            app = f"deg-{policy.replace('_', '-')}-r{repeat}"
            conn.register_application(app, "doubles", DEFAULT_OUTPUT, slo, selection_policy=policy)
            for m in models:
                conn.link_model_to_app(app, m)
            traces[policy] = AppTrace(app, policy, None)
        feed_all(server, traces, stream)
        run = {
            "repeat": repeat,
            "reference_error": reference,
            "reference_model": min(remaining, key=lambda k: remaining[k]),
            "recovery": {
                p: recovery_queries(t.wrong, change, reference) for p, t in traces.items()
            },
            "error_before": {p: float(np.mean(t.wrong[:change])) for p, t in traces.items()},
            "error_after": {p: float(np.mean(t.wrong[change:])) for p, t in traces.items()},
        }
        log(
            f"degradation r{repeat}: {DEGRADED} turns bad at query {change}; best remaining "
            f"{run['reference_model']} {reference:.2%}; queries to recover: {run['recovery']}"
        )
        runs.append(run)

    def med(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return float(statistics.median(known)) if len(known) == len(values) else None

    return {
        "degraded": DEGRADED,
        "change_at": change,
        "queries": opts.queries,
        "reference_error": float(statistics.median(r["reference_error"] for r in runs)),
        "recovery": {p: med([r["recovery"][p] for r in runs]) for p in POLICIES},
        "recovery_runs": {p: [r["recovery"][p] for r in runs] for p in POLICIES},
        "error_before": {
            p: float(statistics.median(r["error_before"][p] for r in runs)) for p in POLICIES
        },
        "error_after": {
            p: float(statistics.median(r["error_after"][p] for r in runs)) for p in POLICIES
        },
        "runs": runs,
    }


# -- part 2: stragglers --------------------------------------------------------------------


@dataclass
class StragglerRun:
    mode: str  # "cut" (SLO below the straggler) or "wait"
    slo_ms: float
    repeat: int
    queries: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    error: float
    error_slow_inputs: float  # on the inputs the straggler is slow for
    missing_share: float  # answers that left a model out
    missing_fast_share: float  # ... among the inputs the straggler is fast for
    default_share: float
    http_errors: int
    mean_confidence: float
    foreign_cores: float  # CPU other processes on the machine used meanwhile
    latencies_ms: list[float] = field(repr=False, default_factory=list)


async def open_loop(
    host: str, port: int, app: str, bodies: list[bytes], rate: float, seed: int
) -> list[tuple[float, Any]]:
    """Poisson arrivals at ``rate``; (latency in ms, answer) per body.

    As in bench/loadgen.py: a request that finds a free connection is timed
    from its send (the event loop's timers fire up to a millisecond or more
    late, which is the generator's delay, not the server's); one that must
    open a connection is timed from its scheduled arrival, so a server too
    slow for the rate is not excused by the queue in front of it."""
    rng = random.Random(seed)
    free = [Client(host, port) for _ in range(16)]
    for c in free:
        await c.conn.open()
    out: list[tuple[float, Any]] = [(0.0, None)] * len(bodies)
    path = f"/{app}/predict"

    async def one(i: int, scheduled: float) -> None:
        if free:
            client, started = free.pop(), time.perf_counter()
        else:
            client, started = Client(host, port), scheduled
        try:
            status, doc = await client.post(path, bodies[i])
        except (OSError, HTTPError) as exc:
            client.close()
            status, doc = 0, str(exc)
        free.append(client)
        out[i] = ((time.perf_counter() - started) * 1000, doc if status == 200 else None)

    tasks = []
    at = time.perf_counter()
    for i in range(len(bodies)):
        at += rng.expovariate(rate)
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, min(at, time.perf_counter()))))
    await asyncio.gather(*tasks)
    for c in free:
        c.close()
    return out


def straggler_run(
    server: BenchServer,
    app: str,
    mode: str,
    slo_ms: float,
    repeat: int,
    inputs: list[list[float]],
    labels: list[int],
    opts: Options,
) -> StragglerRun:
    bodies = [_body({"input": x}) for x in inputs]
    warm = [_body({"input": x}) for x in inputs[: opts.warmup_queries]]
    seed = opts.seed + 1000 * repeat

    async def go() -> list[tuple[float, Any]]:
        await open_loop(server.host, server.query_port, app, warm, opts.rate, seed + 1)
        return await open_loop(server.host, server.query_port, app, bodies, opts.rate, seed)

    busy0, own0, tree0, t0 = system_busy_seconds(), own_cpu_seconds(), server.cpu(), time.time()
    answers = asyncio.run(go())
    wall = time.time() - t0
    tree = sum(server.cpu().values()) - sum(tree0.values())
    foreign = (system_busy_seconds() - busy0 - (own_cpu_seconds() - own0) - tree) / wall
    lat = np.array([a[0] for a in answers])
    docs = [a[1] for a in answers]
    slow = [is_slow(x, opts.slow_share) for x in inputs]
    wrongs = [wrong(d, y) for d, y in zip(docs, labels, strict=True)]
    slow_wrongs = [w for w, s in zip(wrongs, slow, strict=True) if s]
    ok = [d for d in docs if isinstance(d, dict)]
    conf = [float(d["confidence"]) for d in ok if "confidence" in d]
    q = np.percentile(lat, [50, 90, 99])
    return StragglerRun(
        mode=mode,
        slo_ms=slo_ms,
        repeat=repeat,
        queries=len(inputs),
        p50_ms=float(q[0]),
        p90_ms=float(q[1]),
        p99_ms=float(q[2]),
        max_ms=float(lat.max()),
        mean_ms=float(lat.mean()),
        error=float(np.mean(wrongs)),
        error_slow_inputs=float(np.mean(slow_wrongs)) if slow_wrongs else float("nan"),
        missing_share=sum(bool(d.get("missing_models")) for d in ok) / len(docs),
        missing_fast_share=sum(
            isinstance(d, dict) and bool(d.get("missing_models"))
            for d, s in zip(docs, slow, strict=True)
            if not s
        )
        / max(1, slow.count(False)),
        default_share=sum(bool(d.get("default")) for d in ok) / len(docs),
        http_errors=len(docs) - len(ok),
        mean_confidence=statistics.fmean(conf) if conf else float("nan"),
        foreign_cores=max(0.0, foreign),
        latencies_ms=lat.tolist(),
    )


def run_stragglers(opts: Options, cpus: CpuPlan, log: Callable[[str], None]) -> dict[str, Any]:
    ds = DataSet.load("digits", opts)
    half = len(ds.y_test) // 2
    train_x, train_y = ds.x_test[:half], ds.y_test[:half]  # feedback, to learn the weights
    test_x, test_y = ds.x_test[half:], ds.y_test[half:]
    rng = np.random.default_rng(opts.seed)
    order = [
        i
        for _ in range(opts.straggler_queries // len(test_y) + 1)
        for i in rng.permutation(len(test_y))
    ][: opts.straggler_queries]
    inputs = [test_x[i].tolist() for i in order]
    labels = [int(test_y[i]) for i in order]
    names = [f"strag-{k}" for k in STRAGGLER_MODELS]
    apps = {"cut": ("strag-cut", opts.slo_ms), "wait": ("strag-wait", opts.wait_slo_ms)}
    runs: list[StragglerRun] = []
    # The cache is off: a repeated input must reach the straggler again.
    with BenchServer([*FLAGS, "--cache-bytes", "0"], cpus, log) as server:
        conn = server.conn
        flag = server.state / "straggle"
        for key, name in zip(STRAGGLER_MODELS[:-1], names, strict=False):
            deploy_sklearn_model(conn, name, "1", "doubles", ds.models[key])
        with by_value():
            straggler = Straggler(ds.models[STRAGGLER_MODELS[-1]], str(flag))
            deploy_python_closure(conn, names[-1], "1", "doubles", straggler)
        wait_for(
            lambda: (
                {r["model_name"] for r in server.status()["replicas"] if r["live"]} >= set(names)
            ),
            180,
            "live straggler-experiment replicas",
        )
        if cpus.server is not None and server.pid is not None:
            pin_tree(server.pid, cpus.server)
        for app, slo in apps.values():
            conn.register_application(
                app, "doubles", DEFAULT_OUTPUT, int(slo * 1000), selection_policy="exp4"
            )
            for m in names:
                conn.link_model_to_app(app, m)

        async def teach() -> None:
            clients = {app: Client(server.host, server.query_port) for app, _ in apps.values()}
            try:
                for x, y in zip(train_x.tolist(), train_y.tolist(), strict=True):
                    body = _body({"uid": FEEDBACK_UID, "input": x, "label": int(y)})
                    for app, client in clients.items():
                        await client.post(f"/{app}/update", body)
            finally:
                for c in clients.values():
                    c.close()

        asyncio.run(teach())
        states = {mode: conn.get_policy_state(app) for mode, (app, _) in apps.items()}
        weights = {mode: weight_shares(s, names) for mode, s in states.items()}
        log(f"straggler apps' weights after {half} feedbacks: {weights}")
        set_flag(flag, opts.straggle_ms, opts.slow_share)
        disturbed = 0
        for r in range(opts.repeats):
            modes = ["cut", "wait"] if r % 2 == 0 else ["wait", "cut"]
            for mode in modes:
                app, slo = apps[mode]
                tries: list[StragglerRun] = []
                while len(tries) <= opts.retries:
                    run = straggler_run(server, app, mode, slo, r, inputs, labels, opts)
                    tries.append(run)
                    log(
                        f"  {mode} r{r}: p50 {run.p50_ms:.1f} p99 {run.p99_ms:.1f} ms, "
                        f"error {run.error:.2%}, missing {run.missing_share:.1%}, "
                        f"defaults {run.default_share:.1%}, "
                        f"others' CPU {run.foreign_cores:.2f}"
                    )
                    if run.foreign_cores <= opts.foreign_limit:
                        break
                    log(f"    disturbed (others used > {opts.foreign_limit} cores)")
                disturbed += len(tries) - 1
                runs.append(min(tries, key=lambda t: t.foreign_cores))  # the least disturbed
        # Recovery: the straggler turns fast again; is it back in the answers?
        cut_app, cut_slo = apps["cut"]
        straggler_run(server, cut_app, "cut", cut_slo, -1, inputs[:100], labels[:100], opts)
        set_flag(flag, None)
        before = server.model_status(names[-1])
        recovered = straggler_run(
            server, cut_app, "recovered", cut_slo, opts.repeats, inputs, labels, opts
        )
        after = server.model_status(names[-1])
        runs.append(recovered)
        recovery = {
            "straggler_batches_during_run": after.get("batches", 0) - before.get("batches", 0),
            "straggler_last_batch_latency_ms": 1000 * after.get("last_batch_latency_s", 0.0),
            "straggler_status_before": before,
            "straggler_status_after": after,
        }
        log(
            f"  recovered (not slow any more): p99 {recovered.p99_ms:.1f} ms, "
            f"missing {recovered.missing_share:.1%}"
        )
    summary = {}
    for mode, slo in [(m, slo) for m, (_, slo) in apps.items()] + [("recovered", cut_slo)]:
        mine = [r for r in runs if r.mode == mode]
        summary[mode] = {
            "slo_ms": slo,
            **{
                k: float(statistics.median(getattr(r, k) for r in mine))
                for k in (
                    "p50_ms",
                    "p90_ms",
                    "p99_ms",
                    "max_ms",
                    "mean_ms",
                    "error",
                    "error_slow_inputs",
                    "missing_share",
                    "missing_fast_share",
                    "default_share",
                    "mean_confidence",
                    "foreign_cores",
                )
            },
            "p99_ms_runs": [r.p99_ms for r in mine],
            "http_errors": sum(r.http_errors for r in mine),
        }
    return {
        "dataset": "digits",
        "models": dict(zip(names, STRAGGLER_MODELS, strict=True)),
        "straggler": names[-1],
        "offline_error": {k: ds.offline_error[k] for k in STRAGGLER_MODELS},
        "feedback_inputs": half,
        "measured_inputs": len(test_y),
        "weights_after_feedback": weights,
        "recovery": recovery,
        "disturbed_runs_redone": disturbed,
        "same_state": states["cut"] == states["wait"],
        "slow_share_of_stream": float(np.mean([is_slow(x, opts.slow_share) for x in inputs])),
        "summary": summary,
        "runs": [
            {k: v for k, v in asdict(r).items() if k != "latencies_ms"}
            | {"percentiles_ms": np.percentile(r.latencies_ms, range(0, 101)).round(2).tolist()}
            for r in runs
        ],
        "latencies_ms": {  # every request's, per mode: raw (RAW_KEYS)
            mode: [x for r in runs if r.mode == mode for x in r.latencies_ms] for mode in apps
        },
    }


# -- outputs -------------------------------------------------------------------------------

# The raw parts of a result: in bench/results/raw/ only (bench/store.py). The
# latencies of every straggler run, per mode, are there too (``latencies_ms``).
RAW_KEYS = (
    "accuracy.*.runs.*.curves",
    "stragglers.runs.*.percentiles_ms",
    "stragglers.latencies_ms",
)
FIGURES = {
    "error": ("Cumulative online error per policy", "selection-cumulative-error.png"),
    "latency": (
        "Latency with and without straggler mitigation",
        "selection-straggler-latency.png",
    ),
}
STRAGGLER_MODES = (
    ("cut", "straggler left out at the SLO"),
    ("wait", "wait for all"),
    ("recovered", "left out at the SLO, straggler fast again"),
)
pct = report.pct


def render_markdown(result: dict[str, Any]) -> str:
    acc = {k: v for k, v in result["accuracy"].items() if k != "degradation"}
    return report.blocks(
        "## Model selection and stragglers (generated by `make bench-selection`)",
        _run_line(result),
        _what_was_measured(result["options"]),
        _accuracy_table(acc),
        "*Unweighted vote*, *weighted vote* and *oracle* are computed offline from the "
        "single apps' answers: a plain majority vote of the five models (ties to the "
        "better model), "
        "a vote weighted by each model's log-odds of being right (its accuracy on the "
        "stream, known in hindsight), and the share of queries no model got right (the "
        "floor for any combination). "
        "*After learning*: wrong answers in one more pass over the held-out split, "
        "predictions only, once the stream has been fed back.",
        _final_table(acc),
        "**Calibration of Exp4's confidence.** Expected calibration error (ECE) over all "
        "its answers in the stream, learning included: over ten equal-width bins of the "
        "reported confidence, the answer-weighted mean gap between the confidence and the "
        "share of answers that were right. The reliability curve on the complementary "
        "case (first repeat) shows the same bins.",
        _calibration_table(acc),
        _degradation_text(result["accuracy"].get("degradation")),
        _degradation_table(result["accuracy"].get("degradation")),
        report.figure(*FIGURES["error"]),
        _stragglers_setup(result),
        _stragglers_table(result["stragglers"]["summary"]),
        "The last row is one more run of the 20 ms app after the straggler stopped "
        "being slow (right after a slow run): is it back in the answers?",
        report.figure(*FIGURES["latency"]),
        "**Reading.**",
        reading(result),
    )


def _run_line(result: dict[str, Any]) -> str:
    info, opts = result["machine"], result["options"]
    return (
        f"Run {info['date_utc']} on {report.machine(info)}, "
        f"{report.versions(info, 'numpy', 'scikit-learn')}; "
        f"took {info.get('elapsed_s', 0):.0f} s"
        + (" (`--quick`)" if opts["quick"] else "")
        + ". Reproduce with `make bench-selection` (about 12 minutes; "
        "`make bench-selection BENCH_ARGS=--quick` about 3); raw numbers in "
        "`bench/results/selection.json`."
    )


def _what_was_measured(opts: dict[str, Any]) -> str:
    return (
        "**What was measured.** Part 1, error rates, on four cases, each five "
        "classifiers fitted on a 70% split of a data set bundled with scikit-learn and "
        "deployed to one real server, one container each. *Complementary*: five scaled "
        "logistic regressions on digits, each seeing a different random fifth of the "
        "pixels, so their mistakes differ and a vote beats each of them. *Digits, wine, "
        "breast cancer*: five different kinds (logistic regression, Gaussian naive Bayes, "
        "a depth-3 decision tree, 5-nearest neighbours, and a linear SVM that sees a "
        "random quarter of the features), where one model usually dominates. One `single` "
        "app per model, and one app per adaptive policy linking all five, default "
        "parameters. The held-out 30%, reshuffled on every pass (fixed seed), is streamed "
        f"to every app {opts['queries']} times as predict-then-feedback (`/predict`, then "
        "`/update` with the true label); the error is the online error over the whole "
        "stream, learning included. *Best single* is the single app with the lowest "
        f"error, chosen in hindsight. {opts['accuracy_repeats']} repeat(s) with a fresh "
        "stream order and fresh apps, medians shown."
    )


def _accuracy_table(acc: dict[str, Any]) -> list[str]:
    head = (
        "case",
        "held-out",
        "best single model",
        "best single",
        *(POLICY_LABELS[p] for p in POLICIES),
        "unweighted vote",
        "weighted vote",
        "oracle",
    )
    rows = [
        [
            a["label"],
            str(a["held_out"]),
            statistics.mode(a["best_single"]),
            pct(a["best_single_error"]),
            *(pct(a[f"{p}_error"]) for p in POLICIES),
            pct(a["unweighted_vote_error"]),
            pct(a["weighted_vote_error"]),
            pct(a["oracle_error"]),
        ]
        for a in acc.values()
    ]
    return report.table(head, "lrl" + "r" * (len(head) - 3), rows)


def _final_table(acc: dict[str, Any]) -> list[str]:
    head = ("case", "held-out", "best single", *(POLICY_LABELS[p] for p in POLICIES))
    rows = [
        [
            a["label"],
            str(a["held_out"]),
            f"{a['best_single_final_wrong']:.0f}",
            *(f"{a[f'{p}_final_wrong']:.0f}" for p in POLICIES),
        ]
        for a in acc.values()
    ]
    return [
        "*After learning: wrong answers of the held-out inputs (medians)*",
        "",
        *report.table(head, "lr" + "r" * (len(head) - 2), rows),
    ]


def _calibration_table(acc: dict[str, Any]) -> list[str]:
    rows = [
        [
            a["label"],
            f"{a['exp4_ece']:.3f}",
            f"{a['exp4_mean_confidence']:.3f}",
            pct(1 - a["exp4_error"]),
        ]
        for a in acc.values()
    ]
    out = report.table(("case", "Exp4 ECE", "mean confidence", "share right"), "lrrr", rows)
    first = acc.get("fifths", next(iter(acc.values())))["runs"][0]["exp4_calibration"]["curve"]
    curve_rows = [
        [
            f"{b['bin']:.1f}-{b['bin'] + 0.1:.1f}",
            f"{b['confidence']:.3f}",
            f"{b['right']:.3f}",
            str(b["answers"]),
        ]
        for b in first
    ]
    return [
        *out,
        "",
        *report.table(
            ("confidence bin", "mean confidence", "share right", "answers"), "lrrr", curve_rows
        ),
    ]


def _degradation_text(deg: dict[str, Any] | None) -> str:
    if not deg:
        return ""
    return (
        f"**A model that degrades.** The digits models again, each app (one per adaptive "
        f"policy) fed {deg['queries']} predict-then-feedback pairs; from query "
        f"{deg['change_at']} on, the best model ({deg['degraded']}) answers a wrong class "
        "for every input. *Queries to recover*: from the change until the first window of "
        f"{RECOVERY_WINDOW} answers whose error is within {RECOVERY_MARGIN * 100:.0f} points "
        f"of the best remaining model's ({pct(deg['reference_error'])} on the same queries); "
        "median of the repeats, each repeat in brackets."
    )


def _degradation_table(deg: dict[str, Any] | None) -> list[str]:
    if not deg:
        return []

    def fmt(v: float | None) -> str:
        return "never" if v is None else f"{v:.0f}"

    rows = [
        [
            POLICY_LABELS[p],
            fmt(deg["recovery"][p])
            + " ("
            + ", ".join(fmt(v) for v in deg["recovery_runs"][p])
            + ")",
            pct(deg["error_before"][p]),
            pct(deg["error_after"][p]),
        ]
        for p in POLICIES
    ]
    return report.table(
        ("policy", "queries to recover", "error before the change", "error after it"), "lrrr", rows
    )


def _stragglers_setup(result: dict[str, Any]) -> str:
    opts, st = result["options"], result["stragglers"]
    s = st["summary"]
    cut, wait = s["cut"], s["wait"]
    return (
        f"**Stragglers.** An `exp4` app on digits links {', '.join(st['models'].values())}; "
        f"the last ({st['straggler']}) sleeps {opts['straggle_ms']:.0f} ms in every batch "
        f"holding one of a fixed {pct(opts['slow_share'], 0)} of the inputs (by hash; "
        f"{pct(st['slow_share_of_stream'])} of this stream). Two apps with the same models "
        f"and the same learned weights (feedback on {st['feedback_inputs']} held-out inputs "
        "before the straggler turned slow; weights then frozen) differ only in the SLO: "
        f"{cut['slo_ms']:.0f} ms (at the deadline the answer is combined from the models "
        "that answered, the straggler listed in `missing_models`) and "
        f"{wait['slo_ms']:.0f} ms (every answer waits for all three: no mitigation). "
        f"Poisson arrivals at {opts['rate']:.0f} queries/s, {opts['straggler_queries']} "
        f"queries per run after {opts['warmup_queries']} unmeasured ones, prediction cache "
        f"off, {opts['repeats']} runs each (alternating order), medians; model replicas "
        "pinned to one CPU, the load generator to another. Other processes on the "
        "machine used a median of "
        + ", ".join(f"{s[m]['foreign_cores']:.2f}" for m in ("cut", "wait"))
        + f" cores during the runs (cut, wait); {st.get('disturbed_runs_redone', 0)} run(s) "
        f"disturbed by more than {opts.get('foreign_limit', 0.3)} cores were redone "
        "(the least disturbed try kept)."
    )


def _stragglers_table(s: dict[str, Any]) -> list[str]:
    head = (
        "mode",
        "SLO",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99 per run (ms)",
        "error",
        "error on the slow inputs",
        "answers missing a model",
        "... among the fast inputs",
        "defaults",
        "mean confidence",
    )
    rows = [
        [
            label,
            f"{m['slo_ms']:.0f} ms",
            f"{m['p50_ms']:.1f}",
            f"{m['p90_ms']:.1f}",
            f"{m['p99_ms']:.1f}",
            ", ".join(f"{v:.1f}" for v in m["p99_ms_runs"]),
            pct(m["error"], 2),
            pct(m["error_slow_inputs"], 2),
            pct(m["missing_share"]),
            pct(m["missing_fast_share"]),
            pct(m["default_share"]),
            f"{m['mean_confidence']:.3f}",
        ]
        for mode, label in STRAGGLER_MODES
        for m in [s[mode]]
    ]
    return report.table(head, "lrrrrlrrrrrr", rows)


def _within_noise(a: float, b: float, n: float) -> bool:
    """Two error rates within two standard errors of each other (``n`` samples each)."""
    p = (a + b) / 2
    return abs(a - b) <= 2 * (2 * p * (1 - p) / max(n, 1)) ** 0.5 + 1e-12


def reading(result: dict[str, Any]) -> list[str]:
    """An honest reading of the numbers, generated from them."""
    acc = {k: v for k, v in result["accuracy"].items() if k != "degradation"}
    out = [_reading_exp4(acc), _reading_single_pick(acc), _reading_calibration(acc)]
    if result["accuracy"].get("degradation"):
        out.append(_reading_degradation(result["accuracy"]["degradation"]))
    return [*out, _reading_tail(result), _reading_missing(result["stragglers"])]


def _reading_exp4(acc: dict[str, Any]) -> str:
    parts = []
    comp = acc.get("fifths")
    if comp is not None:
        votes = min(comp["unweighted_vote_error"], comp["weighted_vote_error"])
        parts.append(
            f"On the complementary case Exp4 erred {pct(comp['exp4_error'])} against "
            f"{pct(comp['best_single_error'])} for the best single model "
            f"({comp['exp4_error'] / comp['best_single_error']:.2f}x; target at most 0.8x) "
            f"and {pct(votes)} for the better of the two offline votes "
            f"({comp['exp4_error'] / votes:.2f}x; target at most 1.2x): the combination "
            "the paper is about happens, learned online, learning included."
        )
    others = [a for k, a in acc.items() if k != "fifths"]
    details = "; ".join(
        f"{a['label']}: {a['exp4_final_wrong']:.0f} vs {a['best_single_final_wrong']:.0f} "
        f"wrong of {a['held_out']} after learning, online {pct(a['exp4_error'], 2)} vs "
        f"{pct(a['best_single_error'], 2)}"
        for a in others
    )
    worst = max((a["exp4_final_wrong"] - a["best_single_final_wrong"] for a in others), default=0)
    online = "; ".join(
        f"{a['label']} {(a['exp4_error'] - a['best_single_error']) * a['held_out']:.1f}"
        for a in others
    )
    parts.append(
        "Where one model dominates, Exp4 converges to it "
        f"({details}; at most {worst:.0f} held-out input(s) worse after learning). Its "
        "online error also pays for learning, against a best model chosen in hindsight: "
        "it starts with every expert level, so early on the votes and the weak models "
        f"have as much say as the best one (online excess, in held-out inputs: {online})."
    )
    return "- " + " ".join(parts)


def _reading_single_pick(acc: dict[str, Any]) -> str:
    def gap(p: str) -> str:
        return ", ".join(
            f"{pct(a[f'{p}_error'] - a['best_single_error'], 1)}"
            for k, a in acc.items()
            if k != "fifths"
        )

    return (
        "- The policies that run one model per query cannot beat the best model, only "
        "find it. UCB1 and Thompson, fed every model's output by `/update`, come close "
        f"(excess online error on digits, wine, breast cancer: UCB1 {gap('ucb1')}; "
        f"Thompson {gap('thompson')}); Exp3 and ε-greedy send 10% of the queries to a "
        f"random model by design (Exp3 {gap('exp3')}; ε-greedy {gap('epsilon_greedy')}). "
        "On the complementary case none of them can do better than its best model; "
        "only Exp4 combines."
    )


def _reading_calibration(acc: dict[str, Any]) -> str:
    eces = "; ".join(f"{a['label']} {a['exp4_ece']:.3f}" for a in acc.values())
    return (
        f"- Exp4's confidence is calibrated (ECE: {eces}; target at most 0.05), so "
        "`min_confidence` means what it says: among answers given with confidence c, "
        "about c are right."
    )


def _reading_degradation(deg: dict[str, Any]) -> str:
    known = {p: v for p, v in deg["recovery"].items() if v is not None}
    slowest = max(known.values(), default=0)
    never = [POLICY_LABELS[p] for p, v in deg["recovery"].items() if v is None]
    return (
        f"- After the best model turned bad, every adaptive policy recovered within "
        f"{slowest:.0f} queries (median; target at most 500)"
        + (f", except {report.names(never)}" if never else "")
        + ". The counting policies discount old observations (0.995 per feedback) and "
        "Hedge mixes a 0.001 share back evenly, so no model's weight falls out of reach."
    )


def _reading_tail(result: dict[str, Any]) -> str:
    s = result["stragglers"]["summary"]
    cut, wait = s["cut"], s["wait"]
    n = result["options"]["straggler_queries"] * result["options"]["repeats"]
    if _within_noise(cut["error"], wait["error"], n):
        accuracy = "no difference in error beyond noise"
    elif cut["error"] > wait["error"]:
        accuracy = "a higher error"
    else:
        accuracy = "a lower error (the weighted vote of the other two happened to do better)"
    return (
        f"- Stragglers: leaving the straggler out at the deadline cut the p99 latency from "
        f"{wait['p99_ms']:.1f} ms to {cut['p99_ms']:.1f} ms and the p50 from "
        f"{wait['p50_ms']:.1f} to {cut['p50_ms']:.1f} ms (waiting, queries queue behind the "
        f"slow batches), with {accuracy}: {pct(wait['error'], 2)} waiting, "
        f"{pct(cut['error'], 2)} cut; mean confidence {wait['mean_confidence']:.3f} and "
        f"{cut['mean_confidence']:.3f}. The tail is cut, the paper's claim shape. The "
        f"p99 sits {cut['p99_ms'] - cut['slo_ms']:.1f} ms above the SLO: the deadline is "
        "kept inside the server; reading the request, writing the answer and the client "
        "come on top (the server shares one CPU with the three model replicas here)."
    )


def _reading_missing(st: dict[str, Any]) -> str:
    cut, rec = st["summary"]["cut"], st["summary"]["recovered"]
    if cut["missing_fast_share"] > 0.5:
        return _reading_excluded(st)
    return (
        f"- The straggler was left out of {pct(cut['missing_share'])} of the answers "
        f"({pct(cut['missing_fast_share'])} of those it would have answered fast: "
        "queued behind a slow batch, or skipped while the dispatcher's estimate of the "
        "model's batch latency was above the time left); once it was fast again, "
        f"{pct(rec['missing_share'])} of the answers left it out."
    )


def _reading_excluded(st: dict[str, Any]) -> str:
    """The straggler left out of most answers, fast ones too: why, and whether it came back."""
    cut, rec = st["summary"]["cut"], st["summary"]["recovered"]
    if rec["missing_share"] > 0.5:
        after = (
            f"Even after the straggler was fast again it stayed out of "
            f"{pct(rec['missing_share'])} of the answers (the dispatcher sent it "
            f"{st['recovery']['straggler_batches_during_run']} batches during that "
            "run): the exclusion is sticky "
            "while only short-deadline queries reach the model (here the 1000 ms app's "
            "queries, which still run it, are what would update the average)."
        )
    else:
        after = (
            f"Once the straggler was fast again it was back: "
            f"{pct(rec['missing_share'])} of the answers left it out."
        )
    return (
        f"- But the straggler was left out of {pct(cut['missing_share'])} of the answers, "
        f"{pct(cut['missing_fast_share'])} of those it would have answered fast, not "
        f"only the {pct(st['slow_share_of_stream'])} it is slow for. The dispatcher drops "
        "a queued query, without computing it, when its deadline is nearer than the "
        "model's average batch latency (an EWMA per model); after a few slow batches "
        "that average exceeds the 20 ms SLO, so every query of the 20 ms app skips the "
        "model, no batch runs, and the average never comes down. " + after
    )


def write_markdown(result: dict[str, Any]) -> None:
    """Replace (or append) the selection section of docs/benchmarks.md only."""
    write_doc_section("selection", render_markdown(result), DOC)


def write_plots(result: dict[str, Any], log: Callable[[str], None] = print) -> None:
    """The two plots, from the raw parts of ``result`` (the error curves, the
    straggler runs' latencies); a plot whose data is not there is kept as it is."""
    plt = report.pyplot()
    run = result["accuracy"]["digits"]["runs"][0]
    if "curves" in run:
        _plot_error(result, plt)
    else:
        log(f"no error curves (see {store.RAW.relative_to(ROOT)}): kept {FIGURES['error'][1]}")
    latencies = result["stragglers"].get("latencies_ms")
    if latencies:
        _plot_latency(result["stragglers"]["summary"], latencies, plt)
    else:
        log(f"no straggler latencies: kept {FIGURES['latency'][1]}")


def _plot_error(result: dict[str, Any], plt: Any) -> None:
    """Cumulative online error over the stream on digits, first repeat."""
    acc = result["accuracy"]["digits"]
    run = acc["runs"][0]
    best = run["best_single"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for key in MODEL_KEYS:
        if key == best:
            continue
        xs, ys = zip(*run["curves"][key], strict=True)
        ax.plot(xs, ys, color="#bbbbbb", linewidth=0.8, linestyle="--")
        ax.annotate(key, (xs[-1], ys[-1]), fontsize=7, color="#888888", va="center")
    styles = {
        best: ("#444444", f"best single model ({best})"),
        "exp3": ("#e6550d", "Exp3"),
        "exp4": ("#3182bd", "Exp4 ensemble"),
        "ucb1": ("#31a354", "UCB1"),
        "thompson": ("#756bb1", "Thompson"),
    }
    for key, (color, label) in styles.items():
        xs, ys = zip(*run["curves"][key], strict=True)
        ax.plot(xs, ys, color=color, linewidth=1.8, label=label)
    top = max(run["errors"][k] for k in styles)
    ax.set_ylim(0, min(1.0, max(0.05, 2.5 * top)))
    ax.set_xlim(0, len(run["curves"]["exp4"]) and run["curves"]["exp4"][-1][0])
    ax.set_xlabel("queries (predict, then feedback)")
    ax.set_ylabel("cumulative error rate")
    ax.set_title(
        f"digits: online error over the stream ({acc['held_out']} held-out inputs, repeated)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    report.save_figure(fig, IMG / FIGURES["error"][1])


def _plot_latency(st: dict[str, Any], latencies: dict[str, list[float]], plt: Any) -> None:
    """The client latency's distribution per mode, all runs pooled."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for mode, color, label in (
        ("wait", "#e6550d", f"wait for all (SLO {st['wait']['slo_ms']:.0f} ms)"),
        ("cut", "#3182bd", f"straggler left out at the SLO ({st['cut']['slo_ms']:.0f} ms)"),
    ):
        lat = np.sort(np.asarray(latencies[mode]))
        if len(lat) == 0:
            continue
        frac = np.arange(1, len(lat) + 1) / len(lat)
        ax.plot(lat, frac, color=color, label=label)
        ax.axvline(float(np.percentile(lat, 99)), color=color, linestyle=":", linewidth=1)
    slo = st["cut"]["slo_ms"]
    ax.axvline(slo, color="#999999", linestyle="--", linewidth=1)
    ax.annotate(f"SLO {slo:.0f} ms", (slo, 0.03), fontsize=7, color="#666666", rotation=90)
    ax.set_xscale("log")
    ax.set_xlabel("client latency (ms), all runs pooled; dotted: p99")
    ax.set_ylabel("share of queries")
    ax.set_title("Exp4 with one straggling model out of three (digits)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    report.save_figure(fig, IMG / FIGURES["latency"][1])


# -- entry point ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.selection",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a ~2 minute run, 1 repeat")
    parser.add_argument("--queries", type=int, help="queries per app and data set")
    parser.add_argument("--repeats", type=int, help="straggler runs per mode (default 3)")
    parser.add_argument("--rate", type=float, help="straggler runs: queries per second")
    parser.add_argument(
        "--docs",
        action="store_true",
        help="with --quick: write docs/benchmarks.md and the plots too",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin CPUs")
    parser.add_argument("--out", type=Path, help="results JSON path")
    parser.add_argument(
        "--render",
        type=Path,
        help="only rewrite the docs section from a results JSON, and the plots when its "
        "raw file in bench/results/raw/ is there",
    )
    return parser


def _options(args: argparse.Namespace) -> Options:
    opts = Options(pin=not args.no_pin)
    if args.quick:
        opts = Options(
            queries=400,
            accuracy_repeats=1,
            straggler_queries=200,
            warmup_queries=20,
            repeats=1,
            quick=True,
        )
        opts.pin = not args.no_pin
    if args.queries:
        opts.queries = args.queries
    if args.repeats:
        opts.repeats = args.repeats
    if args.rate:
        opts.rate = args.rate
    return opts


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.render:
        saved = store.load(args.render)
        write_markdown(saved)
        write_plots(saved)
        print(render_markdown(saved))
        return 0
    opts = _options(args)
    out = args.out or RESULTS / ("selection-quick.json" if opts.quick else "selection.json")
    write_docs = not opts.quick or args.docs

    def log(msg: str) -> None:
        print(msg, flush=True)

    t0 = time.perf_counter()
    cpus = CpuPlan.choose(opts.pin)
    info = machine_info(cpus)
    log(f"clipper from {info['clipper_from']}; {cpus.note}")
    accuracy = run_accuracy(opts, log)
    cpus.pin_generator()  # from here on: the straggler runs time latency
    stragglers = run_stragglers(opts, cpus, log)
    info["loadavg_end"] = os.getloadavg()
    info["git_end"] = machine_info(cpus)["git"]  # others may commit during a run
    info["elapsed_s"] = round(time.perf_counter() - t0, 1)
    result: dict[str, Any] = {
        "benchmark": "selection",
        "machine": info,
        "options": asdict(opts),
        "models": MODEL_LABELS,
        "accuracy": accuracy,
        "stragglers": stragglers,
    }
    result["markdown"] = render_markdown(result)
    store.save(out, result, RAW_KEYS, default=float)
    log(f"wrote {out} (and its raw file)")
    print("\n" + result["markdown"])
    if write_docs:
        write_markdown(result)
        write_plots(result, log)
        log(f"wrote {DOC.relative_to(ROOT)} and docs/img/selection-*.png")
    # Issue #27's case: its own results file (bench/results/rollout.json) and section.
    rollout_case.run(quick=opts.quick, write_docs=write_docs, log=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
