"""Several frontend processes on one server (``--workers 2``), end to end.

Every query here goes over a fresh connection (``Connection: close``), so the
kernel spreads them over the two processes that share the query port.
"""

import os
import re
import signal

import httpx
import pytest

from clipper.deployers.python import deploy_python_closure
from tests.e2e import models
from tests.fixtures import running_clipper
from tests.helpers import Clipper, manager_on_free_ports, pid_alive, wait_for

pytestmark = pytest.mark.slow

QUERIES = 60


# Replicas reach the workers over the local Unix sockets (the default), and
# over ZeroMQ and TCP (as replicas on other hosts do).
@pytest.fixture(scope="module", params=["local", "tcp"])
def clipper(request, tmp_path_factory):
    state = tmp_path_factory.mktemp("workers")
    local = "true" if request.param == "local" else "false"
    flags = ["--workers", "2", "--local-rpc", local]
    cm = manager_on_free_ports(state, server_flags=flags)
    with running_clipper(state, cm=cm) as server:
        yield server
        workers = [w["pid"] for w in server.status()["worker_processes"]]
    for pid in workers:  # the supervisor's stop stopped its workers too
        wait_for(lambda pid=pid: not pid_alive(pid), 30, f"worker pid {pid} to exit")


def fresh(clipper: Clipper, app: str, x: float) -> httpx.Response:
    """One query on a connection of its own."""
    return httpx.post(
        f"{clipper.query_url}/{app}/predict",
        json={"input": [x, 1.0]},
        headers={"connection": "close"},
        timeout=30,
    )


def workers(clipper: Clipper) -> list[dict]:
    return clipper.status()["worker_processes"]


def deploy(clipper: Clipper, name: str) -> None:
    clipper.conn.register_application(name, "doubles", "-1", 1_000_000)
    deploy_python_closure(clipper.conn, name, "1", "doubles", models.total)
    clipper.conn.link_model_to_app(name, name)
    clipper.wait_live(name)


def computed(clipper: Clipper, app: str, count: int) -> list[float]:
    outputs = []
    for i in range(count):
        r = fresh(clipper, app, float(i))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["default"] is False, body
        outputs.append(body["output"])
    return outputs


def scraped(clipper: Clipper, app: str) -> float:
    text = httpx.get(f"{clipper.query_url}/metrics", headers={"connection": "close"}).text
    found = re.search(rf'^clipper_app_queries_total{{app="{app}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def enqueued_of(clipper: Clipper, model: str) -> int:
    return next(m for m in clipper.status()["models"] if m["model"] == model)["queue"]["enqueued"]


def test_every_worker_serves_with_one_replica(clipper):
    status = clipper.status()
    assert status["workers"] == 2
    assert [w["index"] for w in status["worker_processes"]] == [0, 1]
    assert all(w["live"] for w in status["worker_processes"])
    deploy(clipper, "sum")
    # The replica reached the supervisor, then the other worker, as configured.
    scheme = "unix" if "true" in clipper.cm.server_flags else "tcp"
    replica_log = (clipper.cm.state_path / "logs" / "sum-1-0.log").read_text()
    assert f"connecting to {scheme}://" in replica_log
    assert f"serving frontend worker {scheme}://" in replica_log
    assert computed(clipper, "sum", QUERIES) == [float(i) + 1.0 for i in range(QUERIES)]
    # One replica, not one per worker; both processes answered queries with it.
    assert len(clipper.live_replicas("sum")) == 1
    wait_for(
        lambda: (
            all(w["queries"] > 0 for w in workers(clipper))
            and sum(w["queries"] for w in workers(clipper)) == QUERIES
        ),
        what="both workers' counts to reach the supervisor",
    )
    # /metrics sums the workers, whichever answers the scrape.
    wait_for(lambda: scraped(clipper, "sum") == QUERIES, what="the summed /metrics")
    assert {scraped(clipper, "sum") for _ in range(6)} == {QUERIES}
    model = next(m for m in clipper.status()["models"] if m["model"] == "sum:1")
    assert model["queue"]["enqueued"] >= QUERIES  # summed over the workers


def test_each_workers_log_is_read_through_the_management_api(clipper):
    pid = workers(clipper)[1]["pid"]
    lines = clipper.conn.get_clipper_logs(lines=200, worker=1)
    assert lines and any("worker 1" in line for line in lines), lines[-5:]
    assert lines != clipper.conn.get_clipper_logs(lines=200)  # not the server's
    assert pid_alive(pid)


def test_an_app_added_later_reaches_every_worker(clipper):
    deploy(clipper, "later")
    # No query may find the app missing, whichever worker it reaches.
    computed(clipper, "later", 30)


def test_a_worker_that_dies_is_replaced_and_served(clipper):
    deploy(clipper, "again")
    computed(clipper, "again", QUERIES)
    wait_for(lambda: scraped(clipper, "again") == QUERIES, what="the summed /metrics")
    assert workers(clipper)[1]["queries"] > 0  # the worker to be killed answered some
    enqueued = enqueued_of(clipper, "again:1")
    before = workers(clipper)[1]
    os.kill(before["pid"], signal.SIGKILL)
    after = wait_for(
        lambda: (w := workers(clipper)[1])["live"] and w["pid"] != before["pid"] and w,
        what="the worker to be started again",
    )
    assert after["restarts"] == 1
    assert after["rpc_port"] != before["rpc_port"]
    # The replica serves the new worker too: every query is computed again.
    tries = 0

    def computed_again() -> bool:
        nonlocal tries
        tries += 1
        return fresh(clipper, "again", 2.0).json()["default"] is False

    wait_for(computed_again, what="answers")
    computed(clipper, "again", 30)
    assert len(clipper.live_replicas("again")) == 1
    # Its counts before it died stay in the sums: counters never go back.
    answered = QUERIES + tries + 30
    wait_for(lambda: scraped(clipper, "again") == answered, what="the sums to count every query")
    assert enqueued_of(clipper, "again:1") >= enqueued


def test_workers_stop_when_the_supervisor_dies(tmp_path):
    cm = manager_on_free_ports(tmp_path, server_flags=["--workers", "2"])
    server = Clipper(tmp_path, cm=cm).start()
    status = server.status()
    worker_pid = status["worker_processes"][1]["pid"]
    try:
        os.kill(status["pid"], signal.SIGKILL)
        wait_for(lambda: not pid_alive(worker_pid), 30, "the orphaned worker to exit")
    finally:
        for pid in (status["pid"], worker_pid):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        server.conn._process.wait(timeout=30)  # reap the supervisor
        server.http.close()
