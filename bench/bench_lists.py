"""Admin bulk import and removal of 100,000 user ids through the real admin view (HTTP form post)."""

from __future__ import annotations

import time

from bench.common import Row

TARGET_S = 10.0
COUNT = 100_000


def run() -> list[Row]:
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.urls import reverse

    from flags import services
    from flags.actors import Actor
    from flags.models import Source, UserOverride

    flag = services.flag_create(key="bench_lists", actor=Actor.system("bench"), source=Source.SYSTEM)
    admin = get_user_model().objects.create_superuser("bench-admin", "", "x")
    client = Client()
    client.force_login(admin)
    url = reverse("admin:flags_flag_lists", args=[flag.pk])
    # Realistic ids (UUID-like), with a header, some blank lines and duplicates as real exports have.
    ids = [f"{i:08x}-5f3c-4e2a-9b1d-{i * 7919 % 10**12:012d}" for i in range(COUNT)]
    text = "user_id\n" + "\n".join(ids) + "\n\n" + "\n".join(ids[:1000]) + "\n"
    rows = []
    for operation, kind in (("add", "allow"), ("remove", "allow")):
        start = time.perf_counter()
        response = client.post(url, {"operation": operation, "kind": kind, "text": text, "reason": "bench"})
        elapsed = time.perf_counter() - start
        assert response.status_code == 200, response.status_code
        expected = COUNT if operation == "add" else 0
        assert UserOverride.objects.filter(flag=flag).count() == expected
        rows.append(Row(f"admin {operation} 100,000 ids (paste)", f"{elapsed:.2f} s", f"< {TARGET_S:.0f} s",
                        elapsed < TARGET_S))
    return rows
