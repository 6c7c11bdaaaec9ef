"""flags.signals: what flag_create and flag_update tell other apps, and when."""

from __future__ import annotations

from typing import Any

import pytest

from flags import services
from flags.models import Flag, Source
from flags.signals import exposure_changed, flag_created

pytestmark = pytest.mark.django_db


@pytest.fixture
def heard():  # type: ignore[no-untyped-def]
    """Every signal of flags.signals sent during the test, as (signal name, keyword arguments)."""
    received: list[tuple[str, dict[str, Any]]] = []

    def on_created(sender: type[Flag], **kwargs: Any) -> None:
        received.append(("flag_created", kwargs))

    def on_exposure(sender: type[Flag], **kwargs: Any) -> None:
        received.append(("exposure_changed", kwargs))

    flag_created.connect(on_created, sender=Flag)
    exposure_changed.connect(on_exposure, sender=Flag)
    yield received
    flag_created.disconnect(on_created, sender=Flag)
    exposure_changed.disconnect(on_exposure, sender=Flag)


def test_flag_create_sends_flag_created_with_the_new_flag(heard, actor):
    flag = services.flag_create(key="beta", actor=actor, source=Source.CLI)
    assert [(name, kwargs["flag"].pk) for name, kwargs in heard] == [("flag_created", flag.pk)]


@pytest.mark.parametrize("changes", [{"rollout_percentage": 30}, {"enabled": True}])
def test_an_exposure_change_sends_exposure_changed_saying_who_and_not_by_a_plan(flag, heard, actor, changes):
    services.flag_update(flag=flag, actor=actor, source=Source.CLI, reason="why", **changes)
    [(name, kwargs)] = heard
    assert name == "exposure_changed"
    assert (kwargs["flag"].key, kwargs["actor"], kwargs["source"], kwargs["reason"], kwargs["by_plan"]) == (
        flag.key, actor, Source.CLI, "why", False)


def test_a_plans_own_step_says_by_plan(flag, heard, actor):
    services.flag_update(flag=flag, actor=actor, source=Source.PLAN, by_plan=True, rollout_percentage=10)
    assert [(name, kwargs["by_plan"]) for name, kwargs in heard] == [("exposure_changed", True)]


@pytest.mark.parametrize("changes", [{"description": "new words"}, {"rollout_percentage": 0}])
def test_a_change_that_leaves_exposure_alone_sends_nothing(flag, heard, actor, changes):
    services.flag_update(flag=flag, actor=actor, source=Source.CLI, **changes)  # 0%: the flag is already at 0
    assert heard == []


def test_reshuffles_names_the_bucketing_and_salt_changes_only(flag):
    assert services.reshuffles(flag, {"salt": "other", "bucketing": flag.bucketing, "name": "x"}) == ["salt"]
    assert services.reshuffles(flag, {"salt": flag.salt}) == []
    assert services.reshuffles(flag, {"salt": "other", "bucketing": "legacy"}) == ["bucketing", "salt"]
