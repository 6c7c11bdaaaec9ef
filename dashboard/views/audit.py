"""The audit log in the dashboard: every change, filtered by flag, actor, source and action.

A GET form, so a filtered log is a URL to bookmark or share. With JavaScript, htmx applies the filters as
they change and answers with the table partial alone; without it, the Filter button loads the page. Values
that cannot be valid (an unknown source or flag, a broken page position) get 400 with the field named.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.core.exceptions import ValidationError
from django.db import models
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from flags import selectors
from flags.models import AuditEntry, Flag, Source

from ..access import HtmxHttpRequest, viewer_required

FILTERS = ("flag", "actor", "source", "action")
# A page position in a URL: the (created_at, id) of the entry a page starts after, e.g.
# 2026-11-27T19:52:39.123456Z_1234.
CURSOR = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6})Z_([0-9]{1,18})")
ACTION = re.compile(r"[a-z0-9_]+")


def cursor_text(cursor: selectors.AuditCursor) -> str:
    at, pk = cursor
    return f"{at.astimezone(UTC):%Y-%m-%dT%H:%M:%S.%f}Z_{pk}"


def parse_cursor(text: str) -> selectors.AuditCursor:
    match = CURSOR.fullmatch(text)
    if match is None:
        raise ValidationError("Not a position in the log: follow the Older and Newer links.")
    try:
        at = datetime.fromisoformat(match[1]).replace(tzinfo=UTC)
    except ValueError:
        raise ValidationError("Not a position in the log: follow the Older and Newer links.") from None
    return at, int(match[2])


def _max_length(name: str) -> int:
    field = AuditEntry._meta.get_field(name)
    if not isinstance(field, models.CharField) or field.max_length is None:
        raise TypeError(f"AuditEntry.{name} has no maximum length")
    return field.max_length


class AuditFilterForm(forms.Form):
    """Checks the query string; the template renders the inputs itself (a select of flag keys, the sources by
    their names). Empty means any."""

    flag = forms.CharField(label="Flag", required=False, max_length=Flag._meta.get_field("key").max_length)
    # Any case, any part of the name: "cli" finds every command-line user, "alert" every alert rule.
    actor = forms.CharField(label="Who", required=False, max_length=_max_length("actor"))
    source = forms.ChoiceField(label="Source", required=False, choices=[("", "any"), *Source.choices])
    action = forms.CharField(label="Action", required=False, max_length=_max_length("action"))
    before = forms.CharField(label="Page (before)", required=False, strip=False)
    after = forms.CharField(label="Page (after)", required=False, strip=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["source"].error_messages["invalid_choice"] = (
            "Unknown source “%(value)s”: choose one of " + ", ".join(str(label) for label in Source.labels) + "."
        )

    def clean_flag(self) -> Flag | None:
        key = self.cleaned_data["flag"]
        if not key:
            return None
        flag = selectors.flag_get(key)
        if flag is None:
            raise ValidationError("No flag has the key “%(key)s”.", params={"key": key})
        return flag

    def clean_action(self) -> str:
        action = self.cleaned_data["action"].lower()
        if action and not ACTION.fullmatch(action):
            raise ValidationError("An action is a word such as set_rollout, enable or override_add.")
        return action

    def clean_before(self) -> selectors.AuditCursor | None:
        return parse_cursor(self.cleaned_data["before"]) if self.cleaned_data["before"] else None

    def clean_after(self) -> selectors.AuditCursor | None:
        return parse_cursor(self.cleaned_data["after"]) if self.cleaned_data["after"] else None

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("before") and cleaned.get("after"):
            raise ValidationError("Give before or after, not both.")
        return cleaned


def _page_url(filters: dict[str, str], **position: str) -> str:
    query = {name: value for name, value in filters.items() if value} | position
    return "?" + urlencode(query) if query else "?"


@require_GET
@viewer_required
def audit_log(request: HtmxHttpRequest) -> HttpResponse:
    # A history restore (back after a filter pushed its URL) needs the whole page, not the table.
    partial = bool(request.htmx) and not request.htmx.history_restore_request
    template = "flags/audit.html" + ("#audit-table" if partial else "")
    # What was asked for, as typed: the form shows it again, and the page links keep it.
    filters = {name: request.GET.get(name, "").strip() for name in FILTERS}
    context: dict[str, Any] = {"filters": filters}
    if not partial:
        context |= {"flag_keys": selectors.flag_keys(), "sources": Source.choices}
    form = AuditFilterForm(request.GET)
    if not form.is_valid():
        errors = [(form.fields[name].label if name in form.fields else "", " ".join(str(m) for m in messages))
                  for name, messages in form.errors.items()]
        return render(request, template, {**context, "errors": errors}, status=400)
    data = form.cleaned_data
    page = selectors.audit_search(flag=data["flag"], actor=data["actor"], source=data["source"],
                                  action=data["action"], before=data["before"], after=data["after"])
    context |= {
        "entries": page.entries,
        "older_url": _page_url(filters, before=cursor_text(page.older)) if page.older else "",
        "newer_url": _page_url(filters, after=cursor_text(page.newer)) if page.newer else "",
        "filtered": any(filters.values()),
    }
    return render(request, template, context)
