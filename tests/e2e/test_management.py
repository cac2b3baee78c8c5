"""The management plane against a real server: routes, errors, propagation, environments."""

import concurrent.futures
import sys
import warnings

import cloudpickle
import pytest

from clipper.admin import ClipperConnection, ClipperException, UnconnectedException
from clipper.deployers.python import deploy_python_closure
from tests.e2e import models
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

NO_MODELS = "No connected models found for query"


def test_calls_before_connecting_raise(tmp_path):
    from clipper.admin import LocalContainerManager

    conn = ClipperConnection(LocalContainerManager(state_dir=tmp_path))
    with pytest.raises(UnconnectedException):
        conn.get_all_apps()


def test_app_lifecycle_and_clipper_shapes(clipper):
    conn = clipper.conn
    conn.register_application("life", "d", "none", 100_000, input_shape=[2])
    info = conn.get_app_info("life")
    assert info["input_type"] == "doubles"  # the alias comes back canonical
    assert info["latency_slo_micros"] == 100_000 and info["linked_models"] == []
    assert "life" in conn.get_all_apps()
    assert any(a["name"] == "life" for a in conn.get_all_apps(verbose=True))
    assert conn.get_app_info("never") is None
    assert conn.get_linked_models("never") == []
    assert conn.get_model_info("never", "1") is None
    with pytest.raises(ClipperException, match="already exists"):
        conn.register_application("life", "doubles", "none", 100_000)
    conn.unregister_application("life")
    assert "life" not in conn.get_all_apps()


@pytest.mark.parametrize(
    ("route", "body", "fragment"),
    [
        ("add_app", {"name": "a"}, "missing field 'input_type'"),
        (
            "add_app",
            {
                "name": "a",
                "input_type": "doubles",
                "default_output": "x",
                "latency_slo_micros": "fast",
            },
            "latency_slo_micros",
        ),
        (
            "add_app",
            {
                "name": "admin",
                "input_type": "doubles",
                "default_output": "x",
                "latency_slo_micros": 10000,
            },
            "reserved",
        ),
        (
            "add_app",
            {
                "name": "a",
                "input_type": "doubles",
                "default_output": "x",
                "latency_slo_micros": 10000,
                "colour": "red",
            },
            "colour",
        ),
        ("add_model_links", {"app_name": "ghost", "model_names": ["m"]}, "ghost"),
        (
            "set_model_version",
            {"model_name": "ghost", "model_version": "1"},
            "no model named 'ghost'",
        ),
        (
            "delete_versioned_model",
            {"model_name": "ghost", "model_version": "1"},
            "no model named 'ghost'",
        ),
        (
            "add_model",
            {"model_name": "x", "model_version": "1", "input_type": "doubles", "model_data": "%%%"},
            "base64",
        ),
        (
            "add_model",
            {"model_name": "Bad/Name", "model_version": "1", "input_type": "doubles"},
            "Bad/Name",
        ),
        ("get_logs", {"replica": "../../etc/passwd"}, "invalid replica"),
        ("get_logs", {"worker": 0}, "worker must be between 1 and"),
        ("get_logs", {"worker": 1, "replica": "m-1-0"}, "not both"),
        ("get_logs", {"worker": 1}, "no log for worker 1"),  # a single process
        ("delete_app", {"name": "ghost"}, "ghost"),
    ],
)
def test_management_errors_are_400s_naming_the_problem(clipper, route, body, fragment):
    before = clipper.conn.get_all_apps(verbose=True), clipper.conn.get_all_models(verbose=True)
    r = clipper.admin(route, body)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["cause"]
    # Nothing changed.
    assert (
        clipper.conn.get_all_apps(verbose=True),
        clipper.conn.get_all_models(verbose=True),
    ) == before


def test_unknown_admin_route_and_bad_json(clipper):
    assert clipper.admin("make_coffee").status_code == 404
    url = f"{clipper.admin_url}/admin/add_app"
    r = clipper.http.post(url, content=b"{oops", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "invalid JSON"
    r = clipper.http.post(url, content=b"{oops")  # no JSON type: refused before it is read
    assert r.status_code == 415 and r.json()["error"] == "unsupported media type"


def test_input_type_mismatch_is_refused(clipper):
    clipper.conn.register_application("strs", "strings", "-", 100_000)
    deploy_python_closure(clipper.conn, "nums", "1", "doubles", models.total)
    with pytest.raises(ClipperException, match="takes 'doubles'"):
        clipper.conn.link_model_to_app("strs", "nums")


def test_changes_reach_the_query_path_at_once(clipper):
    conn = clipper.conn
    conn.register_application("prop", "doubles", "dflt", 2_000_000)
    deploy_python_closure(conn, "prop-m", "1", "doubles", models.total)
    conn.link_model_to_app("prop", "prop-m")
    clipper.wait_live("prop-m")
    assert clipper.predict("prop", {"input": [1, 1]}).json()["output"] == 2.0
    conn.unlink_model_from_app("prop", "prop-m")
    body = clipper.predict("prop", {"input": [1, 1]}).json()
    assert body["default"] is True and body["default_explanation"] == NO_MODELS
    conn.link_model_to_app("prop", "prop-m")
    assert clipper.predict("prop", {"input": [1, 1]}).json()["output"] == 2.0
    conn.unregister_application("prop")
    assert clipper.predict("prop", {"input": [1, 1]}).status_code == 404


def test_rollback_leaves_in_flight_queries_unharmed(clipper):
    conn = clipper.conn
    conn.register_application("roll", "doubles", "dflt", 5_000_000)
    deploy_python_closure(conn, "roll-m", "1", "doubles", models.slow_total)
    deploy_python_closure(conn, "roll-m", "2", "doubles", models.total)
    conn.link_model_to_app("roll", "roll-m")
    clipper.wait_live("roll-m", version="1")
    clipper.wait_live("roll-m", version="2")
    conn.set_model_version("roll-m", "1")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(clipper.predict, "roll", {"input": [float(i)]}) for i in range(16)]
        conn.set_model_version("roll-m", "2")
        conn.set_model_version("roll-m", "1")
        conn.set_model_version("roll-m", "2")
        bodies = [f.result().json() for f in futures]
    assert [b["output"] for b in bodies] == [float(i) for i in range(16)]
    assert all(b["default"] is False for b in bodies)
    assert conn.get_current_model_version("roll-m") == "2"


def test_replicas_scale_and_versions_are_deleted(clipper):
    conn = clipper.conn
    deploy_python_closure(conn, "scaly", "1", "doubles", models.total)
    clipper.wait_live("scaly")
    conn.set_num_replicas("scaly", 2)
    assert conn.get_num_replicas("scaly") == 2
    clipper.wait_live("scaly", 2)
    conn.set_num_replicas("scaly", 1)
    wait_for(lambda: len(clipper.live_replicas("scaly")) == 1, what="scale down to 1")
    assert conn.get_model_replica_info("scaly", "1")["model_name"] == "scaly"
    conn.stop_models(["scaly"])
    wait_for(lambda: not clipper.live_replicas("scaly"), what="no replicas")
    conn.delete_versioned_model("scaly", "1")
    assert "scaly:1" not in conn.get_all_models()
    assert not (clipper.cm.state_path / "models" / "scaly" / "1").exists()


def test_logs_and_inspection(clipper):
    lines = clipper.conn.get_clipper_logs(lines=50)
    assert lines and any("clipper" in line for line in lines)
    status = clipper.conn.inspect_instance()
    assert status["query_port"] == clipper.cm.clipper_query_port
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clipper.conn.register_application("old", "doubles", "-", 10_000)
        clipper.conn.delete_application("old")
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)


def test_test_predict_function_sees_what_a_container_sees(clipper):
    out = clipper.conn.test_predict_function(
        {"input_batch": [[1, 2], [3, 4]]}, models.describe, "doubles"
    )
    assert out == ["ndarray(2, 2):float64:3.0", "ndarray(2, 2):float64:7.0"]


def test_a_closure_needing_a_missing_module_fails_to_deploy_naming_it(clipper, tmp_path):
    (tmp_path / "only_here_mod.py").write_text("def f(xs):\n    return [1 for _ in xs]\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import only_here_mod

        payload = cloudpickle.dumps(only_here_mod.f)  # pickled by reference
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("only_here_mod", None)
    with pytest.raises(ClipperException, match="only_here_mod"):
        clipper.conn.deploy_model("needy", "1", "doubles", payload)
    assert not any(m.startswith("needy:") for m in clipper.conn.get_all_models())


def _six_version(xs):
    import six

    return [six.__version__ for _ in xs]


def test_models_with_conflicting_dependencies_run_side_by_side(clipper):
    conn = clipper.conn
    for version, pin in (("1", "six==1.16.0"), ("2", "six==1.15.0")):
        app = f"six-{version}"
        conn.register_application(app, "doubles", "-", 5_000_000)
        deploy_python_closure(conn, app, "1", "doubles", _six_version, pkgs_to_install=[pin])
        conn.link_model_to_app(app, app)
    clipper.wait_live("six-1")
    clipper.wait_live("six-2")
    assert clipper.predict("six-1", {"input": [1.0]}).json()["output"] == "1.16.0"
    assert clipper.predict("six-2", {"input": [1.0]}).json()["output"] == "1.15.0"
    # The same requirements reuse the cached environment.
    envs = list((clipper.cm.state_path / "envs").iterdir())
    deploy_python_closure(
        conn, "six-1", "2", "doubles", _six_version, pkgs_to_install=["six==1.16.0"]
    )
    assert sorted(envs) == sorted((clipper.cm.state_path / "envs").iterdir())


def test_a_failed_install_fails_the_deploy_and_leaves_nothing(clipper):
    with pytest.raises(ClipperException, match="pip install"):
        deploy_python_closure(
            clipper.conn,
            "broken",
            "1",
            "doubles",
            models.total,
            pkgs_to_install=["clipper-no-such-package-xyz==0.0.1"],
        )
    assert not any(m.startswith("broken:") for m in clipper.conn.get_all_models())
    assert not (clipper.cm.state_path / "models" / "broken" / "1").exists()
