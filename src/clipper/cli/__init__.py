"""The ``clipper`` command: start/stop a server, and drive one through its management API.

Commands live in ``server_cmds`` (start, stop, status), ``admin_cmds`` (apps,
models, links, deploys, replicas) and ``query_cmds`` (query, logs); the
global options (where the server is) in ``base``; pure helpers in
``parsing`` and ``render``. Importing this package builds the command line
without the admin client, httpx, numpy or the server: each command imports
what it needs when it runs, so ``clipper --help`` starts fast.
"""

from __future__ import annotations

import sys
import types

import typer

from ..exceptions import ClipperError
from . import admin_cmds, query_cmds, server_cmds
from .base import CliError, app

__all__ = ["admin_cmds", "app", "main", "query_cmds", "server_cmds"]


def _is_http_error(exc: BaseException) -> bool:
    """An httpx error (a connection refused, a timeout...), without importing httpx:
    if it was never imported, nothing raised one."""
    httpx = sys.modules.get("httpx")
    return httpx is not None and isinstance(exc, httpx.HTTPError)


def _without_httpx_cli() -> None:
    """Importing httpx imports its own command-line tool too (``httpx._main``: click,
    pygments, rich.progress, rich.syntax) whenever those are installed: 40-90 ms of
    every client command, for a tool we never run. An empty stand-in makes that
    import fail, which httpx expects (it then defines a ``main`` that says so)."""
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", types.ModuleType("httpx._main"))


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``clipper`` and ``python -m clipper``: errors are one line, no traceback."""
    _without_httpx_cli()
    try:
        app(args=argv, prog_name="clipper")
    except (ClipperError, CliError) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:
        if not _is_http_error(exc):
            raise
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
