"""The dashboard's rollouts panel in a real browser (chromium driven by Playwright,
as tests/observability/test_browser.py): shown only while a rollout runs, with
the two versions side by side."""

from __future__ import annotations

import os

import pytest

from tests.e2e.test_rollouts import deploy_versions, label, start
from tests.helpers import Clipper
from tests.observability.test_browser import CHROMIUM, launch, until

pytestmark = pytest.mark.slow


def test_the_rollouts_panel_compares_the_versions_live(clipper: Clipper) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    deploy_versions(clipper, "dash", "dashm", (1.0, 0), (0.0, 0))
    problems: list[str] = []
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.goto(f"{clipper.admin_url}/dashboard?token={clipper.token()}")
        until(page, "window.clipperDashboard && window.clipperDashboard.polls >= 2", 20, "polls")
        assert page.locator("#rollouts-card").is_hidden()  # no rollout yet

        start(clipper, "dashm", "canary", fraction=0.5)
        for i in range(100):
            clipper.predict("dash", {"input": [float(i)], "uid": f"d{i}"})
        clipper.http.post(
            f"{clipper.query_url}/dash/update",
            json={"uid": "d1", "input": [1.0], "label": label(1)},
        )
        page.wait_for_selector("#rollouts-card", state="visible", timeout=20_000)
        until(
            page,
            """() => {
                const rows = document.querySelectorAll('#rollouts tr[data-model="dashm"]');
                return rows.length === 2 && Number(rows[0].children[4].textContent)
                    + Number(rows[1].children[4].textContent) >= 100;
            }""",
            20,
            "the panel to count the queries",
        )
        base = page.inner_text('#rollouts tr[data-model="dashm"][data-role="base"]')
        new = page.inner_text('#rollouts tr[data-model="dashm"][data-role="new"]')
        assert "1 (base)" in base and "canary" in base
        assert "2 (new)" in new and "50.0 %" in new and "P(new better)" in new

        clipper.admin("stop_rollout", {"model_name": "dashm"})
        page.wait_for_selector("#rollouts-card", state="hidden", timeout=20_000)
        browser.close()
    assert problems == [], problems
