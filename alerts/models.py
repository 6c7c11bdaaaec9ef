from __future__ import annotations

from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from flags.models import Flag

from . import guardrails


class Metric(models.TextChoices):
    # The judge's own metric names (alerts.guardrails says how each is judged).
    ERROR_RATE = guardrails.ERROR_RATE, "treatment error rate (%)"
    SUCCESS_RATE = guardrails.SUCCESS_RATE, "treatment success rate (%)"
    ERROR_RATE_DELTA = guardrails.ERROR_RATE_DELTA, "treatment error rate minus baseline error rate (points)"
    LATENCY_RATIO = guardrails.LATENCY_RATIO, "treatment latency / baseline latency (ratio of geometric means)"
    TOKENS_RATIO = guardrails.TOKENS_RATIO, "treatment avg tokens per call / baseline avg tokens per call"


UNITS: dict[str, str] = {Metric.ERROR_RATE: "%", Metric.SUCCESS_RATE: "%", Metric.ERROR_RATE_DELTA: " points",
                         Metric.LATENCY_RATIO: "x baseline", Metric.TOKENS_RATIO: "x baseline"}


class Comparison(models.TextChoices):
    GT = "gt", ">"
    GTE = "gte", ">="
    LT = "lt", "<"
    LTE = "lte", "<="


class Severity(models.TextChoices):
    CRITICAL = "critical", "critical"
    WARNING = "warning", "warning"


class Action(models.TextChoices):
    NOTIFY = "notify", "notify only"
    CAP_ROLLOUT = "cap_rollout", "cap the rollout at the action value (never raises it)"
    ROLLBACK = "rollback", "roll back to 0% (with a running plan: to its previous stage, and pause it)"
    DISABLE = "disable", "disable the flag (kill switch)"
    PAUSE_PLAN = "pause_plan", "pause the flag's rollout plan"


class AlertRule(models.Model):
    flag = models.ForeignKey(Flag, on_delete=models.CASCADE, related_name="alert_rules")
    name = models.CharField(max_length=200)
    metric = models.CharField(max_length=20, choices=Metric.choices)
    comparison = models.CharField(max_length=3, choices=Comparison.choices)
    threshold = models.DecimalField(max_digits=10, decimal_places=3)
    severity = models.CharField(max_length=10, choices=Severity.choices, default=Severity.WARNING)
    alpha = models.DecimalField(
        max_digits=6, decimal_places=5, default=Decimal("0.01"),
        validators=[MinValueValidator(Decimal("0.00001")), MaxValueValidator(Decimal("0.2"))],
        help_text="False-alarm level of the rule's confidence interval per rollout stage (0.01: at most 1%; "
                  "the five default rules together stay within 5%).",
    )
    cusum_limit = models.DecimalField(
        max_digits=6, decimal_places=2, null=True, blank=True, validators=[MinValueValidator(Decimal("0.5"))],
        help_text="How much recent evidence fires the rule (CUSUM limit). Empty: the tuned default for the "
                  "metric. Lower is faster and noisier: try a value with backtest_alerts first.",
    )
    action = models.CharField(max_length=12, choices=Action.choices, default=Action.NOTIFY)
    action_value = models.DecimalField(
        max_digits=5, decimal_places=2, null=True, blank=True, help_text="For cap_rollout: the cap in percent."
    )
    cooldown_minutes = models.PositiveIntegerField(
        default=30, help_text="After a remediation, the rule takes no further action for this long."
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["flag", "id"]
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(action="cap_rollout")
                | (models.Q(action_value__gte=0) & models.Q(action_value__lte=100)),
                name="alertrule_cap_needs_a_percentage",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.flag.key}: {self.name}"

    def describe(self) -> str:
        threshold = format(self.threshold.normalize(), "f")
        return f"{self.get_metric_display()} {self.get_comparison_display()} {threshold}{UNITS[self.metric]}"


class AlertState(models.TextChoices):
    FIRING = "firing", "firing"
    ACKNOWLEDGED = "acknowledged", "acknowledged"
    RESOLVED = "resolved", "resolved"


OPEN_STATES = (AlertState.FIRING, AlertState.ACKNOWLEDGED)


class Alert(models.Model):
    """One episode of a rule firing for its flag: firing -> acknowledged -> resolved."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="alerts")
    flag = models.ForeignKey(Flag, on_delete=models.CASCADE, related_name="alerts")
    state = models.CharField(max_length=12, choices=AlertState.choices, default=AlertState.FIRING)
    severity = models.CharField(max_length=10, choices=Severity.choices)
    message = models.TextField()
    value = models.DecimalField(max_digits=14, decimal_places=3, null=True)
    # Set by the check from its `now` (simulations and backtests replay time exactly).
    opened_at = models.DateTimeField(default=timezone.now)
    last_checked_at = models.DateTimeField(null=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.CharField(max_length=150, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    actions_taken = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-opened_at", "-id"]
        constraints = [
            # At most one open episode per rule: overlapping checks cannot open two.
            models.UniqueConstraint(fields=["rule"], condition=models.Q(state__in=["firing", "acknowledged"]),
                                    name="alert_one_open_episode_per_rule"),
        ]

    def __str__(self) -> str:
        return f"{self.flag.key}: {self.rule.name} ({self.state})"

    @property
    def value_display(self) -> str:
        """The estimate when last judged, with its unit (9.49%, +8.29 points, 1.62x baseline)."""
        if self.value is None:
            return ""
        unit = UNITS.get(self.rule.metric, "")
        number = f"{self.value:+.2f}" if unit == " points" else f"{self.value:.2f}"
        return f"{number}{unit}"


class NotificationStatus(models.TextChoices):
    PENDING = "pending", "pending"
    SENT = "sent", "sent"
    FAILED = "failed", "failed"


class Notification(models.Model):
    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="notifications")
    event = models.CharField(max_length=10)  # firing, resolved
    channel = models.CharField(max_length=10)  # email, webhook
    status = models.CharField(max_length=10, choices=NotificationStatus.choices, default=NotificationStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)  # the check's time (simulated in backtests)
    sent_at = models.DateTimeField(null=True, blank=True)
    # The outbox (alerts.notify.flush): real times, not the check's. `queued_at` is when the row was written
    # (its age is judged from it); `next_attempt_at` is when the flush may next try it if it is not sent by
    # then; empty once it is sent or given up.
    queued_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["next_attempt_at"], name="alerts_notification_due")]

    def __str__(self) -> str:
        return f"{self.channel} {self.event} for alert {self.alert_id}: {self.status}"


DEFAULT_RULES = [
    # The seed's four rules (alert-rules.js), judged with confidence (alerts.guardrails); the critical
    # action rolls back (the seed's "cap at 50%" did nothing at the rollouts where bad news arrives).
    {"name": "Patch Mode error rate above 5%", "metric": Metric.ERROR_RATE, "comparison": Comparison.GT,
     "threshold": Decimal("5"), "severity": Severity.CRITICAL, "action": Action.ROLLBACK},
    {"name": "Latency above 1.5x baseline", "metric": Metric.LATENCY_RATIO, "comparison": Comparison.GT,
     "threshold": Decimal("1.5"), "severity": Severity.WARNING, "action": Action.NOTIFY},
    {"name": "Token savings low (tokens above 0.8x baseline)", "metric": Metric.TOKENS_RATIO,
     "comparison": Comparison.GT, "threshold": Decimal("0.8"), "severity": Severity.WARNING,
     "action": Action.NOTIFY},
    # Success is the complement of error: this rule never opens an episode while an error-rate rule that
    # covers it fires (alerts.services), so one regression is one episode.
    {"name": "Success rate below 95%", "metric": Metric.SUCCESS_RATE, "comparison": Comparison.LT,
     "threshold": Decimal("95"), "severity": Severity.WARNING, "action": Action.NOTIFY},
    # Comparative: a regression is a difference between the two modes, not a level.
    {"name": "Patch Mode errors more than 1 point above Single Mode", "metric": Metric.ERROR_RATE_DELTA,
     "comparison": Comparison.GT, "threshold": Decimal("1"), "severity": Severity.CRITICAL,
     "action": Action.ROLLBACK},
]


class PlanState(models.TextChoices):
    DRAFT = "draft", "draft"
    RUNNING = "running", "running"
    PAUSED = "paused", "paused"
    COMPLETED = "completed", "completed"
    ROLLED_BACK = "rolled_back", "rolled back"


class RolloutPlan(models.Model):
    """The seed's week-by-week schedule, automated: stages advance when their time is up and the gate passes."""

    flag = models.ForeignKey(Flag, on_delete=models.CASCADE, related_name="plans")
    state = models.CharField(max_length=12, choices=PlanState.choices, default=PlanState.DRAFT)
    current_stage = models.PositiveIntegerField(default=0, help_text="Index of the stage in force (0-based).")
    stage_started_at = models.DateTimeField(null=True, blank=True)
    # Health gate (the seed's week-2 rule), judged with confidence on the stage's own calls: a stage
    # advances when its error rate is shown below `advance_below` % and every guardrail of the flag is
    # healthy; shown above `rollback_above` %, or a critical guardrail regressing, rolls back a stage.
    advance_below = models.DecimalField(max_digits=5, decimal_places=2, default=Decimal("2"))
    rollback_above = models.DecimalField(max_digits=5, decimal_places=2, default=Decimal("5"))
    min_samples = models.PositiveIntegerField(default=100, help_text="Treatment calls a stage needs before it "
                                                                     "can advance.")
    status_note = models.CharField(max_length=500, blank=True, help_text="Why the plan holds, paused or stopped.")
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(default=timezone.now)  # set by alerts.plans from its `now`

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["flag"], condition=models.Q(state__in=["running", "paused"]),
                                    name="plan_one_active_per_flag"),
            models.CheckConstraint(condition=models.Q(advance_below__lte=models.F("rollback_above")),
                                   name="plan_gate_thresholds_ordered"),
        ]

    def __str__(self) -> str:
        return f"{self.flag.key} plan ({self.state})"


class PlanStage(models.Model):
    plan = models.ForeignKey(RolloutPlan, on_delete=models.CASCADE, related_name="stages")
    order = models.PositiveIntegerField()
    percentage = models.DecimalField(max_digits=5, decimal_places=2)
    min_duration_minutes = models.PositiveIntegerField(default=7 * 24 * 60)

    class Meta:
        ordering = ["plan", "order"]
        constraints = [models.UniqueConstraint(fields=["plan", "order"], name="planstage_unique_order")]

    def __str__(self) -> str:
        return f"stage {self.order + 1}: {self.percentage}% for {self.min_duration_minutes} min"


DEFAULT_STAGES = [(Decimal("10"), 7 * 24 * 60), (Decimal("20"), 7 * 24 * 60), (Decimal("50"), 7 * 24 * 60),
                  (Decimal("100"), 7 * 24 * 60)]
