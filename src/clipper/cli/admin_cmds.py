"""Commands on apps, models, links and replicas, through the management API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .base import app, console, err_console, print_json, target
from .parsing import load_function, parse_shape, read_pickle
from .render import apps_table, models_table, replicas_table, rollouts_table

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ..admin import ClipperConnection

JsonFlag = Annotated[bool, typer.Option("--json", help="Print raw JSON instead of a table.")]
ExistOk = Annotated[
    bool,
    typer.Option(
        "--exist-ok",
        help="Accept an identical existing one (nothing changes), so a script can run "
        "again; a different one is still an error naming what differs.",
    ),
]
NoWait = Annotated[
    bool,
    typer.Option(
        "--no-wait",
        help="Return at once instead of waiting until a replica of the version is live.",
    ),
]
WaitTimeout = Annotated[
    float,
    typer.Option("--timeout", min=0, help="Seconds to wait for a live replica before failing."),
]


def _readiness_line(readiness: dict[str, Any]) -> str:
    """``m:1 0/1 live`` for each model version a readiness answer lists."""
    parts = [
        f"{m['model_name']}:{m['model_version']} {m['live_replicas']}/{m['target_replicas']} live"
        for m in readiness.get("models", [])
    ]
    return ", ".join(parts) or str(readiness.get("problem") or "")


def wait_with_progress(
    what: str, timeout: float, wait: Callable[[Callable[[dict[str, Any]], None] | None], object]
) -> None:
    """Run ``wait(progress)``, showing that it waits: a spinner with the live
    replicas on a terminal's stderr, else one line before and one after."""
    import time

    started = time.monotonic()
    if err_console.is_terminal:
        with err_console.status(f"Waiting for {what}…") as spinner:

            def progress(readiness: dict[str, Any]) -> None:
                took = time.monotonic() - started
                spinner.update(f"Waiting for {what}: {_readiness_line(readiness)} ({took:.0f}s)")

            wait(progress)
    else:
        typer.echo(f"Waiting for {what} (at most {timeout:g}s)…", err=True)
        wait(None)
    typer.echo(f"Ready: {what} ({time.monotonic() - started:.1f}s).", err=True)


def wait_live(conn: ClipperConnection, model: str, version: str | None, timeout: float) -> None:
    """Wait, showing progress, until a replica of ``model:version`` is live."""
    what = f"a live replica of {model}" + (f":{version}" if version else "")
    wait_with_progress(
        what,
        timeout,
        lambda progress: conn.wait_until_live(model, version, timeout=timeout, progress=progress),
    )


def _show(found: list[Any], as_json: bool, none: str, table: Callable[[], RenderableType]) -> None:
    """A listing: raw JSON, a line saying there is nothing, or the table."""
    if as_json:
        print_json(found)
    elif not found:
        typer.echo(none)
    else:
        console.print(table())


@app.command(help="List the applications: input type, SLO, default output, links, policy.")
def apps(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    found = target(ctx).connect().get_all_apps(verbose=True)
    _show(found, as_json, "No applications registered.", lambda: apps_table(found))


@app.command(help="List the model versions: current version, input type, batch size, replicas.")
def models(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    conn = target(ctx).connect()
    found = conn.get_all_models(verbose=True)

    def table() -> RenderableType:
        wanted: dict[tuple[str, str], int | None] = {}
        for m in found:
            key = (str(m["model_name"]), str(m["model_version"]))
            wanted[key] = conn.get_num_replicas(*key)
        return models_table(found, wanted)

    _show(found, as_json, "No models deployed.", table)


@app.command(
    help="List the model replicas: pid, whether live (connected), restarts, and each live"
    " one's maximum batch size and batch latency estimate."
)
def replicas(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    found = target(ctx).connect().get_all_model_replicas(verbose=True)
    _show(found, as_json, "No replicas.", lambda: replicas_table(found))


@app.command(help="Register an application (its REST endpoint is /APP/predict).")
def register(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Application name.")],
    input_type: Annotated[
        str,
        typer.Option(help="integers, floats, doubles, bytes, strings or json."),
    ],
    default_output: Annotated[
        str, typer.Option(help="Answer when the models miss the SLO (a string).")
    ] = "None",
    slo_micros: Annotated[
        int, typer.Option(help="Latency objective in microseconds.", min=1)
    ] = 100000,
    input_shape: Annotated[
        str | None,
        typer.Option(help="Required input shape of numeric inputs, e.g. 64 or 28,28."),
    ] = None,
    exist_ok: ExistOk = False,
) -> None:
    conn = target(ctx).connect()
    shape = parse_shape(input_shape) if input_shape is not None else None
    conn.register_application(
        name, input_type, default_output, slo_micros, input_shape=shape, exist_ok=exist_ok
    )
    typer.echo(f"Registered application '{name}'.")


@app.command(help="Remove an application and its REST endpoint.")
def unregister(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Application name.")]
) -> None:
    target(ctx).connect().unregister_application(name)
    typer.echo(f"Unregistered application '{name}'.")


@app.command(
    help="Link a model to an application (the app then queries it), and wait until the "
    "model's current version has a live replica (--no-wait: return at once)."
)
def link(
    ctx: typer.Context,
    app_name: Annotated[str, typer.Argument(metavar="APP", help="Application name.")],
    model: Annotated[str, typer.Argument(help="Model name.")],
    exist_ok: Annotated[
        bool, typer.Option("--exist-ok", help="Accept a model that is already linked.")
    ] = False,
    no_wait: NoWait = False,
    timeout: WaitTimeout = 300.0,
) -> None:
    conn = target(ctx).connect()
    conn.link_model_to_app(app_name, model, exist_ok=exist_ok, wait=False)
    typer.echo(f"Linked model '{model}' to application '{app_name}'.")
    if not no_wait:
        wait_live(conn, model, None, timeout)


@app.command(
    help="Wait until APP can answer from its models: every linked model's current version "
    "has a live replica. Fails after --timeout seconds, naming what is not live."
)
def wait(
    ctx: typer.Context,
    app_name: Annotated[str, typer.Argument(metavar="APP", help="Application name.")],
    timeout: Annotated[
        float, typer.Option("--timeout", min=0, help="Seconds to wait before failing.")
    ] = 120.0,
) -> None:
    conn = target(ctx).connect()
    wait_with_progress(
        f"application '{app_name}'",
        timeout,
        lambda progress: conn.wait_until_ready(app_name, timeout=timeout, progress=progress),
    )


@app.command(help="Unlink a model from an application.")
def unlink(
    ctx: typer.Context,
    app_name: Annotated[str, typer.Argument(metavar="APP", help="Application name.")],
    model: Annotated[str, typer.Argument(help="Model name.")],
) -> None:
    target(ctx).connect().unlink_model_from_app(app_name, model)
    typer.echo(f"Unlinked model '{model}' from application '{app_name}'.")


@app.command(
    help="Deploy a Python function as model NAME:VERSION and start its replicas: "
    "--python-file FILE --function NAME (the file, and the modules of your own it imports, "
    "are shipped by value), --pickle FILE (a cloudpickled function or object with predict), "
    "or --mlflow DIR (an MLflow model directory: its input type comes from its signature "
    "unless --input-type is given; its requirements.txt is installed unless "
    "--no-requirements). Waits until a replica is live (--no-wait: return at once)."
)
def deploy(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Model version.")],
    input_type: Annotated[
        str | None,
        typer.Option(
            help="integers, floats, doubles, bytes, strings or json (required but with --mlflow)."
        ),
    ] = None,
    python_file: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Python file defining the function."),
    ] = None,
    function: Annotated[
        str | None, typer.Option(help="Name of the function in --python-file.")
    ] = None,
    pickle_file: Annotated[
        Path | None,
        typer.Option("--pickle", exists=True, dir_okay=False, help="Cloudpickled model file."),
    ] = None,
    mlflow_dir: Annotated[
        Path | None,
        typer.Option(
            "--mlflow", exists=True, file_okay=False, help="MLflow model directory (pyfunc)."
        ),
    ] = None,
    code_path: Annotated[
        list[Path] | None,
        typer.Option(
            exists=True,
            help="File or folder the model reads or imports at run time, shipped with it "
            "and put on its sys.path (repeatable).",
        ),
    ] = None,
    no_requirements: Annotated[
        bool,
        typer.Option(
            "--no-requirements",
            help="With --mlflow: do not install the model's requirements.txt.",
        ),
    ] = False,
    replicas: Annotated[int, typer.Option(min=0, help="Number of replicas to start.")] = 1,
    batch_size: Annotated[
        int, typer.Option(help="Maximum batch size (-1: the server's default).")
    ] = -1,
    label: Annotated[
        list[str] | None, typer.Option(help="Label of the model (repeatable).")
    ] = None,
    pkg: Annotated[
        list[str] | None,
        typer.Option(help="pip requirement installed for the model (repeatable; slow)."),
    ] = None,
    exist_ok: ExistOk = False,
    keep_current: Annotated[
        bool,
        typer.Option(
            "--keep-current",
            help="Keep the model's current version serving: deploy this one beside it, "
            "to roll out (clipper rollout start) or switch to later.",
        ),
    ] = False,
    no_wait: NoWait = False,
    timeout: WaitTimeout = 300.0,
) -> None:
    if sum(x is not None for x in (python_file, pickle_file, mlflow_dir)) != 1:
        raise typer.BadParameter(
            "give one of --python-file (with --function), --pickle or --mlflow"
        )
    if input_type is None and mlflow_dir is None:
        raise typer.BadParameter("--input-type is required (but with --mlflow)")
    if no_requirements and mlflow_dir is None:
        raise typer.BadParameter("--no-requirements goes with --mlflow")
    if code_path and pickle_file is not None:
        raise typer.BadParameter("--code-path goes with --python-file or --mlflow")
    if python_file is not None and not function:
        raise typer.BadParameter("--python-file needs --function NAME")
    if pickle_file is not None and function:
        raise typer.BadParameter("--function goes with --python-file, not --pickle")
    if keep_current and mlflow_dir is not None:
        raise typer.BadParameter("--keep-current goes with --python-file or --pickle")
    labels, pkgs = list(label or []), list(pkg or [])
    conn = target(ctx).connect()
    with err_console.status(f"Deploying {name}:{version}…"):
        if mlflow_dir is not None:
            from ..deployers.mlflow import deploy_mlflow_model

            input_type = deploy_mlflow_model(
                conn,
                name,
                version,
                mlflow_dir,
                input_type=input_type,
                install_requirements=not no_requirements,
                labels=labels,
                batch_size=batch_size,
                num_replicas=replicas,
                pkgs_to_install=pkgs,
                code_paths=code_path,
                exist_ok=exist_ok,
                wait=False,
            )
        elif python_file is not None:
            from ..deployers.python import deploy_python_closure

            assert function is not None and input_type is not None
            deploy_python_closure(
                conn,
                name,
                version,
                input_type,
                load_function(python_file, function),
                labels=labels,
                batch_size=batch_size,
                num_replicas=replicas,
                pkgs_to_install=pkgs,
                code_paths=code_path,
                exist_ok=exist_ok,
                wait=False,
                make_current=not keep_current,
            )
        else:
            assert pickle_file is not None and input_type is not None
            conn.deploy_model(
                name,
                version,
                input_type,
                read_pickle(pickle_file),
                labels=labels,
                num_replicas=replicas,
                batch_size=batch_size,
                pkgs_to_install=pkgs,
                exist_ok=exist_ok,
                wait=False,
                make_current=not keep_current,
            )
    typer.echo(
        f"Deployed model {name}:{version} (input type {input_type}; "
        f"{replicas} replica(s) requested)."
    )
    if not no_wait:
        wait_live(conn, name, version, timeout)


@app.command("set-version", help="Make VERSION the version of MODEL that serves queries.")
def set_version(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version to serve.")],
    no_wait: NoWait = False,
    timeout: WaitTimeout = 300.0,
) -> None:
    conn = target(ctx).connect()
    conn.set_model_version(model, version, wait=False)
    typer.echo(f"Model '{model}' now serves version {version}.")
    if not no_wait:
        wait_live(conn, model, version, timeout)


@app.command(help="Set the number of replicas of a model version (default: the current one).")
def scale(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    count: Annotated[int, typer.Argument(metavar="N", min=0, help="Number of replicas.")],
    version: Annotated[
        str | None, typer.Option(help="Model version (default: the current one).")
    ] = None,
    no_wait: NoWait = False,
    timeout: WaitTimeout = 300.0,
) -> None:
    conn = target(ctx).connect()
    version = version or conn.get_current_model_version(model)
    conn.set_num_replicas(model, count, version, wait=False)
    typer.echo(f"Model {model}:{version} scaled to {count} replica(s).")
    if not no_wait and count > 0:
        wait_live(conn, model, version, timeout)


# -- rollouts ----------------------------------------------------------------------------

rollout_app = typer.Typer(
    help="Roll a new model version out safely: shadow, canary or bandit-judged "
    "(`clipper rollouts` lists them).",
    no_args_is_help=True,
)
app.add_typer(rollout_app, name="rollout")


def _parse_limits(pairs: list[str]) -> dict[str, float]:
    """``--limit key=value`` options as a dict (the server checks keys and ranges)."""
    limits: dict[str, float] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            limits[key.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(
                f"--limit takes KEY=NUMBER (confidence=0.95), got {pair!r}"
            ) from None
    return limits


def _parse_steps(steps: list[str]) -> list[tuple[float, float]]:
    """``--step SECONDS:FRACTION`` options as pairs (the server checks the order)."""
    out = []
    for step in steps:
        seconds, sep, fraction = step.partition(":")
        try:
            if not sep:
                raise ValueError
            out.append((float(seconds), float(fraction)))
        except ValueError:
            raise typer.BadParameter(
                f"--step takes SECONDS:FRACTION (600:0.25), got {step!r}"
            ) from None
    return out


@rollout_app.command(
    "start",
    help="Start rolling VERSION of MODEL out against its current version, or change the "
    "rollout running for that version. shadow: a copy of the queries goes to VERSION and its "
    "answers are compared, never returned; canary: VERSION answers --fraction of the queries "
    "(0.05), raised by --step on a schedule; bandit: the app's feedback judges both versions "
    "and the rollout promotes or rolls back by itself within --limit.",
)
def rollout_start(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="The new version (deployed already).")],
    mode: Annotated[str, typer.Option(help="shadow, canary or bandit.")],
    fraction: Annotated[
        float | None,
        typer.Option(
            help="Share of queries for the new version (shadow: share copied; default 1; "
            "canary and bandit: default 0.05)."
        ),
    ] = None,
    limit: Annotated[
        list[str] | None,
        typer.Option(
            help="bandit: KEY=NUMBER, one of confidence, max_error_rate, max_slo_miss_rate, "
            "max_loss_increase, min_feedback (repeatable)."
        ),
    ] = None,
    step: Annotated[
        list[str] | None,
        typer.Option(
            help="canary: SECONDS:FRACTION, the share from that many seconds after the "
            "start (repeatable, seconds rising)."
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    limits = _parse_limits(limit) if limit else None
    steps = _parse_steps(step) if step else None
    conn = target(ctx).connect()
    rollout = conn.start_rollout(model, version, mode, fraction, limits=limits, steps=steps)
    if as_json:
        print_json(rollout)
        return
    share = rollout.get("fraction")
    typer.echo(
        f"Rolling out {model}:{version} ({rollout.get('mode')}, fraction {share:g}) "
        f"against version {rollout.get('base_version')}."
    )
    if rollout.get("warning"):
        typer.echo(f"warning: {rollout['warning']}", err=True)


@rollout_app.command(
    "stop",
    help="End MODEL's rollout: the current version stays, or with --promote the new "
    "version becomes the current one.",
)
def rollout_stop(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    promote: Annotated[
        bool, typer.Option("--promote", help="Make the new version the current one.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    ended = target(ctx).connect().stop_rollout(model, promote=promote)
    if as_json:
        print_json(ended)
        return
    verb = "promoted" if ended.get("promoted") else "stopped"
    typer.echo(
        f"Rollout of {model}:{ended.get('new_version')} {verb}; "
        f"model '{model}' serves version {ended.get('current_version')}."
    )


@app.command(
    help="List the rollouts running: mode, versions, the new version's share, age, "
    "schedule or limits (--json adds the live figures)."
)
def rollouts(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    import time

    found = target(ctx).connect().get_rollouts()
    now = time.time()
    _show(found, as_json, "No rollouts running.", lambda: rollouts_table(found, now))
