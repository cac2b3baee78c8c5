"""``ClipperConnection``: start, connect to and drive a Clipper server, as clipper_admin did."""

from __future__ import annotations

import base64
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from typing import Any

import httpx
import orjson

from ..statedir import is_clipper_server, pid_alive, private_dir, read_server_record
from .exceptions import ClipperException, UnconnectedException
from .manager import LocalContainerManager

log = logging.getLogger("clipper.admin")


class ClipperConnection:
    """A handle on one Clipper server, through its management API."""

    def __init__(
        self, container_manager: LocalContainerManager | None = None, timeout: float = 60.0
    ) -> None:
        self.cm = container_manager or LocalContainerManager()
        self.timeout = timeout
        self.connected = False
        self._client: httpx.Client | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- addresses ---------------------------------------------------------------

    @property
    def management_url(self) -> str:
        return self.cm.address.management_url

    def _auth_headers(self) -> dict[str, str]:
        """The admin token, for the management port only (never the query port)."""
        token = self.cm.resolve_admin_token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _http(self, method: str, url: str, timeout: float, **kw: Any) -> httpx.Response:
        headers = self._auth_headers() if url.startswith(self.management_url) else {}
        return httpx.request(
            method, url, timeout=timeout, headers=headers, verify=self.cm.verify(), **kw
        )

    def _unauthorized(self, what: str) -> ClipperException:
        return ClipperException(
            f"{what}: the management API refused the admin token (401). {self.cm.token_source()}"
        )

    def get_query_addr(self) -> str:
        """``host:port`` of the query frontend."""
        return f"{self.cm.host}:{self.cm.clipper_query_port}"

    # -- lifecycle ---------------------------------------------------------------

    def start_clipper(self, timeout: float = 60.0) -> None:
        """Start a server as a detached process and wait until both frontends answer.

        The server outlives this Python process (as Clipper's containers did);
        ``stop_all()`` stops it and every replica it started.
        """
        state = self.cm.state_path
        private_dir(state)
        private_dir(state / "logs")
        if self._ping(timeout=1.0) is not None:
            raise ClipperException(
                f"a Clipper server already answers on {self.management_url}; "
                "use connect() or stop it first"
            )
        # The server logs to logs/server.log itself; this catches what it
        # prints before logging starts (bad flags, a crash at import).
        log_path = state / "logs" / "server.out"
        with open(log_path, "ab") as logfile:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "clipper.server", *self.cm.server_args()],
                env={**os.environ, **self.cm.server_env()},
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        query_health = f"{self.cm.address.query_url}/ready"
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                raise ClipperException(
                    f"the Clipper server exited with status {code}:\n" + "\n".join(tail)
                )
            if self._ping(timeout=1.0) == 200:
                try:
                    if self._http("GET", query_health, 1.0).status_code == 200:
                        self.connected = True
                        log.info("Clipper is running (pid %d)", self._process.pid)
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        self._terminate(self._process.pid)
        raise ClipperException(f"the Clipper server did not answer within {timeout:.0f}s")

    def connect(self) -> None:
        """Attach to a running server."""
        status = self._ping(timeout=5.0)
        if status is None:
            raise ClipperException(f"no Clipper server answers on {self.management_url}")
        if status == 401:
            raise self._unauthorized(f"connect to {self.management_url}")
        if status != 200:
            raise ClipperException(f"{self.management_url}/admin/ping answered {status}")
        self.connected = True

    def _ping(self, timeout: float) -> int | None:
        """The status ``/admin/ping`` answers, or None if nothing answers."""
        try:
            return self._http("GET", f"{self.management_url}/admin/ping", timeout).status_code
        except httpx.HTTPError:
            return None

    def _server_pid(self) -> int | None:
        """The pid of this connection's server, checked: a recorded pid whose
        process is no Clipper server (the pid was reused) is never signalled."""
        if self._process is not None and self._process.poll() is None:
            return self._process.pid
        info = read_server_record(self.cm.state_path)
        pid = info.get("pid") if info else None
        if not isinstance(pid, int) or not pid_alive(pid):
            return None
        if not is_clipper_server(pid):
            log.warning(
                "the server record in %s names pid %d, which is not a Clipper server "
                "(a stale record?): not stopping it",
                self.cm.state_path,
                pid,
            )
            return None
        return pid

    def _terminate(self, pid: int, timeout: float = 30.0) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.pid == pid:
                if self._process.poll() is not None:
                    return
            elif not pid_alive(pid):
                return
            time.sleep(0.05)
        log.warning("the Clipper server (pid %d) did not stop in %.0fs; killing it", pid, timeout)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        if self._process is not None and self._process.pid == pid:
            self._process.wait()

    def close(self) -> None:
        """Release this connection's HTTP client (the server keeps running)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        self.connected = False

    def stop_all(self) -> bool:
        """Stop the server and every replica it started; False if none was running."""
        pid = self._server_pid()
        if pid is not None:
            self._terminate(pid)
        self.connected = False
        if self._client is not None:
            self._client.close()
            self._client = None
        return pid is not None

    # -- management API ----------------------------------------------------------

    def _post(self, route: str, body: dict[str, Any]) -> Any:
        if not self.connected:
            raise UnconnectedException()
        if self._client is None:
            self._client = httpx.Client(
                base_url=self.management_url, timeout=self.timeout, verify=self.cm.verify()
            )
        try:
            r = self._client.post(f"/admin/{route}", json=body, headers=self._auth_headers())
        except httpx.HTTPError as exc:
            raise ClipperException(f"{route}: cannot reach {self.management_url}: {exc}") from exc
        if r.status_code == 401:
            raise self._unauthorized(route)
        try:
            payload = r.json()
        except ValueError:
            payload = {"error": r.text}
        if r.status_code != 200:
            cause = (
                payload.get("cause") or payload.get("error")
                if isinstance(payload, dict)
                else r.text
            )
            raise ClipperException(f"{route} failed ({r.status_code}): {cause}")
        return payload

    def register_application(
        self,
        name: str,
        input_type: str,
        default_output: str,
        slo_micros: int,
        input_shape: list[int] | None = None,
        selection_policy: str = "single",
        policy_params: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        """Register an app: its REST endpoint ``/{name}/predict`` appears at once.

        ``selection_policy`` is one of ``single``, ``exp3``, ``exp4``,
        ``epsilon_greedy``, ``ucb1``, ``thompson``; ``options`` may set
        ``cache`` (bool) and ``overload`` (``"default"`` or ``"503"``).
        """
        body: dict[str, Any] = {
            "name": name,
            "input_type": input_type,
            "default_output": default_output,
            "latency_slo_micros": slo_micros,
            "selection_policy": selection_policy,
            "policy_params": dict(policy_params or {}),
            "options": dict(options or {}),
        }
        if input_shape is not None:
            body["input_shape"] = list(input_shape)
        self._post("add_app", body)

    def set_selection_policy(
        self, app_name: str, policy: str, params: dict[str, Any] | None = None
    ) -> None:
        """Change an app's selection policy (its learned state starts afresh)."""
        self._post(
            "set_selection_policy",
            {"name": app_name, "selection_policy": policy, "policy_params": dict(params or {})},
        )

    def get_policy_state(self, app_name: str, uid: str | int = "") -> dict[str, Any]:
        """The selection policy's learned state for the app (or one user); {} if none."""
        return dict(self._post("get_policy_state", {"name": app_name, "uid": str(uid)}))

    def set_app_options(self, app_name: str, **options: Any) -> None:
        """Set app options, e.g. ``cache=False`` or ``overload="503"``."""
        self._post("set_app_options", {"name": app_name, "options": options})

    def set_model_options(self, name: str, version: str, **options: Any) -> None:
        """Set a model version's ``batching``, ``max_batch_delay_ms``, ``queue_capacity``."""
        self._post(
            "set_model_options",
            {"model_name": name, "model_version": str(version), "options": options},
        )

    def unregister_application(self, name: str) -> None:
        self._post("delete_app", {"name": name})

    def link_model_to_app(self, app_name: str, model_name: str) -> None:
        self._post("add_model_links", {"app_name": app_name, "model_names": [model_name]})

    def unlink_model_from_app(self, app_name: str, model_name: str) -> None:
        self._post("delete_model_links", {"app_name": app_name, "model_names": [model_name]})

    def add_model(self, body: dict[str, Any]) -> None:
        """Send a complete ``add_model`` body (what the deployers build)."""
        self._post("add_model", body)

    def register_model(
        self,
        name: str,
        version: str,
        input_type: str,
        labels: list[str] | None = None,
        batch_size: int = -1,
    ) -> None:
        """Register a model version without an artifact: its containers are
        started elsewhere and connect to the RPC port by themselves."""
        self.add_model(
            {
                "model_name": name,
                "model_version": str(version),
                "input_type": input_type,
                "labels": labels or [],
                "batch_size": batch_size,
                "container_name": "external",
                "num_replicas": 0,
            }
        )

    def deploy_model(
        self,
        name: str,
        version: str,
        input_type: str,
        model_data: bytes,
        labels: list[str] | None = None,
        num_replicas: int = 1,
        batch_size: int = -1,
        pkgs_to_install: list[str] | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        """Deploy a cloudpickled model (a callable, or an object with ``predict``)
        and start ``num_replicas`` containers for it. ``options``: batching,
        queueing, memory and autoscaling options (see the management API docs)."""
        self.add_model(
            {
                "model_name": name,
                "model_version": str(version),
                "input_type": input_type,
                "labels": labels or [],
                "batch_size": batch_size,
                "num_replicas": num_replicas,
                "model_data": base64.b64encode(model_data).decode(),
                "pkgs_to_install": list(pkgs_to_install or []),
                "options": dict(options or {}),
            }
        )

    def set_model_version(self, name: str, version: str, num_replicas: int | None = None) -> None:
        self._post("set_model_version", {"model_name": name, "model_version": str(version)})
        if num_replicas is not None:
            self.set_num_replicas(name, num_replicas, version)

    def get_current_model_version(self, name: str) -> str:
        for model in self.get_all_models(verbose=True):
            if model["model_name"] == name and model["is_current_version"]:
                return str(model["model_version"])
        raise ClipperException(f"model '{name}' has no current version")

    def set_num_replicas(self, name: str, num_replicas: int, version: str | None = None) -> None:
        version = version or self.get_current_model_version(name)
        self._post(
            "set_num_replicas",
            {"model_name": name, "model_version": str(version), "num_replicas": num_replicas},
        )

    def get_num_replicas(self, name: str, version: str | None = None) -> int:
        version = version or self.get_current_model_version(name)
        body = {"model_name": name, "model_version": str(version)}
        return int(self._post("get_num_replicas", body)["num_replicas"])

    def get_all_apps(self, verbose: bool = False) -> list[Any]:
        return list(self._post("get_all_applications", {"verbose": verbose}))

    def get_app_info(self, name: str) -> dict[str, Any] | None:
        info = self._post("get_application", {"name": name})
        return info or None

    def get_linked_models(self, app_name: str) -> list[str]:
        return list(self._post("get_linked_models", {"app_name": app_name}))

    def get_all_models(self, verbose: bool = False) -> list[Any]:
        return list(self._post("get_all_models", {"verbose": verbose}))

    def get_model_info(self, name: str, version: str) -> dict[str, Any] | None:
        info = self._post("get_model", {"model_name": name, "model_version": str(version)})
        return info or None

    def get_all_model_replicas(self, verbose: bool = False) -> list[Any]:
        """Every replica the server knows: started by its manager, or connected."""
        return list(self._post("get_all_containers", {"verbose": verbose}))

    def get_model_replica_info(
        self, name: str, version: str, replica_id: str | None = None
    ) -> dict[str, Any] | None:
        body: dict[str, Any] = {"model_name": name, "model_version": str(version)}
        if replica_id is not None:
            body["replica_id"] = replica_id
        return self._post("get_container", body) or None

    def delete_versioned_model(self, model_name: str, version: str) -> None:
        """Remove one version of a model: its record, artifact and replicas."""
        self._post("delete_versioned_model", {"model_name": model_name, "model_version": version})

    def inspect_instance(self) -> dict[str, Any]:
        """The server's status: ports, uptime, replicas, per-model queue figures."""
        if not self.connected:
            raise UnconnectedException()
        try:
            r = self._http("GET", f"{self.management_url}/admin/status", self.timeout)
            if r.status_code == 401:
                raise self._unauthorized("status")
            r.raise_for_status()
            return dict(r.json())
        except (httpx.HTTPError, ValueError) as exc:
            raise ClipperException(f"status from {self.management_url} failed: {exc}") from exc

    def get_metric_addr(self) -> str:
        """``host:port`` of the Prometheus endpoint (``/metrics`` on the query port)."""
        return self.get_query_addr()

    def get_clipper_logs(self, lines: int = 200, replica: str | None = None) -> list[str]:
        """The last ``lines`` lines of the server's log, or of one replica's."""
        body: dict[str, Any] = {"lines": lines}
        if replica is not None:
            body["replica"] = replica
        return list(self._post("get_logs", body)["lines"])

    def stop_versioned_models(self, model_versions_dict: dict[str, list[str]]) -> None:
        """Stop the replicas of the given versions: ``{"m": ["1", "2"]}``."""
        for name, versions in model_versions_dict.items():
            for version in versions:
                self.set_num_replicas(name, 0, str(version))

    def stop_models(self, model_names: list[str]) -> None:
        """Stop the replicas of every version of the given models."""
        wanted = set(model_names)
        versions: dict[str, list[str]] = {}
        for m in self.get_all_models(verbose=True):
            if m["model_name"] in wanted:
                versions.setdefault(m["model_name"], []).append(m["model_version"])
        self.stop_versioned_models(versions)

    def stop_inactive_model_versions(self, model_names: list[str]) -> None:
        """Stop the replicas of every version but the current one."""
        wanted = set(model_names)
        versions: dict[str, list[str]] = {}
        for m in self.get_all_models(verbose=True):
            if m["model_name"] in wanted and not m["is_current_version"]:
                versions.setdefault(m["model_name"], []).append(m["model_version"])
        self.stop_versioned_models(versions)

    def stop_all_model_containers(self) -> None:
        """Stop every replica of every model (the server keeps running)."""
        self.stop_models(sorted({m["model_name"] for m in self.get_all_models(verbose=True)}))

    def delete_application(self, name: str) -> None:
        """Deprecated alias of :meth:`unregister_application`."""
        warnings.warn(
            "delete_application is deprecated; use unregister_application",
            DeprecationWarning,
            stacklevel=2,
        )
        self.unregister_application(name)

    def test_predict_function(self, query: dict[str, Any], func: Any, input_type: str) -> Any:
        """Run ``func`` here on ``query`` exactly as a container would receive it.

        ``query`` is a predict body (``{"input": x}`` or ``{"input_batch": [...]}``);
        returns the list of outputs. Raises ClipperException for a bad query.
        """
        from ..exceptions import InputError
        from ..frontend.inputs import parse_predict_body
        from ..rpc import protocol
        from ..types import InputType

        itype = InputType.parse(input_type)
        try:
            request = parse_predict_body(orjson.dumps(query), itype, None)
        except InputError as exc:
            raise ClipperException(str(exc)) from exc
        fields, frames = protocol.encode_inputs(itype.value, request.inputs)
        inputs = protocol.decode_inputs(fields, [bytes(f) for f in frames])
        return list(func(inputs))
