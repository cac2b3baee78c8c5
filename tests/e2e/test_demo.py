"""``make run``'s server: the demo app answers, and Ctrl-C stops every process."""

import json
import os
import re
import signal
import subprocess
import sys
import threading

import httpx
import pytest

from tests.helpers import admin_token, free_port, pid_alive, wait_for

pytestmark = pytest.mark.slow


def test_demo_serves_digits_and_ctrl_c_stops_everything(tmp_path):
    ports = [free_port() for _ in range(3)]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clipper",
            "start",
            "--demo",
            "--state-dir",
            str(tmp_path),
            "--query-port",
            str(ports[0]),
            "--management-port",
            str(ports[1]),
            "--rpc-port",
            str(ports[2]),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("curl -X POST" in line for line in lines), 120, "the demo greeting")
        curl = next(line for line in lines if "curl -X POST" in line)
        body = re.search(r"-d '(.*)'", curl).group(1)
        label = int(re.search(r"this image is a (\d)", "".join(lines)).group(1))
        r = httpx.post(f"http://127.0.0.1:{ports[0]}/digits/predict", content=body, timeout=30)
        assert r.status_code == 200
        assert r.json()["default"] is False and r.json()["output"] == label
        token = admin_token(tmp_path)
        status = httpx.get(
            f"http://127.0.0.1:{ports[1]}/admin/status",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ).json()
        # The banner shows the dashboard's sign-in link, and where another shell looks.
        assert any(f"/dashboard?token={token}" in line for line in lines)
        assert any(f"CLIPPER_HOME={tmp_path}" in line for line in lines)
        replica_pids = [r["pid"] for r in status["replicas"]]
        assert replica_pids and all(replica_pids)
        assert json.loads((tmp_path / "server.json").read_text())["pid"] == status["pid"]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    reader.join(timeout=10)
    proc.stdout.close()
    for pid in replica_pids:
        wait_for(lambda pid=pid: not pid_alive(pid), 30, f"replica {pid} to exit")
    assert not (tmp_path / "server.json").exists()
    assert "Clipper stopped" in "".join(lines)
    assert os.path.exists(tmp_path / "clipper.db")
