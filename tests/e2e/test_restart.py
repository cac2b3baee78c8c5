"""State lives in the store: a restarted server serves the same apps and versions."""

import pytest

from clipper.deployers.python import deploy_python_closure
from tests.e2e import models
from tests.helpers import Clipper

pytestmark = pytest.mark.slow


def test_versions_pins_and_a_restart(tmp_path):
    clipper = Clipper(tmp_path).start()
    try:
        conn = clipper.conn
        conn.register_application("app", "doubles", "-1", 2_000_000)
        deploy_python_closure(conn, "m", "1", "doubles", models.total)
        conn.link_model_to_app("app", "m")
        deploy_python_closure(conn, "m", "2", "doubles", models.describe)
        clipper.wait_live("m", version="1")
        clipper.wait_live("m", version="2")
        # A new version becomes current; a pin reaches the old one.
        assert clipper.predict("app", {"input": [1, 2]}).json()["output"].startswith("ndarray")
        assert clipper.predict("app", {"input": [1, 2], "version": "1"}).json()["output"] == 3.0
        r = clipper.predict("app", {"input": [1, 2], "version": "9"})
        assert r.status_code == 400 and "no version '9'" in r.json()["cause"]
        # Roll back.
        conn.set_model_version("m", "1")
        assert clipper.predict("app", {"input": [1, 2]}).json()["output"] == 3.0
        assert conn.get_current_model_version("m") == "1"
    finally:
        clipper.stop()

    again = Clipper(tmp_path, cm=clipper.cm).start()  # same ports and state folder
    try:
        assert again.conn.get_all_apps() == ["app"]
        assert again.conn.get_linked_models("app") == ["m"]
        assert sorted(again.conn.get_all_models()) == ["m:1", "m:2"]
        again.wait_live("m", version="1")
        body = again.predict("app", {"input": [2, 2]}).json()
        assert body == {"query_id": body["query_id"], "output": 4.0, "default": False}
    finally:
        again.stop()
