"""Every write to a flag or its lists goes through here.

Each service validates its input, locks the flag row, checks the version the caller based its change
on, bumps the flag's version and writes exactly one audit entry, all in one transaction. Callers (the
admin, the CLI, the API, the dashboard, alert remediation, rollout plans) only say who they are, and use
this package's names (`from flags import services; services.flag_update(...)`):

- `flags.py`: flags (create, update, the rollout, the first start's flag) and the rules their writes
  follow; flag_create and flag_update send flags.signals.flag_created and exposure_changed;
- `overrides.py`: allow and deny lists, one user at a time and in bulk;
- `targeting.py`: a flag's targeting rules, and segments (flags/targeting.py defines what they mean);
- `base.py`: what every write shares (errors, the row lock, the version, the audit entry).
"""

from .base import FlagNotFound, VersionConflict, flag_state
from .flags import (
    DEFAULT_FLAG_KEY,
    EDITABLE_FIELDS,
    RESHUFFLING_FIELDS,
    ROLLOUT_BIG_STEP,
    ensure_default_flag,
    flag_create,
    flag_set_rollout,
    flag_update,
    parse_percentage,
    require_reason,
    reshuffles,
    rollout_needs_confirmation,
)
from .overrides import (
    HEADER_NAMES,
    BulkReport,
    ParsedIds,
    override_add,
    override_remove,
    override_update,
    overrides_bulk_remove,
    overrides_import,
    parse_user_id_list,
    parse_user_ids,
)
from .targeting import (
    SegmentNotFound,
    flag_set_rules,
    segment_create,
    segment_delete,
    segment_update,
)

__all__ = [
    "DEFAULT_FLAG_KEY",
    "EDITABLE_FIELDS",
    "HEADER_NAMES",
    "RESHUFFLING_FIELDS",
    "ROLLOUT_BIG_STEP",
    "BulkReport",
    "FlagNotFound",
    "ParsedIds",
    "SegmentNotFound",
    "VersionConflict",
    "ensure_default_flag",
    "flag_create",
    "flag_set_rollout",
    "flag_set_rules",
    "flag_state",
    "flag_update",
    "override_add",
    "override_remove",
    "override_update",
    "overrides_bulk_remove",
    "overrides_import",
    "parse_percentage",
    "parse_user_id_list",
    "parse_user_ids",
    "require_reason",
    "reshuffles",
    "rollout_needs_confirmation",
    "segment_create",
    "segment_delete",
    "segment_update",
]
