"""The flag page's "Targeting rules" panel in a real browser: a manager writes rules, the page follows."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from flags.models import AuditEntry, Flag
from tests.browser import login

pytestmark = pytest.mark.django_db(transaction=True)

STAFF = [{"id": "staff", "serve": "on",
          "conditions": [{"attribute": "email", "operator": "ends_with", "values": ["@ourcompany.com"]}]}]


def test_a_manager_saves_rules_and_the_explain_box_follows_without_a_reload(page, user_in, patch_flag):
    user_in("pm", "Rollout managers")
    login(page, "pm", "/flags/patch_mode_enabled/")
    panel = page.locator("#rules")
    expect(panel.locator("#rule-list-empty")).to_be_visible()
    box = page.locator("#explain")  # a user the rollout (10%) leaves out, checked as staff
    box.get_by_label("User id", exact=True).fill("user_0")
    box.get_by_label("Attributes").fill('{"email": "ana@ourcompany.com"}')
    box.get_by_role("button", name="Check").click()
    expect(box.locator("#explain-reason")).to_contain_text("OUT_OF_ROLLOUT")

    panel.get_by_text("Edit rules").click()
    panel.get_by_label("Rules (JSON: the whole ordered list)").fill(json.dumps(STAFF))
    panel.get_by_label("Reason").fill("dogfood first")
    panel.get_by_role("button", name="Save rules").click()
    expect(page.locator("#rules-message")).to_contain_text("Rules saved")
    expect(page.locator("#rule-list")).to_contain_text('staff: serve on when email ends with "@ourcompany.com"')
    # flag-changed asks the explain box again, with the same attributes.
    expect(box.locator("#explain-reason")).to_have_text("targeting rule staff matched and serves it (RULE_MATCH)")
    assert Flag.objects.get(key="patch_mode_enabled").rules == STAFF
    assert AuditEntry.objects.filter(action="rules_update", reason="dogfood first").count() == 1
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1


def test_refused_rules_show_next_to_the_editor_and_keep_the_text(page, user_in, patch_flag):
    user_in("pm", "Rollout managers")
    login(page, "pm", "/flags/patch_mode_enabled/")
    panel = page.locator("#rules")
    panel.get_by_text("Edit rules").click()
    panel.get_by_label("Rules (JSON: the whole ordered list)").fill('[{"id": "x", "serve": "sometimes"}]')
    panel.get_by_label("Reason").fill("try")
    panel.get_by_role("button", name="Save rules").click()
    expect(page.locator("#rules-errors")).to_contain_text("rules[0].serve: one of on, off, percentage")
    expect(page.locator("#rules-json")).to_have_value('[{"id": "x", "serve": "sometimes"}]')
    assert Flag.objects.get(key="patch_mode_enabled").rules == []
    assert all("400" in error for error in page.console_errors)  # type: ignore[attr-defined]
    page.console_errors.clear()  # type: ignore[attr-defined]
