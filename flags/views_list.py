"""The flags list (with its live search) and the "New flag" form."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from . import selectors
from .views import manager_required, viewer_required


@require_GET
@viewer_required
def flag_list(request: HttpRequest) -> HttpResponse:
    from alerts.plans import plan_stages_by_flag

    template = "flags/flag_list.html"
    if request.htmx:
        template += "#flag-table"
    flags = list(selectors.flags_with_last_change())
    stages = plan_stages_by_flag()
    for flag in flags:
        flag.plan_stage = stages.get(flag.pk, "")
    return render(request, template, {"flags": flags})


@manager_required("create flags")
def flag_new(request: HttpRequest) -> HttpResponse:
    raise NotImplementedError
