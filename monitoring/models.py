from __future__ import annotations

from django.db import models

from flags.rules import KEY_MAX_LENGTH, MODE_MAX_LENGTH, USER_ID_MAX_LENGTH


class ExecutionRecord(models.Model):
    """One call of the assistant in some mode (the seed's recordPatchModeExecution / recordSingleMode...)."""

    client_id = models.CharField(
        max_length=100, null=True, blank=True, unique=True,
        help_text="Chosen by the sender: a retried record with the same id counts once.",
    )
    user_id = models.CharField(max_length=USER_ID_MAX_LENGTH)
    mode = models.CharField(max_length=MODE_MAX_LENGTH)
    flag_key = models.CharField(
        max_length=KEY_MAX_LENGTH, blank=True, help_text="Empty: counts for every flag comparing this mode."
    )
    latency_ms = models.FloatField()
    tokens_used = models.BigIntegerField()
    success = models.BooleanField()
    patch_count = models.IntegerField(default=0)
    failed_patches = models.IntegerField(default=0)
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # Only retention pruning and rollup rebuilds read raw rows, both by time; dashboards read rollups.
        # Every further index would slow ingestion down.
        indexes = [models.Index(fields=["occurred_at"], name="execution_occurred_idx")]

    def __str__(self) -> str:
        return f"{self.mode} {self.user_id} {self.occurred_at:%Y-%m-%d %H:%M:%S}"


class Rollup(models.Model):
    """Counts, sums, a latency histogram and a unique-user sketch per minute (or hour), mode and flag key.

    Dashboards read these, never the raw records: a 7-day window is 168 hour rows per mode.
    """

    MINUTE = 60
    HOUR = 3600

    resolution = models.PositiveIntegerField(choices=[(MINUTE, "minute"), (HOUR, "hour")])
    flag_key = models.CharField(max_length=KEY_MAX_LENGTH, blank=True)
    mode = models.CharField(max_length=MODE_MAX_LENGTH)
    bucket_start = models.DateTimeField()
    calls = models.BigIntegerField(default=0)
    successes = models.BigIntegerField(default=0)
    patches = models.BigIntegerField(default=0)
    failed_patches = models.BigIntegerField(default=0)
    latency_sum = models.FloatField(default=0)
    tokens_sum = models.BigIntegerField(default=0)
    # What the guardrails' variances need (alerts.guardrails): sums of ln(1 + latency ms), of its
    # squares, and of squared tokens.
    log_latency_sum = models.FloatField(default=0)
    log_latency_sq = models.FloatField(default=0)
    tokens_sq = models.FloatField(default=0)
    latency_hist = models.BinaryField(default=b"")
    users_hll = models.BinaryField(default=b"")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["resolution", "flag_key", "mode", "bucket_start"],
                                    name="rollup_one_row_per_bucket"),
        ]

    def __str__(self) -> str:
        return f"{self.get_resolution_display()} {self.bucket_start:%Y-%m-%d %H:%M} {self.mode} {self.flag_key}"
