"""The Typer application, its global options and the helpers every command shares."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, cast

import typer

from .. import __version__
from ..address import (
    DEFAULT_HOST,
    DEFAULT_MANAGEMENT_PORT,
    DEFAULT_QUERY_PORT,
    DEFAULT_RPC_PORT,
    ServerAddress,
)

# Building the command line imports only typer, rich and these light modules:
# ``clipper --help`` must start fast. The admin client (httpx), the deployers,
# numpy and the server are imported inside the commands that use them
# (tests/cli/test_cli_polish.py checks the import graph).
if TYPE_CHECKING:
    import ssl

    from rich.console import Console

    from ..admin import ClipperConnection, LocalContainerManager

app = typer.Typer(
    help="Clipper: a low-latency prediction serving system. Every command but `start` "
    "talks to the server's management API, so it works against a remote server too.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain (click) help and errors: typer's Rich formatting costs ~90 ms of imports
    # on every `--help`, a third of the start-up budget (issue #23).
    rich_markup_mode=None,
)


class _LazyConsole:
    """A Rich console made on first use: importing Rich costs ~30-50 ms, which the
    commands that print no table or spinner (``token``, ``query``, ``logs``...) skip."""

    def __init__(self, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle... ask for these before __init__ ran
            raise AttributeError(name)
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr)
        return getattr(self._console, name)


console = cast("Console", _LazyConsole())
err_console = cast("Console", _LazyConsole(stderr=True))


class CliError(Exception):
    """A failure the CLI reports as one ``error: ...`` line and exit status 1."""


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with status 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@dataclass
class Target:
    """Where the Clipper server is: the global options of the command line."""

    host: str = DEFAULT_HOST
    management_port: int = DEFAULT_MANAGEMENT_PORT
    query_port: int = DEFAULT_QUERY_PORT
    rpc_port: int = DEFAULT_RPC_PORT
    state_dir: Path | None = None
    admin_token: str | None = None
    tls_ca: Path | None = None

    def manager(self, extra_args: list[str] | None = None) -> LocalContainerManager:
        from ..admin import LocalContainerManager

        return LocalContainerManager(
            clipper_query_port=self.query_port,
            clipper_management_port=self.management_port,
            clipper_rpc_port=self.rpc_port,
            state_dir=self.state_dir,
            host=self.host,
            server_flags=list(extra_args or []),
            admin_token=self.admin_token,
            # A CA file means the server speaks TLS: verify it against that CA.
            tls_certfile=str(self.tls_ca) if self.tls_ca else None,
            tls_verify=str(self.tls_ca) if self.tls_ca else True,
        )

    def connection(self) -> ClipperConnection:
        """A connection object, not yet connected (``start``/``stop`` use it as is)."""
        from ..admin import ClipperConnection

        return ClipperConnection(self.manager())

    def connect(self) -> ClipperConnection:
        """A connection to the running server; raises ClipperException if none answers."""
        conn = self.connection()
        conn.progress_console = err_console  # upload bars nest under the CLI's status line
        conn.connect()
        return conn

    @property
    def address(self) -> ServerAddress:
        return ServerAddress(
            self.host,
            self.query_port,
            self.management_port,
            self.rpc_port,
            self.state_dir,
            tls=self.tls_ca is not None,
        )

    @property
    def query_url(self) -> str:
        return self.address.query_url

    def http_verify(self) -> bool | ssl.SSLContext:
        """How to check the server's certificate: against ``--tls-ca`` when given.
        Without it the server speaks plain http: no certificate, so no CA bundle to
        load (httpx would load one per request, ~20 ms)."""
        if not self.tls_ca:
            return False
        import ssl

        return ssl.create_default_context(cafile=str(self.tls_ca))

    def replace(self, **changes: Any) -> Target:
        return dataclasses.replace(self, **changes)


def target(ctx: typer.Context) -> Target:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Target) else Target()


def print_json(value: Any) -> None:
    """Raw JSON on stdout (``--json``), for scripts and ``jq``."""
    typer.echo(json.dumps(value, indent=2, sort_keys=False))


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"clipper {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    host: Annotated[
        str,
        typer.Option(envvar="CLIPPER_HOST", help="Address of the Clipper server (start: bind it)."),
    ] = DEFAULT_HOST,
    management_port: Annotated[
        int,
        typer.Option(envvar="CLIPPER_MANAGEMENT_PORT", help="Port of the management API."),
    ] = DEFAULT_MANAGEMENT_PORT,
    query_port: Annotated[
        int, typer.Option(envvar="CLIPPER_QUERY_PORT", help="Port of the query frontend.")
    ] = DEFAULT_QUERY_PORT,
    rpc_port: Annotated[
        int,
        typer.Option(envvar="CLIPPER_RPC_PORT", help="RPC port for model containers (start only)."),
    ] = DEFAULT_RPC_PORT,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            envvar=["CLIPPER_STATE_DIR", "CLIPPER_HOME"],
            file_okay=False,
            help="State folder: store, models, logs, server record (default: ~/.clipper).",
        ),
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option(
            "--admin-token",
            "--token",
            envvar="CLIPPER_ADMIN_TOKEN",
            help="Token of the management API (prefer the env variable). Default: the one "
            "the server keeps in its state folder (`clipper token` prints it).",
        ),
    ] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(
            envvar="CLIPPER_TLS_CA",
            dir_okay=False,
            help="CA certificate of a server that speaks TLS (https); verifies it.",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Clipper: a low-latency prediction serving system."""
    ctx.obj = Target(
        host, management_port, query_port, rpc_port, state_dir, admin_token or None, tls_ca
    )
