"""Client-side descriptions of where and how a Clipper server runs."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from ..address import (
    DEFAULT_HOST,
    DEFAULT_MANAGEMENT_PORT,
    DEFAULT_QUERY_PORT,
    DEFAULT_RPC_PORT,
    ServerAddress,
    default_state_dir,
)
from ..statedir import ADMIN_TOKEN_FILE, read_secret


@dataclass
class LocalContainerManager:
    """A Clipper server on this machine, its replicas as local processes.

    As in clipper_admin, the container manager carries the addresses, so two
    instances can run side by side on other ports and state folders.
    """

    clipper_query_port: int = DEFAULT_QUERY_PORT
    clipper_management_port: int = DEFAULT_MANAGEMENT_PORT
    clipper_rpc_port: int = DEFAULT_RPC_PORT
    state_dir: str | Path | None = None
    redis_url: str | None = None
    host: str = DEFAULT_HOST
    server_flags: list[str] = field(default_factory=list)
    """More flags for ``python -m clipper.server`` (e.g. ``["--batching", "quantile"]``)."""
    admin_token: str | None = None
    """Token of the management API (passed to a started server by environment). Default:
    ``$CLIPPER_ADMIN_TOKEN``, else the one a server keeps in ``<state_dir>/admin_token``."""
    rpc_secret: str | None = None
    """Secret containers must present (passed to a started server by environment)."""
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    """Serve (and talk to) both HTTP ports over TLS."""
    tls_verify: bool | str = True
    """Verify the server's certificate: True, False, or a CA bundle path."""

    def verify(self) -> bool | ssl.SSLContext:
        """What the HTTP client verifies the server's certificate with."""
        if isinstance(self.tls_verify, str):
            return ssl.create_default_context(cafile=self.tls_verify)
        return self.tls_verify

    @property
    def address(self) -> ServerAddress:
        """Where the server is (read afresh: tests change the ports of a manager)."""
        return ServerAddress(
            self.host,
            self.clipper_query_port,
            self.clipper_management_port,
            self.clipper_rpc_port,
            self.state_path,
            tls=bool(self.tls_certfile),
        )

    @property
    def scheme(self) -> str:
        return self.address.scheme

    def resolve_admin_token(self) -> str | None:
        """The token to send: given, else ``$CLIPPER_ADMIN_TOKEN``, else the state folder's."""
        return (
            self.admin_token
            or os.environ.get("CLIPPER_ADMIN_TOKEN")
            or read_secret(self.state_path, ADMIN_TOKEN_FILE)
        )

    def token_source(self) -> str:
        """Where the token sent came from, for a 401's message."""
        if self.admin_token:
            return "The token was given to LocalContainerManager(admin_token=...)."
        if os.environ.get("CLIPPER_ADMIN_TOKEN"):
            return "The token came from $CLIPPER_ADMIN_TOKEN."
        path = self.state_path / ADMIN_TOKEN_FILE
        if path.is_file():
            return (
                f"The token came from {path}: is the server using another state folder? "
                "Set CLIPPER_HOME (or state_dir) to its folder, or CLIPPER_ADMIN_TOKEN."
            )
        return (
            f"No token was found: none given, no $CLIPPER_ADMIN_TOKEN, no {path}. Run as the "
            "user who started the server with its CLIPPER_HOME, or set CLIPPER_ADMIN_TOKEN "
            "(`clipper token` on the server's machine prints it)."
        )

    def server_env(self) -> dict[str, str]:
        """Secrets for a started server: in its environment, never in its argv."""
        env = {}
        if self.admin_token:
            env["CLIPPER_ADMIN_TOKEN"] = self.admin_token
        if self.rpc_secret:
            env["CLIPPER_RPC_SECRET"] = self.rpc_secret
        if self.redis_url:  # it may carry a password
            env["CLIPPER_STORE"] = self.redis_url
        return env

    def __post_init__(self) -> None:
        self.state_dir = (
            Path(self.state_dir).expanduser() if self.state_dir else default_state_dir()
        )

    @property
    def state_path(self) -> Path:
        assert isinstance(self.state_dir, Path)
        return self.state_dir

    def server_args(self) -> list[str]:
        """Flags for ``python -m clipper.server``."""
        args = [
            "--host",
            self.host,
            "--query-port",
            str(self.clipper_query_port),
            "--management-port",
            str(self.clipper_management_port),
            "--rpc-port",
            str(self.clipper_rpc_port),
            "--state-dir",
            str(self.state_path),
        ]
        if self.tls_certfile and self.tls_keyfile:
            args += ["--tls-certfile", self.tls_certfile, "--tls-keyfile", self.tls_keyfile]
        return [*args, *self.server_flags]
