"""``clipper start``, ``stop``, ``status`` and ``token``: the server's lifecycle."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ..address import default_state_dir
from ..statedir import ADMIN_TOKEN_FILE, RPC_SECRET_FILE, pid_alive, read_secret, read_server_record
from .base import app, console, err_console, fail, print_json, target
from .parsing import split_server_args
from .render import status_summary, status_table


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    help="Run a Clipper server in the foreground (Ctrl-C stops it and its replicas), "
    "or in the background with --detach. Every option of `python -m clipper.server "
    "--help` is accepted after the command, e.g. --demo, --query-port, --log-level.",
)
def start(
    ctx: typer.Context,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach", "-d", help="Start the server in the background, wait until it answers."
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="With --detach: seconds to wait for the server to answer.")
    ] = 60.0,
) -> None:
    overrides, rest = split_server_args(list(ctx.args))
    where = target(ctx).replace(**overrides)
    manager = where.manager(extra_args=rest)
    if not detach:
        from ..server import main as server_main

        raise typer.Exit(server_main(manager.server_args()))

    from ..admin import ClipperConnection

    conn = ClipperConnection(manager)
    with err_console.status("Starting Clipper…"):
        conn.start_clipper(timeout=timeout)
    record = read_server_record(manager.state_path) or {}
    pid = record.get("pid", "?")
    typer.echo(f"Clipper is running in the background (pid {pid}).")
    typer.echo(f"  queries:    http://{where.host}:{where.query_port}/<app>/predict")
    typer.echo(f"  management: http://{where.host}:{where.management_port}/admin/")
    token = manager.resolve_admin_token()
    if token:
        dashboard = f"http://{where.host}:{where.management_port}/dashboard?token={token}"
        typer.echo(f"  dashboard:  {dashboard}")
    typer.echo(f"  RPC port:   {where.rpc_port}")
    typer.echo(f"  state:      {manager.state_path}")
    typer.echo(f"  log:        {manager.state_path / 'logs' / 'server.log'}")
    typer.echo("Stop it with `clipper stop` (with the same --state-dir).")


@app.command(help="Stop the Clipper server recorded in the state folder, and its replicas.")
def stop(
    ctx: typer.Context,
    state_dir: Annotated[
        Path | None,
        typer.Option(file_okay=False, help="State folder (overrides the global --state-dir)."),
    ] = None,
    management_port: Annotated[
        int | None, typer.Option(help="Management port (overrides the global option).")
    ] = None,
) -> None:
    where = target(ctx)
    if state_dir is not None:
        where = where.replace(state_dir=state_dir)
    if management_port is not None:
        where = where.replace(management_port=management_port)
    conn = where.connection()
    state = conn.cm.state_path
    record = read_server_record(state)
    pid = record.get("pid") if record else None
    if not isinstance(pid, int) or not pid_alive(pid):
        typer.echo(f"No running Clipper server is recorded in {state}.")
        return
    with err_console.status(f"Stopping Clipper (pid {pid})…"):
        conn.stop_all()
    typer.echo(f"Clipper stopped (pid {pid}).")


@app.command(help="Show whether the server answers, its pid, uptime, ports and what it serves.")
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print raw JSON instead.")] = False,
) -> None:
    where = target(ctx)
    conn = where.connect()
    info = conn.inspect_instance()
    summary = status_summary(
        info, where.host, conn.get_all_apps(), conn.get_all_models(verbose=True)
    )
    if as_json:
        print_json({**summary, "status": info})
    else:
        console.print(status_table(summary))


@app.command(
    help="Print the admin token of the server whose state folder this is (the management "
    "API and the dashboard need it), or with --rpc the secret replicas register with "
    "(for containers started by hand: CLIPPER_RPC_SECRET). Run it as the user who "
    "started the server, with the same CLIPPER_HOME / --state-dir."
)
def token(
    ctx: typer.Context,
    rpc: Annotated[
        bool, typer.Option("--rpc", help="Print the RPC secret instead of the admin token.")
    ] = False,
) -> None:
    where = target(ctx)
    state = where.state_dir or default_state_dir()
    if rpc:
        value = os.environ.get("CLIPPER_RPC_SECRET") or read_secret(state, RPC_SECRET_FILE)
        what = f"CLIPPER_RPC_SECRET or {state / RPC_SECRET_FILE}"
    else:
        value = where.admin_token or read_secret(state, ADMIN_TOKEN_FILE)
        what = f"--admin-token, CLIPPER_ADMIN_TOKEN or {state / ADMIN_TOKEN_FILE}"
    if not value:
        fail(
            f"no {'RPC secret' if rpc else 'admin token'} found (looked in {what}); a server "
            "makes one at its first start: start it, or point --state-dir / CLIPPER_HOME "
            "at its state folder"
        )
    typer.echo(value)


# What `clipper reset` deletes in a state folder: the SQLite store (with its
# journal files), the model artifacts and the uploads in progress. Kept: the
# admin token and RPC secret (clients and containers keep working), the logs
# and the per-model environments (a cache keyed by requirements).
STORE_FILES = ("clipper.db", "clipper.db-wal", "clipper.db-shm", "clipper.db-journal")
STATE_DIRS = ("models", "uploads")


@app.command(
    help="Delete the state of a local Clipper server: every app, model, link and "
    "replica (the SQLite store and the model artifacts in the state folder). A running "
    "server is stopped first (start it again with `clipper start`). The admin token, "
    "the RPC secret and the logs are kept. Asks first; --yes skips the question."
)
def reset(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    state_dir: Annotated[
        Path | None,
        typer.Option(file_okay=False, help="State folder (overrides the global --state-dir)."),
    ] = None,
) -> None:
    import shutil
    import sys

    from ..statedir import is_clipper_server

    where = target(ctx)
    if state_dir is not None:
        where = where.replace(state_dir=state_dir)
    state = where.state_dir or default_state_dir()
    record = read_server_record(state) or {}
    pid = record.get("pid")
    running = isinstance(pid, int) and pid_alive(pid) and is_clipper_server(pid)
    conn = None
    if running:
        # Ask the server where its state is: only a SQLite store in this folder
        # is ours to delete (a Redis store is shared with other frontends).
        host = str(record.get("host") or where.host)
        conn = where.replace(
            host=where.host if host in ("0.0.0.0", "::", "") else host,
            management_port=int(record.get("management_port") or where.management_port),
        ).connection()
        try:
            conn.connect()
            store = str(conn.inspect_instance().get("store", ""))
        except Exception as exc:  # any failure: refuse, and change nothing
            fail(
                f"cannot ask the running server (pid {pid}) which store it uses ({exc}); "
                "stop it with `clipper stop`, then run `clipper reset` again"
            )
        if not _is_own_sqlite_store(store, state):
            fail(
                f"the server (pid {pid}) keeps its state in {store}, not in {state}: "
                "`clipper reset` clears only a local SQLite store"
            )
    doomed = [state / name for name in STORE_FILES if (state / name).exists()]
    doomed += [state / name for name in STATE_DIRS if (state / name).exists()]
    if not doomed and not running:
        typer.echo(f"Nothing to reset in {state}.")
        return
    models_dir = state / "models"
    artifacts = len(list(models_dir.glob("*/*"))) if models_dir.is_dir() else 0
    plan = (
        f"This deletes every application, model, link and replica of the Clipper server "
        f"in {state}: its store and {artifacts} model artifact(s)."
    )
    if running:
        plan += f" The running server (pid {pid}) and its replicas are stopped first."
    plan += " The admin token, the RPC secret and the logs are kept."
    if not yes:
        if not sys.stdin.isatty():
            fail(f"{plan}\nrefusing to reset without confirmation: pass --yes")
        typer.echo(plan)
        if not typer.confirm("Reset?", default=False):
            typer.echo("Nothing changed.")
            raise typer.Exit(1)
    if running:
        assert conn is not None and isinstance(pid, int)
        with err_console.status(f"Stopping Clipper (pid {pid})…"):
            conn.stop_all()
        if pid_alive(pid):
            fail(f"the server (pid {pid}) did not stop; nothing was deleted")
    for path in doomed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    typer.echo(f"Reset {state}: no apps, models or links any more.")
    if running:
        typer.echo(f"The server (pid {pid}) was stopped; start it again with `clipper start`.")


def _is_own_sqlite_store(store: str, state: Path) -> bool:
    """Whether a server's store URL is the SQLite file in ``state`` (the default)."""
    if not store.startswith("sqlite:///"):
        return False
    try:
        return Path(store[len("sqlite:///") :]).resolve() == (state / "clipper.db").resolve()
    except (OSError, ValueError):
        return False
