"""The typed request and response bodies of the API; the OpenAPI document is generated from them.

A field whose rule lives in a service (a flag's settings in flags.services, a user id in flags.rules, an
execution record in monitoring.services) passes the client's value through untouched and only says its type
to the document: the service checks it and words the error, as it does for the dashboard and the CLI.
Rules that belong to the API alone (a reason, a version, a page) are checked here, each with the message
the API has always given.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NotRequired, TypedDict

from django.utils.dateparse import parse_datetime
from django.utils.timezone import is_naive, make_aware
from ninja import Schema
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    SkipValidation,
    StrictInt,
    StrictStr,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
    with_config,
)
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError

from flags import targeting
from flags.evaluation import Reason as DecisionReason
from flags.models import OverrideKind, UserOverride
from flags.rules import KEY_MAX_LENGTH, SLUG_PATTERN, USER_ID_MAX_LENGTH
from flags.services.targeting import RULES_MAX, SEGMENT_IDS_MAX
from monitoring.services import MAX_RECORDS

from .hot import MAX_DECISIONS

PAGE_SIZE = 100
PAGE_MAX = 1000
NOTE_MAX_LENGTH = UserOverride._meta.get_field("note").max_length or 500
# str.isdigit() accepts '²' and other digits int() refuses: only ASCII digits are numbers here.
_ASCII_DIGITS = re.compile(r"[0-9]+")


def said(message: str) -> WrapValidator:
    """Any failure of the annotated type is reported with this one message."""

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except PydanticValidationError:
            raise PydanticCustomError("invalid", message) from None

    return WrapValidator(validate)


def is_number(text: str, most: int) -> bool:
    """A number in a query string or header: ASCII digits only, at most `most` of them."""
    return len(text) <= most and _ASCII_DIGITS.fullmatch(text) is not None


def ascii_digits(most: int) -> BeforeValidator:
    def check(value: Any) -> Any:
        if isinstance(value, str) and not is_number(value, most):
            raise ValueError("not a number")
        return value

    return BeforeValidator(check)


def at_most(length: int) -> AfterValidator:
    def check(value: str) -> str:
        if len(value) > length:
            raise ValueError(f"must be at most {length} characters")
        return value

    return AfterValidator(check)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("blank")
    return value


def _moment(value: Any) -> Any:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return value
    try:
        moment = parse_datetime(value)
    except ValueError:
        moment = None
    if moment is None:
        raise ValueError("must be an ISO 8601 date-time, e.g. 2026-11-26T10:00:00Z")
    try:
        moment = make_aware(moment) if is_naive(moment) else moment
        moment.astimezone(UTC)  # the calendar's edges overflow once shifted to UTC
    except (OverflowError, ValueError):
        raise ValueError("is outside the range of dates this API handles") from None
    return moment


def documented(schema: dict[str, Any]) -> WithJsonSchema:
    return WithJsonSchema(schema)


DATE_TIME = {"type": "string", "format": "date-time"}
DateTimeText = Annotated[str, documented(DATE_TIME)]  # isoformat(), as the API has always written it
Moment = Annotated[datetime | None, BeforeValidator(_moment), documented(DATE_TIME)]
Limit = Annotated[int, Field(ge=1, le=PAGE_MAX), ascii_digits(6), said(f"must be an integer from 1 to {PAGE_MAX}")]
Cursor = Annotated[int, ascii_digits(18), said("must be the next_cursor of a previous page")]
# Checked by flags.rules.user_id_problem in the service, which names the bad one's index.
USER_ID = {"type": "string", "minLength": 1, "maxLength": USER_ID_MAX_LENGTH}
UserId = Annotated[Any, documented(USER_ID)]
UserIds = Annotated[list[UserId], Field(min_length=1), said("must be a non-empty list of user ids")]
Text = Annotated[StrictStr, said("must be a string")]


def _mark_required(schema: dict[str, Any], model: type[Any]) -> None:
    # A field with validate_default=True is required: its default None only exists so that leaving it out
    # gets the field's own message instead of pydantic's "Field required".
    required = [name for name, info in model.model_fields.items() if info.validate_default]
    if required:
        schema["required"] = [*schema.get("required", []), *required]


class Body(Schema):
    """A request body: a field the API does not know is refused, by name."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_mark_required)


# --- errors -----------------------------------------------------------------------------------------------


class Error(Schema):
    error: str
    message: str
    fields: dict[str, list[str]] | None = Field(None, description="each bad field (or `body`) and what is wrong")
    current: dict[str, Any] | None = Field(None, description="409: the flag's (or the segment's) state now")
    errors: list[dict[str, Any]] | None = Field(None, description="ingestion: every bad record's index, field "
                                                                  "and reason")


class OfrepError(Schema):
    key: str | None = None
    errorCode: Literal["PARSE_ERROR", "TARGETING_KEY_MISSING", "INVALID_CONTEXT", "GENERAL", "FLAG_NOT_FOUND"]
    errorDetails: str


# --- targeting rules and segments (what they mean: flags/targeting.py) ------------------------------------
# Passed to flags.services as sent (SkipValidation): the pure core checks them and names the bad rule and
# field ("rules[1].conditions[0].values"); these types only describe them to the document.


@with_config(ConfigDict(extra="forbid"))
class Condition(TypedDict):
    attribute: Annotated[str, Field(min_length=1, max_length=targeting.ATTRIBUTE_MAX_LENGTH,
                                    description="a key of the evaluation context")]
    operator: Annotated[str, documented({"type": "string", "enum": list(targeting.OPERATORS)})]
    values: Annotated[list[str | int | float | bool], Field(min_length=1, max_length=targeting.VALUES_MAX,
                                                            description="one value for all but in and not_in")]


@with_config(ConfigDict(extra="forbid"))
class Rule(TypedDict):
    id: Annotated[str, Field(min_length=1, description="unique among the flag's rules; evaluations name it")]
    serve: Annotated[str, documented({"type": "string", "enum": [s.value for s in targeting.Serve]})]
    percentage: NotRequired[Annotated[float, Field(ge=0, le=100, description="only with serve: percentage; at "
                                                                             "most two decimals")]]
    segment: NotRequired[Annotated[str, Field(description="a segment's key: its users (and its conditions)")]]
    conditions: NotRequired[Annotated[list[Condition], Field(max_length=targeting.CONDITIONS_MAX,
                                                             description="all must hold")]]


Rules = Annotated[SkipValidation[list[Rule]], Field(description=f"in order, the first that matches decides; at "
                                                                f"most {RULES_MAX}")]
Conditions = Annotated[SkipValidation[list[Condition]], Field(description=f"all must hold; at most "
                                                                          f"{targeting.CONDITIONS_MAX}")]


# --- flags ------------------------------------------------------------------------------------------------


class Flag(Schema):
    key: str
    name: str
    description: str
    enabled: bool
    rollout_percentage: float = Field(ge=0, le=100)
    bucketing: str
    salt: str
    treatment_mode: str
    baseline_mode: str
    client_side: bool = Field(description="evaluable with a client key (scope client)")
    version: int
    allow_count: int
    deny_count: int
    created_at: DateTimeText
    updated_at: DateTimeText
    rules: Rules


class FlagList(Schema):
    results: list[Flag]


Reason = Annotated[StrictStr, AfterValidator(_not_blank), said("is required: say why, it goes into the audit log")]
ExpectedVersion = Annotated[StrictInt, Field(ge=1), said("must be a positive integer")] | None


class FlagChange(Body):
    """Give enabled, rollout_percentage and/or client_side, and why."""

    # Checked by flags.services (the same rules as the dashboard's and the CLI's).
    enabled: Annotated[Any, documented({"type": "boolean"})] = None
    rollout_percentage: Annotated[Any, documented({"type": "number", "minimum": 0, "maximum": 100})] = None
    client_side: Annotated[Any, documented({"type": "boolean"})] = None
    reason: Reason = Field(None, validate_default=True, description="why; it goes into the audit log")
    expected_version: ExpectedVersion = Field(None, description="the version the change is based on (or the "
                                                                 "If-Match header)")


class FlagRules(Schema):
    flag: str
    version: int = Field(description="the flag's")
    rules: Rules


class RulesChange(Body):
    """The flag's whole ordered list of rules (an empty list removes them all), and why."""

    rules: Rules = Field(None, validate_default=True)
    reason: Reason = Field(None, validate_default=True, description="why; it goes into the audit log")
    expected_version: ExpectedVersion = Field(None, description="the flag's version the change is based on (or "
                                                                "the If-Match header)")


# --- segments ---------------------------------------------------------------------------------------------

# Checked by flags.services (the key's rule is a flag key's; the ids are user ids).
SegmentKey = Annotated[Any, documented({"type": "string", "minLength": 1, "maxLength": KEY_MAX_LENGTH,
                                        # ECMA-262 for the document: $ where Python's pattern has \Z
                                        "pattern": SLUG_PATTERN.removesuffix(r"\Z") + "$"})]
AnyText = Annotated[Any, documented({"type": "string"})]
MemberIds = Annotated[Any, documented({"type": "array", "items": USER_ID,
                                       "description": f"replaces the list; at most {SEGMENT_IDS_MAX:,} "
                                                      "included and excluded ids in all"})]


class SegmentSummary(Schema):
    key: str
    name: str
    description: str
    conditions: Conditions
    included_count: int
    excluded_count: int
    version: int
    updated_at: DateTimeText


class SegmentList(Schema):
    results: list[SegmentSummary]


class Segment(SegmentSummary):
    included: list[str] = Field(description="always in the segment")
    excluded: list[str] = Field(description="never in the segment")
    created_at: DateTimeText


class SegmentCreate(Body):
    """A segment: included ids, or anyone matching every condition; excluded ids never. And why."""

    key: SegmentKey = Field(None, validate_default=True, description="rules name the segment by it; immutable")
    name: AnyText = Field(None, validate_default=True)
    description: AnyText = ""
    conditions: Conditions = Field(default_factory=list)
    included: MemberIds = Field(default_factory=list)
    excluded: MemberIds = Field(default_factory=list)
    reason: Reason = Field(None, validate_default=True, description="why; it goes into the audit log")


class SegmentChange(Body):
    """Give name, description, conditions, included and/or excluded (each replaced as a whole), and why."""

    name: AnyText = None
    description: AnyText = None
    conditions: Conditions = None  # type: ignore[assignment]  # None marks it left out; a null sent is refused
    included: MemberIds = None
    excluded: MemberIds = None
    reason: Reason = Field(None, validate_default=True, description="why; it goes into the audit log")
    expected_version: ExpectedVersion = Field(None, description="the segment's version the change is based on "
                                                                "(or the If-Match header)")


class SegmentDelete(Body):
    reason: Reason = Field(None, validate_default=True, description="why; it goes into the audit log")


class SegmentDeleted(Schema):
    key: str
    deleted: bool


# --- allow and deny lists ---------------------------------------------------------------------------------


class OverrideFilters(Schema):
    kind: Annotated[OverrideKind | None, said("must be allow or deny")] = None
    limit: Limit = PAGE_SIZE
    cursor: Cursor | None = Field(None, description="next_cursor of the last page")


class Override(Schema):
    user_id: str
    kind: str
    note: str
    added_by: str
    created_at: DateTimeText


class OverridePage(Schema):
    results: list[Override]
    next_cursor: int | None


class OverridesAdd(Body):
    kind: Annotated[OverrideKind, said("must be allow or deny")] = Field(None, validate_default=True)
    user_ids: UserIds = Field(None, validate_default=True)
    note: Annotated[Text, at_most(NOTE_MAX_LENGTH), documented({"type": "string", "maxLength": NOTE_MAX_LENGTH})] = ""
    reason: Text = ""


class OverridesRemove(Body):
    kind: Annotated[OverrideKind | None, said("must be allow or deny, or left out for either list")] = None
    user_ids: UserIds = Field(None, validate_default=True)
    reason: Text = ""


class Conflict(Schema):
    user_id: str
    list: str = Field(description="the other list, where the user stays")


class OverridesAdded(Schema):
    added: int
    already_listed: int
    duplicates: int
    conflicts: list[Conflict]
    version: int


class OverridesRemoved(Schema):
    removed: int
    not_listed: int
    duplicates: int
    conflicts: list[Conflict]
    version: int


# --- audit log --------------------------------------------------------------------------------------------


class AuditFilters(Schema):
    flag: str | None = None
    segment: str | None = Field(None, description="a segment's key (deleted ones too)")
    since: Moment = None
    until: Moment = None
    limit: Limit = PAGE_SIZE
    cursor: Cursor | None = Field(None, description="next_cursor of the last page")


class AuditItem(Schema):
    id: int
    created_at: DateTimeText
    flag: str = Field(description="empty for a segment's change")
    flag_version: int = Field(description="the flag's version after the change (the segment's, for a segment's)")
    segment: str | None = Field(description="the segment changed (its own entry: `flag` is empty), or null; "
                                            "`after.flags` lists the flags whose rules name it")
    action: str
    actor: str
    actor_kind: str
    source: str
    before: dict[str, Any]
    after: dict[str, Any]
    reason: str


class AuditPage(Schema):
    results: list[AuditItem]
    next_cursor: int | None


# --- monitoring -------------------------------------------------------------------------------------------


class ExecutionRecord(Schema):
    """One execution; checked by monitoring.services, all or nothing for the batch."""

    id: str | None = Field(None, max_length=100, description="makes a retried record count once")
    user_id: str = Field(min_length=1, max_length=USER_ID_MAX_LENGTH)
    mode: str = Field(description="a slug: patch, single, ...")
    flag: str | None = None
    latency_ms: float = Field(ge=0)
    tokens_used: int = Field(ge=0)
    success: bool
    patch_count: int = Field(0, ge=0)
    failed_patches: int = Field(0, ge=0)
    occurred_at: datetime | None = Field(None, description="default now; at most 5 minutes ahead")


def _records_schema() -> dict[str, Any]:
    return {"type": "array", "maxItems": MAX_RECORDS, "items": ExecutionRecord.model_json_schema()}


class ExecutionBatch(Body):
    # Passed to monitoring.services.ingest as sent: its checks name each bad record (and are faster than a
    # model per record on batches of thousands; see the issue 12 notes).
    records: Annotated[Any, documented(_records_schema())] = Field(None, validate_default=True)


class Ingested(Schema):
    received: int
    accepted: int
    duplicates: int


# --- evaluation (the lean path: documented here, served by api/hot.py) ------------------------------------


class OfrepContext(Schema):
    """The user id, and any other attribute for the flag's targeting rules (email, plan, app_version, ...)."""

    model_config = ConfigDict(extra="allow")

    targetingKey: str | None = Field(None, description="the user id")


class OfrepRequest(Schema):
    context: OfrepContext | None = None


class OfrepMetadata(Schema):
    reason: DecisionReason
    bucket: int | None = None
    rolloutPercentage: float
    version: int = Field(description="the flag's own")
    stale: bool
    ruleId: str | None = Field(None, description="the targeting rule that decided (reason RULE_MATCH)")


class OfrepSuccess(Schema):
    key: str
    value: bool
    reason: Literal["STATIC", "TARGETING_MATCH", "SPLIT", "DISABLED", "UNKNOWN"]
    variant: Literal["on", "off"]
    metadata: OfrepMetadata | None = Field(None, description="not for a client key")


class OfrepBulk(Schema):
    flags: list[OfrepSuccess | OfrepError]


class Decision(Schema):
    flag: str
    user_id: str
    enabled: bool
    reason: DecisionReason
    bucket: int | None = Field(description="0..9999 (murmur3) or the cohort 0..99 (legacy)")
    rule: str | None = Field(None, description="the targeting rule that decided (reason RULE_MATCH)")


class FlagDecision(Decision):
    rollout_percentage: float
    version: int
    stale: bool


class EvaluateUser(Body):
    user_id: str
    attributes: dict[str, Any] | None = Field(None, description="this user's context, for targeting rules")


class EvaluateRequest(Body):
    user_ids: list[str] | None = Field(None, description=f"at most {MAX_DECISIONS} decisions (flags x user ids)")
    attributes: dict[str, Any] | None = Field(None, description="the context of every user of user_ids, for "
                                                                 "targeting rules")
    users: list[EvaluateUser] | None = Field(None, description="instead of user_ids and attributes: each user "
                                                               "with a context of their own")
    flags: list[str] | None = Field(None, description="default: every flag")


class Decisions(Schema):
    config_version: int
    stale: bool
    results: list[Decision]

