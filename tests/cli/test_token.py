"""``clipper token``: the admin token (or the RPC secret) of a state folder."""

from __future__ import annotations

from pathlib import Path

from clipper.statedir import ADMIN_TOKEN_FILE, RPC_SECRET_FILE, load_or_create_secret
from tests.cli.runner import run_cli


def test_token_prints_the_state_folders_secrets(tmp_path: Path) -> None:
    missing = run_cli("--state-dir", str(tmp_path), "token")
    assert missing.returncode == 1
    assert "no admin token found" in missing.stderr and str(tmp_path) in missing.stderr
    token = load_or_create_secret(tmp_path, ADMIN_TOKEN_FILE)
    secret = load_or_create_secret(tmp_path, RPC_SECRET_FILE)
    assert (tmp_path / ADMIN_TOKEN_FILE).stat().st_mode & 0o777 == 0o600
    shown = run_cli("--state-dir", str(tmp_path), "token")
    assert shown.returncode == 0 and shown.stdout.strip() == token
    rpc = run_cli("--state-dir", str(tmp_path), "token", "--rpc")
    assert rpc.returncode == 0 and rpc.stdout.strip() == secret
    # --token (alias of --admin-token) wins over the folder's.
    given = run_cli("--state-dir", str(tmp_path), "--token", "given", "token")
    assert given.stdout.strip() == "given"
    assert load_or_create_secret(tmp_path, ADMIN_TOKEN_FILE) == token  # kept, not remade
