"""Where a Clipper server is: its host, ports, state folder and scheme, spelled once.

A leaf module (the standard library only): the server's settings, the admin
client's container manager, the CLI and the container all take their
defaults from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_QUERY_PORT = 1337
DEFAULT_MANAGEMENT_PORT = 1338
DEFAULT_RPC_PORT = 7000


def default_state_dir() -> Path:
    """$CLIPPER_HOME, else ~/.clipper (DESIGN.md's state folder)."""
    home = os.environ.get("CLIPPER_HOME")
    return Path(home).expanduser() if home else Path.home() / ".clipper"


def connect_host(host: str) -> str:
    """The address a client dials for a server bound to ``host`` (a wildcard: loopback)."""
    return DEFAULT_HOST if host in ("0.0.0.0", "*") else host


@dataclass(frozen=True)
class ServerAddress:
    """One server's address: what its settings bind and what clients dial."""

    host: str = DEFAULT_HOST
    query_port: int = DEFAULT_QUERY_PORT
    management_port: int = DEFAULT_MANAGEMENT_PORT
    rpc_port: int = DEFAULT_RPC_PORT
    state_dir: Path | None = None  # None: default_state_dir()
    tls: bool = False

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).expanduser() if self.state_dir else default_state_dir()

    @property
    def query_url(self) -> str:
        return f"{self.scheme}://{connect_host(self.host)}:{self.query_port}"

    @property
    def management_url(self) -> str:
        return f"{self.scheme}://{connect_host(self.host)}:{self.management_port}"

    @property
    def rpc_url(self) -> str:
        """The ZeroMQ address containers connect to."""
        return f"tcp://{connect_host(self.host)}:{self.rpc_port}"
