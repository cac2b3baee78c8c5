"""``clipper query`` (the query frontend) and ``clipper logs``."""

from __future__ import annotations

import sys
import time
from typing import Annotated
from urllib.parse import quote

import typer

from .base import Target, app, fail, target
from .parsing import build_query_body, error_line, new_log_lines, parse_query_input

# How many lines ``logs --follow`` fetches per poll to find the new ones.
FOLLOW_WINDOW = 500


@app.command(
    help="Send one query to APP (POST /APP/predict) and print the JSON answer; "
    "exit status 1 unless the server answers 200."
)
def query(
    ctx: typer.Context,
    app_name: Annotated[str, typer.Argument(metavar="APP", help="Application name.")],
    input_json: Annotated[
        str | None,
        typer.Argument(
            metavar="[INPUT_JSON]",
            help="The input as JSON, e.g. '[1, 2]' or '\"hello\"'; for an app that takes "
            "strings, plain text too (hello); '-' or none: stdin.",
        ),
    ] = None,
    batch: Annotated[
        bool, typer.Option("--batch", help="INPUT_JSON is an array of inputs (input_batch).")
    ] = False,
    version: Annotated[
        str | None, typer.Option(help="Pin the model version (apps with one linked model).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 30.0,
) -> None:
    import httpx

    where = target(ctx)
    text = sys.stdin.read() if input_json in (None, "-") else input_json
    assert text is not None
    value = parse_query_input(text, lambda: _input_type(where, app_name), batch=batch)
    body = build_query_body(value, batch=batch, version=version)
    url = f"{where.query_url}/{quote(app_name, safe='')}/predict"
    try:
        r = httpx.post(url, json=body, timeout=timeout, verify=where.http_verify())
    except httpx.HTTPError as exc:
        fail(f"cannot reach {url}: {exc}")
    if r.status_code != 200:
        fail(error_line(r.status_code, r.text))
    typer.echo(r.text.strip())


def _input_type(where: Target, app_name: str) -> str | None:
    """The app's input type, from the management API; None if it cannot say (no
    token for it, no such app, no server): the query itself will tell."""
    try:
        info = where.connect().get_app_info(app_name)
    except Exception:  # any failure: only a hint depends on it
        return None
    itype = info.get("input_type") if info else None
    return itype if isinstance(itype, str) else None


@app.command(
    help="Print the last lines of the server's log, of one replica's, or of one "
    "frontend worker process's (--workers)."
)
def logs(
    ctx: typer.Context,
    lines: Annotated[int, typer.Option("--lines", "-n", min=1, help="How many lines.")] = 100,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until Ctrl-C.")
    ] = False,
    replica: Annotated[
        str | None, typer.Option(help="Replica label (see `clipper replicas`).")
    ] = None,
    interval: Annotated[
        float, typer.Option(min=0.1, help="With --follow: seconds between polls.")
    ] = 1.0,
    worker: Annotated[
        int | None,
        typer.Option(
            min=0, help="A frontend worker's index (see `clipper status`); 0: the server's log."
        ),
    ] = None,
) -> None:
    if replica is not None and worker:
        fail("give --replica or --worker, not both")
    conn = target(ctx).connect()
    window = max(lines, FOLLOW_WINDOW) if follow else lines
    seen = conn.get_clipper_logs(window, replica, worker)
    for line in seen[-lines:]:
        typer.echo(line)
    if not follow:
        return
    try:
        while True:
            time.sleep(interval)
            current = conn.get_clipper_logs(window, replica, worker)
            for line in new_log_lines(seen, current):
                typer.echo(line)
            seen = current
    except KeyboardInterrupt:
        return
