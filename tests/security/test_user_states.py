"""Random uids cannot grow the config store without bound (security issue #20).

A real server with a small cap on the user states it keeps per app
(``--max-user-states``) takes feedback from many random users: the store
holds at most the cap, the most recent users keep their states, the oldest
lost theirs, and the server keeps answering.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import cloudpickle
import pytest

from clipper.admin import LocalContainerManager
from clipper.deployers.python import deploy_python_closure
from tests.e2e import models
from tests.helpers import Clipper, free_port

pytestmark = pytest.mark.slow

# The containers cannot import the tests package: ship these models by value.
cloudpickle.register_pickle_by_value(models)

CAP = 100
USERS = 2_000


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clipper]:
    cm = LocalContainerManager(
        clipper_query_port=free_port(),
        clipper_management_port=free_port(),
        clipper_rpc_port=free_port(),
        state_dir=tmp_path_factory.mktemp("user-states"),
        server_flags=["--max-user-states", str(CAP)],
    )
    server = Clipper(cm.state_path, cm=cm).start()
    yield server
    server.stop()


def stored_users(state_dir: Path, app: str) -> int:
    """User states in the server's SQLite store (read beside it: WAL allows it)."""
    with closing(sqlite3.connect(f"file:{state_dir / 'clipper.db'}?mode=ro", uri=True)) as db:
        row = db.execute(
            "SELECT count(*) FROM policy_states WHERE app = ? AND uid != ''", (app,)
        ).fetchone()
    return int(row[0])


def test_feedback_from_random_users_keeps_the_store_within_the_cap(capped: Clipper) -> None:
    conn = capped.conn
    conn.register_application("capped", "doubles", "-1", 2_000_000, selection_policy="exp3")
    for name in ("capped-a", "capped-b"):
        deploy_python_closure(conn, name, "1", "doubles", models.total)
        conn.link_model_to_app("capped", name)
        capped.wait_live(name)
    url = f"{capped.query_url}/capped/update"
    uids = [uuid.uuid4().hex for _ in range(USERS)]
    for i, uid in enumerate(uids):
        # One input for all: the models answer it once, then from the cache.
        r = capped.http.post(url, json={"uid": uid, "input": [1.0, 2.0], "label": 3.0})
        assert r.status_code == 200 and r.json() == {"accepted": True}, (i, r.text)

    assert stored_users(capped.cm.state_path, "capped") == CAP
    # The most recent users keep their states; the first ones lost theirs.
    assert conn.get_policy_state("capped", uids[-1]) != {}
    assert conn.get_policy_state("capped", uids[-CAP]) != {}
    assert conn.get_policy_state("capped", uids[0]) == {}
    assert conn.get_policy_state("capped", uids[-CAP - 1]) == {}
    assert conn.get_policy_state("capped") != {}  # the app's shared state stays

    # The server still answers: known, forgotten and unknown users alike.
    for uid in (uids[-1], uids[0], uuid.uuid4().hex):
        r = capped.http.post(
            f"{capped.query_url}/capped/predict", json={"input": [1.0, 2.0], "uid": uid}
        )
        assert r.status_code == 200, r.text
        assert r.json()["output"] == 3.0 and r.json()["default"] is False
    # A forgotten user's feedback makes them new again: the count stays at the cap.
    r = capped.http.post(url, json={"uid": uids[0], "input": [1.0, 2.0], "label": 3.0})
    assert r.status_code == 200 and r.json() == {"accepted": True}
    assert stored_users(capped.cm.state_path, "capped") == CAP
    assert conn.get_policy_state("capped", uids[0]) != {}
