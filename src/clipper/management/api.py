"""The management frontend: ``POST /admin/{route}`` with a JSON body, Clipper's routes.

Served by the same HTTP stack as the query port (:mod:`clipper.http`), with
the same limits, deadlines and errors.

Each route reads named fields from the body (unknown fields are an error, so
a typo never passes silently) and calls the management service. Failures are
400 ``{"error", "cause"}``, as in Clipper.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson

from ..dashboard import Dashboard
from ..exceptions import ClipperError, NotFoundError, StoreError, ValidationError
from ..http.auth import Sessions, token_matches
from ..http.openapi import OPENAPI_PATH, serve
from ..http.server import Body, Request, Response, Stream, json_error, json_response
from ..settings import MAX_WORKERS
from .service import ManagementService
from .uploads import MIN_RATE, RATE_WINDOW_S, UploadError, parse_digest

log = logging.getLogger("clipper.management")

Handler = Callable[[ManagementService, "Fields"], Awaitable[Any]]
_MISSING = object()


class Fields:
    """Typed access to a request body's fields, with errors that name the field."""

    def __init__(self, route: str, body: dict[str, Any]) -> None:
        self.route = route
        self.body = body

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
        value = self.body.get(name, _MISSING)
        if value is _MISSING or (value is None and default is not _MISSING):
            if default is _MISSING:
                raise ValidationError(f"{self.route}: missing field '{name}'")
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise ValidationError(f"{self.route}: field '{name}' has the wrong type (boolean)")
        if not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise ValidationError(
                f"{self.route}: field '{name}' must be {names}, not {type(value).__name__}"
            )
        return value

    def check_unknown(self, allowed: tuple[str, ...]) -> None:
        """Refuse fields the route does not take, before anything changes."""
        unknown = sorted(set(self.body) - set(allowed))
        if unknown:
            raise ValidationError(
                f"{self.route}: unknown field(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(allowed) or 'none'}"
            )


def _decode_artifact(data: str | None) -> bytes | None:
    if data is None:
        return None
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationError(f"add_model: model_data is not valid base64: {exc}") from exc


async def _add_app(s: ManagementService, f: Fields) -> Any:
    await s.add_app(
        f.get("name", str),
        f.get("input_type", str),
        f.get("default_output", str),
        f.get("latency_slo_micros", int),
        f.get("input_shape", list, None),
        selection_policy=f.get("selection_policy", str, "single"),
        policy_params=f.get("policy_params", dict, {}),
        options=f.get("options", dict, {}),
        exist_ok=f.get("exist_ok", bool, False),
    )
    return {"success": True}


async def _set_policy(s: ManagementService, f: Fields) -> Any:
    await s.set_selection_policy(
        f.get("name", str), f.get("selection_policy", str), f.get("policy_params", dict, {})
    )
    return {"success": True}


async def _get_policy_state(s: ManagementService, f: Fields) -> Any:
    name = f.get("name", str)
    uid = f.get("uid", (str, int), "")
    if s.store.get_app(name) is None:
        raise ValidationError(f"application '{name}' does not exist")
    return s.store.get_policy_state(name, str(uid)) or {}


async def _set_app_options(s: ManagementService, f: Fields) -> Any:
    await s.set_app_options(f.get("name", str), f.get("options", dict))
    return {"success": True}


async def _set_model_options(s: ManagementService, f: Fields) -> Any:
    await s.set_model_options(
        f.get("model_name", str), f.get("model_version", str), f.get("options", dict)
    )
    return {"success": True}


async def _delete_app(s: ManagementService, f: Fields) -> Any:
    await s.delete_app(f.get("name", str))
    return {"success": True}


async def _add_model(s: ManagementService, f: Fields) -> Any:
    await s.add_model(
        f.get("model_name", str),
        f.get("model_version", str),
        f.get("input_type", str),
        labels=f.get("labels", list, []),
        container_name=f.get("container_name", str, "python-closure"),
        model_data_path=f.get("model_data_path", str, ""),
        batch_size=f.get("batch_size", int, -1),
        model_data=_decode_artifact(f.get("model_data", str, None)),
        num_replicas=f.get("num_replicas", int, 1),
        pkgs_to_install=f.get("pkgs_to_install", list, []),
        options=f.get("options", dict, {}),
        exist_ok=f.get("exist_ok", bool, False),
        artifact=f.get("artifact", str, None),
        make_current=f.get("make_current", bool, True),
    )
    return {"success": True}


async def _delete_version(s: ManagementService, f: Fields) -> Any:
    await s.delete_model_version(f.get("model_name", str), f.get("model_version", str))
    return {"success": True}


async def _add_links(s: ManagementService, f: Fields) -> Any:
    await s.add_links(
        f.get("app_name", str), f.get("model_names", list), exist_ok=f.get("exist_ok", bool, False)
    )
    return {"success": True}


async def _delete_links(s: ManagementService, f: Fields) -> Any:
    await s.remove_links(f.get("app_name", str), f.get("model_names", list))
    return {"success": True}


async def _set_version(s: ManagementService, f: Fields) -> Any:
    await s.set_model_version(f.get("model_name", str), f.get("model_version", str))
    return {"success": True}


async def _set_replicas(s: ManagementService, f: Fields) -> Any:
    await s.set_num_replicas(
        f.get("model_name", str), f.get("model_version", str), f.get("num_replicas", int)
    )
    return {"success": True}


async def _start_rollout(s: ManagementService, f: Fields) -> Any:
    return await s.start_rollout(
        f.get("model_name", str),
        f.get("model_version", str),
        f.get("mode", str),
        fraction=f.get("fraction", (int, float), None),
        limits=f.get("limits", dict, None),
        steps=f.get("steps", list, None),
    )


async def _stop_rollout(s: ManagementService, f: Fields) -> Any:
    return await s.stop_rollout(f.get("model_name", str), promote=f.get("promote", bool, False))


async def _get_rollouts(s: ManagementService, f: Fields) -> Any:
    return s.get_rollouts()


async def _get_replicas(s: ManagementService, f: Fields) -> Any:
    name, version = f.get("model_name", str), f.get("model_version", str)
    if s.store.get_model(name, version) is None:
        raise ValidationError(f"model '{name}' has no version '{version}'")
    return {"num_replicas": s.store.get_num_replicas(name, version)}


LOG_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,200}\Z")  # \Z: "$" accepts a final "\n"


def _tail(path: Path, lines: int) -> list[str]:
    # Logs rotate at 20 MiB: read at most the last 4 MiB for a tail.
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 4 * 1024 * 1024))
        data = f.read().decode(errors="replace")
    return data.splitlines()[-lines:]


async def _get_logs(s: ManagementService, f: Fields) -> Any:
    lines = f.get("lines", int, 200)
    if not 1 <= lines <= 10_000:
        raise ValidationError("get_logs: lines must be between 1 and 10000")
    replica = f.get("replica", str, None)
    if replica is not None and not LOG_NAME.match(replica):
        raise ValidationError(f"get_logs: invalid replica label {replica!r}")
    worker = f.get("worker", int, None)
    if worker is not None:
        if replica is not None:
            raise ValidationError("get_logs: give a replica or a worker, not both")
        if not 1 <= worker < MAX_WORKERS:
            raise ValidationError(
                f"get_logs: worker must be between 1 and {MAX_WORKERS - 1} (0 is the server's log)"
            )
    name = f"{replica}.log" if replica else f"worker-{worker}.log" if worker else "server.log"
    path = s.log_dir / name
    if not path.is_file():
        whose = replica or (f"worker {worker}" if worker else "the server")
        raise ValidationError(f"get_logs: no log for {whose} ({path.name})")
    return {"lines": _tail(path, lines)}


async def _all_apps(s: ManagementService, f: Fields) -> Any:
    return s.list_apps(f.get("verbose", bool, False))


async def _get_app(s: ManagementService, f: Fields) -> Any:
    return s.get_app(f.get("name", str))


async def _linked(s: ManagementService, f: Fields) -> Any:
    return s.get_linked_models(f.get("app_name", str))


async def _all_models(s: ManagementService, f: Fields) -> Any:
    return s.list_models(f.get("verbose", bool, False))


async def _get_model(s: ManagementService, f: Fields) -> Any:
    return s.get_model(f.get("model_name", str), f.get("model_version", str))


ROUTES: dict[str, Handler] = {
    "add_app": _add_app,
    "set_selection_policy": _set_policy,
    "set_app_options": _set_app_options,
    "get_policy_state": _get_policy_state,
    "set_model_options": _set_model_options,
    "delete_app": _delete_app,
    "add_model": _add_model,
    "add_model_links": _add_links,
    "delete_model_links": _delete_links,
    "set_model_version": _set_version,
    "delete_versioned_model": _delete_version,
    "set_num_replicas": _set_replicas,
    "get_num_replicas": _get_replicas,
    "get_all_applications": _all_apps,
    "get_application": _get_app,
    "get_linked_models": _linked,
    "get_all_models": _all_models,
    "get_model": _get_model,
    "get_logs": _get_logs,
    "start_rollout": _start_rollout,
    "stop_rollout": _stop_rollout,
    "get_rollouts": _get_rollouts,
}

FIELDS: dict[str, tuple[str, ...]] = {
    "add_app": (
        "name",
        "input_type",
        "default_output",
        "latency_slo_micros",
        "input_shape",
        "selection_policy",
        "policy_params",
        "options",
        "exist_ok",
    ),
    "set_selection_policy": ("name", "selection_policy", "policy_params"),
    "set_app_options": ("name", "options"),
    "get_policy_state": ("name", "uid"),
    "set_model_options": ("model_name", "model_version", "options"),
    "delete_app": ("name",),
    "add_model": (
        "model_name",
        "model_version",
        "input_type",
        "labels",
        "container_name",
        "model_data_path",
        "batch_size",
        "model_data",
        "num_replicas",
        "pkgs_to_install",
        "options",
        "exist_ok",
        "artifact",
        "make_current",
    ),
    "delete_versioned_model": ("model_name", "model_version"),
    "add_model_links": ("app_name", "model_names", "exist_ok"),
    "delete_model_links": ("app_name", "model_names"),
    "set_model_version": ("model_name", "model_version"),
    "set_num_replicas": ("model_name", "model_version", "num_replicas"),
    "get_num_replicas": ("model_name", "model_version"),
    "get_all_applications": ("verbose",),
    "get_application": ("name",),
    "get_linked_models": ("app_name",),
    "get_all_models": ("verbose",),
    "get_model": ("model_name", "model_version"),
    "get_all_containers": ("verbose",),
    "get_container": ("model_name", "model_version", "replica_id"),
    "get_readiness": ("app_name", "model_name", "model_version"),
    "get_logs": ("lines", "replica", "worker"),
    "start_rollout": ("model_name", "model_version", "mode", "fraction", "limits", "steps"),
    "stop_rollout": ("model_name", "promote"),
    "get_rollouts": (),
}

# Routes whose body is streamed (ManagementFrontend.stream), not a JSON object.
UPLOAD_ROUTE = "/admin/upload_artifact"
STREAM_ROUTES: tuple[str, ...] = ("upload_artifact",)

# Status of the server itself, for ``get_all_containers`` and friends.
StatusProvider = Callable[[], dict[str, Any]]

_LOGIN_CSP = (
    b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    b"frame-ancestors 'none'; base-uri 'none'"
)
_LOGIN_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Clipper dashboard: sign in</title>
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}
input{font:inherit;padding:.4rem;width:100%;box-sizing:border-box;margin:.5rem 0}</style>
</head><body><h1>Clipper dashboard</h1>
<p>This page needs the server's admin token. <code>clipper token</code> prints it
(run it as the user who started the server, with the same <code>CLIPPER_HOME</code>);
the start banner shows a link that signs in at once.</p>
<form method="get" action="/dashboard"><label>Admin token
<input name="token" type="password" autocomplete="current-password" autofocus></label>
<input type="submit" value="Sign in"></form></body></html>
"""


def _is_json(content_type: bytes | None) -> bool:
    media = (content_type or b"").partition(b";")[0].strip().lower()
    return media == b"application/json"


class ManagementFrontend:
    """The management port's handler: ``/admin/*``, the dashboard, ``/health``, ``/ready``.

    Closed by default: every ``/admin/*`` route (``ping`` too) needs the admin
    token (``Authorization: Bearer T``, or Basic with T as the password); a
    POST must say ``Content-Type: application/json`` (415 otherwise: a page in
    a browser cannot send that cross-site without a preflight, which nothing
    here answers). The dashboard takes the token once (``?token=T``) and hands
    out a session cookie; the Host/Origin guard runs before all of this.
    """

    def __init__(
        self,
        service: ManagementService,
        status: StatusProvider,
        *,
        admin_token: str,
        dashboard: Dashboard | None = None,
        is_ready: Callable[[], bool] = lambda: True,
        secure: bool = False,
        sessions: Sessions | None = None,
    ) -> None:
        if not admin_token:
            raise ValueError("the management API needs an admin token")
        self._token = admin_token.encode()
        self.dashboard = dashboard  # the web page and its JSON, under /dashboard
        self.service = service
        self.status = status
        self.is_ready = is_ready
        self.secure = secure  # served over TLS: session cookies are Secure
        self.sessions = sessions or Sessions()
        from .openapi import management_openapi  # it reads this module's FIELDS

        self.openapi = serve(management_openapi())  # GET /openapi.json

    def _status_rollouts(self) -> list[dict[str, Any]]:
        """The rollouts for ``/admin/status``: from the store, or, while the store
        is down, the catalog's last snapshot (the status must answer then)."""
        try:
            return self.service.get_rollouts()
        except StoreError as exc:
            log.debug("rollouts in the status from the last snapshot: %s", exc)
            return [
                {**spec.to_record(), "figures": {}, "stale": True}
                for spec in self.service.catalog.snapshot.rollouts.values()
            ]

    def handle(self, request: Request) -> Response | Awaitable[Response]:
        path = request.path.rstrip("/") or "/"
        method = request.method
        if path == "/dashboard" or path.startswith("/dashboard/"):
            return self._dashboard(request, path)
        if path == "/health":
            return json_response(200, {"status": "ok"})
        if path == "/ready":
            ready = self.is_ready()
            return json_response(200 if ready else 503, {"ready": ready})
        if path == OPENAPI_PATH:
            return self.openapi(request)
        if not path.startswith("/admin/"):
            return json_error(path, 404, "not found", f"no route {method} {path}")
        if not token_matches(request.header(b"authorization"), self._token):
            return _unauthorized(path)
        if path == "/admin/ping":
            return json_response(200, {"ping": "pong"})
        if path == "/admin/status" and method in ("GET", "HEAD"):
            return json_response(200, {**self.status(), "rollouts": self._status_rollouts()})
        name = path[len("/admin/") :]
        handler = ROUTES.get(name)
        if handler is None and name in ("get_all_containers", "get_container"):
            handler = self._containers
        if handler is None and name == "get_readiness":
            handler = self._readiness
        if handler is None and name in STREAM_ROUTES:  # a server without the stream hook
            return json_error(
                path, 501, "not implemented", f"/admin/{name} needs the HTTP server's streaming"
            )
        if handler is None:
            return json_error(path, 404, "unknown admin route", f"no route /admin/{name}")
        if method != "POST":
            return json_error(path, 405, "method not allowed", f"use POST for /admin/{name}")
        if request.body.strip() and not _is_json(request.header(b"content-type")):
            return json_error(
                path,
                415,
                "unsupported media type",
                f"/admin/{name} takes a JSON body: send 'Content-Type: application/json'",
            )
        try:
            body = orjson.loads(request.body) if request.body.strip() else {}
        except orjson.JSONDecodeError as exc:
            return json_error(path, 400, "invalid JSON", str(exc))
        if not isinstance(body, dict):
            return json_error(path, 400, "invalid request", "the body must be a JSON object")
        return self._call(handler, Fields(name, body), path)

    def stream(self, request: Request) -> Stream | Response | None:
        """The HTTP server's stream hook: ``POST /admin/upload_artifact`` takes its
        body as it arrives; everything is checked from the head, before a byte of
        the body is read (the token: 401; the digest header: 400; the type: 415;
        the disk: 507; the size, by the HTTP server: 413)."""
        path = request.path.rstrip("/")
        if path != UPLOAD_ROUTE:
            return None
        if not token_matches(request.header(b"authorization"), self._token):
            return _unauthorized(path)
        if request.method != "POST":
            return json_error(path, 405, "method not allowed", f"use POST for {UPLOAD_ROUTE}")
        media = (request.header(b"content-type") or b"").partition(b";")[0].strip().lower()
        if media != b"application/octet-stream":
            return json_error(
                path,
                415,
                "unsupported media type",
                f"{UPLOAD_ROUTE} takes the artifact's bytes: send "
                "'Content-Type: application/octet-stream'",
            )
        uploads = self.service.uploads
        try:
            digest = parse_digest(request.header(b"x-clipper-artifact-sha256"))
            declared = request.header(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) <= uploads.max_bytes:
                uploads.check_space(int(declared))
        except ValidationError as exc:
            return json_error(path, 400, "invalid request", str(exc))
        except UploadError as exc:
            return json_error(path, exc.status, exc.error, exc.cause)

        async def receive(request: Request, body: Body) -> Response:
            try:
                artifact, size = await uploads.receive(body, digest)
            except UploadError as exc:
                return json_error(path, exc.status, exc.error, exc.cause)
            return json_response(200, {"artifact": artifact, "bytes": size})

        return Stream(
            receive, max_bytes=uploads.max_bytes, min_rate=MIN_RATE, rate_window_s=RATE_WINDOW_S
        )

    async def _call(self, handler: Handler, fields: Fields, path: str) -> Response:
        try:
            fields.check_unknown(FIELDS.get(fields.route, ()))
            result = await handler(self.service, fields)
        except (ValidationError, NotFoundError, ValueError) as exc:
            return json_error(path, 400, "invalid request", str(exc))
        except ClipperError as exc:
            return json_error(path, 400, type(exc).__name__, str(exc))
        return json_response(200, result)

    def _dashboard(self, request: Request, path: str) -> Response:
        if self.dashboard is None:
            return json_error(path, 404, "not found", "this server has no dashboard")
        offered = parse_qs(request.query.decode("latin-1")).get("token")
        if offered is not None:
            # Sign in: the token once, in the URL; from then on a random session
            # id in a cookie (never the token), and the URL without the token.
            if not hmac.compare_digest(offered[0].encode(), self._token):
                return self._login(401)
            cookie = self.sessions.set_cookie(self.sessions.create(), self.secure)
            return Response(
                303,
                b"",
                b"text/plain",
                (
                    (b"location", b"/dashboard"),
                    (b"set-cookie", cookie),
                    (b"cache-control", b"no-store"),
                ),
            )
        if self.sessions.valid(request.header(b"cookie")) or token_matches(
            request.header(b"authorization"), self._token
        ):
            return self.dashboard.handle(request)
        if path == "/dashboard":
            return self._login(401)
        return _unauthorized(path)

    @staticmethod
    def _login(status: int) -> Response:
        return Response(
            status,
            _LOGIN_PAGE,
            b"text/html; charset=utf-8",
            ((b"content-security-policy", _LOGIN_CSP), (b"cache-control", b"no-store")),
        )

    async def _containers(self, s: ManagementService, f: Fields) -> Any:
        containers = self.status()["replicas"]
        if f.route == "get_container":
            name, version = f.get("model_name", str), f.get("model_version", str)
            replica = f.get("replica_id", str, None)
            containers = [
                c
                for c in containers
                if c["model_name"] == name
                and c["model_version"] == version
                and (replica is None or c["replica"] == replica)
            ]
            return containers[0] if containers else {}
        return containers

    async def _readiness(self, s: ManagementService, f: Fields) -> Any:
        """``get_readiness``: whether an app (``app_name``) or a model version
        (``model_name``, ``model_version``: default the current one) has what it
        needs to answer, with each version's target and live replicas."""
        app_name = f.get("app_name", str, None)
        model_name = f.get("model_name", str, None)
        version = f.get("model_version", str, None)
        if (app_name is None) == (model_name is None):
            raise ValidationError("get_readiness: give either app_name or model_name")
        if app_name is not None:
            if version is not None:
                raise ValidationError("get_readiness: model_version goes with model_name")
            if s.store.get_app(app_name) is None:
                raise ValidationError(f"application '{app_name}' does not exist")
            names = s.store.get_links(app_name)
        else:
            assert model_name is not None
            if not s.store.list_models(model_name):
                raise ValidationError(f"no model named '{model_name}'")
            names = [model_name]
        live: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for replica in self.status()["replicas"]:
            key = (str(replica.get("model_name")), str(replica.get("model_version")))
            live.setdefault(key, []).append(
                {
                    "replica": replica.get("replica"),
                    "live": bool(replica.get("live")),
                    "restarts": int(replica.get("restarts") or 0),
                }
            )
        models = []
        problem = None if names else f"application '{app_name}' has no linked model"
        for name in names:
            current = s.store.get_current_version(name)
            wanted = version if model_name is not None and version is not None else current
            if wanted is None:
                problem = problem or f"model '{name}' has no current version"
                continue
            spec = s.store.get_model(name, wanted)
            if spec is None:
                raise ValidationError(f"model '{name}' has no version '{wanted}'")
            target = s.replica_target(spec.id, s.store.get_num_replicas(name, wanted))
            replicas = live.get((name, wanted), [])
            n_live = sum(r["live"] for r in replicas)
            autoscaled = spec.options.autoscaled
            # A model version is ready with a live replica. One that runs no
            # replica (target 0) is ready for a deploy (nothing to wait for);
            # for an app, only when it autoscales (it starts on the first query).
            ready = n_live > 0 or (target == 0 and (model_name is not None or autoscaled))
            models.append(
                {
                    "model_name": name,
                    "model_version": wanted,
                    "target_replicas": target,
                    "live_replicas": n_live,
                    "autoscaled": autoscaled,
                    "ready": ready,
                    "replicas": replicas,
                }
            )
        ready = problem is None and all(m["ready"] for m in models)
        return {"ready": ready, "problem": problem, "models": models}


def _unauthorized(path: str) -> Response:
    response = json_error(
        path,
        401,
        "unauthorized",
        "this API needs the admin token: 'Authorization: Bearer <token>' (or HTTP Basic "
        "with the token as the password); `clipper token` prints it",
    )
    response.headers = ((b"www-authenticate", b'Bearer realm="clipper"'),)
    return response
