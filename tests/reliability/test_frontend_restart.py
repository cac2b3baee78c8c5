"""kill -9 the server under an external container: a new server on the same
ports and state folder gets it back by itself, with apps and links intact."""

from __future__ import annotations

import cloudpickle
import pytest

from tests.helpers import Clipper, wait_for
from tests.reliability import models
from tests.reliability.support import (
    kill_server,
    replicas_of,
    start_container,
    stop_process,
    stop_quietly,
    timed_predict,
)

pytestmark = pytest.mark.slow


def test_an_external_container_survives_a_frontend_crash_and_reregisters(tmp_path):
    state = tmp_path / "state"
    model_path = tmp_path / "model.pkl"
    model_path.write_bytes(cloudpickle.dumps(models.total))
    first = Clipper(state).start()
    again: Clipper | None = None
    container = None
    try:
        conn = first.conn
        conn.register_model("ext", "1", "doubles")  # no replicas: started by hand
        conn.register_application("ext-app", "doubles", "none", 2_000_000)
        conn.link_model_to_app("ext-app", "ext")
        container = start_container(
            first.cm.clipper_rpc_port,
            model_path,
            *("ext", "1", "doubles"),
            tmp_path / "ext.log",
            first.cm.state_path,
        )
        (joined,) = first.wait_live("ext")
        assert joined["pid"] == container.pid
        answer = timed_predict(first, "ext-app", {"input": [1.0, 2.0, 3.0]})
        assert answer.body == {**answer.body, "output": 6.0, "default": False}

        kill_server(first)  # no goodbye, no clean shutdown
        assert container.poll() is None  # the container waits for a frontend

        again = Clipper(state, cm=first.cm).start()  # same ports, same state folder
        assert again.conn.get_all_apps() == ["ext-app"]
        assert again.conn.get_linked_models("ext-app") == ["ext"]
        assert again.conn.get_all_models() == ["ext:1"]
        # The container registers again on its own (same process, no restart).
        (back,) = again.wait_live("ext")
        assert back["pid"] == container.pid and container.poll() is None
        wait_for(
            lambda: timed_predict(again, "ext-app", {"input": [2.0, 2.0]}).body["output"] == 4.0,
            30,
            "queries answered through the re-registered container",
        )
        body = timed_predict(again, "ext-app", {"input": [5.0]}).body
        assert body == {**body, "output": 5.0, "default": False}
    finally:
        if container is not None:
            stop_process(container)
        if again is not None:
            # The external container said goodbye: nothing of it is left to wait on.
            wait_for(lambda: not replicas_of(again, "ext"), 30, "the container to leave")
            again.stop()
        else:
            stop_quietly(first)
