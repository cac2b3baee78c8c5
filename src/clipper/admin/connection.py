"""``ClipperConnection``: start, connect to and drive a Clipper server, as clipper_admin did."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson

from ..statedir import is_clipper_server, pid_alive, private_dir, read_server_record
from .exceptions import ClipperException, NotReadyException, UnconnectedException
from .manager import LocalContainerManager

log = logging.getLogger("clipper.admin")

DEPLOY_TIMEOUT = 300.0  # seconds deployers, links, versions and scaling wait by default
READY_TIMEOUT = 120.0  # seconds wait_until_ready waits by default
CRASH_RESTARTS = 3  # a version whose every replica restarted this often fails the wait early
# Artifacts above this go by the streamed upload route (/admin/upload_artifact); smaller
# ones inline in add_model's JSON (one request, and any server version takes them).
UPLOAD_THRESHOLD = 1024 * 1024
UPLOAD_CHUNK = 1024 * 1024
UPLOAD_ROUTE = "/admin/upload_artifact"

Artifact = bytes | str | os.PathLike[str]

Progress = Callable[[dict[str, Any]], None]


def _not_live(readiness: dict[str, Any]) -> tuple[list[str], list[str]]:
    """What a ``get_readiness`` answer is waiting for (one phrase per model version),
    and the labels of the replicas whose logs would tell why."""
    waiting, labels = [], []
    for m in readiness.get("models", []):
        if m["ready"]:
            continue
        replicas = m.get("replicas", [])
        about = f"model '{m['model_name']}' version '{m['model_version']}' has " + (
            f"{m['live_replicas']} of {m['target_replicas']} replica(s) live"
            if m["target_replicas"]
            else "no replica to run (0 requested; start one, or scale it up)"
        )
        crashed = [f"{r['replica']} restarted {r['restarts']}x" for r in replicas if r["restarts"]]
        if crashed:
            about += f" ({', '.join(crashed)})"
        waiting.append(about)
        labels += [str(r["replica"]) for r in replicas]
    if readiness.get("problem"):
        waiting.insert(0, str(readiness["problem"]))
    return waiting, labels


def _crashing(readiness: dict[str, Any]) -> bool:
    """Whether a version that should run keeps crashing: none of its replicas is
    live and every one has restarted ``CRASH_RESTARTS`` times (waiting longer is futile)."""
    return any(
        not m["ready"]
        and m["target_replicas"] > 0
        and m["replicas"]
        and all(not r["live"] and r["restarts"] >= CRASH_RESTARTS for r in m["replicas"])
        for m in readiness.get("models", [])
    )


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
        # The rich Console that upload progress bars draw on (default: a new one on
        # stderr); the CLI gives its own, so a bar nests under its status line.
        self.progress_console: Any = None

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
            method, url, timeout=timeout, headers=headers, verify=self._verify(url), **kw
        )

    def _verify(self, url: str) -> bool | ssl.SSLContext:
        """How the HTTP client checks ``url``'s certificate. A plain-http URL has none:
        no CA bundle is loaded for it (httpx loads one per client, ~20 ms each, which
        every CLI command paid several times)."""
        return self.cm.verify() if url.startswith("https:") else False

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
                base_url=self.management_url,
                timeout=self.timeout,
                verify=self._verify(self.management_url),
            )
        try:
            r = self._client.post(f"/admin/{route}", json=body, headers=self._auth_headers())
        except httpx.HTTPError as exc:
            raise ClipperException(f"{route}: cannot reach {self.management_url}: {exc}") from exc
        if r.status_code == 401:
            raise self._unauthorized(route)
        return _answer(route, r)

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
        exist_ok: bool = False,
    ) -> None:
        """Register an app: its REST endpoint ``/{name}/predict`` appears at once.

        ``selection_policy`` is one of ``single``, ``exp3``, ``exp4``,
        ``epsilon_greedy``, ``ucb1``, ``thompson``; ``options`` may set
        ``cache`` (bool) and ``overload`` (``"default"`` or ``"503"``).
        An app of that name is an error, unless ``exist_ok=True`` and it is
        defined the same way (then nothing changes; a difference is an error
        naming the fields that differ), so a script can run again.
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
        if exist_ok:
            body["exist_ok"] = True
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

    def link_model_to_app(
        self,
        app_name: str,
        model_name: str,
        exist_ok: bool = False,
        wait: bool = True,
        timeout: float = DEPLOY_TIMEOUT,
    ) -> None:
        """Link a model to an app: the app's queries go to the model's current version.

        A model already linked is an error unless ``exist_ok=True``. With
        ``wait`` (the default) it returns once that version has a live replica
        (at once if it runs none), so the app answers from the model at once;
        NotReadyException after ``timeout`` seconds.
        """
        body: dict[str, Any] = {"app_name": app_name, "model_names": [model_name]}
        if exist_ok:
            body["exist_ok"] = True
        self._post("add_model_links", body)
        if wait:
            self.wait_until_live(model_name, timeout=timeout)

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
        exist_ok: bool = False,
    ) -> None:
        """Register a model version without an artifact: its containers are
        started elsewhere and connect to the RPC port by themselves.
        ``exist_ok``: as for :meth:`deploy_model`."""
        body: dict[str, Any] = {
            "model_name": name,
            "model_version": str(version),
            "input_type": input_type,
            "labels": labels or [],
            "batch_size": batch_size,
            "container_name": "external",
            "num_replicas": 0,
        }
        if exist_ok:
            body["exist_ok"] = True
        self.add_model(body)

    def deploy_model(
        self,
        name: str,
        version: str,
        input_type: str,
        model_data: Artifact,
        labels: list[str] | None = None,
        num_replicas: int = 1,
        batch_size: int = -1,
        pkgs_to_install: list[str] | None = None,
        options: dict[str, Any] | None = None,
        exist_ok: bool = False,
        wait: bool = True,
        timeout: float = DEPLOY_TIMEOUT,
        progress: bool | None = None,
        make_current: bool = True,
    ) -> None:
        """Deploy a cloudpickled model (a callable, or an object with ``predict``)
        and start ``num_replicas`` containers for it. ``options``: batching,
        queueing, memory and autoscaling options (see the management API docs).

        ``model_data`` is the artifact's bytes or the path of a file holding them,
        of any size: above ``UPLOAD_THRESHOLD`` (1 MiB) it is streamed to
        ``/admin/upload_artifact`` first (see :meth:`upload_artifact`; a progress
        bar on a terminal, or as ``progress`` says), and ``add_model`` names it by
        its SHA-256; smaller ones travel inline. A server without the upload
        route (an older one) gets it inline, as far as its body limit allows.

        The version becomes the model's current one (``make_current=False``:
        the current one stays, for a rollout). An existing version of
        that name is an error, unless ``exist_ok=True`` and it is identical
        (the same artifact bytes, input type, labels, batch size, options and
        packages): then nothing changes. With ``wait`` (the default) it returns
        once a replica of the version is live (at once for ``num_replicas=0``
        or an autoscaled model at zero); NotReadyException after ``timeout``
        seconds, or sooner when every replica keeps crashing.
        """
        body: dict[str, Any] = {
            "model_name": name,
            "model_version": str(version),
            "input_type": input_type,
            "labels": labels or [],
            "batch_size": batch_size,
            "num_replicas": num_replicas,
            "pkgs_to_install": list(pkgs_to_install or []),
            "options": dict(options or {}),
        }
        if exist_ok:
            body["exist_ok"] = True
        if not make_current:
            body["make_current"] = False
        size = len(model_data) if isinstance(model_data, bytes) else os.path.getsize(model_data)
        digest = None
        if size > UPLOAD_THRESHOLD:
            digest = self.upload_artifact(model_data, progress=progress, old_server_ok=True)
        if digest is not None:
            body["artifact"] = digest
            self.add_model(body)
        else:
            data = model_data if isinstance(model_data, bytes) else Path(model_data).read_bytes()
            body["model_data"] = base64.b64encode(data).decode()
            try:
                self.add_model(body)
            except ClipperException as exc:
                if size > UPLOAD_THRESHOLD and "(413)" in str(exc):
                    raise ClipperException(
                        f"{exc}. This server predates streamed artifact uploads (it has no "
                        f"{UPLOAD_ROUTE}), so an artifact must fit its request body limit "
                        "(--max-body-bytes): upgrade the server to deploy larger ones"
                    ) from exc
                raise
        if wait:
            self.wait_until_live(name, str(version), timeout=timeout)

    def upload_artifact(
        self, data: Artifact, progress: bool | None = None, *, old_server_ok: bool = False
    ) -> str | None:
        """Stream an artifact (bytes, or a file's path: read in chunks, never whole)
        to ``/admin/upload_artifact``; its SHA-256, which ``add_model``'s
        ``artifact`` field names. ``progress``: show a progress bar (default: when
        stderr is a terminal). With ``old_server_ok``, None from a server without
        the route (else a ClipperException)."""
        if not self.connected:
            raise UnconnectedException()
        size, digest, chunks = _artifact_stream(data)
        if progress is None:
            progress = sys.stderr.isatty()
        headers = {
            **self._auth_headers(),
            "Content-Type": "application/octet-stream",
            "Content-Length": str(size),
            "X-Clipper-Artifact-SHA256": digest,
        }
        url = self.management_url + UPLOAD_ROUTE
        bar = _ProgressBar(size, self.progress_console) if progress else None
        sent = chunks if bar is None else bar.wrap(chunks)
        try:
            with bar or contextlib.nullcontext():
                r = httpx.post(
                    url,
                    content=sent,
                    headers=headers,
                    timeout=httpx.Timeout(self.timeout),
                    verify=self._verify(url),
                )
        except httpx.HTTPError as exc:
            raise ClipperException(
                f"upload_artifact: cannot reach {self.management_url}: {exc}"
            ) from exc
        if r.status_code == 401:
            raise self._unauthorized("upload_artifact")
        if r.status_code in (404, 413) and not self._has_upload_route():
            if old_server_ok:
                log.warning(
                    "the server at %s has no %s (an older Clipper): sending the artifact inline",
                    self.management_url,
                    UPLOAD_ROUTE,
                )
                return None
            raise ClipperException(
                f"upload_artifact: the server at {self.management_url} has no {UPLOAD_ROUTE} "
                "(an older Clipper): upgrade it"
            )
        payload = _answer("upload_artifact", r)
        return str(payload["artifact"])

    def _has_upload_route(self) -> bool:
        """Whether the server streams uploads: a GET of the route is a 405 there
        (the route takes POST), a 404 on a server without it."""
        try:
            url = self.management_url + UPLOAD_ROUTE
            return self._http("GET", url, self.timeout).status_code != 404
        except httpx.HTTPError:
            return True

    def set_model_version(
        self,
        name: str,
        version: str,
        num_replicas: int | None = None,
        wait: bool = True,
        timeout: float = DEPLOY_TIMEOUT,
    ) -> None:
        """Make ``version`` the one that serves the model's queries (a rollback is
        this with an older version). With ``wait`` it returns once that version has
        a live replica (at once if it runs none); NotReadyException after ``timeout``."""
        self._post("set_model_version", {"model_name": name, "model_version": str(version)})
        if num_replicas is not None:
            self.set_num_replicas(name, num_replicas, version, wait=False)
        if wait:
            self.wait_until_live(name, str(version), timeout=timeout)

    def get_current_model_version(self, name: str) -> str:
        versions = [m for m in self.get_all_models(verbose=True) if m["model_name"] == name]
        if not versions:
            raise ClipperException(f"no model named '{name}'")
        for model in versions:
            if model["is_current_version"]:
                return str(model["model_version"])
        raise ClipperException(f"model '{name}' has no current version")

    def set_num_replicas(
        self,
        name: str,
        num_replicas: int,
        version: str | None = None,
        wait: bool = True,
        timeout: float = DEPLOY_TIMEOUT,
    ) -> None:
        """Run ``num_replicas`` replicas of a version (default: the current one).
        With ``wait`` it returns once at least one of them is live (at once for
        0); NotReadyException after ``timeout`` seconds."""
        version = version or self.get_current_model_version(name)
        self._post(
            "set_num_replicas",
            {"model_name": name, "model_version": str(version), "num_replicas": num_replicas},
        )
        if wait:
            self.wait_until_live(name, str(version), timeout=timeout)

    # -- waiting for replicas -----------------------------------------------------

    def get_readiness(
        self,
        app_name: str | None = None,
        model_name: str | None = None,
        version: str | None = None,
    ) -> dict[str, Any]:
        """Whether an app (or one model version: default the current one) can answer
        now: ``{"ready", "problem", "models": [{"model_name", "model_version",
        "target_replicas", "live_replicas", "autoscaled", "ready", "replicas"}]}``."""
        body: dict[str, Any] = {}
        if app_name is not None:
            body["app_name"] = app_name
        if model_name is not None:
            body["model_name"] = model_name
        if version is not None:
            body["model_version"] = str(version)
        return dict(self._post("get_readiness", body))

    def wait_until_live(
        self,
        model_name: str,
        version: str | None = None,
        timeout: float = DEPLOY_TIMEOUT,
        progress: Progress | None = None,
    ) -> None:
        """Wait until a version of a model (default: the current one) has a live
        replica; at once when it runs none. What deployers, links, versions and
        scaling do with ``wait=True``. NotReadyException after ``timeout`` seconds,
        or sooner when every replica keeps crashing. ``progress`` is called with
        each :meth:`get_readiness` answer."""
        what = f"model '{model_name}'" + (f" version '{version}'" if version else "")
        self._wait(
            lambda: self.get_readiness(model_name=model_name, version=version),
            timeout,
            f"a live replica of {what}",
            progress,
        )

    def wait_until_ready(
        self, app_name: str, timeout: float = READY_TIMEOUT, progress: Progress | None = None
    ) -> bool:
        """Wait until the app can answer from its models: every linked model's
        current version has a live replica (a model that autoscales from zero
        counts: it starts on the first query). Returns True; NotReadyException
        naming what is not live after ``timeout`` seconds (or sooner when every
        replica of a model keeps crashing)."""
        self._wait(
            lambda: self.get_readiness(app_name=app_name),
            timeout,
            f"application '{app_name}' to be ready",
            progress,
        )
        return True

    def _wait(
        self,
        check: Callable[[], dict[str, Any]],
        timeout: float,
        what: str,
        progress: Progress | None,
    ) -> None:
        started = time.monotonic()
        deadline = started + timeout
        pause = 0.02
        while True:
            readiness = check()
            if progress is not None:
                progress(readiness)
            if readiness["ready"]:
                return
            crashing = _crashing(readiness)
            if crashing or time.monotonic() >= deadline:
                waiting, labels = _not_live(readiness)
                if crashing:
                    head = f"gave up waiting for {what}: its replicas keep crashing"
                else:
                    head = f"timed out after {timeout:g}s waiting for {what}"
                logs = (
                    ("; its log tells why: " if len(labels) == 1 else "; their logs tell why: ")
                    + ", ".join(f"`clipper logs --replica {label}`" for label in labels[:3])
                    if labels
                    else "; `clipper logs` shows the server's log"
                )
                raise NotReadyException(f"{head}: {'; '.join(waiting) or 'not ready'}{logs}")
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.25)

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

    def start_rollout(
        self,
        model: str,
        version: str,
        mode: str,
        fraction: float | None = None,
        limits: dict[str, float] | None = None,
        steps: Sequence[tuple[float, float]] | None = None,
    ) -> dict[str, Any]:
        """Roll ``version`` of ``model`` out against its current version.

        ``mode``: ``"shadow"`` (a copy of ``fraction`` of the queries, 1 by
        default, goes to the new version; its answers are compared, never
        returned), ``"canary"`` (the new version answers ``fraction`` of the
        queries, 0.05 by default; ``steps``, ``(seconds after the start,
        fraction)`` pairs, raise it on a schedule) or ``"bandit"`` (the app's
        feedback judges the two versions and the rollout promotes or rolls back
        by itself within ``limits``). Called again for the same version, it
        changes the rollout. Returns the rollout as stored.
        """
        body: dict[str, Any] = {"model_name": model, "model_version": str(version), "mode": mode}
        if fraction is not None:
            body["fraction"] = fraction
        if limits is not None:
            body["limits"] = dict(limits)
        if steps is not None:
            body["steps"] = [list(step) for step in steps]
        return dict(self._post("start_rollout", body))

    def stop_rollout(self, model: str, promote: bool = False) -> dict[str, Any]:
        """End ``model``'s rollout: with ``promote`` the new version becomes the
        current one, else the current one stays. Returns how it ended."""
        return dict(self._post("stop_rollout", {"model_name": model, "promote": promote}))

    def get_rollouts(self) -> list[dict[str, Any]]:
        """The rollouts running, each with its live ``figures`` per version."""
        return list(self._post("get_rollouts", {}))

    def inspect_instance(self) -> dict[str, Any]:
        """The server's status: ports, uptime, replicas, per-model queue figures,
        and the rollouts running (``rollouts``)."""
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

    def get_clipper_logs(
        self, lines: int = 200, replica: str | None = None, worker: int | None = None
    ) -> list[str]:
        """The last ``lines`` lines of the server's log, of one replica's, or of one
        frontend worker process's (``--workers``; 1 and up: 0 is the server's)."""
        body: dict[str, Any] = {"lines": lines}
        if replica is not None:
            body["replica"] = replica
        if worker:
            body["worker"] = worker
        return list(self._post("get_logs", body)["lines"])

    def stop_versioned_models(self, model_versions_dict: dict[str, list[str]]) -> None:
        """Stop the replicas of the given versions: ``{"m": ["1", "2"]}``."""
        for name, versions in model_versions_dict.items():
            for version in versions:
                self.set_num_replicas(name, 0, str(version), wait=False)

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
        """Run ``func`` here on ``query`` as a replica would, and return what a client gets.

        ``query`` is a predict body (``{"input": x}`` or ``{"input_batch": [...]}``);
        ``func`` a function or an object with ``predict``. The inputs go through
        the server's parsing and the container's own code path (one batch: the
        same call, output checks, isolation of inputs it raises on, and
        encoding), and the result is read back as the frontend reads it.
        Returns the list of outputs, one per input, as the REST answers'
        ``output`` fields hold them (JSON values). Raises ClipperException for
        a bad query, or naming each input that would get the app's default
        output, with the server's explanation (chained to what ``func`` raised).
        """
        from ..batching.outcomes import batch_outcomes
        from ..container.runtime import dry_run
        from ..exceptions import InputError
        from ..frontend.inputs import parse_predict_body
        from ..types import InputType, ModelId, json_default

        itype = InputType.parse(input_type)
        try:
            request = parse_predict_body(orjson.dumps(query), itype, None)
        except InputError as exc:
            raise ClipperException(str(exc)) from exc
        result, raised = dry_run(func, itype.value, list(request.inputs))
        name = getattr(func, "__name__", None) or type(func).__name__
        outcomes = batch_outcomes(ModelId(name, "test"), result, len(request.inputs))
        failed = [f"input {i + 1}: {o.error}" for i, o in enumerate(outcomes) if not o.ok]
        if failed:
            same = len(failed) > 1 and len({o.error for o in outcomes}) == 1
            raise ClipperException(
                f"the server would answer {len(failed)} of {len(outcomes)} inputs with the "
                "app's default output: "
                + (f"every input: {outcomes[0].error}" if same else "; ".join(failed))
            ) from (raised[0] if raised else None)
        option = orjson.OPT_NON_STR_KEYS
        return [
            orjson.loads(orjson.dumps(o.output, default=json_default, option=option))
            for o in outcomes
        ]


def _artifact_stream(data: Artifact) -> tuple[int, str, Iterator[bytes]]:
    """An artifact's size, SHA-256 and its bytes in chunks: from memory (no copy of
    the whole) or from a file (read twice, a chunk at a time: digest, then send)."""
    if isinstance(data, bytes):
        view = memoryview(data)
        digest = hashlib.sha256(view).hexdigest()
        chunks = (bytes(view[i : i + UPLOAD_CHUNK]) for i in range(0, len(view), UPLOAD_CHUNK))
        return len(data), digest, chunks
    path = Path(data)
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    size = path.stat().st_size

    def read() -> Iterator[bytes]:
        with open(path, "rb") as f:
            while chunk := f.read(UPLOAD_CHUNK):
                yield chunk

    return size, digest, read()


class _ProgressBar:
    """A transfer bar on stderr (rich, imported only when one is shown)."""

    def __init__(self, total: int, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("uploading the artifact"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console if console is not None else Console(stderr=True),
            transient=True,
        )
        self.task = self.progress.add_task("upload", total=total)

    def wrap(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            yield chunk
            self.progress.advance(self.task, len(chunk))

    def __enter__(self) -> _ProgressBar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def _answer(route: str, r: httpx.Response) -> Any:
    """A management answer's JSON; ClipperException naming the route, the status
    and the server's cause when it is not a 200."""
    try:
        payload = r.json()
    except ValueError:
        payload = {"error": r.text}
    if r.status_code != 200:
        cause = (
            payload.get("cause") or payload.get("error") if isinstance(payload, dict) else r.text
        )
        raise ClipperException(f"{route} failed ({r.status_code}): {cause}")
    return payload
