from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect

from flags.actors import Actor

from . import notify, outbox, plans
from .models import Alert, AlertRule, Notification, PlanStage, RolloutPlan


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    list_display = ["name", "flag", "metric", "comparison", "threshold", "severity", "alpha", "cusum_limit",
                    "action", "action_value", "cooldown_minutes", "enabled"]
    list_filter = ["flag", "severity", "action", "enabled"]
    list_editable = ["enabled"]
    search_fields = ["name"]


class NotificationInline(admin.TabularInline):
    model = Notification
    extra = 0
    can_delete = False
    readonly_fields = ("event", "channel", "status", "attempts", "last_error", "created_at", "sent_at")
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest, obj: Alert | None = None) -> bool:
        return False


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ["opened_at", "flag", "rule", "severity", "state", "value_display", "acknowledged_by",
                    "resolved_at"]
    list_filter = ["state", "severity", "flag", "opened_at"]
    readonly_fields = ["rule", "flag", "state", "severity", "message", "value", "opened_at", "last_checked_at",
                       "acknowledged_at", "acknowledged_by", "resolved_at", "actions_taken"]
    inlines = [NotificationInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    """Failed deliveries are visible here, with the error and how often it was tried: a failed notification
    with a next attempt is still being retried by the outbox (alerts.notify.flush); one without was given up,
    and its last error says why."""

    list_display = ["created_at", "alert", "event", "channel", "status", "attempts", "next_attempt_at",
                    "last_error", "sent_at"]
    list_filter = ["status", "channel", "event"]
    readonly_fields = ["alert", "event", "channel", "status", "attempts", "last_error", "created_at", "queued_at",
                       "next_attempt_at", "sent_at"]
    actions = ["retry"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Send the selected failed notifications again")
    def retry(self, request: HttpRequest, queryset: QuerySet[Notification]) -> None:
        failed = [n for n in queryset.filter(status="failed")
                  if notify.restart(n, by=f"{request.user.get_username()} (admin)")]
        queued = sum(outbox.enqueue(n.pk) for n in failed)
        messages.success(request, f"Queued {queued} notification(s) again.")
        if queued < len(failed):
            messages.warning(request, f"{len(failed) - queued} notification(s) could not be queued (the broker "
                                      f"refused): the outbox sends them within a few minutes.")


class PlanStageInline(admin.TabularInline):
    model = PlanStage
    extra = 0


@admin.register(RolloutPlan)
class RolloutPlanAdmin(admin.ModelAdmin):
    list_display = ["flag", "state", "current_stage", "stage_started_at", "status_note", "created_by", "created_at"]
    list_filter = ["state", "flag"]
    readonly_fields = ["state", "current_stage", "stage_started_at", "status_note", "created_by"]
    inlines = [PlanStageInline]

    def changeform_view(self, request: HttpRequest, object_id: str | None = None, form_url: str = "",
                        extra_context: dict[str, Any] | None = None) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ValidationError as exc:  # plan_create refused the new plan: nothing was written
            messages.error(request, "; ".join(exc.messages))
            return HttpResponseRedirect(request.path)

    def save_model(self, request: HttpRequest, obj: RolloutPlan, form: forms.ModelForm[RolloutPlan],
                   change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
        # A new plan is made in save_related, once its stages are known, by alerts.plans.plan_create.

    def save_related(self, request: HttpRequest, form: forms.ModelForm[RolloutPlan],
                     formsets: list[forms.BaseInlineFormSet[Any, RolloutPlan, Any]], change: bool) -> None:
        if change:
            super().save_related(request, form, formsets, change)
            return
        rows = [row for formset in formsets for row in formset.cleaned_data
                if row and not row.get("DELETE") and row.get("percentage") is not None]
        rows.sort(key=lambda row: row.get("order") or 0)
        data = form.cleaned_data
        created = plans.plan_create(
            flag=data["flag"], created_by=Actor.for_user(request.user).name,
            stages=[(row["percentage"], row.get("min_duration_minutes") or 0) for row in rows] or None,
            min_samples=data["min_samples"], advance_below=data["advance_below"],
            rollback_above=data["rollback_above"])
        form.instance.pk = created.pk  # the admin's log entry and redirect name the plan plan_create made
        form.instance._state.adding = False
        for formset in formsets:  # what the admin's change message lists
            formset.new_objects, formset.changed_objects, formset.deleted_objects = list(created.stages.all()), [], []
