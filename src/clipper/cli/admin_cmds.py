"""Commands on apps, models, links and replicas, through the management API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .base import app, console, err_console, print_json, target
from .parsing import load_function, parse_shape, read_pickle
from .render import apps_table, models_table, replicas_table

JsonFlag = Annotated[bool, typer.Option("--json", help="Print raw JSON instead of a table.")]


def _show(found: list[Any], as_json: bool, none: str, table: Callable[[], Table]) -> None:
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

    def table() -> Table:
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
) -> None:
    conn = target(ctx).connect()
    shape = parse_shape(input_shape) if input_shape is not None else None
    conn.register_application(name, input_type, default_output, slo_micros, input_shape=shape)
    typer.echo(f"Registered application '{name}'.")


@app.command(help="Remove an application and its REST endpoint.")
def unregister(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Application name.")]
) -> None:
    target(ctx).connect().unregister_application(name)
    typer.echo(f"Unregistered application '{name}'.")


@app.command(help="Link a model to an application (the app then queries it).")
def link(
    ctx: typer.Context,
    app_name: Annotated[str, typer.Argument(metavar="APP", help="Application name.")],
    model: Annotated[str, typer.Argument(help="Model name.")],
) -> None:
    target(ctx).connect().link_model_to_app(app_name, model)
    typer.echo(f"Linked model '{model}' to application '{app_name}'.")


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
    "--python-file FILE --function NAME (the file is shipped by value), or --pickle FILE "
    "(a cloudpickled function or object with predict)."
)
def deploy(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Model version.")],
    input_type: Annotated[
        str, typer.Option(help="integers, floats, doubles, bytes, strings or json.")
    ],
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
) -> None:
    if (python_file is None) == (pickle_file is None):
        raise typer.BadParameter("give either --python-file (with --function) or --pickle")
    if python_file is not None and not function:
        raise typer.BadParameter("--python-file needs --function NAME")
    if pickle_file is not None and function:
        raise typer.BadParameter("--function goes with --python-file, not --pickle")
    labels, pkgs = list(label or []), list(pkg or [])
    conn = target(ctx).connect()
    with err_console.status(f"Deploying {name}:{version}…"):
        if python_file is not None:
            from ..deployers.python import deploy_python_closure

            assert function is not None
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
            )
        else:
            assert pickle_file is not None
            conn.deploy_model(
                name,
                version,
                input_type,
                read_pickle(pickle_file),
                labels=labels,
                num_replicas=replicas,
                batch_size=batch_size,
                pkgs_to_install=pkgs,
            )
    typer.echo(f"Deployed model {name}:{version} ({replicas} replica(s) requested).")


@app.command("set-version", help="Make VERSION the version of MODEL that serves queries.")
def set_version(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version to serve.")],
) -> None:
    target(ctx).connect().set_model_version(model, version)
    typer.echo(f"Model '{model}' now serves version {version}.")


@app.command(help="Set the number of replicas of a model version (default: the current one).")
def scale(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    count: Annotated[int, typer.Argument(metavar="N", min=0, help="Number of replicas.")],
    version: Annotated[
        str | None, typer.Option(help="Model version (default: the current one).")
    ] = None,
) -> None:
    conn = target(ctx).connect()
    version = version or conn.get_current_model_version(model)
    conn.set_num_replicas(model, count, version)
    typer.echo(f"Model {model}:{version} scaled to {count} replica(s).")
