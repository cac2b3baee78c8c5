"""Several frontends on one Redis store: a change made through one reaches all."""

import pytest

from clipper.deployers.python import deploy_python_closure
from tests.e2e import models
from tests.helpers import Clipper, wait_for
from tests.redis_server import redis_server

pytestmark = pytest.mark.slow


def test_two_frontends_share_one_redis_store(tmp_path):
    with redis_server() as url:
        a = Clipper(tmp_path / "a", redis_url=url).start()
        b = Clipper(tmp_path / "b", redis_url=url).start()
        try:
            a.conn.register_application("shared", "doubles", "-1", 2_000_000)
            # B learns of the app by pub/sub, without a restart.
            wait_for(
                lambda: b.predict("shared", {"input": [1.0]}).status_code == 200,
                what="the app to reach frontend B",
            )
            deploy_python_closure(a.conn, "shared-m", "1", "doubles", models.total)
            a.conn.link_model_to_app("shared", "shared-m")
            # Each frontend runs its own replicas of the model.
            a.wait_live("shared-m")
            b.wait_live("shared-m")
            for server in (a, b):
                body = server.predict("shared", {"input": [2.0, 3.0]}).json()
                assert body["output"] == 5.0 and body["default"] is False
            assert b.conn.get_linked_models("shared") == ["shared-m"]
            b.conn.unregister_application("shared")
            wait_for(
                lambda: a.predict("shared", {"input": [1.0]}).status_code == 404,
                what="the deletion to reach frontend A",
            )
        finally:
            a.stop()
            b.stop()
