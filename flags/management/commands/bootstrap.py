from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from flags import services


class Command(BaseCommand):
    help = "First start: create the patch_mode_enabled flag (off, 0%) and an admin superuser, once."

    def handle(self, *args: object, **options: Any) -> None:
        flag = services.ensure_default_flag()
        if flag is not None:
            self.stdout.write(f"Created flag {flag.key} (disabled, rollout 0%).")
        users = get_user_model()
        if not users.objects.filter(username="admin").exists():
            password = secrets.token_urlsafe(12)
            users.objects.create_superuser("admin", "", password)
            # Shown once: only its hash is stored.
            self.stdout.write(
                self.style.WARNING(
                    "\n  Created superuser 'admin' with password: "
                    f"{password}\n  (shown only this once; change it with `manage.py changepassword admin`)\n"
                )
            )
