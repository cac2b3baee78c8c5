"""A web page the operator visits attacks a real server, in a real browser.

Debian's chromium (driven by Playwright, as the dashboard's test does) loads a
page from another origin (another server on this machine, on a port of its
own: a web page in every browser's eyes; a public site does the same where
the browser does not block public-to-local requests) that tries every way a
page can reach a local server without the token: ``fetch`` with
``text/plain`` (no preflight), ``no-cors``, a JSON ``fetch`` (preflighted),
``sendBeacon``, a form posted into a frame, and a DNS-rebinding name
(``rebind.test``, resolved to 127.0.0.1 by the browser) under which the
server looks same-origin. Nothing may change in the store, in the apps'
learned state, or in what the server answers.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from clipper.deployers.python import deploy_python_closure
from tests.e2e import models
from tests.helpers import Clipper
from tests.observability.test_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.slow

ATTACKER = "http://attacker.test"  # an origin for the header checks


@pytest.fixture(scope="module")
def attacker() -> Iterator[str]:
    """The attacker's web page, served from 127.0.0.1 on a port of its own."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><html><body>cat pictures</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def clipper(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = Clipper(tmp_path_factory.mktemp("attacked")).start()
    conn = server.conn
    conn.register_application("vote", "doubles", "-1", 2_000_000, selection_policy="exp3")
    deploy_python_closure(conn, "summer", "1", "doubles", models.total)
    conn.link_model_to_app("vote", "summer")
    server.wait_live("summer")
    yield server
    server.stop()


def state(clipper: Clipper) -> tuple[Any, ...]:
    conn = clipper.conn
    return (
        conn.get_all_apps(verbose=True),
        conn.get_all_models(verbose=True),
        conn.get_policy_state("vote"),
        conn.get_policy_state("vote", "victim"),
    )


def browser(playwright: Any, *extra: str) -> Any:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    return playwright.chromium.launch(
        executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra], headless=True
    )


EVIL_APP = {
    "name": "evil",
    "input_type": "doubles",
    "default_output": "pwned",
    "latency_slo_micros": 100000,
}

# Each attack resolves to what the page could see: a status, "opaque" (no-cors),
# or the error a refused preflight gives.
ATTACKS = """async ([admin, query, app]) => {
    const body = JSON.stringify(app);
    const feedback = JSON.stringify({uid: "victim", input: [1, 2], label: 0});
    const seen = {};
    const attempt = async (name, url, init) => {
        try {
            const r = await fetch(url, init);
            seen[name] = r.type === "opaque" ? "opaque" : r.status;
        } catch (e) {
            seen[name] = "error: " + e.name;
        }
    };
    await attempt("text/plain", admin + "/admin/add_app",
        {method: "POST", headers: {"Content-Type": "text/plain"}, body});
    await attempt("no-cors", admin + "/admin/add_app",
        {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body});
    await attempt("json, preflighted", admin + "/admin/add_app",
        {method: "POST", headers: {"Content-Type": "application/json"}, body});
    await attempt("credentials", admin + "/admin/add_app",
        {method: "POST", mode: "no-cors", credentials: "include", body});
    await attempt("feedback", query + "/vote/update",
        {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body: feedback});
    await attempt("predict", query + "/vote/predict",
        {method: "POST", headers: {"Content-Type": "text/plain"}, body: '{"input": [1, 2]}'});
    seen["beacon"] = navigator.sendBeacon(admin + "/admin/add_app",
        new Blob([body], {type: "text/plain"}));
    // A form posted into a frame: text/plain lets a body look like JSON.
    const frame = document.createElement("iframe");
    frame.name = "sink";
    document.body.appendChild(frame);
    const form = document.createElement("form");
    form.action = admin + "/admin/add_app";
    form.method = "POST";
    form.enctype = "text/plain";
    form.target = "sink";
    const field = document.createElement("input");
    field.name = body.slice(0, -1) + ', "x": "';
    field.value = '"}';
    form.appendChild(field);
    document.body.appendChild(form);
    const loaded = new Promise((resolve) => { frame.onload = resolve; });
    form.submit();
    await Promise.race([loaded, new Promise((r) => setTimeout(r, 5000))]);
    seen["form"] = "submitted";
    return seen;
}"""


def test_a_page_from_another_origin_changes_nothing(clipper: Clipper, attacker: str) -> None:
    from playwright.sync_api import sync_playwright

    before = state(clipper)
    with sync_playwright() as p:
        b = browser(p)
        try:
            page = b.new_page()
            page.goto(f"{attacker}/")
            seen = page.evaluate(ATTACKS, [clipper.admin_url, clipper.query_url, EVIL_APP])
        finally:
            b.close()
    # What the page could read: nothing but refusals and opaque answers.
    assert seen["text/plain"] == 403 or str(seen["text/plain"]).startswith("error"), seen
    assert seen["json, preflighted"] == "error: TypeError", seen  # the preflight is refused
    assert seen["no-cors"] == "opaque" and seen["credentials"] == "opaque", seen
    assert seen["predict"] == 403 or str(seen["predict"]).startswith("error"), seen
    # And nothing changed: no app, no model, no learned state.
    assert state(clipper) == before
    assert "evil" not in clipper.conn.get_all_apps()


# A same-origin POST a page can send without a preflight, and read the answer of.
POST = """async ([url, body]) => {
    const r = await fetch(url, {method: "POST", headers: {"Content-Type": "text/plain"},
                                body: JSON.stringify(body)});
    return [r.status, await r.text()];
}"""


def test_a_dns_rebinding_page_is_refused_by_its_host_name(clipper: Clipper) -> None:
    from playwright.sync_api import sync_playwright

    before = state(clipper)
    admin_port = clipper.cm.clipper_management_port
    query_port = clipper.cm.clipper_query_port
    rebound = f"http://rebind.test:{admin_port}"
    with sync_playwright() as p:
        # The attacker's name now resolves to this machine: to the browser, the
        # page and the server share one origin, so it may read every answer.
        b = browser(p, "--host-resolver-rules=MAP rebind.test 127.0.0.1")
        try:
            page = b.new_page()
            response = page.goto(f"{rebound}/dashboard")
            assert response is not None and response.status == 403
            assert "rebind.test" in response.text()
            seen = {"admin": page.evaluate(POST, [f"{rebound}/admin/add_app", EVIL_APP])}
            seen["ping"] = page.evaluate(f"fetch('{rebound}/admin/ping').then((r) => r.status)")
            # The query port under the same name: /update (feedback can steer a policy).
            query = f"http://rebind.test:{query_port}"
            response = page.goto(f"{query}/health")
            assert response is not None and response.status == 403
            feedback = {"uid": "victim", "input": [1, 2], "label": 0}
            seen["update"] = page.evaluate(POST, [f"{query}/vote/update", feedback])
        finally:
            b.close()
    assert seen["admin"][0] == 403 and "Host" in json.loads(seen["admin"][1])["cause"]
    assert seen["ping"] == 403
    assert seen["update"][0] == 403
    assert state(clipper) == before


@pytest.mark.parametrize("port", ["admin", "query"])
def test_host_and_origin_are_checked_on_both_ports(clipper: Clipper, port: str) -> None:
    url = clipper.admin_url if port == "admin" else clipper.query_url
    target = "/admin/ping" if port == "admin" else "/health"
    auth = {"Authorization": f"Bearer {clipper.token()}"} if port == "admin" else {}
    number = url.rsplit(":", 1)[1]
    ok = httpx.get(f"{url}{target}", headers={**auth, "Host": f"localhost:{number}"})
    assert ok.status_code == 200
    rebinding = httpx.get(f"{url}{target}", headers={**auth, "Host": f"evil.test:{number}"})
    assert rebinding.status_code == 403 and "allowed_hosts" in rebinding.json()["cause"]
    cross = httpx.get(f"{url}{target}", headers={**auth, "Origin": ATTACKER})
    assert cross.status_code == 403 and "allowed_origins" in cross.json()["cause"]
    same = httpx.get(f"{url}{target}", headers={**auth, "Origin": url})
    assert same.status_code == 200
    null = httpx.get(f"{url}{target}", headers={**auth, "Origin": "null"})
    assert null.status_code == 403


def test_state_changes_need_a_json_body(clipper: Clipper) -> None:
    r = clipper.http.post(
        f"{clipper.admin_url}/admin/add_app",
        content=json.dumps(EVIL_APP),
        headers={"Content-Type": "text/plain"},
    )
    assert r.status_code == 415 and "application/json" in r.json()["cause"]
    assert "evil" not in clipper.conn.get_all_apps()
