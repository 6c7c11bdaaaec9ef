from __future__ import annotations

from decimal import Decimal
from typing import Any, NamedTuple

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone

from . import evaluation, rules
from .rules import KEY_MAX_LENGTH, MODE_MAX_LENGTH, SALT_MAX_LENGTH, USER_ID_MAX_LENGTH

KEY_VALIDATOR = RegexValidator(
    rules.SLUG_PATTERN,
    "Use lowercase letters, digits, underscores and hyphens, starting with a letter or digit.",
)
MODE_VALIDATOR = RegexValidator(
    rules.SLUG_PATTERN, "A mode is a slug: lowercase letters, digits, underscores and hyphens."
)


def validate_user_id(value: str) -> None:
    """The model's (and every form's) wording of flags.rules.user_id_problem."""
    problem = rules.user_id_problem(value)
    if problem is not None:
        message, code = rules.USER_ID_SENTENCES[problem]
        raise ValidationError(message, code=code)


# The settings that decide who gets a flag: a change to any of them starts a new rollout stage, and the
# guardrails' statistics start again (alerts.guardrails).
EXPOSURE_FIELDS = ("enabled", "rollout_percentage", "bucketing", "salt", "treatment_mode", "baseline_mode",
                   "rules")


class Bucketing(models.TextChoices):
    MURMUR3 = evaluation.MURMUR3, "murmur3 (salted, 0.01% steps)"
    LEGACY = evaluation.LEGACY, "legacy (the seed's JavaScript hash, unsalted, 1% steps)"


class Flag(models.Model):
    key = models.CharField(
        max_length=KEY_MAX_LENGTH,
        unique=True,
        validators=[KEY_VALIDATOR],
        help_text="Immutable once created: services ask for the flag by this key.",
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    enabled = models.BooleanField(
        default=False, help_text="The kill switch: off means nobody gets the feature, lists included."
    )
    rollout_percentage = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        default=Decimal("0.00"),
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("100"))],
    )
    bucketing = models.CharField(
        max_length=16,
        choices=Bucketing.choices,
        default=Bucketing.MURMUR3,
        help_text=(
            "murmur3 hashes salt:user_id into 10,000 buckets. legacy reproduces the seed's JavaScript "
            "cohorts exactly; it is not salted, so every legacy flag picks the same users at the same "
            "percentage."
        ),
    )
    salt = models.CharField(
        max_length=SALT_MAX_LENGTH,
        blank=True,
        help_text="Defaults to the key. Changing it reshuffles which users are in the rollout.",
    )
    client_side = models.BooleanField(
        default=False,
        help_text="Evaluable with a client key (scope 'client'), which a web page may hold: the flag's key and "
        "each user's answer become visible to anyone who loads that page.",
    )
    version = models.PositiveBigIntegerField(default=1, editable=False)
    # Targeting rules in order (flags/targeting.py's JSON form: id, serve, percentage, conditions, segment
    # by key), checked between the deny list and the default rollout. Written by flags.services only.
    rules = models.JSONField(default=list, blank=True, editable=False)
    treatment_mode = models.CharField(max_length=MODE_MAX_LENGTH, default="patch", validators=[MODE_VALIDATOR])
    baseline_mode = models.CharField(max_length=MODE_MAX_LENGTH, default="single", validators=[MODE_VALIDATOR])
    created_at = models.DateTimeField(auto_now_add=True)
    # Set by the services (flags.services.base._bump) from their `now`, so a simulated check records its time.
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["key"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(rollout_percentage__gte=0) & models.Q(rollout_percentage__lte=100),
                name="flag_rollout_percentage_0_100",
            ),
            models.CheckConstraint(
                condition=models.Q(bucketing__in=evaluation.BUCKETINGS), name="flag_bucketing_known"
            ),
            models.CheckConstraint(condition=~models.Q(salt=""), name="flag_salt_not_empty"),
        ]

    def __str__(self) -> str:
        return self.key

    def clean(self) -> None:
        if self.treatment_mode and self.treatment_mode == self.baseline_mode:
            raise ValidationError({"baseline_mode": "The baseline mode must differ from the treatment mode."})


class OverrideKind(models.TextChoices):
    ALLOW = "allow", "allow (always on)"
    DENY = "deny", "deny (always off)"


class UserOverride(models.Model):
    flag = models.ForeignKey(Flag, on_delete=models.CASCADE, related_name="overrides")
    user_id = models.CharField(max_length=USER_ID_MAX_LENGTH, validators=[validate_user_id])
    kind = models.CharField(max_length=5, choices=OverrideKind.choices)
    note = models.CharField(max_length=500, blank=True)
    added_by = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["flag", "kind", "user_id"]
        constraints = [
            # One row per user and flag: a user is on at most one of the two lists.
            models.UniqueConstraint(fields=["flag", "user_id"], name="override_one_list_per_user"),
            models.CheckConstraint(condition=models.Q(kind__in=["allow", "deny"]), name="override_kind_known"),
        ]
        indexes = [models.Index(fields=["user_id"], name="override_user_id_idx")]

    def __str__(self) -> str:
        return f"{self.flag.key}: {self.kind} {self.user_id}"


class Source(models.TextChoices):
    ADMIN = "admin", "Django admin"
    UI = "ui", "dashboard"
    API = "api", "API"
    CLI = "cli", "command line"
    ALERT = "alert", "alert remediation"
    PLAN = "plan", "rollout plan"
    SYSTEM = "system", "system"


class ActorKind(models.TextChoices):
    USER = "user", "user"
    API_KEY = "api_key", "API key"
    SYSTEM = "system", "system"


class AppendOnlyError(Exception):
    pass


class AuditQuerySet(models.QuerySet):
    def update(self, **kwargs):  # type: ignore[no-untyped-def]
        raise AppendOnlyError("audit entries are append-only: they cannot be updated")

    def delete(self):  # type: ignore[no-untyped-def]
        raise AppendOnlyError("audit entries are append-only: they cannot be deleted")


class AuditChange(NamedTuple):
    """One changed field of an audit entry, as text for a page: `before` is None for a field that was only
    set (a new flag's settings, a count of user ids), `after` is None for one that was removed."""

    field: str
    before: str | None
    after: str | None


class AuditEntry(models.Model):
    # The writer's time: a service called with `now` (alert checks, plans, simulations) records that.
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor_kind = models.CharField(max_length=10, choices=ActorKind.choices)
    # Names, not foreign keys: an entry must outlive the user, key or rule that made it, and a
    # foreign key's ON DELETE SET NULL would be an UPDATE of an append-only row.
    actor = models.CharField(max_length=200)
    source = models.CharField(max_length=10, choices=Source.choices)
    # The flag changed, or none: a segment's change (segment_key) is one entry of its own, which lists the
    # flags whose rules name the segment in after["flags"]; a flag's page shows the entries of the segments
    # its rules name (flags.selectors.audit_for_flag).
    flag = models.ForeignKey(Flag, on_delete=models.PROTECT, related_name="audit_entries", null=True, blank=True)
    flag_key = models.CharField(max_length=KEY_MAX_LENGTH, db_index=True, blank=True)
    segment_key = models.CharField(max_length=KEY_MAX_LENGTH, db_index=True, blank=True)
    action = models.CharField(max_length=40)
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    reason = models.TextField(blank=True)
    flag_version = models.PositiveBigIntegerField(
        help_text="The flag's version after this change (a segment's, for a segment's change).")

    objects = AuditQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["flag", "-created_at"], name="audit_flag_recent_idx")]

    def __str__(self) -> str:
        subject = self.flag_key or f"segment {self.segment_key}"
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {subject} {self.action} by {self.actor}"

    def save(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not self._state.adding:
            raise AppendOnlyError("audit entries are append-only: they cannot be updated")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise AppendOnlyError("audit entries are append-only: they cannot be deleted")

    @property
    def change_summary(self) -> str:
        """One line for tables: each changed setting as before -> after (lists of ids as counts)."""
        parts = []
        for name in sorted(set(self.before) | set(self.after)):
            if name in {"version", "added", "removed"}:
                continue
            old, new = self.before.get(name), self.after.get(name)
            parts.append(f"{name}: {old} → {new}" if name in self.before else f"{name}={new}")
        for name in ("added", "removed"):
            ids = self.after.get(name) or self.before.get(name)
            if isinstance(ids, list):
                parts.append(f"{name} {len(ids)} user(s)")
        text = ", ".join(parts)
        return text if len(text) <= 200 else text[:199] + "…"

    @property
    def changes(self) -> list[AuditChange]:
        """Each changed field with its before and after as text (switches on/off, percentages with %, lists of
        user ids as counts), in change_summary's order; the flag's version is left out."""
        lists = ("added", "removed")
        changes = []
        for name in sorted(set(self.before) | set(self.after)):
            if name == "version" or name in lists:
                continue
            old = self._shown(name, self.before[name]) if name in self.before else None
            new = self._shown(name, self.after[name]) if name in self.after else None
            changes.append(AuditChange(name, old, new))
        for name in lists:
            ids = self.after[name] if name in self.after else self.before.get(name)
            if isinstance(ids, list):
                changes.append(AuditChange(name, None, f"{len(ids)} user{'' if len(ids) == 1 else 's'}"))
        return changes

    @staticmethod
    def _shown(name: str, value: Any) -> str:
        if value is None:
            return "none"
        if isinstance(value, bool):
            return "on" if value else "off"
        if name.endswith("percentage"):
            return f"{value}%"
        if isinstance(value, list):
            return f"{len(value)} item{'' if len(value) == 1 else 's'}"
        text = str(value)
        if text == "":
            return "(empty)"
        return text if len(text) <= 120 else text[:119] + "…"


class ConfigStamp(models.Model):
    """One row whose version moves on every committed change to flags, lists or API keys.

    Evaluating processes compare it with the version of their in-memory snapshot to know when to reload;
    it is copied into the cache (Redis) after commit so that the usual check does not touch the database.
    """

    version = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"config version {self.version}"


class Segment(models.Model):
    """A named, reusable set of users for targeting rules (flags/targeting.py): included user ids, or anyone
    whose context matches every condition; excluded ids never. Written by flags.services only."""

    key = models.CharField(max_length=KEY_MAX_LENGTH, unique=True, validators=[KEY_VALIDATOR],
                           help_text="Rules name the segment by this key; immutable once created.")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    conditions = models.JSONField(default=list, blank=True, editable=False)
    version = models.PositiveBigIntegerField(default=1, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key


class MemberKind(models.TextChoices):
    INCLUDED = "included", "included (always in the segment)"
    EXCLUDED = "excluded", "excluded (never in the segment)"


class SegmentMember(models.Model):
    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="members")
    user_id = models.CharField(max_length=USER_ID_MAX_LENGTH, validators=[validate_user_id])
    kind = models.CharField(max_length=8, choices=MemberKind.choices)

    class Meta:
        ordering = ["segment", "kind", "user_id"]
        constraints = [
            models.UniqueConstraint(fields=["segment", "user_id"], name="segment_member_one_kind_per_user"),
            models.CheckConstraint(condition=models.Q(kind__in=["included", "excluded"]),
                                   name="segment_member_kind_known"),
        ]

    def __str__(self) -> str:
        return f"{self.segment.key}: {self.kind} {self.user_id}"
