"""The state folder's own files: the server record, the secrets, owner-only modes.

A leaf module (the standard library only), so the admin client and the CLI
find a running server and its token without importing the server.

- ``server.json``: the running server's pid, host and ports;
- ``admin_token``: the management API's token, generated at first start when
  none is configured;
- ``rpc_secret``: what replicas present when they register, likewise.

The folder is 0700 and these files 0600: only their owner reads them.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

SERVER_FILE = "server.json"
ADMIN_TOKEN_FILE = "admin_token"
RPC_SECRET_FILE = "rpc_secret"


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) if needed, and make it owner-only (0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by its owner only (0600)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_secret(state_dir: Path, name: str) -> str | None:
    """A secret kept in the state folder (``ADMIN_TOKEN_FILE``, ``RPC_SECRET_FILE``)."""
    try:
        value = (state_dir / name).read_text().strip()
    except OSError:
        return None
    return value or None


def load_or_create_secret(state_dir: Path, name: str) -> str:
    """The secret in ``state_dir/name``; a new random one, stored 0600, if there is none."""
    existing = read_secret(state_dir, name)
    if existing is not None:
        path = state_dir / name
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        return existing
    value = secrets.token_urlsafe(32)
    write_private(state_dir / name, value + "\n")
    return value


def read_server_record(state_dir: Path) -> dict[str, Any] | None:
    """The record a running server keeps in its state folder (pid, ports), if any."""
    try:
        info = json.loads((state_dir / SERVER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def write_server_record(state_dir: Path, info: dict[str, Any]) -> None:
    write_private(state_dir / SERVER_FILE, json.dumps(info, indent=2))


def remove_server_record(state_dir: Path, pid: int) -> None:
    """Remove the record if it is ``pid``'s (a newer server may have replaced it)."""
    info = read_server_record(state_dir)
    if info is not None and info.get("pid") == pid:
        (state_dir / SERVER_FILE).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_clipper_server(pid: int) -> bool:
    """Whether process ``pid`` runs a Clipper server (``python -m clipper.server`` or
    ``clipper start``), by its command line: a recorded pid may since have gone to
    another program, which must never be signalled. Where there is no /proc, the
    caller's other checks decide (True)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists() and pid_alive(pid)
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if "clipper.server" in args:
        return True
    # `clipper start ...`: the console script (or python -m clipper) then `start`.
    for i, arg in enumerate(args[:-1]):
        if (os.path.basename(arg) == "clipper" or arg == "clipper") and args[i + 1] == "start":
            return True
    return False
