"""Headless Chromium from Debian (/usr/bin/chromium) driven by Playwright: one browser per session.

Playwright never downloads a browser here (`executable_path`); scripts/test installs Debian's
chromium when it is missing. Screenshots go to GATEHOUSE_SCREENSHOT_DIR (default: a pytest tmp
directory, printed at the end of the session) for a person to look at.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("GATEHOUSE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ADMIN_USERNAME = "staff"
ADMIN_PASSWORD = "browser-test-password"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Module-scoped: Playwright's loop stops once the browser tests are done, so the tests that
    run after them in the same worker (asyncio.run, async_to_sync) find no running loop."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs it (apt-get install -y chromium)")
    # Playwright's sync API runs an event loop in this thread; the ORM calls the tests make
    # between browser steps are plain synchronous ones.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("GATEHOUSE_SCREENSHOT_DIR")
    directory = Path(configured) if configured else tmp_path_factory.mktemp("screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def screenshot(screenshot_dir: Path) -> Callable[..., Path]:
    """`screenshot(page, "name")`: the full page at 1 400 and 1 920 px wide, as PNG files."""

    def take(page, name: str, widths: tuple[int, ...] = (1400, 1920)) -> Path:  # noqa: ANN001
        for width in widths:
            page.set_viewport_size({"width": width, "height": 900})
            page.screenshot(path=str(screenshot_dir / f"{name}-{width}.png"), full_page=True)
        page.set_viewport_size({"width": 1400, "height": 900})
        return screenshot_dir

    return take


@pytest.fixture
def staff_page(browser, gateway_process_factory, django_user_model):  # noqa: ANN001
    """A logged-in admin page on a live server: (page, base URL). Logs in through the form."""
    django_user_model.objects.create_superuser(ADMIN_USERNAME, "", ADMIN_PASSWORD)
    # Two failures open a circuit, so the dashboard test sees one open whichever worker answers.
    base = gateway_process_factory({"DASHBOARD_FLUSH_SECONDS": "0.1", "GATEWAY_CIRCUIT_FAILURES": "2"})
    context = browser.new_context(viewport={"width": 1400, "height": 900}, base_url=base)
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.goto("/admin/login/")
    page.fill("#id_username", ADMIN_USERNAME)
    page.fill("#id_password", ADMIN_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")
    yield page, base
    context.close()
