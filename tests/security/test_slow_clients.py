"""Slow and greedy clients against a real server: a slowloris set is cut off by the
request deadlines while everyone else is served; past the connection cap, new
connections wait their turn rather than being reset."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from clipper.deployers.python import deploy_python_closure
from tests.e2e import models
from tests.helpers import Clipper, manager_on_free_ports, wait_for

pytestmark = pytest.mark.slow

HEAD_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def clipper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clipper]:
    state = tmp_path_factory.mktemp("slow-clients")
    cm = manager_on_free_ports(
        state,
        server_flags=[
            *("--request-head-timeout", str(HEAD_TIMEOUT)),
            *("--request-body-timeout", str(HEAD_TIMEOUT)),
            *("--max-connections", "40"),
        ],
    )
    server = Clipper(state, cm=cm).start()
    server.conn.register_application("sums", "doubles", "-1", 2_000_000)
    deploy_python_closure(server.conn, "summer", "1", "doubles", models.total)
    server.conn.link_model_to_app("sums", "summer")
    server.wait_live("summer")
    yield server
    server.stop()


def trickler(port: int, head: bool, stop: threading.Event, outcome: list[bytes]) -> None:
    """One slowloris connection: a byte every 0.2 s, forever; records what it got back."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        start = (
            b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
            if head
            else (
                b"POST /sums/predict HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n"
            )
        )
        s.sendall(start)
        s.settimeout(0.2)
        received = b""
        while not stop.is_set():
            try:
                s.sendall(b"a" if head else b" ")
            except OSError:
                break
            try:
                chunk = s.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            received += chunk
        outcome.append(received)


def test_a_slowloris_set_is_cut_off_and_others_are_served(clipper: Clipper) -> None:
    port = clipper.cm.clipper_query_port
    stop = threading.Event()
    outcomes: list[bytes] = []
    threads = [
        threading.Thread(target=trickler, args=(port, n % 2 == 0, stop, outcomes), daemon=True)
        for n in range(30)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        # Meanwhile, an honest client is served at once, again and again.
        with httpx.Client(timeout=10) as http:
            while time.monotonic() - started < HEAD_TIMEOUT + 1:
                r = http.post(f"{clipper.query_url}/sums/predict", json={"input": [1.0, 2.0]})
                assert r.status_code == 200 and r.json()["output"] == 3.0
        # Every slow connection got a 408 and was closed, within the deadline
        # (plus the half-second sweep and a loaded machine's slack).
        wait_for(lambda: len(outcomes) == len(threads), 30, "every slow client to be cut off")
        took = time.monotonic() - started
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert all(o.startswith(b"HTTP/1.1 408") for o in outcomes), [o[:60] for o in outcomes]
    assert took < HEAD_TIMEOUT + 20


def test_past_the_cap_connections_wait_and_nothing_is_reset(clipper: Clipper) -> None:
    port = clipper.cm.clipper_query_port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(40)]
    try:
        # The cap is reached: one more is accepted (no reset) and answered once a
        # place frees (the idle ones are closed by the keep-alive timeout: 5 s).
        with httpx.Client(timeout=60) as http:
            r = http.post(f"{clipper.query_url}/sums/predict", json={"input": [2.0, 2.0]})
        assert r.status_code == 200 and r.json()["output"] == 4.0
    finally:
        for s in idle:
            s.close()
    log = (clipper.cm.state_path / "logs" / "server.log").read_text()
    assert "connections open (the cap, max_connections): new ones wait" in log
