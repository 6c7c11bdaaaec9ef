"""Browser tests: helpers the test modules import (fixtures live in conftest.py)."""

from __future__ import annotations

PASSWORD = "browser-test-password"


def login(page, username: str, next_path: str) -> None:  # type: ignore[no-untyped-def]
    """Open `next_path` logged in as `username`. The session is made on the server and its cookie handed
    to the browser: a second faster per test than the form, which test_the_login_form_logs_in covers."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.get(username=username))
    # pytest-django's live server is http://localhost:<port>; a cookie is for a host, whatever the port.
    page.context.add_cookies([{"name": settings.SESSION_COOKIE_NAME,
                               "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
                               "domain": "localhost", "path": "/"}])
    page.goto(next_path)


def login_with_the_form(page, username: str, next_path: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"/login/?next={next_path}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"**{next_path}")
