"""The ``clipper`` command."""

from __future__ import annotations

import sys

import typer

from ..admin import ClipperConnection, ClipperException, LocalContainerManager

app = typer.Typer(
    help="Clipper: a low-latency prediction serving system.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    help="Run a Clipper server in the foreground (Ctrl-C stops it and its replicas). "
    "Every option of `python -m clipper.server --help` is accepted, e.g. --demo, "
    "--query-port, --state-dir.",
)
def start(ctx: typer.Context) -> None:
    from ..server import main as server_main

    raise typer.Exit(server_main(list(ctx.args)))


@app.command(help="Stop the Clipper server recorded in the state folder, and its replicas.")
def stop(
    state_dir: str = typer.Option(None, help="state folder (default $CLIPPER_HOME or ~/.clipper)"),
    management_port: int = typer.Option(1338, help="management port of the server"),
) -> None:
    conn = ClipperConnection(
        LocalContainerManager(clipper_management_port=management_port, state_dir=state_dir)
    )
    conn.stop_all()
    typer.echo("Clipper stopped.")


def main() -> None:
    try:
        app()
    except ClipperException as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
