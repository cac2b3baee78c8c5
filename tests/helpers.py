"""Shared test helpers: free ports, waiting on conditions, a running server."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from bench.harness import free_port

from clipper.admin import ClipperConnection, LocalContainerManager
from clipper.statedir import ADMIN_TOKEN_FILE, read_secret


def admin_token(state_dir: Path) -> str:
    """The admin token a server keeps in its state folder (made at its first start)."""
    token = read_secret(state_dir, ADMIN_TOKEN_FILE)
    assert token, f"no admin token in {state_dir}"
    return token


class AdminAuth(httpx.Auth):
    """Sends a server's admin token on requests to its management port, and only there
    (the query port never sees it), as the admin client does."""

    def __init__(self, admin_url: str, token: Callable[[], str]) -> None:
        self.admin_url = admin_url
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Any:
        if str(request.url).startswith(self.admin_url) and "authorization" not in request.headers:
            request.headers["Authorization"] = f"Bearer {self.token()}"
        yield request


def default_sigint() -> None:
    """``preexec_fn`` for a child the test stops with SIGINT (Ctrl-C).

    A command started in the background by a non-interactive shell inherits
    SIGINT ignored (POSIX), and Python then never raises KeyboardInterrupt:
    the child would not stop, and the test would hang in ``Popen.__exit__``.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll until ``condition()`` is truthy; generous deadlines, no bare sleeps."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # keep polling through transient errors
            last_exc = exc
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def manager_on_free_ports(state_dir: Path, **kw: Any) -> LocalContainerManager:
    """A container manager for a server on free ports, in ``state_dir``."""
    return LocalContainerManager(
        clipper_query_port=free_port(),
        clipper_management_port=free_port(),
        clipper_rpc_port=free_port(),
        state_dir=state_dir,
        **kw,
    )


class Clipper:
    """A real server process on free ports, driven through the admin client."""

    def __init__(
        self,
        state_dir: Path,
        cm: LocalContainerManager | None = None,
        redis_url: str | None = None,
    ) -> None:
        """A server on free ports; pass ``cm`` to reuse another's ports and state."""
        self.cm = cm or manager_on_free_ports(state_dir, redis_url=redis_url)
        self.conn = ClipperConnection(self.cm)
        self.query_url = f"http://127.0.0.1:{self.cm.clipper_query_port}"
        self.admin_url = f"http://127.0.0.1:{self.cm.clipper_management_port}"
        self.http = httpx.Client(timeout=30.0, auth=AdminAuth(self.admin_url, self.token))

    def token(self) -> str:
        """The admin token: the one given to the manager, else the server's own."""
        return self.cm.admin_token or admin_token(self.cm.state_path)

    def start(self) -> Clipper:
        self.conn.start_clipper(timeout=120)
        return self

    def admin(self, route: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return self.http.post(f"{self.admin_url}/admin/{route}", json=body or {})

    def status(self) -> dict[str, Any]:
        r = self.http.get(f"{self.admin_url}/admin/status")
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def predict(self, app: str, body: Any, **kw: Any) -> httpx.Response:
        return self.http.post(f"{self.query_url}/{app}/predict", json=body, **kw)

    def live_replicas(self, model: str, version: str = "1") -> list[dict[str, Any]]:
        return [
            r
            for r in self.status()["replicas"]
            if r["model_name"] == model and r["model_version"] == version and r["live"]
        ]

    def wait_live(self, model: str, count: int = 1, version: str = "1") -> list[dict[str, Any]]:
        return wait_for(  # type: ignore[no-any-return]
            lambda: (r := self.live_replicas(model, version)) and len(r) >= count and r,
            what=f"{count} live replica(s) of {model}:{version}",
        )

    def stop(self) -> None:
        pids = [r["pid"] for r in self.status()["replicas"] if r.get("pid")]
        server_pid = self.status()["pid"]
        self.conn.stop_all()
        self.http.close()
        # Everything the server started is gone with it.
        wait_for(lambda: not pid_alive(server_pid), 30, "the server to exit")
        for pid in pids:
            wait_for(lambda pid=pid: not pid_alive(pid), 30, f"replica pid {pid} to exit")


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1: (cert, key) PEM files,
    made by the ``openssl`` command (``make system-deps`` installs it)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-newkey", "rsa:2048", "-keyout", str(key), "-out", str(cert)),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key
