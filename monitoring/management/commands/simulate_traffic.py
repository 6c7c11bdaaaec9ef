from __future__ import annotations

import random
import time
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from flags import evaluation, selectors
from monitoring import services


class Command(BaseCommand):
    help = (
        "Generate realistic execution records through the ingestion service: each simulated call asks the "
        "flag which mode the user gets, so moving the slider changes the traffic mix. Backfills --minutes of "
        "history, then with --stream keeps sending in real time until Ctrl-C."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--flag", default="patch_mode_enabled")
        parser.add_argument("--minutes", type=int, default=60, help="history to backfill (0 for none)")
        parser.add_argument("--rate", type=float, default=20.0, help="calls per second")
        parser.add_argument("--users", type=int, default=2000, help="distinct simulated users")
        parser.add_argument("--stream", action="store_true", help="keep sending in real time after the backfill")
        parser.add_argument("--seed", type=int, default=None)
        for mode, error, latency, tokens in (("treatment", 0.02, 190.0, 820), ("baseline", 0.03, 180.0, 1200)):
            parser.add_argument(f"--{mode}-error-rate", type=float, default=error, help=f"{mode} failure share")
            parser.add_argument(f"--{mode}-latency", type=float, default=latency, help=f"{mode} median latency (ms)")
            parser.add_argument(f"--{mode}-tokens", type=int, default=tokens, help=f"{mode} mean tokens per call")

    def handle(self, *args: object, **options: Any) -> None:
        flag = selectors.flag_get(options["flag"])
        if flag is None:
            raise CommandError(f"unknown flag {options['flag']!r}")
        if options["rate"] <= 0 or options["users"] <= 0 or options["minutes"] < 0:
            raise CommandError("--rate and --users must be positive and --minutes not negative")
        for mode in ("treatment", "baseline"):
            if not 0 <= options[f"{mode}_error_rate"] <= 1:
                raise CommandError(f"--{mode}-error-rate must be between 0 and 1")
        rng = random.Random(options["seed"])  # noqa: S311 - simulation, not security
        users = [f"sim-user-{i}" for i in range(options["users"])]
        profile = {
            flag.treatment_mode: (options["treatment_error_rate"], options["treatment_latency"],
                                  options["treatment_tokens"]),
            flag.baseline_mode: (options["baseline_error_rate"], options["baseline_latency"],
                                 options["baseline_tokens"]),
        }

        def record(at: Any) -> dict[str, Any]:
            config = configs[0]
            user = rng.choice(users)
            mode = flag.treatment_mode if evaluation.evaluate(config, user).enabled else flag.baseline_mode
            error_rate, latency, tokens = profile[mode]
            ok = rng.random() >= error_rate
            patches = rng.randint(1, 8) if mode == flag.treatment_mode else 0
            return {
                "user_id": user, "mode": mode, "flag": flag.key, "success": ok,
                "latency_ms": round(rng.lognormvariate(0, 0.35) * latency, 1),
                "tokens_used": max(0, int(rng.gauss(tokens, tokens * 0.15))),
                "patch_count": patches, "failed_patches": 0 if ok or not patches else rng.randint(1, patches),
                "occurred_at": at.isoformat(),
            }

        configs = [selectors.flag_config(flag)]
        total = 0
        if options["minutes"]:
            now = timezone.now()
            count = int(options["minutes"] * 60 * options["rate"])
            start = now - timedelta(minutes=options["minutes"])
            batch = []
            for i in range(count):
                batch.append(record(start + timedelta(seconds=i / options["rate"])))
                if len(batch) == 1000:
                    total += services.ingest(batch).accepted
                    batch = []
            if batch:
                total += services.ingest(batch).accepted
            self.stdout.write(f"Backfilled {total} records over {options['minutes']} minutes.")
        if not options["stream"]:
            return
        self.stdout.write(f"Streaming about {options['rate']:g} calls/s for {flag.key}; Ctrl-C stops.")
        try:
            while True:
                started = time.monotonic()
                configs[0] = selectors.flag_config(selectors.flag_get(flag.key) or flag)  # follow the slider
                now = timezone.now()
                count = max(1, int(rng.gauss(options["rate"], options["rate"] ** 0.5)))
                total += services.ingest([record(now) for _ in range(count)]).accepted
                time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        except KeyboardInterrupt:
            self.stdout.write(f"\nStopped after {total} records.")
