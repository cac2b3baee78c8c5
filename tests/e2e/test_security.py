"""Security and graceful operation: tokens, secrets, API keys, TLS, limits, drains."""

import os
import signal
import ssl
import subprocess
import sys
import threading

import cloudpickle
import httpx
import pytest

from clipper.admin import ClipperConnection, ClipperException, LocalContainerManager
from clipper.deployers.python import deploy_python_closure
from tests.e2e import models
from tests.helpers import Clipper, free_port, pid_alive, self_signed_cert, wait_for

pytestmark = pytest.mark.slow

TOKEN = "s3cret-admin-token-for-tests"
SECRET = "container-shared-secret"


def manager(tmp_path, **kw):
    return LocalContainerManager(
        clipper_query_port=free_port(),
        clipper_management_port=free_port(),
        clipper_rpc_port=free_port(),
        state_dir=tmp_path,
        **kw,
    )


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
    r = httpx.post(
        f"{guarded.admin_url}/admin/get_all_applications",
        json={},
        headers={"Authorization": "Bearer wrong"},
    )
    assert r.status_code == 401
    assert httpx.get(f"{guarded.admin_url}/admin/status").status_code == 401
    assert httpx.get(f"{guarded.admin_url}/admin/ping").status_code == 200
    guarded.conn.register_application("safe", "doubles", "-1", 2_000_000)
    assert "safe" in guarded.conn.get_all_apps()
    stranger = ClipperConnection(
        LocalContainerManager(
            clipper_management_port=guarded.cm.clipper_management_port, admin_token="nope"
        )
    )
    stranger.connect()
    try:
        with pytest.raises(ClipperException, match="401"):
            stranger.get_all_apps()
    finally:
        stranger.close()


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


def test_binding_beyond_loopback_without_a_token_is_refused(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CLIPPER_ADMIN_TOKEN"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipper.server",
            "--host",
            "0.0.0.0",
            "--state-dir",
            str(tmp_path),
            "--query-port",
            str(free_port()),
            "--management-port",
            str(free_port()),
            "--rpc-port",
            str(free_port()),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "CLIPPER_ADMIN_TOKEN" in out.stderr


def test_tls_on_both_http_ports(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    cm = manager(
        tmp_path / "state", tls_certfile=str(cert), tls_keyfile=str(key), tls_verify=str(cert)
    )
    conn = ClipperConnection(cm)
    conn.start_clipper(timeout=120)
    try:
        conn.register_application("tls", "doubles", "-1", 100_000)
        assert conn.get_all_apps() == ["tls"]
        q = f"https://127.0.0.1:{cm.clipper_query_port}"
        ctx = ssl.create_default_context(cafile=str(cert))
        assert httpx.get(f"{q}/health", verify=ctx).json() == {"status": "ok"}
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{cm.clipper_query_port}/health", timeout=5)
    finally:
        conn.stop_all()


def test_sigterm_drains_queries_in_flight(tmp_path):
    server = Clipper(tmp_path).start()
    stopped = False
    try:
        deploy_python_closure(server.conn, "drain", "1", "doubles", models.slow_second)
        server.conn.register_application("drain", "doubles", "-1", 10_000_000)
        server.conn.link_model_to_app("drain", "drain")
        server.wait_live("drain")
        pid = server.status()["pid"]
        result = {}
        t = threading.Thread(
            target=lambda: result.setdefault("r", server.predict("drain", {"input": [1.0]}))
        )
        t.start()
        wait_for(
            lambda: any(m["in_flight_batches"] for m in server.status()["models"]),
            what="the query to be in flight",
        )
        os.kill(pid, signal.SIGTERM)
        t.join(60)
        assert result["r"].status_code == 200 and result["r"].json()["output"] == "done"
        wait_for(lambda: not pid_alive(pid), 60, "the server to exit")
        stopped = True
    finally:
        if stopped:
            assert server.conn.stop_all() is False  # reaps it; nothing left to stop
            server.http.close()
        else:
            server.stop()


def test_a_replica_being_scaled_down_finishes_its_batch(clipper):
    deploy_python_closure(clipper.conn, "shrink", "1", "doubles", models.slow_second)
    clipper.conn.register_application("shrink", "doubles", "-1", 10_000_000)
    clipper.conn.link_model_to_app("shrink", "shrink")
    clipper.wait_live("shrink")
    result = {}
    t = threading.Thread(
        target=lambda: result.setdefault("r", clipper.predict("shrink", {"input": [2.0]}))
    )
    t.start()
    wait_for(
        lambda: any(
            m["in_flight_batches"] for m in clipper.status()["models"] if m["model"] == "shrink:1"
        ),
        what="a batch in flight",
    )
    clipper.conn.set_num_replicas("shrink", 0)
    t.join(60)
    assert result["r"].json() == {**result["r"].json(), "output": "done", "default": False}


def test_a_leaking_model_hits_its_memory_limit_and_restarts(clipper):
    conn = clipper.conn
    conn.register_application("leak", "doubles", "-1", 5_000_000, options={"cache": False})
    deploy_python_closure(conn, "leak", "1", "doubles", models.make_leaky(64))
    conn.set_model_options("leak", "1", memory_limit_mb=1024)
    conn.set_num_replicas("leak", 0)
    wait_for(lambda: not clipper.live_replicas("leak"), what="the old replica to stop")
    conn.set_num_replicas("leak", 1)  # restarted with the limit
    conn.link_model_to_app("leak", "leak")
    clipper.wait_live("leak")
    failed = None
    for i in range(40):
        body = clipper.predict("leak", {"input": [float(i)]}).json()
        if body["default"]:
            failed = body
            break
    assert failed is not None and "MemoryError" in failed["default_explanation"]
    wait_for(
        lambda: any(r["restarts"] >= 1 for r in clipper.live_replicas("leak")),
        what="the replica to restart",
    )
    assert clipper.predict("leak", {"input": [99.0]}).json()["output"] == 1  # a fresh heap


def test_curve_encrypts_the_rpc_socket(tmp_path):
    cm = manager(tmp_path / "state", server_flags=["--rpc-curve", "on"])
    server = Clipper(cm.state_path, cm=cm).start()
    stray = None
    try:
        server.conn.register_application("enc", "doubles", "-1", 2_000_000)
        deploy_python_closure(server.conn, "enc", "1", "doubles", models.total)
        server.conn.link_model_to_app("enc", "enc")
        server.wait_live("enc")
        assert server.predict("enc", {"input": [1.0, 1.0]}).json()["output"] == 2.0
        secret = cm.state_path / "curve" / "server.key_secret"
        assert oct(secret.stat().st_mode & 0o777) == "0o600"
        # A container speaking plaintext never gets through the handshake.
        model_file = tmp_path / "m.pkl"
        model_file.write_bytes(cloudpickle.dumps(models.total))
        stray = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clipper.container",
                "--address",
                f"tcp://127.0.0.1:{cm.clipper_rpc_port}",
                "--model-name",
                "enc",
                "--model-version",
                "1",
                "--input-type",
                "doubles",
                "--model-path",
                str(model_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with pytest.raises(AssertionError):
            wait_for(lambda: len(server.live_replicas("enc")) > 1, 5, "a plaintext replica")
    finally:
        if stray is not None:
            stray.kill()
            stray.wait()
        server.stop()


def test_the_cli_and_v2_routes_respect_the_guards(guarded):
    key = "v" * 20
    guarded.conn.set_app_options("safe", api_keys=[key])
    try:
        body = {"inputs": [{"name": "input", "shape": [1], "datatype": "FP64", "data": [4.0]}]}
        url = f"{guarded.query_url}/v2/models/safe/infer"
        assert httpx.post(url, json=body).status_code == 401
        assert httpx.post(url, json=body, headers={"X-Api-Key": key}).status_code == 200
    finally:
        guarded.conn.set_app_options("safe", api_keys=[])
    cli = [
        sys.executable,
        "-m",
        "clipper",
        "--management-port",
        str(guarded.cm.clipper_management_port),
    ]
    env = {k: v for k, v in os.environ.items() if k != "CLIPPER_ADMIN_TOKEN"}
    refused = subprocess.run([*cli, "apps"], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "401" in refused.stderr
    allowed = subprocess.run(
        [*cli, "apps", "--json"],
        env={**env, "CLIPPER_ADMIN_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert allowed.returncode == 0 and "safe" in allowed.stdout
