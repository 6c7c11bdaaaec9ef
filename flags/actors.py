"""Who made a change: a person, an API key or the system (an alert rule, a rollout plan, the CLI)."""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from typing import Any

from .models import ActorKind


@dataclass(frozen=True, slots=True)
class Actor:
    kind: str
    name: str

    @classmethod
    def for_user(cls, user: Any) -> Actor:
        return cls(ActorKind.USER, user.get_username())

    @classmethod
    def for_api_key(cls, key_name: str) -> Actor:
        return cls(ActorKind.API_KEY, key_name)

    @classmethod
    def system(cls, name: str) -> Actor:
        return cls(ActorKind.SYSTEM, name)

    @classmethod
    def cli(cls) -> Actor:
        # The operating-system account that ran manage.py: the best "who" a shell offers.
        try:
            who = getpass.getuser()
        except (KeyError, OSError):
            who = "unknown"
        return cls(ActorKind.SYSTEM, f"cli:{who}")

    def __str__(self) -> str:
        return self.name
