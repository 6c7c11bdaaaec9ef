from __future__ import annotations

from django.contrib import admin, messages

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
    readonly_fields = ["event", "channel", "status", "attempts", "last_error", "created_at", "sent_at"]
    fields = readonly_fields

    def has_add_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ["opened_at", "flag", "rule", "severity", "state", "value_display", "acknowledged_by",
                    "resolved_at"]
    list_filter = ["state", "severity", "flag", "opened_at"]
    readonly_fields = ["rule", "flag", "state", "severity", "message", "value", "opened_at", "last_checked_at",
                       "acknowledged_at", "acknowledged_by", "resolved_at", "actions_taken"]
    inlines = [NotificationInline]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    """Failed deliveries are visible here, with the error and how often it was tried."""

    list_display = ["created_at", "alert", "event", "channel", "status", "attempts", "last_error", "sent_at"]
    list_filter = ["status", "channel", "event"]
    readonly_fields = ["alert", "event", "channel", "status", "attempts", "last_error", "created_at", "sent_at"]
    actions = ["retry"]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    @admin.action(description="Send the selected failed notifications again")
    def retry(self, request, queryset):  # type: ignore[no-untyped-def]
        from .tasks import send_notification

        failed = list(queryset.filter(status="failed").values_list("id", flat=True))
        for notification_id in failed:
            send_notification.delay(notification_id)
        messages.success(request, f"Queued {len(failed)} notification(s) again.")


class PlanStageInline(admin.TabularInline):
    model = PlanStage
    extra = 0


@admin.register(RolloutPlan)
class RolloutPlanAdmin(admin.ModelAdmin):
    list_display = ["flag", "state", "current_stage", "stage_started_at", "status_note", "created_by", "created_at"]
    list_filter = ["state", "flag"]
    readonly_fields = ["state", "current_stage", "stage_started_at", "status_note", "created_by"]
    inlines = [PlanStageInline]
