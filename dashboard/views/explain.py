"""The "Why does this user get it?" box: one user's decision on one flag, explained, on the flag page."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from flags import evaluation, selectors
from flags.evaluation import Reason
from flags.models import validate_user_id
from flags.targeting import Serve

from ..access import HtmxHttpRequest, flag_or_404, viewer_required

CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class Explanation:
    user_id: str
    gets_it: bool
    reason: Reason
    reason_text: str  # the reason in words, ending with its code
    bucketing: str
    bucket: int
    bucket_text: str  # "bucket 1234 of 0..9999 (12.34%)" or "cohort 12 of 0..99"
    threshold: Decimal  # the smallest rollout percentage that includes this user's bucket
    threshold_text: str  # the same in words: "a rollout of 12.35% or more"
    rollout: Decimal  # the flag's rollout now
    override: str  # what makes the percentage irrelevant for this user, or ''
    rule: str | None = None  # the targeting rule that decided, if one did


def _percent(basis_points: int) -> Decimal:
    return Decimal(basis_points).scaleb(-2).quantize(CENT)


def smallest_rollout_basis_points(flag: evaluation.FlagConfig, bucket: int) -> int:
    """The lowest rollout (in hundredths of a percent) at which evaluation.in_rollout includes `bucket`.
    murmur3 bucket b is in when b < rollout, so from b + 1 (0.01% steps); legacy cohort c when c < percentage,
    so from c% + 0.01, which is c + 1 % in the whole percents the legacy scheme was made for."""
    if flag.bucketing == evaluation.MURMUR3:
        return bucket + 1
    return bucket * 100 + 1


def _rule_words(flag: evaluation.FlagConfig, rule_id: str | None, bucket: int, unit: str) -> str:
    rule = next((r for r in flag.rules if r.id == rule_id), None)
    if rule is None:  # evaluate() names a rule of this very config
        raise ValueError(f"no rule {rule_id!r}")
    if rule.serve == Serve.ON:
        return f"targeting rule {rule.id} matched and serves it"
    if rule.serve == Serve.OFF:
        return f"targeting rule {rule.id} matched and keeps it off"
    percentage = _percent(rule.basis_points)
    inside = evaluation.in_rollout(flag, bucket, rule.basis_points)
    where = "below it" if inside else "not below it"
    return f"targeting rule {rule.id} matched and serves {percentage}%: {unit} {bucket} is {where}"


def explain(flag: evaluation.FlagConfig, user_id: str, attributes: dict[str, Any] | None = None) -> Explanation:
    """The production decision (evaluation.evaluate) for one user, with the numbers behind it in words."""
    decision = evaluation.evaluate(flag, user_id, attributes)
    if decision.bucket is None:  # evaluate() only says so for a missing flag, and the view never passes one
        raise ValueError("no bucket for an unknown flag")
    bucket = decision.bucket
    unit = "bucket" if flag.bucketing == evaluation.MURMUR3 else "cohort"
    rollout = _percent(flag.rollout_basis_points)
    threshold = _percent(smallest_rollout_basis_points(flag, bucket))
    words = {
        Reason.DISABLED: "the kill switch is off",
        Reason.ALLOW_LIST: "on the allow list",
        Reason.DENY_LIST: "on the deny list",
        Reason.IN_ROLLOUT: f"{unit} {bucket} is below the rollout {rollout}%",
        Reason.OUT_OF_ROLLOUT: f"{unit} {bucket} is not below the rollout {rollout}%",
    }
    if decision.reason == Reason.RULE_MATCH:
        words[Reason.RULE_MATCH] = _rule_words(flag, decision.rule, bucket, unit)
    override = ""
    if decision.reason == Reason.DISABLED:
        override = "The kill switch is off: nobody gets it at any percentage until the flag is enabled"
        if user_id in flag.allow:
            override += "; then the allow list gives it to this user whatever the percentage"
        elif user_id in flag.deny:
            override += "; even then the deny list keeps it from this user"
        override += "."
    elif decision.reason == Reason.ALLOW_LIST:
        override = "The allow list overrides the rollout: this user gets it at any percentage while the flag is on."
    elif decision.reason == Reason.DENY_LIST:
        override = "The deny list overrides the rollout: this user does not get it at any percentage."
    elif decision.reason == Reason.RULE_MATCH:
        override = (f"With these attributes targeting rule {decision.rule} decides before the flag's rollout, so the "
                    "flag's percentage does not apply to this user.")
    return Explanation(
        user_id=user_id,
        gets_it=decision.enabled,
        reason=decision.reason,
        reason_text=f"{words[decision.reason]} ({decision.reason.value})",
        bucketing=flag.bucketing,
        bucket=bucket,
        bucket_text=(f"bucket {bucket} of 0..{evaluation.MURMUR3_BUCKETS - 1} ({_percent(bucket)}%), murmur3"
                     if flag.bucketing == evaluation.MURMUR3
                     else f"cohort {bucket} of 0..{evaluation.LEGACY_COHORTS - 1}, legacy bucketing (1% steps)"),
        threshold=threshold,
        threshold_text=(f"a rollout of {threshold}% or more" if flag.bucketing == evaluation.MURMUR3
                        else f"a rollout of {threshold}% or more ({bucket + 1}% in whole percents)"),
        rollout=rollout,
        override=override,
        rule=decision.rule,
    )


@require_http_methods(["GET", "POST"])
@viewer_required
def flag_explain(request: HtmxHttpRequest, key: str) -> HttpResponse:
    """Read-only, so viewers may use it. An HTMX request gets the result alone (the box keeps what was typed)."""
    flag = flag_or_404(key)
    data = request.POST if request.method == "POST" else request.GET
    template = "flags/_explain.html#" + ("explain-result" if request.htmx else "explain")
    context: dict[str, Any] = {"flag": flag}
    if "user_id" not in data:
        return render(request, template, context)
    user_id = data["user_id"]
    attributes_text = data.get("attributes", "").strip()
    context |= {"user_id": user_id, "attributes": attributes_text}
    try:
        validate_user_id(user_id)
    except ValidationError as exc:
        return render(request, template, {**context, "error": " ".join(exc.messages)}, status=400)
    attributes = _attributes(attributes_text)
    if attributes is None:
        error = 'Attributes must be a JSON object, like {"email": "ana@example.com", "plan": "pro"}.'
        return render(request, template, {**context, "error": error}, status=400)
    context["explanation"] = explain(selectors.flag_config(flag), user_id, attributes)
    return render(request, template, context)


def _attributes(text: str) -> dict[str, Any] | None:
    """The context's attributes typed in the box (a JSON object; empty: none), or None if they are not one."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
