from __future__ import annotations

from django.db import models


class Scope(models.TextChoices):
    EVALUATE = "evaluate", "evaluate flags"
    INGEST = "ingest", "ingest execution records"
    MANAGE = "manage", "change flags and lists, read the audit log"
    # Safe to ship in a web page: OFREP evaluation of client-side flags only, answers without metadata.
    CLIENT = "client", "evaluate client-side flags from a browser (public)"


class ApiKey(models.Model):
    """A service's credential. Only a SHA-256 hash of the secret is stored; the secret is shown once."""

    name = models.CharField(max_length=100, unique=True, help_text="Shown in the audit log as the actor.")
    prefix = models.CharField(max_length=16, help_text="The secret's first characters, to recognise it.")
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    scopes = models.JSONField(default=list)
    created_by = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    # The secret of a key the admin has just created, on that request's instance only (api/admin.py shows it
    # once); never stored.
    _new_secret: str | None = None

    class Meta:
        ordering = ["name"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
