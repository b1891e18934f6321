"""What the browser tests share: Debian's chromium driven by Playwright, and Airflow's login page."""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    """Chromium (`bash scripts/browser_env.sh` installs it and playwright); the test is skipped without them."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: run `bash scripts/browser_env.sh` (Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: run `bash scripts/browser_env.sh`")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def login(page, base: str, user: str, password: str) -> None:
    """Through Airflow's own login page (simple auth manager)."""
    page.goto(f"{base}/")
    page.wait_for_url("**/auth/login**")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button:has-text('Sign in')")
    page.wait_for_url(lambda url: "/auth/" not in url)
