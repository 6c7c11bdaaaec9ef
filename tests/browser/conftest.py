"""Shared fixtures for the browser tests: Playwright driving Debian's Chromium against a live server.

`page` fails its test if the page logged a console error that the test did not clear.
"""

from __future__ import annotations

import os
import shutil

import pytest

from flags import services
from flags.models import Source

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

HAVE_CHROMIUM = bool(shutil.which(CHROMIUM)) or os.environ.get("REQUIRE_BROWSER") == "1"

# Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still synchronous.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.browser import PASSWORD  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def chromium_required():
    if not HAVE_CHROMIUM:
        pytest.skip("Chromium is not installed (apt-get install chromium); CI installs it and requires these tests")


@pytest.fixture(scope="module")
def browser(chromium_required):
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield instance
        instance.close()


@pytest.fixture
def groups(db):
    from django.contrib.auth.models import Group

    # Transactional tests empty every table, the migration's groups included: make sure they exist.
    return {name: Group.objects.get_or_create(name=name)[0] for name in ("Rollout viewers", "Rollout managers")}


@pytest.fixture
def user_in(django_user_model, groups):
    def make(username: str, group: str):
        user = django_user_model.objects.create_user(username, password=PASSWORD)
        user.groups.add(groups[group])
        return user

    return make


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 1600})
    tab = context.new_page()
    tab.console_errors = []  # type: ignore[attr-defined]
    tab.on("console", lambda m: m.type == "error" and tab.console_errors.append(m.text))  # type: ignore[attr-defined]
    tab.on("pageerror", lambda e: tab.console_errors.append(str(e)))  # type: ignore[attr-defined]
    yield tab
    errors = tab.console_errors  # type: ignore[attr-defined]
    context.close()
    assert errors == [], f"the page logged console errors: {errors}"


@pytest.fixture
def patch_flag(flag, actor):
    return services.flag_set_rollout(flag=flag, percentage=10, enabled=True, actor=actor, source=Source.CLI)
