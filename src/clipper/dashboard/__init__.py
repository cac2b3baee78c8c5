"""The dashboard: a live web page on the management port, at ``/dashboard``.

Routes (GET or HEAD):

- ``/dashboard``: the page (``static/index.html``), which polls the summary
  once a second and draws live charts with uPlot (shipped in ``static/``,
  MIT licensed: no CDN, the page works offline).
- ``/dashboard/static/<file>``: the page's scripts and styles, with their
  content type, an ETag (``If-None-Match`` answers 304) and gzip when asked.
- ``/dashboard/api/summary[?since=<t>]``: aggregates only (apps, models,
  replicas and the per-second samples newer than ``t``); see ``series.py``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
from dataclasses import dataclass
from urllib.parse import parse_qs

import orjson

from ..frontend.http import Receive, Scope, Send, send_bytes, send_error
from ..metrics import Metrics
from ..store.catalog import Catalog
from .series import SeriesRecorder

__all__ = ["Dashboard", "SeriesRecorder"]

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# The vendored chart library changes only with the package: let browsers keep it
# a day. Our own files are revalidated on every load (a 304 while unchanged).
_VENDOR_PREFIX = "uPlot"
_CSP = (
    b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True)
class _Asset:
    body: bytes
    gzipped: bytes | None
    content_type: bytes
    etag: bytes
    cache_control: bytes


def _load_assets() -> dict[str, _Asset]:
    assets = {}
    for entry in importlib.resources.files(__name__).joinpath("static").iterdir():
        if not entry.is_file():
            continue
        body = entry.read_bytes()
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        vendor = entry.name.startswith(_VENDOR_PREFIX)
        assets[entry.name] = _Asset(
            body=body,
            gzipped=gzip.compress(body, mtime=0) if len(body) > 1024 else None,
            content_type=_TYPES.get(suffix, "text/plain; charset=utf-8").encode(),
            etag=b'"' + hashlib.sha256(body).hexdigest()[:20].encode() + b'"',
            cache_control=b"public, max-age=86400" if vendor else b"no-cache",
        )
    return assets


def _header(scope: Scope, name: bytes) -> bytes:
    return next((v for k, v in scope["headers"] if k == name), b"")


class Dashboard:
    """ASGI app for ``/dashboard`` and below; samples the metrics once a second."""

    def __init__(self, metrics: Metrics, catalog: Catalog | None = None) -> None:
        self.series = SeriesRecorder(metrics, catalog)
        self.assets = _load_assets()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            await send_error(send, 405, "method not allowed", "the dashboard is read-only: GET")
            return
        if path in ("/dashboard", "/dashboard/"):
            await self._asset(scope, send, "index.html")
        elif path == "/dashboard/api/summary":
            await self._summary(scope, send)
        elif path.startswith("/dashboard/static/") and path[18:] in self.assets:
            await self._asset(scope, send, path[18:])
        else:
            await send_error(send, 404, "not found", f"no dashboard resource {path}")

    async def _asset(self, scope: Scope, send: Send, name: str) -> None:
        asset = self.assets[name]
        headers = [
            (b"content-type", asset.content_type),
            (b"cache-control", asset.cache_control),
            (b"etag", asset.etag),
            (b"x-content-type-options", b"nosniff"),
            (b"vary", b"accept-encoding"),
        ]
        if name.endswith(".html"):
            headers.append((b"content-security-policy", _CSP))
        if asset.etag in _header(scope, b"if-none-match"):
            await send_bytes(send, 304, b"", headers)
            return
        body = asset.body
        if asset.gzipped is not None and b"gzip" in _header(scope, b"accept-encoding"):
            body = asset.gzipped
            headers.append((b"content-encoding", b"gzip"))
        await send_bytes(send, 200, body if scope["method"] == "GET" else b"", headers)

    async def _summary(self, scope: Scope, send: Send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        since: float | None = None
        if "since" in query:
            try:
                since = float(query["since"][0])
            except ValueError:
                await send_error(send, 400, "invalid request", "since must be a number")
                return
        body = orjson.dumps(self.series.summary(since))
        headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
        # The first poll carries the whole history (up to ~100 KB per app): compress it.
        if len(body) > 16_384 and b"gzip" in _header(scope, b"accept-encoding"):
            body = gzip.compress(body, compresslevel=1)
            headers.append((b"content-encoding", b"gzip"))
        await send_bytes(send, 200, body if scope["method"] == "GET" else b"", headers)
