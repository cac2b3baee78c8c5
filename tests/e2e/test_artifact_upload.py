"""Models of any size, end to end: artifacts stream to ``/admin/upload_artifact``.

A real server takes a 1 GiB artifact (a sparse file: never in this process's
memory) while a query loop keeps getting answers, and its resident memory
barely moves: measured (Linux, ``/proc/<pid>/status`` VmRSS, sampled every
20 ms during the upload; 2-core VM, other tests running) at **+17 MiB** over a
52 MiB baseline for the whole 1 GiB, in 10 to 14 s (80 to 105 MB/s), with
~4,000 to 7,000 queries answered meanwhile and no gap between answers over
0.2 s. What the upload holds: at most ``Body.HIGH_WATER`` (4 MiB) waiting, the
chunk being gathered for the next write and the one being written (in a
thread). The test allows 100 MiB. A 31 MB MLP closure (refused
with a 413 before) deploys and answers. Refusals come from the request's head,
before its body is read: no token (401), too large (413); a wrong digest is a
400 that leaves no file; a client slower than 64 KiB/s over 10 s gets a 408.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from clipper.deployers.python import deploy_python_closure
from tests.e2e import models

pytestmark = pytest.mark.slow

GIB = 1 << 30
ROUTE = "/admin/upload_artifact"


def rss_bytes(pid: int) -> int:
    """The resident set of ``pid`` (Linux), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def raw(clipper: Any, head: str, body: bytes = b"", timeout: float = 30.0) -> tuple[int, bytes]:
    """Send ``head`` (and ``body``) on a socket; the status and the answer's bytes."""
    port = clipper.cm.clipper_management_port
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            got = sock.recv(65536)
            assert got, f"the server closed without an answer: {data!r}"
            data += got
        return int(data.split()[1]), data


def upload_head(token: str | None, size: int, digest: str = "ab" * 32) -> str:
    lines = [
        f"POST {ROUTE} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/octet-stream",
        f"Content-Length: {size}",
        f"X-Clipper-Artifact-SHA256: {digest}",
    ]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return "\r\n".join(lines) + "\r\n\r\n"


def uploads(clipper: Any) -> list[str]:
    folder = clipper.cm.state_path / "uploads"
    return sorted(os.listdir(folder)) if folder.is_dir() else []


@pytest.fixture(scope="module")
def app(clipper):
    clipper.conn.register_application("sums", "doubles", "-1", 2_000_000)
    deploy_python_closure(clipper.conn, "total", "1", "doubles", models.total)
    clipper.conn.link_model_to_app("sums", "total")
    return "sums"


def test_a_1_gib_artifact_uploads_while_queries_go_on_and_memory_stays_flat(clipper, app, tmp_path):
    source = tmp_path / "artifact.bin"
    with open(source, "wb") as f:  # sparse: 1 GiB on disk costs nothing here
        f.truncate(GIB)
        f.seek(GIB - 5)
        f.write(b"tail!")
    pid = clipper.status()["pid"]
    answers: list[tuple[float, int, bool]] = []
    samples: list[int] = []
    done = threading.Event()

    def query_loop() -> None:
        with httpx.Client(timeout=10.0) as http:
            while not done.is_set():
                r = http.post(f"{clipper.query_url}/{app}/predict", json={"input": [1.0, 2.0]})
                answers.append((time.monotonic(), r.status_code, r.json().get("default", True)))

    def sampler() -> None:
        while not done.is_set():
            samples.append(rss_bytes(pid))
            time.sleep(0.02)

    # Warm up, then the baseline.
    for _ in range(20):
        assert clipper.predict(app, {"input": [1.0, 2.0]}).json()["output"] == 3.0
    baseline = rss_bytes(pid)
    threads = [threading.Thread(target=query_loop), threading.Thread(target=sampler)]
    for t in threads:
        t.start()
    started = time.monotonic()
    try:
        digest = clipper.conn.upload_artifact(source, progress=False)
    finally:
        took = time.monotonic() - started
        done.set()
        for t in threads:
            t.join(30)
    try:
        with open(source, "rb") as f:
            assert digest == hashlib.file_digest(f, "sha256").hexdigest()
        stored = clipper.cm.state_path / "uploads" / str(digest)
        assert stored.stat().st_size == GIB
        with open(stored, "rb") as f:
            f.seek(GIB - 5)
            assert f.read() == b"tail!"
    finally:
        (clipper.cm.state_path / "uploads" / str(digest)).unlink(missing_ok=True)
    growth = max(samples) - baseline
    during = [a for a in answers if a[0] <= started + took]
    gaps = np.diff([started] + [a[0] for a in during])
    print(
        f"\n1 GiB upload: {took:.1f} s ({GIB / took / 1e6:.0f} MB/s); server RSS "
        f"{baseline / 2**20:.0f} MiB, at most +{growth / 2**20:.1f} MiB during it; "
        f"{len(during)} queries answered meanwhile, longest gap {gaps.max() * 1000:.0f} ms"
    )
    assert growth < 100 * 2**20, f"the server's RSS grew by {growth / 2**20:.0f} MiB"
    assert all(status == 200 for _, status, _ in answers), answers
    assert len(during) >= 10 and gaps.max() < 2.0  # answers kept coming throughout
    assert sum(not default for *_, default in during) >= 0.9 * len(during)


def test_a_31_mb_mlp_closure_deploys_and_answers(clipper):
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, 2048))
    w2 = rng.standard_normal((2048, 1856)) / 45  # ~31 MB of float64 in all
    w3 = rng.standard_normal((1856, 10))

    def make_mlp() -> Any:
        def mlp(xs: Any) -> list[int]:
            h = np.maximum(np.asarray(xs) @ w1, 0)
            h = np.maximum(h @ w2, 0)
            return [int(i) for i in np.argmax(h @ w3, axis=1)]

        return mlp

    mlp = make_mlp()
    clipper.conn.register_application("mlp", "doubles", "-1", 10_000_000, input_shape=[64])
    deploy_python_closure(clipper.conn, "mlp", "1", "doubles", mlp)
    clipper.conn.link_model_to_app("mlp", "mlp")
    x = rng.standard_normal(64)
    r = clipper.predict("mlp", {"input": x.tolist()})
    assert r.status_code == 200 and r.json()["default"] is False, r.text
    assert r.json()["output"] == mlp([x])[0]
    path = Path(clipper.conn.get_model_info("mlp", "1")["model_data_path"])
    assert path.stat().st_size > 30_000_000


def test_no_token_and_too_large_are_refused_from_the_head(clipper):
    status, answer = raw(clipper, upload_head(None, 1 << 20))  # no body is ever sent
    assert status == 401 and b"connection: close" in answer
    status, answer = raw(clipper, upload_head(clipper.token(), 9 * GIB))  # over 8 GiB
    assert status == 413 and b"8589934592" in answer
    assert not [f for f in uploads(clipper) if f.endswith(".part")]


def test_a_wrong_digest_is_400_and_leaves_no_file(clipper):
    data = os.urandom(3 << 20)
    r = clipper.http.post(
        f"{clipper.admin_url}{ROUTE}",
        content=data,
        headers={
            "Content-Type": "application/octet-stream",
            "X-Clipper-Artifact-SHA256": hashlib.sha256(b"other").hexdigest(),
        },
    )
    assert r.status_code == 400 and r.json()["error"] == "digest mismatch"
    assert hashlib.sha256(data).hexdigest() not in uploads(clipper)
    assert not [f for f in uploads(clipper) if f.endswith(".part")]


def test_a_slow_client_is_cut_off(clipper):
    port = clipper.cm.clipper_management_port
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(upload_head(clipper.token(), 1 << 20).encode())
        sock.setblocking(False)
        data = b""
        while b"\r\n\r\n" not in data and time.monotonic() - started < 30:
            with contextlib.suppress(OSError):
                sock.send(b"x" * 1024)  # 1 KiB a second: far under 64 KiB/s
            time.sleep(1.0)
            with contextlib.suppress(BlockingIOError):
                data += sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 408"), data
    assert 9 < time.monotonic() - started < 20  # one 10 s window, judged
    assert not [f for f in uploads(clipper) if f.endswith(".part")]
