"""API key services: create (the secret is returned once) and revoke. Both publish a config change so
every process's snapshot, which also holds the keys, reloads within a second."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from flags.publish import publish_config_change

from .models import ApiKey, Scope

SECRET_PREFIX = "ra_"  # noqa: S105 - a marker that makes leaked keys easy to grep for, not a secret
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}\Z")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def parse_scopes(scopes: str | Iterable[str]) -> list[str]:
    items = [s.strip() for s in (scopes.split(",") if isinstance(scopes, str) else scopes)]
    items = [s for s in items if s]
    unknown = sorted(set(items) - set(Scope.values))
    if unknown or not items:
        raise ValidationError(
            {"scopes": f"choose one or more of {', '.join(Scope.values)}" + (f"; unknown: {', '.join(unknown)}"
                                                                              if unknown else "")}
        )
    return sorted(set(items), key=Scope.values.index)


@transaction.atomic
def api_key_create(*, name: str, scopes: str | Iterable[str], created_by: str = "") -> tuple[ApiKey, str]:
    """Create a key; returns it with its secret, which is not stored and cannot be shown again."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValidationError({"name": "1-100 characters: letters, digits and . _ : @ -, starting with a letter "
                                       "or digit"})
    clean_scopes = parse_scopes(scopes)
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)  # 32 random bytes
    try:
        with transaction.atomic():
            key = ApiKey.objects.create(
                name=name,
                prefix=secret[:11],
                secret_hash=hash_secret(secret),
                scopes=clean_scopes,
                created_by=created_by[:200],
            )
    except IntegrityError:
        raise ValidationError({"name": f"an API key named {name!r} already exists"}) from None
    publish_config_change()
    return key, secret


@transaction.atomic
def api_key_revoke(*, key: ApiKey) -> ApiKey:
    locked = ApiKey.objects.select_for_update().get(pk=key.pk)
    if locked.revoked_at is None:
        locked.revoked_at = timezone.now()
        locked.save(update_fields=["revoked_at"])
        publish_config_change()
    return locked
