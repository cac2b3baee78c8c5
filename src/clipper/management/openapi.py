"""The management port's OpenAPI 3.1 description, served at ``GET /openapi.json``.

The routes and their fields come from :mod:`.api` itself (``FIELDS``: the
fields each ``POST /admin/{route}`` accepts, unknown ones being a 400); this
module adds what the code does not say in data: each field's JSON type, which
fields a route requires, what it answers. A route added to ``FIELDS`` without
an entry here is still described (with a generic answer), and
``tests/management/test_openapi.py`` fails until it has one; the same test
checks the types and required fields against the handlers' own
``f.get(...)`` calls.
"""

from __future__ import annotations

import functools
from typing import Any

from ..http.openapi import HTTP_ERRORS, Schema, document, errors, json_body, ok, ref
from ..managers.base import REPLICA_FIELDS
from ..selection.policies import POLICY_NAMES
from ..settings import MAX_WORKERS
from ..types import _NAME_RE, ROLLOUT_LIMIT_KEYS, ROLLOUT_MODES, InputType
from .api import FIELDS

NAME_PATTERN = f"^{_NAME_RE.pattern}$"
SHA256_PATTERN = "^[0-9a-fA-F]{64}$"
UPLOAD_PATH = "/admin/upload_artifact"

_NAME: Schema = {"type": "string", "pattern": NAME_PATTERN}
_STRINGS: Schema = {"type": "array", "items": {"type": "string"}}

# Each field's JSON schema, by name (a name means the same thing in every route).
FIELD_SCHEMAS: dict[str, Schema] = {
    "name": {**_NAME, "description": "the application's name"},
    "app_name": {**_NAME, "description": "the application's name"},
    "model_name": {**_NAME, "description": "the model's name"},
    "model_version": {"type": "string", "minLength": 1, "description": "the model's version"},
    "input_type": {
        "type": "string",
        "description": "an input type: "
        + ", ".join(t.value for t in InputType)
        + " (Clipper's aliases such as `ints`, `d`, `str` are accepted)",
        "examples": ["doubles"],
    },
    "default_output": {"type": "string", "description": "answered when no model does in time"},
    "latency_slo_micros": {"type": "integer", "minimum": 1000, "maximum": 600_000_000},
    "input_shape": {
        "type": "array",
        "items": {"type": "integer", "minimum": 1},
        "description": "numeric types only: the shape every input must have",
    },
    "selection_policy": {"type": "string", "enum": list(POLICY_NAMES)},
    "policy_params": {"type": "object", "description": "the policy's parameters"},
    "options": {
        "type": "object",
        "description": "apps: `cache`, `overload`, `api_keys`; model versions: "
        "`batching`, `max_batch_delay_ms`, `queue_capacity`, `memory_limit_mb`, "
        "`min_replicas`, `max_replicas`, `scale_down_after_s`, `ray_*` "
        "(see the management API reference)",
    },
    "exist_ok": {
        "type": "boolean",
        "description": "an identical existing object is a no-op, a different one a 400",
    },
    "uid": {"type": ["string", "integer"], "description": "a user; default: the shared state"},
    "labels": _STRINGS,
    "container_name": {"type": "string"},
    "model_data_path": {"type": "string"},
    "batch_size": {"type": "integer", "description": "-1: adaptive"},
    "model_data": {
        "type": "string",
        "contentEncoding": "base64",
        "description": "a cloudpickled callable, or an object with `predict`",
    },
    "artifact": {
        "type": "string",
        "pattern": SHA256_PATTERN,
        "description": f"the SHA-256 of an artifact sent to `{UPLOAD_PATH}`",
    },
    "num_replicas": {"type": "integer", "minimum": 0, "maximum": 64},
    "pkgs_to_install": {**_STRINGS, "description": "pip requirements"},
    "model_names": {"type": "array", "items": _NAME},
    "verbose": {"type": "boolean", "description": "objects instead of names"},
    "replica_id": {"type": "string"},
    "lines": {"type": "integer", "minimum": 1, "maximum": 10_000},
    "replica": {"type": "string", "description": "a replica's label; default: the server's log"},
    "worker": {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_WORKERS - 1,
        "description": "a frontend worker process (`--workers`); default: the server's log",
    },
    "mode": {"type": "string", "enum": list(ROLLOUT_MODES), "description": "how the rollout runs"},
    "fraction": {
        "type": ["number", "integer"],
        "exclusiveMinimum": 0,
        "maximum": 1,
        "description": "canary, bandit: the new version's share of queries (default 0.05); "
        "shadow: the share copied to it (default 1)",
    },
    "limits": {
        "type": "object",
        "propertyNames": {"enum": list(ROLLOUT_LIMIT_KEYS)},
        "additionalProperties": {"type": "number"},
        "description": "bandit only: when the rollout decides by itself",
    },
    "steps": {
        "type": "array",
        "items": {
            "type": "array",
            "prefixItems": [{"type": "number", "minimum": 0}, {"type": "number"}],
            "minItems": 2,
            "maxItems": 2,
        },
        "description": "canary only: [seconds after the start, fraction] pairs, seconds rising",
    },
    "make_current": {
        "type": "boolean",
        "description": "make the new version the model's current one (default true; "
        "false: deploy a version to roll out)",
    },
    "promote": {
        "type": "boolean",
        "description": "make the new version current (default: keep the current one)",
    },
}

# The fields each route cannot do without; the others are optional (null reads as absent).
REQUIRED: dict[str, tuple[str, ...]] = {
    "add_app": ("name", "input_type", "default_output", "latency_slo_micros"),
    "set_selection_policy": ("name", "selection_policy"),
    "set_app_options": ("name", "options"),
    "get_policy_state": ("name",),
    "set_model_options": ("model_name", "model_version", "options"),
    "delete_app": ("name",),
    "add_model": ("model_name", "model_version", "input_type"),
    "delete_versioned_model": ("model_name", "model_version"),
    "add_model_links": ("app_name", "model_names"),
    "delete_model_links": ("app_name", "model_names"),
    "set_model_version": ("model_name", "model_version"),
    "set_num_replicas": ("model_name", "model_version", "num_replicas"),
    "get_num_replicas": ("model_name", "model_version"),
    "get_all_applications": (),
    "get_application": ("name",),
    "get_linked_models": ("app_name",),
    "get_all_models": (),
    "get_model": ("model_name", "model_version"),
    "get_all_containers": (),
    "get_container": ("model_name", "model_version"),
    "get_readiness": (),
    "get_logs": (),
    "start_rollout": ("model_name", "model_version", "mode"),
    "stop_rollout": ("model_name",),
    "get_rollouts": (),
}

_EMPTY: Schema = {"type": "object", "maxProperties": 0, "description": "not found"}

SCHEMAS: dict[str, Schema] = {
    "Success": {
        "type": "object",
        "properties": {"success": {"const": True}},
        "required": ["success"],
        "additionalProperties": False,
    },
    "Application": {
        "type": "object",
        "properties": {
            "name": _NAME,
            "input_type": {"type": "string", "enum": [t.value for t in InputType]},
            "default_output": {"type": "string"},
            "latency_slo_micros": {"type": "integer"},
            "input_shape": {"type": ["array", "null"], "items": {"type": "integer"}},
            "selection_policy": {"type": "string"},
            "policy_params": {"type": "object"},
            "options": {"type": "object"},
            "linked_models": _STRINGS,
        },
        "required": [
            "name",
            "input_type",
            "default_output",
            "latency_slo_micros",
            "input_shape",
            "selection_policy",
            "policy_params",
            "options",
            "linked_models",
        ],
    },
    "Model": {
        "type": "object",
        "properties": {
            "model_name": _NAME,
            "model_version": {"type": "string"},
            "input_type": {"type": "string", "enum": [t.value for t in InputType]},
            "labels": _STRINGS,
            "container_name": {"type": "string"},
            "model_data_path": {"type": "string"},
            "batch_size": {"type": "integer"},
            "options": {"type": "object"},
            "is_current_version": {"type": "boolean"},
        },
        "required": [
            "model_name",
            "model_version",
            "input_type",
            "labels",
            "container_name",
            "model_data_path",
            "batch_size",
            "options",
            "is_current_version",
        ],
    },
    "Replica": {
        "type": "object",
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "replica": {"type": "string"},
            "pid": {"type": ["integer", "null"]},
            "restarts": {"type": "integer"},
            "live": {"type": "boolean"},
            "device": {
                "type": ["string", "null"],
                "description": "Where the manager placed it ('cpu', 'cuda:0'); present "
                "when the version's 'devices' option is set, null when it could not be placed",
            },
            "error": {"type": "string", "description": "Why it could not be placed"},
            "runtime": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "What the replica says it runs on: device, provider, "
                "precision, framework, warning (a fallback to the CPU)",
            },
        },
        "required": list(REPLICA_FIELDS),
    },
    "Readiness": {
        "type": "object",
        "properties": {
            "ready": {"type": "boolean"},
            "problem": {"type": ["string", "null"]},
            "models": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "model_name": {"type": "string"},
                        "model_version": {"type": "string"},
                        "target_replicas": {"type": "integer"},
                        "live_replicas": {"type": "integer"},
                        "autoscaled": {"type": "boolean"},
                        "ready": {"type": "boolean"},
                        "replicas": {"type": "array", "items": {"type": "object"}},
                    },
                    "required": ["model_name", "model_version", "ready"],
                },
            },
        },
        "required": ["ready", "problem", "models"],
    },
    "Status": {
        "type": "object",
        "description": "The server: its pid, uptime, ports, store, replicas, per-model "
        "queue and batching statistics, autoscaling, cache and metrics figures",
        "properties": {
            "pid": {"type": "integer"},
            "uptime_s": {"type": "number"},
            "query_port": {"type": "integer"},
            "management_port": {"type": "integer"},
            "rpc_port": {"type": "integer"},
            "replicas": {"type": "array", "items": ref("Replica")},
            "models": {},
            "cache": {"type": "object"},
            "rollouts": {"type": "array", "items": ref("Rollout")},
        },
        "required": ["pid", "replicas", "rollouts"],
    },
    "Rollout": {
        "type": "object",
        "properties": {
            "model": _NAME,
            "base_version": {"type": "string"},
            "new_version": {"type": "string"},
            "mode": {"type": "string", "enum": list(ROLLOUT_MODES)},
            "fraction": {"type": "number"},
            "fraction_now": {"type": "number", "description": "the share a schedule gives now"},
            "limits": {"type": "object"},
            "steps": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "started_at": {"type": "number", "description": "unix time"},
            "figures": {"type": "object", "description": "live figures per version"},
            "warning": {"type": "string"},
        },
        "required": [
            "model",
            "base_version",
            "new_version",
            "mode",
            "fraction",
            "fraction_now",
            "limits",
            "steps",
            "started_at",
        ],
    },
    "RolloutEnd": {
        "type": "object",
        "properties": {
            "model": _NAME,
            "new_version": {"type": "string"},
            "promoted": {"type": "boolean"},
            "current_version": {"type": ["string", "null"]},
            "reason": {"type": "string"},
        },
        "required": ["model", "new_version", "promoted", "current_version", "reason"],
    },
    "Artifact": {
        "type": "object",
        "properties": {
            "artifact": {"type": "string", "pattern": SHA256_PATTERN},
            "bytes": {"type": "integer", "minimum": 0},
        },
        "required": ["artifact", "bytes"],
        "additionalProperties": False,
    },
    "Health": {"type": "object", "properties": {"status": {"const": "ok"}}, "required": ["status"]},
    "Ready": {
        "type": "object",
        "properties": {"ready": {"type": "boolean"}},
        "required": ["ready"],
    },
}

_VERBOSE_LIST = "names, or objects with `verbose`"

# What a route answers with 200 (routes not named here answer {"success": true}),
# and a one-line summary of each route.
RESPONSES: dict[str, tuple[Schema, str]] = {
    "get_policy_state": ({"type": "object"}, "the policy's learned state, or {} before feedback"),
    "get_num_replicas": (
        {
            "type": "object",
            "properties": {"num_replicas": {"type": "integer"}},
            "required": ["num_replicas"],
        },
        "the version's replica count",
    ),
    "get_all_applications": (
        {"anyOf": [_STRINGS, {"type": "array", "items": ref("Application")}]},
        _VERBOSE_LIST,
    ),
    "get_application": ({"anyOf": [ref("Application"), _EMPTY]}, "the app, or {}"),
    "get_linked_models": (_STRINGS, "the names of the linked models"),
    "get_all_models": (
        {
            "anyOf": [
                {"type": "array", "items": {"type": "string", "pattern": "^[^:]+:.+$"}},
                {"type": "array", "items": ref("Model")},
            ]
        },
        '"name:version" strings, or objects with `verbose`',
    ),
    "get_model": ({"anyOf": [ref("Model"), _EMPTY]}, "the model version, or {}"),
    "get_all_containers": ({"type": "array", "items": ref("Replica")}, "every replica"),
    "get_container": ({"anyOf": [ref("Replica"), _EMPTY]}, "the replica, or {}"),
    "get_readiness": (ref("Readiness"), "readiness, with each version's replicas"),
    "get_logs": (
        {"type": "object", "properties": {"lines": _STRINGS}, "required": ["lines"]},
        "the last lines of the log",
    ),
    "start_rollout": (ref("Rollout"), "the rollout as stored (with a `warning` if any)"),
    "stop_rollout": (ref("RolloutEnd"), "how it ended"),
    "get_rollouts": ({"type": "array", "items": ref("Rollout")}, "the rollouts running"),
}

SUMMARIES: dict[str, str] = {
    "add_app": "Register an application",
    "set_selection_policy": "Set an app's selection policy",
    "set_app_options": "Set an app's options (merged)",
    "get_policy_state": "An app's (or a user's) learned policy state",
    "set_model_options": "Set a model version's options (merged)",
    "delete_app": "Delete an application (its route answers 404 at once)",
    "add_model": "Deploy a model version",
    "delete_versioned_model": "Delete a model version",
    "add_model_links": "Link models to an app",
    "delete_model_links": "Unlink models from an app",
    "set_model_version": "Make a version the model's current one",
    "set_num_replicas": "Set a version's replica count",
    "get_num_replicas": "A version's replica count",
    "get_all_applications": "The applications",
    "get_application": "One application",
    "get_linked_models": "An app's linked models",
    "get_all_models": "The model versions",
    "get_model": "One model version",
    "get_all_containers": "The replicas",
    "get_container": "One replica",
    "get_readiness": "Whether an app or a model version can answer",
    "get_logs": "The server's or a replica's log",
    "start_rollout": "Roll a new version out (shadow, canary or bandit), or change a rollout",
    "stop_rollout": "End a model's rollout, promoting the new version or not",
    "get_rollouts": "The rollouts running, with their live figures",
}

EXAMPLES: dict[str, Any] = {
    "add_app": {
        "name": "digits",
        "input_type": "doubles",
        "default_output": "-1",
        "latency_slo_micros": 100000,
    },
    "add_model_links": {"app_name": "digits", "model_names": ["m"]},
    "set_model_version": {"model_name": "m", "model_version": "1"},
    "get_all_applications": {"verbose": False},
    "start_rollout": {"model_name": "m", "model_version": "2", "mode": "canary", "fraction": 0.1},
}

SECURITY_SCHEMES: dict[str, Any] = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "The admin token (`clipper token` prints it)",
    },
    "basicAuth": {
        "type": "http",
        "scheme": "basic",
        "description": "The admin token as the password, any user name (what "
        "clipper_admin sends for `clipper:TOKEN@host:1338`)",
    },
    "dashboardSession": {
        "type": "apiKey",
        "in": "cookie",
        "name": "clipper_session",
        "description": "The dashboard's session, set by `/dashboard?token=T`",
    },
}

ADMIN: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"basicAuth": []}]
_DASHBOARD_AUTH = [{"dashboardSession": []}, *ADMIN]
_ADMIN_ERRORS = [*HTTP_ERRORS, 401, 405]


def _nullable(schema: Schema) -> Schema:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    if isinstance(kind, list):
        return {**schema, "type": [*kind, "null"]} if "null" not in kind else schema
    return {"anyOf": [schema, {"type": "null"}]}


def request_schema(route: str) -> Schema:
    """The JSON body ``route`` takes: its ``FIELDS``, typed, unknown ones refused."""
    required = REQUIRED.get(route, ())
    properties = {}
    for name in FIELDS[route]:
        schema = FIELD_SCHEMAS.get(name, {})
        properties[name] = schema if name in required else _nullable(schema)
    body: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        body["required"] = list(required)
    return body


def _admin_route(route: str) -> dict[str, Any]:
    schema, meaning = RESPONSES.get(route, (ref("Success"), "done"))
    example = {"success": True} if route not in RESPONSES else None
    return {
        "post": {
            "operationId": route,
            "tags": ["admin"],
            "summary": SUMMARIES.get(route, route),
            "requestBody": json_body(
                request_schema(route),
                "a JSON object (Content-Type: application/json); {} or no body when "
                "every field is optional",
                EXAMPLES.get(route),
            ),
            "responses": {
                "200": ok(schema, meaning, example),
                **errors(
                    [*_ADMIN_ERRORS, 415],
                    notes={400: "A missing, mistyped or unknown field, or a failed command"},
                ),
            },
        }
    }


def _upload() -> dict[str, Any]:
    return {
        "post": {
            "operationId": "upload_artifact",
            "tags": ["admin"],
            "summary": "Upload a model artifact of any size (streamed to disk)",
            "description": (
                "The raw bytes, up to `max_artifact_bytes`, checked against their "
                "SHA-256; `add_model` then names the artifact by its digest. The token "
                "is checked before the body is read."
            ),
            "parameters": [
                {
                    "name": "X-Clipper-Artifact-SHA256",
                    "in": "header",
                    "required": True,
                    "description": "the SHA-256 of the body, in hex",
                    "schema": {"type": "string", "pattern": SHA256_PATTERN},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {
                        "schema": {
                            "type": "string",
                            "contentMediaType": "application/octet-stream",
                        }
                    }
                },
            },
            "responses": {
                "200": ok(
                    ref("Artifact"),
                    "Stored under its digest",
                    {"artifact": "ab" * 32, "bytes": 31089213},
                ),
                **errors(
                    [*_ADMIN_ERRORS, 415, 507],
                    notes={
                        400: "The body's SHA-256 is not the header's, or no valid header",
                        415: "The body is not sent as `application/octet-stream`",
                        408: "The body arrived too slowly (under the minimum rate)",
                        413: "Larger than `max_artifact_bytes`",
                    },
                ),
            },
        }
    }


def _open_get(operation_id: str, summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {
        "get": {
            "operationId": operation_id,
            "tags": ["health"],
            "summary": summary,
            "security": [],
            "responses": responses,
        }
    }


def _paths() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/admin/ping": {
            "get": {
                "operationId": "ping",
                "tags": ["admin"],
                "summary": "Check the token and the server",
                "responses": {
                    "200": ok(
                        {"type": "object", "properties": {"ping": {"const": "pong"}}},
                        "pong",
                        {"ping": "pong"},
                    ),
                    **errors([*HTTP_ERRORS, 401]),
                },
            }
        },
        "/admin/status": {
            "get": {
                "operationId": "status",
                "tags": ["admin"],
                "summary": "The server's status and statistics",
                "responses": {"200": ok(ref("Status"), "status"), **errors(_ADMIN_ERRORS)},
            }
        },
        UPLOAD_PATH: _upload(),
    }
    for route in FIELDS:
        paths[f"/admin/{route}"] = _admin_route(route)
    paths["/health"] = _open_get(
        "health", "Liveness", {"200": ok(ref("Health"), "up", {"status": "ok"})}
    )
    paths["/ready"] = _open_get(
        "ready",
        "Readiness",
        {
            "200": ok(ref("Ready"), "ready", {"ready": True}),
            "503": ok(ref("Ready"), "not ready yet", {"ready": False}),
        },
    )
    html = {"text/html": {"schema": {"type": "string"}}}
    paths["/dashboard"] = {
        "get": {
            "operationId": "dashboard",
            "tags": ["dashboard"],
            "summary": "The dashboard's page; the sign-in page without a session",
            "security": [*_DASHBOARD_AUTH, {}],
            "parameters": [
                {
                    "name": "token",
                    "in": "query",
                    "required": False,
                    "description": "the admin token, once: answered by a session cookie",
                    "schema": {"type": "string"},
                }
            ],
            "responses": {
                "200": {"description": "The dashboard", "content": html},
                "303": {
                    "description": "Signed in: a session cookie, and back to /dashboard",
                    "headers": {"Set-Cookie": {"schema": {"type": "string"}}},
                },
                "401": {"description": "The sign-in page (no or a wrong token)", "content": html},
                **errors([405]),
            },
        }
    }
    paths["/dashboard/api/summary"] = {
        "get": {
            "operationId": "dashboardSummary",
            "tags": ["dashboard"],
            "summary": "The dashboard's data: recent series per app and model",
            "security": _DASHBOARD_AUTH,
            "parameters": [
                {
                    "name": "since",
                    "in": "query",
                    "required": False,
                    "description": "only points after this time (seconds)",
                    "schema": {"type": "number"},
                }
            ],
            "responses": {
                "200": ok({"type": "object"}, "the summary"),
                **errors([400, 401, 405]),
            },
        }
    }
    paths["/dashboard/static/{asset}"] = {
        "get": {
            "operationId": "dashboardAsset",
            "tags": ["dashboard"],
            "summary": "The dashboard's scripts and styles",
            "security": _DASHBOARD_AUTH,
            "parameters": [
                {"name": "asset", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {"description": "The asset (cached, with an ETag)"},
                "304": {"description": "Not modified"},
                **errors([401, 404, 405]),
            },
        }
    }
    return paths


@functools.cache
def management_openapi() -> dict[str, Any]:
    """The management port's OpenAPI 3.1 document (made once; do not modify it)."""
    return document(
        title="Clipper management API",
        description=(
            "The management port (1338 by default): `POST /admin/{route}` with a JSON "
            "body, Clipper's routes plus this Clipper's. Every `/admin/*` route needs "
            "the admin token; `/health`, `/ready` and this description are open. "
            'Errors are `{"error", "cause"}`.'
        ),
        paths=_paths(),
        schemas=SCHEMAS,
        security_schemes=SECURITY_SCHEMES,
        tags=[
            {"name": "admin", "description": "Apps, models, links, versions, replicas"},
            {"name": "health", "description": "Liveness and readiness (open)"},
            {"name": "dashboard", "description": "The web dashboard"},
        ],
    ) | {"security": ADMIN}
