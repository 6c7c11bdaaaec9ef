"""Browser tests: helpers the test modules import (fixtures live in conftest.py)."""

from __future__ import annotations

PASSWORD = "browser-test-password"


def login(page, username: str, next_path: str) -> None:
    page.goto(f"/login/?next={next_path}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"**{next_path}")
