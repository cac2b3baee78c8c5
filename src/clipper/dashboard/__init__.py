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

from ..http.server import Request, Response, json_error
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


class Dashboard:
    """Handler of ``/dashboard`` and below (the management frontend checks access
    first); samples the metrics once a second."""

    def __init__(self, metrics: Metrics, catalog: Catalog | None = None) -> None:
        self.series = SeriesRecorder(metrics, catalog)
        self.assets = _load_assets()

    def handle(self, request: Request) -> Response:
        path = request.path
        if request.method not in ("GET", "HEAD"):
            return json_error(path, 405, "method not allowed", "the dashboard is read-only: GET")
        if path in ("/dashboard", "/dashboard/"):
            return self._asset(request, "index.html")
        if path == "/dashboard/api/summary":
            return self._summary(request)
        if path.startswith("/dashboard/static/") and path[18:] in self.assets:
            return self._asset(request, path[18:])
        return json_error(path, 404, "not found", f"no dashboard resource {path}")

    def _asset(self, request: Request, name: str) -> Response:
        asset = self.assets[name]
        headers = [
            (b"cache-control", asset.cache_control),
            (b"etag", asset.etag),
            (b"x-content-type-options", b"nosniff"),
            (b"vary", b"accept-encoding"),
        ]
        if name.endswith(".html"):
            headers.append((b"content-security-policy", _CSP))
        if asset.etag in (request.header(b"if-none-match") or b""):
            return Response(304, b"", asset.content_type, tuple(headers))
        body = asset.body
        if asset.gzipped is not None and b"gzip" in (request.header(b"accept-encoding") or b""):
            body = asset.gzipped
            headers.append((b"content-encoding", b"gzip"))
        return Response(200, body, asset.content_type, tuple(headers))

    def _summary(self, request: Request) -> Response:
        query = parse_qs(request.query.decode("latin-1"))
        since: float | None = None
        if "since" in query:
            try:
                since = float(query["since"][0])
            except ValueError:
                return json_error(request.path, 400, "invalid request", "since must be a number")
        body = orjson.dumps(self.series.summary(since))
        headers = [(b"cache-control", b"no-store")]
        # The first poll carries the whole history (up to ~100 KB per app): compress it.
        if len(body) > 16_384 and b"gzip" in (request.header(b"accept-encoding") or b""):
            body = gzip.compress(body, compresslevel=1)
            headers.append((b"content-encoding", b"gzip"))
        return Response(200, body, headers=tuple(headers))
