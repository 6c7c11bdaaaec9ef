"""The flags list (with its live search) and the "New flag" form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods
from django_htmx.http import HttpResponseClientRedirect

from alerts.plans import plan_stages_by_flag
from alerts.selectors import OpenAlerts, open_alerts_by_flag
from flags import selectors, services
from flags.actors import Actor
from flags.models import KEY_VALIDATOR, AuditEntry, Flag, Source

from ..access import HtmxHttpRequest, can_manage, manager_required, viewer_required


@require_GET
@viewer_required
def flag_list(request: HtmxHttpRequest) -> HttpResponse:
    search = request.GET.get("q", "").strip()
    template = "flags/flag_list.html"
    # A history restore (back button after a search pushed its URL) needs the whole page, not the table.
    if request.htmx and not request.htmx.history_restore_request:
        template += "#flag-table"
    stages = plan_stages_by_flag()
    alerts = open_alerts_by_flag()
    rows = [FlagRow(item.flag, item.last_change, stages.get(item.flag.pk, ""), alerts.get(item.flag.pk))
            for item in selectors.flags_for_list(search)]
    return render(request, template, {"rows": rows, "q": search, "can_manage": can_manage(request.user)})


@dataclass(frozen=True, slots=True)
class FlagRow:
    """One line of the flags list: the flag, its last change, its plan's stage and its open alerts."""

    flag: Flag
    last_change: AuditEntry | None
    plan_stage: str
    open_alerts: OpenAlerts | None


class FlagForm(forms.ModelForm):
    """Renders and checks the fields with the model's own rules (length, key and mode validators, unique key,
    distinct modes); the service checks them again and writes the flag with its audit entry."""

    class Meta:
        model = Flag
        fields = ["key", "name", "description", "treatment_mode", "baseline_mode"]
        widgets = {"description": forms.Textarea(attrs={"rows": 3})}
        help_texts = {"key": f"{KEY_VALIDATOR.message} {Flag._meta.get_field('key').help_text}"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")  # labels read exactly "Key", "Name"...
        super().__init__(*args, **kwargs)


@require_http_methods(["GET", "POST"])
@manager_required("create flags")
def flag_new(request: HtmxHttpRequest) -> HttpResponse:
    """A new flag starts disabled at 0% (flag_create's defaults): creating it exposes nobody."""
    template = "flags/flag_new.html"
    if request.htmx:
        template += "#flag-form"
    if request.method != "POST":
        return render(request, template, {"form": FlagForm()})
    form = FlagForm(request.POST)
    if form.is_valid():
        try:
            flag = services.flag_create(**form.cleaned_data, actor=Actor.for_user(request.user), source=Source.UI)
        except ValidationError as exc:
            for name, messages in exc.message_dict.items():
                form.add_error(name if name in form.fields else None, messages)
        else:
            url = reverse("flags:detail", args=[flag.key])
            if request.htmx:
                return HttpResponseClientRedirect(url)
            response = HttpResponseRedirect(url)
            response.status_code = 303  # See Other: the browser GETs the new flag's page
            return response
    return render(request, template, {"form": form}, status=400)

