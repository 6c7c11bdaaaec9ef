"""The flag page's "Targeting rules" panel: the rules in words for everyone, a JSON editor for managers.

The rules themselves, their validation and their audit entry are flags.services.flag_set_rules'; this view
only reads the editor's JSON and shows the service's answer next to the editor.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods
from django_htmx.http import trigger_client_event

from flags import selectors, services
from flags.actors import Actor
from flags.models import Flag, Source

from ..access import HtmxHttpRequest, can_manage, flag_or_404, viewer_required
from .flag_detail import _expected_version

TEMPLATE = "flags/_rules.html#rules"

OPERATOR_WORDS = {
    "in": "is one of", "not_in": "is none of", "equals": "is", "starts_with": "starts with",
    "ends_with": "ends with", "contains": "contains", "lt": "<", "lte": "≤", "gt": ">", "gte": "≥",
    "semver_lt": "is a version below", "semver_gte": "is a version at least", "before": "is before",
    "after": "is after", "matches": "matches",
}


def condition_words(condition: dict[str, Any]) -> str:
    """A stored condition in words, values as JSON: 'email ends with "@ourcompany.com"' (the rules panel and the
    segment pages)."""
    values = ", ".join(json.dumps(v, ensure_ascii=False) for v in condition["values"])
    return f"{condition['attribute']} {OPERATOR_WORDS.get(condition['operator'], condition['operator'])} {values}"


def _rule_words(rule: dict[str, Any]) -> dict[str, Any]:
    serve = {"on": "serve on", "off": "serve off"}.get(rule["serve"], f"serve {rule.get('percentage')}%")
    who = [f"in segment {rule['segment']}"] if rule.get("segment") else []
    return {"id": rule["id"], "serve": serve, "when": who + [condition_words(c) for c in rule.get("conditions", [])]}


def _panel(request: HtmxHttpRequest, flag: Flag, *, status: int = 200, text: str | None = None,
           **extra: Any) -> HttpResponse:
    context = {
        "flag": flag,
        "rules": [_rule_words(rule) for rule in flag.rules],
        "can_manage": can_manage(request.user),
        "rules_text": json.dumps(flag.rules, indent=2, ensure_ascii=False) if text is None else text,
        "last_change": selectors.last_change(flag),
        **extra,
    }
    return render(request, TEMPLATE, context, status=status)


@require_http_methods(["GET", "POST"])
@viewer_required
def flag_rules(request: HtmxHttpRequest, key: str) -> HttpResponse:
    flag = flag_or_404(key)
    if request.method == "GET":
        return _panel(request, flag)
    if not can_manage(request.user):
        raise PermissionDenied("Only Rollout managers may change targeting rules.")
    text = request.POST.get("rules", "")
    reason = request.POST.get("reason", "").strip()[:1000]
    try:
        rules = json.loads(text) if text.strip() else []
    except ValueError as exc:
        return _panel(request, flag, status=400, text=text, reason=reason,
                      errors=[f"Not valid JSON: {exc}. Nothing was changed."])
    try:
        written = services.flag_set_rules(flag=flag, rules=rules, actor=Actor.for_user(request.user),
                                          source=Source.UI, reason=reason, expected_version=_expected_version(request))
    except services.VersionConflict as exc:
        return _panel(request, exc.flag, status=409, text=text, reason=reason, errors=[f"Refused: {exc}"])
    except ValidationError as exc:
        errors = [f"{field}: {' '.join(messages)}" if field != "__all__" else " ".join(messages)
                  for field, messages in exc.message_dict.items()]
        return _panel(request, flag, status=400, text=text, reason=reason, errors=errors)
    changed = written.version != flag.version
    response = _panel(request, written, message=(f"Rules saved: version {written.version}." if changed
                                                 else "The same rules: nothing changed."))
    if changed:
        trigger_client_event(response, "flag-changed", {"version": written.version})
    return response
