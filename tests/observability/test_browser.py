"""The dashboard in a real headless browser: Debian's chromium driven by Playwright.

``make test`` installs chromium (``make system-deps``) and Playwright (the
``dev`` extra; it downloads no browser of its own). Set
``CLIPPER_UPDATE_SCREENSHOT=1`` to also copy the screenshot to
``docs/img/dashboard.png``.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from clipper.deployers.python import deploy_python_closure
from tests.helpers import Clipper
from tests.observability import models

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "dashboard.png"


def traffic(clipper: Clipper, stop: threading.Event, worker: int) -> None:
    """Queries for three apps (some from the cache, a few defaults) and feedback."""
    with httpx.Client(timeout=10) as http:
        i = worker * 1000
        while not stop.is_set():
            http.post(f"{clipper.query_url}/sums/predict", json={"input": [float(i % 997), 1.0]})
            if i % 3 == 0:
                x = float(i % 40 - 2)  # a few negatives: the picky model's defaults
                http.post(f"{clipper.query_url}/checked/predict", json={"input": [x]})
            if i % 5 == 0:
                http.post(
                    f"{clipper.query_url}/vote/update",
                    json={"uid": "u", "input": [float(i)], "label": i % 2},
                )
                http.post(f"{clipper.query_url}/vote/predict", json={"input": [float(i)]})
            i += 1
            time.sleep(0.002)


def deploy_apps(clipper: Clipper) -> None:
    conn = clipper.conn
    conn.register_application("sums", "doubles", "-1", 20_000)
    deploy_python_closure(conn, "summer", "1", "doubles", models.total)
    conn.link_model_to_app("sums", "summer")
    conn.set_num_replicas("summer", 2)
    conn.register_application("checked", "doubles", "-1", 50_000)
    deploy_python_closure(conn, "picky", "1", "doubles", models.picky)
    conn.link_model_to_app("checked", "picky")
    conn.register_application("vote", "doubles", "-1", 100_000, selection_policy="exp4")
    for name, func in (("parity", models.parity), ("seven", models.constant)):
        deploy_python_closure(conn, name, "1", "doubles", func)
        conn.link_model_to_app("vote", name)
    clipper.wait_live("summer", 2)
    for name in ("picky", "parity", "seven"):
        clipper.wait_live(name)


def until(page: Any, predicate: str, timeout: float, what: str) -> None:
    """Poll a JS predicate with page.evaluate (Playwright's wait_for_function compiles
    its predicate in the page with eval, which the dashboard's CSP rightly forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def test_the_dashboard_in_a_real_browser(clipper: Clipper, tmp_path: Path) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - the dev extra installs it
        pytest.fail("playwright is missing: `make test` installs it (pip install -e '.[dev]')")
    deploy_apps(clipper)
    stop = threading.Event()
    workers = [
        threading.Thread(target=traffic, args=(clipper, stop, n), daemon=True) for n in range(4)
    ]
    for worker in workers:
        worker.start()
    problems: list[str] = []
    try:
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
            # Without the token: the sign-in page; with it (typed in its form), the
            # dashboard, under a session cookie, with the token gone from the URL.
            response = page.goto(f"{clipper.admin_url}/dashboard")
            assert response is not None and response.status == 401
            page.fill("input[name=token]", clipper.token())
            with page.expect_navigation():
                page.click("input[type=submit]")
            assert page.url == f"{clipper.admin_url}/dashboard"
            assert page.title() == "Clipper dashboard"
            (cookie,) = page.context.cookies()
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert cookie["path"] == "/dashboard" and clipper.token() not in cookie["value"]
            assert problems == [
                "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
            ]
            problems.clear()  # the sign-in page's own 401, as intended
            for app in ("sums", "checked", "vote"):
                page.wait_for_selector(f'#apps tr[data-app="{app}"]', timeout=15_000)
            page.wait_for_selector('#models tr[data-model="summer:1"]')
            # The charts fill while queries run: throughput above zero, latencies drawn.
            until(
                page,
                """() => {
                    const d = window.clipperDashboard, c = d && d.charts;
                    if (!c || !c.throughput || !c["latency-sums"] || !c.batch) return false;
                    const qps = c.throughput.plot.data[1] || [];
                    const p99 = c["latency-sums"].plot.data[2] || [];
                    return qps.filter((v) => v > 0).length >= 8
                        && p99.some((v) => v != null) && d.polls >= 10;
                }""",
                40,
                "the charts to fill",
            )
            polls = page.evaluate("window.clipperDashboard.polls")
            until(page, f"window.clipperDashboard.polls > {polls}", 5, "one more poll")
            charts = page.evaluate(
                """() => Object.fromEntries(Object.entries(window.clipperDashboard.charts)
                    .map(([id, c]) => [id, {series: c.plot.series.slice(1).map((s) => s.label),
                                            points: c.plot.data[0].length}]))"""
            )
            assert set(charts) >= {"throughput", "defaults", "shed", "batch", "cache",
                                   "latency-sums", "latency-checked", "latency-vote",
                                   "weights-vote"}  # fmt: skip
            assert charts["latency-sums"]["series"] == ["p50", "p99", "p99 defaults", "SLO"]
            assert charts["weights-vote"]["series"] == ["parity", "seven"]
            assert charts["throughput"]["points"] >= 8
            assert page.locator("canvas").count() >= len(charts)
            assert page.inner_text("#conn") == "live"
            slo = page.evaluate("window.clipperDashboard.charts['latency-sums'].plot.data[4]")
            assert set(slo) == {20.0}  # the SLO line, in ms
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
    print(f"dashboard screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    if os.environ.get("CLIPPER_UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, DOCS_SCREENSHOT)
    assert problems == [], problems
