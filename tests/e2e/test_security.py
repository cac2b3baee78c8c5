"""Security and graceful operation: tokens, secrets, API keys, TLS, limits, drains."""

import os
import subprocess
import sys

import cloudpickle
import httpx
import pytest

from clipper.admin import ClipperConnection, ClipperException, LocalContainerManager
from clipper.deployers.python import deploy_python_closure
from tests.e2e import models
from tests.helpers import Clipper, manager_on_free_ports

pytestmark = pytest.mark.slow

TOKEN = "s3cret-admin-token-for-tests"
SECRET = "container-shared-secret"


manager = manager_on_free_ports


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    cm = manager(
        tmp_path_factory.mktemp("guarded"),
        admin_token=TOKEN,
        rpc_secret=SECRET,
        server_flags=["--max-batch-inputs", "5"],
    )
    server = Clipper(cm.state_path, cm=cm)
    server.http.headers["Authorization"] = f"Bearer {TOKEN}"
    server.start()
    yield server
    server.stop()


def test_the_management_api_needs_the_token(guarded):
    r = httpx.post(f"{guarded.admin_url}/admin/get_all_applications", json={})
    assert r.status_code == 401 and "Bearer" in r.json()["cause"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = httpx.post(
        f"{guarded.admin_url}/admin/get_all_applications",
        json={},
        headers={"Authorization": "Bearer wrong"},
    )
    assert r.status_code == 401
    assert httpx.get(f"{guarded.admin_url}/admin/status").status_code == 401
    assert httpx.get(f"{guarded.admin_url}/admin/ping").status_code == 401  # ping too
    assert httpx.get(f"{guarded.admin_url}/health").status_code == 200  # liveness stays open
    guarded.conn.register_application("safe", "doubles", "-1", 2_000_000)
    assert "safe" in guarded.conn.get_all_apps()
    stranger = ClipperConnection(
        LocalContainerManager(
            clipper_management_port=guarded.cm.clipper_management_port, admin_token="nope"
        )
    )
    with pytest.raises(ClipperException, match=r"401.*admin_token=") as refused:
        stranger.connect()
    assert TOKEN not in str(refused.value)


def test_managed_replicas_present_the_secret_and_strangers_are_refused(guarded, tmp_path):
    deploy_python_closure(guarded.conn, "safe-m", "1", "doubles", models.total)
    guarded.conn.link_model_to_app("safe", "safe-m")
    guarded.wait_live("safe-m")
    assert guarded.predict("safe", {"input": [1.0, 2.0]}).json()["output"] == 3.0
    model_file = tmp_path / "m.pkl"
    model_file.write_bytes(cloudpickle.dumps(models.total))
    env = {k: v for k, v in os.environ.items() if k != "CLIPPER_RPC_SECRET"}
    stray = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipper.container",
            "--address",
            f"tcp://127.0.0.1:{guarded.cm.clipper_rpc_port}",
            "--model-name",
            "safe-m",
            "--model-version",
            "1",
            "--input-type",
            "doubles",
            "--model-path",
            str(model_file),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stray.returncode == 2 and "secret" in stray.stderr
    assert len(guarded.live_replicas("safe-m")) == 1


def test_app_api_keys(guarded):
    key = "k" * 20
    guarded.conn.set_app_options("safe", api_keys=[key])
    assert guarded.predict("safe", {"input": [1.0]}).status_code == 401
    r = guarded.predict("safe", {"input": [1.0]}, headers={"X-Api-Key": key})
    assert r.status_code == 200 and r.json()["output"] == 1.0
    stored = guarded.conn.get_app_info("safe")["options"]
    assert key not in str(stored) and len(stored["api_key_sha256"]) == 1
    guarded.conn.set_app_options("safe", api_keys=[])
    assert guarded.predict("safe", {"input": [1.0]}).status_code == 200


def test_batch_length_is_limited(guarded):
    r = guarded.predict("safe", {"input_batch": [[1.0]] * 6})
    assert r.status_code == 400 and "limit is 5" in r.json()["cause"]


def test_a_server_without_a_configured_token_makes_one_and_closes_the_api(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPPER_")}
    cm = manager(tmp_path / "state")
    conn = ClipperConnection(cm)
    old = os.environ.copy()
    os.environ.clear()
    os.environ.update(env)
    try:
        conn.start_clipper(timeout=120)
        state = cm.state_path
        token = (state / "admin_token").read_text().strip()
        assert len(token) >= 32
        # Owner-only: the folder, the secrets and the server record.
        assert state.stat().st_mode & 0o777 == 0o700
        for name in ("admin_token", "rpc_secret", "server.json", "clipper.db"):
            assert (state / name).stat().st_mode & 0o777 == 0o600, name
        assert (state / "logs").stat().st_mode & 0o777 == 0o700
        # The client found the token by itself; strangers get a 401 naming where to look.
        assert conn.get_all_apps() == []
        url = f"http://127.0.0.1:{cm.clipper_management_port}"
        assert httpx.get(f"{url}/admin/ping").status_code == 401
        basic = httpx.get(f"{url}/admin/ping", auth=("clipper", token))
        assert basic.status_code == 200  # clipper_admin 0.4.1: user-info in the address
        elsewhere = ClipperConnection(manager(tmp_path / "other"))
        elsewhere.cm.clipper_management_port = cm.clipper_management_port
        with pytest.raises(ClipperException, match=r"401.*No token was found"):
            elsewhere.connect()
    finally:
        conn.stop_all()
        os.environ.clear()
        os.environ.update(old)
