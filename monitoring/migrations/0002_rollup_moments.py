"""Rollups gain the sums the guardrails' variances need; existing rows are filled in.

Where the raw records of a rollup's minute or hour are still kept, the sums are computed from them exactly.
Older rollups (raw records pruned) get log-latency sums from their histograms' slot midpoints (within
4.4% per call) and a squared-token sum that assumes every call of the bucket used the mean: a tokens
interval over a stage older than the raw-record retention (30 days by default) is too narrow for those
rows' share of it.
"""

from datetime import UTC

from django.db import migrations, models
from django.db.models import Count, F, FloatField, Sum
from django.db.models.functions import Cast, Ln, Power, TruncHour, TruncMinute

from monitoring import histogram

def fill(apps, schema_editor):
    Rollup = apps.get_model("monitoring", "Rollup")
    Record = apps.get_model("monitoring", "ExecutionRecord")
    exact = {}
    log1p = Ln(F("latency_ms") + 1.0)
    tokens = Cast(F("tokens_used"), FloatField())
    for resolution, trunc in ((60, TruncMinute), (3600, TruncHour)):
        groups = (Record.objects.annotate(bucket=trunc("occurred_at", tzinfo=UTC))
                  .values("bucket", "flag_key", "mode")
                  .annotate(n=Count("id"), ll=Sum(log1p), ll2=Sum(Power(log1p, 2)), t2=Sum(tokens * tokens)))
        for g in groups:
            exact[(resolution, g["flag_key"], g["mode"], g["bucket"])] = g
    batch = []
    for row in Rollup.objects.all().iterator(chunk_size=2000):
        g = exact.get((row.resolution, row.flag_key, row.mode, row.bucket_start))
        if g is not None and g["n"] == row.calls:
            row.log_latency_sum, row.log_latency_sq, row.tokens_sq = g["ll"] or 0, g["ll2"] or 0, g["t2"] or 0
        else:
            logs = [(count, histogram.log_latency(histogram.slot_value(slot)))
                    for slot, count in enumerate(histogram.from_bytes(row.latency_hist)) if count]
            row.log_latency_sum = sum(count * value for count, value in logs)
            row.log_latency_sq = sum(count * value * value for count, value in logs)
            row.tokens_sq = row.tokens_sum ** 2 / row.calls if row.calls else 0
        batch.append(row)
        if len(batch) >= 1000:
            Rollup.objects.bulk_update(batch, ["log_latency_sum", "log_latency_sq", "tokens_sq"])
            batch = []
    if batch:
        Rollup.objects.bulk_update(batch, ["log_latency_sum", "log_latency_sq", "tokens_sq"])


class Migration(migrations.Migration):
    dependencies = [("monitoring", "0001_initial")]

    operations = [
        migrations.AddField(model_name="rollup", name="log_latency_sum", field=models.FloatField(default=0)),
        migrations.AddField(model_name="rollup", name="log_latency_sq", field=models.FloatField(default=0)),
        migrations.AddField(model_name="rollup", name="tokens_sq", field=models.FloatField(default=0)),
        migrations.RunPython(fill, migrations.RunPython.noop),
    ]
