"""The management API on django-ninja: flags, their targeting rules, segments, allow/deny lists, the audit log,
ingestion and metrics, and the OpenAPI document generated from their schemas (api/schemas.py).

Every refusal, wherever it is raised (authentication, ninja's validation, a service), becomes the API's one
error format in one place, `problem()`: {"error", "message", "fields"} with today's status codes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.urls import URLPattern, path
from ninja import Header, NinjaAPI, Query, Router
from ninja.errors import HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.parser import Parser
from ninja.renderers import BaseRenderer

from flags import selectors, services
from flags.actors import Actor
from flags.models import AuditEntry, Flag, Segment, Source, UserOverride
from monitoring import selectors as monitoring_selectors
from monitoring import services as monitoring

from . import routing, schemas
from .auth import ApiKey, PayloadTooLarge
from .core import (
    EMPTY_BODY,
    JSON_TYPE,
    AuthFailure,
    BadJson,
    Resp,
    body_from_request,
    dumps,
    http_response,
    max_body_bytes,
    parse_json,
)
from .hot import api_error, auth_error, validation_error
from .openapi import evaluation, responses
from .snapshot import ConfigUnavailable

# --- the framework's edges: our JSON in and out, our error format -----------------------------------------


class Invalid(Exception):
    """Bad input found by an operation itself: each field and what is wrong with it."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        super().__init__(fields)
        self.fields = fields


class Conflict(Exception):
    """A stale version of something that is no flag (flags have services.VersionConflict): its state now."""

    def __init__(self, message: str, current: dict[str, Any]) -> None:
        super().__init__(message)
        self.current = current


class JsonBody(Parser):
    """The body as api.core reads it (its size limit) and parses it (strict UTF-8, no lone surrogates)."""

    def parse_body(self, request: HttpRequest) -> Any:
        return parse_json(body_from_request(request)[0])


class CompactJson(BaseRenderer):
    media_type = JSON_TYPE

    def render(self, request: HttpRequest, data: Any, *, response_status: int) -> bytes:
        return dumps(data)


class RolloutApi(NinjaAPI):
    def get_content_type(self) -> str:
        return JSON_TYPE  # no charset parameter: the API has always said plain application/json


def _field_name(loc: tuple[Any, ...]) -> str:
    """("body", "payload", "user_ids", 1) -> user_ids[1]; ("query", "limit") -> limit; the body itself: body."""
    steps = loc[2:] if loc and loc[0] == "body" else loc[1:]
    name = ""
    for step in steps:
        name += f"[{step}]" if isinstance(step, int) else (f".{step}" if name else str(step))
    return name or "body"


def _message(error: dict[str, Any]) -> str:
    kind = error.get("type")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "is required"
    if kind == "value_error" and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])
    return str(error.get("msg", "is invalid"))


def _ninja_fields(errors: list[dict[str, Any]]) -> dict[str, list[str]] | Resp:
    fields: dict[str, list[str]] = {}
    for error in errors:
        loc = tuple(error.get("loc", ()))
        name = _field_name(loc)
        if name == "body" and loc[:1] == ("body",):
            if error.get("type") == "missing":  # no body at all
                return api_error(400, "invalid_json", EMPTY_BODY)
            fields.setdefault("body", []).append("must be a JSON object")
            continue
        fields.setdefault(name, []).append(_message(error))
    return fields


def _django_fields(exc: DjangoValidationError) -> dict[str, list[str]]:
    if hasattr(exc, "error_dict"):
        return {name if name != "__all__" else "body": msgs for name, msgs in exc.message_dict.items()}
    return {"body": exc.messages}


def problem(exc: Exception) -> Resp | None:
    """The API's answer to a refusal, or None for an exception that is no refusal (Django answers those:
    rolloutadmin/outage.py turns an unreachable database into its JSON 503)."""
    if isinstance(exc, AuthFailure):
        return auth_error(exc)
    if isinstance(exc, PayloadTooLarge):
        return api_error(413, "payload_too_large", f"request body over {max_body_bytes()} bytes")
    if isinstance(exc, ConfigUnavailable):
        return api_error(503, "unavailable", "configuration unavailable (database unreachable)")
    if isinstance(exc, Invalid):
        return validation_error(exc.fields)
    if isinstance(exc, NinjaValidationError):
        fields = _ninja_fields(exc.errors)
        return fields if isinstance(fields, Resp) else validation_error(fields)
    if isinstance(exc, HttpError) and isinstance(exc.__cause__, BadJson):  # JsonBody refused the body
        return api_error(400, "invalid_json", str(exc.__cause__))
    if isinstance(exc, services.FlagNotFound | services.SegmentNotFound):
        return api_error(404, "not_found", str(exc))
    if isinstance(exc, services.VersionConflict):
        return api_error(409, "conflict", str(exc), current=exc.current_state())
    if isinstance(exc, Conflict):
        return api_error(409, "conflict", str(exc), current=exc.current)
    if isinstance(exc, DjangoValidationError):
        return validation_error(_django_fields(exc))
    if isinstance(exc, Http404):
        return api_error(404, "not_found", "no such endpoint")
    if isinstance(exc, HttpError):
        return api_error(exc.status_code, "bad_request" if exc.status_code == 400 else "error", exc.message)
    return None


def _handle(request: HttpRequest, exc: Exception | type[Exception]) -> HttpResponse:
    if not isinstance(exc, Exception):  # ninja's signature allows a class; it always passes an instance
        exc = exc()
    resp = problem(exc)
    if resp is None:
        raise exc
    return http_response(resp)


api = RolloutApi(
    title="rolloutadmin API",
    version="1",
    description="Evaluate flags (OFREP and JSON), change rollouts, keep allow/deny lists, read the audit log. "
                "Authenticate with `Authorization: Bearer <secret>`.",
    urls_namespace="api",
    openapi_url=None,  # served by the operation below, at the API's own path
    docs_url=None,
    parser=JsonBody(),
    renderer=CompactJson(),
)
# One handler for everything: ninja's own defaults (422, {"detail": ...}) are replaced, not added to.
for _exc_class in (Exception, HttpError, NinjaValidationError, Http404):
    api.add_exception_handler(_exc_class, _handle)

MANAGE = ApiKey("manage")
INGEST = ApiKey("ingest")
router = Router()


def _actor(request: HttpRequest) -> Actor:
    return Actor.for_api_key(request.auth.name)  # type: ignore[attr-defined]  # set by ninja from ApiKey


# --- flags ------------------------------------------------------------------------------------------------


def _flag_json(flag: Flag, counts: dict[str, int] | None = None) -> dict[str, Any]:
    """The API's view of a flag; `counts` (its list sizes, selectors.override_counts) when already read."""
    if counts is None:
        counts = selectors.override_counts(flag)
    return {
        "key": flag.key,
        "name": flag.name,
        "description": flag.description,
        "enabled": flag.enabled,
        "rollout_percentage": float(flag.rollout_percentage),
        "bucketing": flag.bucketing,
        "salt": flag.salt,
        "treatment_mode": flag.treatment_mode,
        "baseline_mode": flag.baseline_mode,
        "client_side": flag.client_side,
        "version": flag.version,
        "allow_count": counts["allow"],
        "deny_count": counts["deny"],
        "created_at": flag.created_at.isoformat(),
        "updated_at": flag.updated_at.isoformat(),
        "rules": flag.rules,
    }


def _get_flag(key: str) -> Flag:
    flag = selectors.flag_get(key)
    if flag is None:
        raise services.FlagNotFound(key)
    return flag


@router.get("/api/v1/flags", auth=MANAGE, url_name="api-flags", summary="Every flag (scope manage)",
            **responses(schemas.FlagList))
def flags_list(request: HttpRequest) -> dict[str, Any]:
    flags = list(Flag.objects.all())
    counts = selectors.override_counts_by_flag(flags)
    return {"results": [_flag_json(flag, counts[flag.pk]) for flag in flags]}


@router.get("/api/v1/flags/{key}", auth=MANAGE, url_name="api-flag",
            summary="One flag (scope manage); ETag is its version", **responses(schemas.Flag, 404))
def flag_detail(request: HttpRequest, key: str, response: HttpResponse) -> dict[str, Any]:
    flag = _get_flag(key)
    response["ETag"] = f'"{flag.version}"'
    return _flag_json(flag)


@router.patch("/api/v1/flags/{key}", auth=MANAGE, url_name="api-flag",
              summary="Change enabled, rollout_percentage and/or client_side (scope manage; audited, source api)",
              **responses(schemas.Flag, 404, 409))
def flag_change(request: HttpRequest, key: str, payload: schemas.FlagChange, response: HttpResponse,
                if_match: str | None = Header(None, alias="If-Match",
                                              description="the version the change is based on")) -> dict[str, Any]:
    fields: dict[str, list[str]] = {}
    changes = {name: getattr(payload, name) for name in ("enabled", "rollout_percentage", "client_side")
               if name in payload.model_fields_set}
    if not changes:
        fields["body"] = ["give enabled, rollout_percentage and/or client_side"]
    expected = _expected_version(if_match, payload.expected_version, fields)
    if fields:
        raise Invalid(fields)
    flag = services.flag_update(flag=key, actor=_actor(request), source=Source.API, reason=payload.reason.strip(),
                                expected_version=expected, **changes)
    response["ETag"] = f'"{flag.version}"'
    return _flag_json(flag)


def _expected_version(header: str | None, value: int | None, fields: dict[str, list[str]],
                      of: str = "flag") -> int | None:
    raw = (header or "").strip()
    if not raw:
        return value
    raw = raw.removeprefix("W/").strip('"')
    if not schemas.is_number(raw, 18):
        fields["If-Match"] = [f"must be the {of}'s version number, e.g. If-Match: \"7\""]
        return None
    if value is not None and value != int(raw):
        fields["expected_version"] = ["disagrees with the If-Match header"]
    return int(raw)


# --- a flag's targeting rules -----------------------------------------------------------------------------


def _rules_json(flag: Flag) -> dict[str, Any]:
    return {"flag": flag.key, "version": flag.version, "rules": flag.rules}


@router.get("/api/v1/flags/{key}/rules", auth=MANAGE, url_name="api-flag-rules",
            summary="A flag's targeting rules, in order (scope manage); ETag is the flag's version",
            **responses(schemas.FlagRules, 404))
def rules_detail(request: HttpRequest, key: str, response: HttpResponse) -> dict[str, Any]:
    flag = _get_flag(key)
    response["ETag"] = f'"{flag.version}"'
    return _rules_json(flag)


@router.put("/api/v1/flags/{key}/rules", auth=MANAGE, url_name="api-flag-rules",
            summary="Replace a flag's targeting rules, the whole ordered list (scope manage; audited, source api)",
            description="400 names the rule and the field, e.g. `rules[1].conditions[0].values`; nothing is "
                        "written. The same rules again change nothing.",
            **responses(schemas.FlagRules, 404, 409))
def rules_replace(request: HttpRequest, key: str, payload: schemas.RulesChange, response: HttpResponse,
                  if_match: str | None = Header(None, alias="If-Match",
                                                description="the flag's version the change is based on"),
                  ) -> dict[str, Any]:
    fields: dict[str, list[str]] = {}
    expected = _expected_version(if_match, payload.expected_version, fields)
    if fields:
        raise Invalid(fields)
    flag = services.flag_set_rules(flag=key, rules=payload.rules, actor=_actor(request), source=Source.API,
                                   reason=payload.reason.strip(), expected_version=expected)
    response["ETag"] = f'"{flag.version}"'
    return _rules_json(flag)


# --- segments -----------------------------------------------------------------------------------------------

SEGMENT_DOCS = {404: "Unknown segment.", 409: "The segment changed since that version; `current` holds its state."}
SEGMENT_FIELDS = ("name", "description", "conditions", "included", "excluded")


def _segment_json(segment: Segment, counts: tuple[int, int]) -> dict[str, Any]:
    """The list's item: `counts` are the (included, excluded) ids (selectors.segment_member_counts)."""
    return {
        "key": segment.key,
        "name": segment.name,
        "description": segment.description,
        "conditions": segment.conditions,
        "included_count": counts[0],
        "excluded_count": counts[1],
        "version": segment.version,
        "updated_at": segment.updated_at.isoformat(),
    }


def _segment_detail(segment: Segment) -> dict[str, Any]:
    included, excluded = selectors.segment_members(segment)
    return {**_segment_json(segment, (len(included), len(excluded))), "included": included, "excluded": excluded,
            "created_at": segment.created_at.isoformat()}


def _get_segment(key: str) -> Segment:
    segment = selectors.segment_get(key)
    if segment is None:
        raise services.SegmentNotFound(key[:100])
    return segment


def _list_problems(values: dict[str, Any]) -> dict[str, list[str]]:
    """JSON lists only, each refused with the others in one answer (the services refuse the same one at a time)."""
    fields: dict[str, list[str]] = {}
    for name, value in values.items():
        if name == "conditions" and not isinstance(value, list):
            fields[name] = ["a list of conditions"]
        elif name in ("included", "excluded") and not isinstance(value, list):
            fields[name] = ["must be a list of user ids"]
    return fields


@router.get("/api/v1/segments", auth=MANAGE, url_name="api-segments",
            summary="Every segment, with the number of its included and excluded ids (scope manage)",
            **responses(schemas.SegmentList))
def segments_list(request: HttpRequest) -> dict[str, Any]:
    segments = list(Segment.objects.order_by("key"))
    counts = selectors.segment_member_counts(segments)
    return {"results": [_segment_json(segment, counts[segment.pk]) for segment in segments]}


@router.post("/api/v1/segments", auth=MANAGE, url_name="api-segments",
             summary="Create a segment (scope manage; audited, source api)",
             description="A segment matches its included ids, or anyone whose context matches every condition; "
                         "excluded ids never. Rules name it by key.",
             **responses(schemas.Segment))
def segment_add(request: HttpRequest, payload: schemas.SegmentCreate, response: HttpResponse) -> dict[str, Any]:
    fields = {name: ["is required"] for name in ("key", "name") if name not in payload.model_fields_set}
    fields |= _list_problems({name: getattr(payload, name) for name in ("conditions", "included", "excluded")})
    if fields:
        raise Invalid(fields)
    segment = services.segment_create(key=payload.key, name=payload.name, description=payload.description,
                                      conditions=payload.conditions, included=payload.included,
                                      excluded=payload.excluded, actor=_actor(request), source=Source.API,
                                      reason=payload.reason.strip())
    response["ETag"] = f'"{segment.version}"'
    return _segment_detail(segment)


@router.get("/api/v1/segments/{key}", auth=MANAGE, url_name="api-segment",
            summary="One segment with its included and excluded ids (scope manage); ETag is its version",
            **responses(schemas.Segment, 404, said=SEGMENT_DOCS))
def segment_detail(request: HttpRequest, key: str, response: HttpResponse) -> dict[str, Any]:
    segment = _get_segment(key)
    response["ETag"] = f'"{segment.version}"'
    return _segment_detail(segment)


@router.patch("/api/v1/segments/{key}", auth=MANAGE, url_name="api-segment",
              summary="Change a segment's name, description, conditions, included and/or excluded ids, each "
                      "replaced as a whole (scope manage; audited, source api)",
              description="The flags whose rules name the segment move to a new version with it.",
              **responses(schemas.Segment, 404, 409, said=SEGMENT_DOCS))
def segment_change(request: HttpRequest, key: str, payload: schemas.SegmentChange, response: HttpResponse,
                   if_match: str | None = Header(None, alias="If-Match",
                                                 description="the segment's version the change is based on"),
                   ) -> dict[str, Any]:
    changes = {name: getattr(payload, name) for name in SEGMENT_FIELDS if name in payload.model_fields_set}
    fields = _list_problems(changes)
    if not changes:
        fields["body"] = ["give name, description, conditions, included and/or excluded"]
    expected = _expected_version(if_match, payload.expected_version, fields, of="segment")
    if fields:
        raise Invalid(fields)
    _get_segment(key)
    try:
        segment = services.segment_update(segment=key, actor=_actor(request), source=Source.API,
                                          reason=payload.reason.strip(), expected_version=expected, **changes)
    except DjangoValidationError as exc:
        # The service words a stale version as a refusal of expected_version; the API answers it as the flag
        # PATCH answers its own: 409 with the state now.
        stale = getattr(exc, "error_dict", {}).get("expected_version")
        if expected is None or not stale:
            raise
        current = _get_segment(key)
        counts = selectors.segment_member_counts([current])[current.pk]
        raise Conflict(stale[0].messages[0], _segment_json(current, counts)) from None
    response["ETag"] = f'"{segment.version}"'
    return _segment_detail(segment)


@router.delete("/api/v1/segments/{key}", auth=MANAGE, url_name="api-segment",
               summary="Delete a segment no flag's rules name (scope manage; audited, source api)",
               description="400 names the flags whose rules still use it.",
               **responses(schemas.SegmentDeleted, 404, said=SEGMENT_DOCS))
def segment_remove(request: HttpRequest, key: str, payload: schemas.SegmentDelete) -> dict[str, Any]:
    segment = _get_segment(key)
    services.segment_delete(segment=segment.key, actor=_actor(request), source=Source.API,
                            reason=payload.reason.strip())
    return {"key": segment.key, "deleted": True}


# --- allow and deny lists ---------------------------------------------------------------------------------


@router.get("/api/v1/flags/{key}/overrides", auth=MANAGE, url_name="api-overrides",
            summary="Allow/deny entries, newest first (scope manage)", **responses(schemas.OverridePage, 404))
def overrides_list(request: HttpRequest, key: str, filters: Query[schemas.OverrideFilters]) -> dict[str, Any]:
    flag = _get_flag(key)
    qs = UserOverride.objects.filter(flag=flag).order_by("-id")
    if filters.kind:
        qs = qs.filter(kind=filters.kind)
    if filters.cursor is not None:
        qs = qs.filter(id__lt=filters.cursor)
    limit = filters.limit
    rows = list(qs[: limit + 1])
    return {
        "results": [{"user_id": o.user_id, "kind": o.kind, "note": o.note, "added_by": o.added_by,
                     "created_at": o.created_at.isoformat()} for o in rows[:limit]],
        "next_cursor": rows[limit - 1].id if len(rows) > limit else None,
    }


def _list_report(report: services.BulkReport, flag: Flag, changed: str, unchanged: str) -> dict[str, Any]:
    if report.invalid:
        raise Invalid({f"user_ids[{position - 1}]": [message] for position, _value, message in report.invalid})
    return {
        changed: report.changed,
        unchanged: report.unchanged,
        "duplicates": report.duplicates,
        "conflicts": [{"user_id": user_id, "list": other} for _pos, user_id, other in report.conflicts],
        "version": report.flag.version if report.flag else flag.version,
    }


@router.post("/api/v1/flags/{key}/overrides", auth=MANAGE, url_name="api-overrides",
             summary="Add users to a list, all or nothing on invalid ids (scope manage)",
             description="added, already_listed, duplicates, conflicts (users on the other list, left there)",
             **responses(schemas.OverridesAdded, 404))
def overrides_add(request: HttpRequest, key: str, payload: schemas.OverridesAdd) -> dict[str, Any]:
    flag = _get_flag(key)
    report = services.overrides_import(flag=flag.key, kind=payload.kind, user_ids=payload.user_ids,
                                       note=payload.note, actor=_actor(request), source=Source.API,
                                       reason=payload.reason)
    return _list_report(report, flag, "added", "already_listed")


@router.delete("/api/v1/flags/{key}/overrides", auth=MANAGE, url_name="api-overrides",
               summary="Remove users from a list (or either) (scope manage)",
               **responses(schemas.OverridesRemoved, 404))
def overrides_remove(request: HttpRequest, key: str, payload: schemas.OverridesRemove) -> dict[str, Any]:
    flag = _get_flag(key)
    report = services.overrides_bulk_remove(flag=flag.key, kind=payload.kind, user_ids=payload.user_ids,
                                            actor=_actor(request), source=Source.API, reason=payload.reason)
    return _list_report(report, flag, "removed", "not_listed")


# --- the audit log ----------------------------------------------------------------------------------------


@router.get("/api/v1/audit", auth=MANAGE, url_name="api-audit",
            summary="Audit entries, newest first, of flags and segments (scope manage)",
            **responses(schemas.AuditPage, 404))
def audit(request: HttpRequest, filters: Query[schemas.AuditFilters]) -> dict[str, Any]:
    if filters.since and filters.until and filters.since > filters.until:
        raise Invalid({"since": ["must not be after until"]})
    qs = AuditEntry.objects.order_by("-id")
    if filters.flag:
        qs = qs.filter(flag=_get_flag(filters.flag))
    if filters.segment:  # no 404: a deleted segment keeps its history
        qs = qs.filter(segment_key=filters.segment) if selectors.possible_key(filters.segment) else qs.none()
    if filters.since:
        qs = qs.filter(created_at__gte=filters.since)
    if filters.until:
        qs = qs.filter(created_at__lte=filters.until)
    if filters.cursor is not None:
        qs = qs.filter(id__lt=filters.cursor)
    limit = filters.limit
    rows = list(qs[: limit + 1])
    return {
        "results": [
            {"id": e.id, "created_at": e.created_at.isoformat(), "flag": e.flag_key, "flag_version": e.flag_version,
             "segment": e.segment_key or None, "action": e.action, "actor": e.actor, "actor_kind": e.actor_kind,
             "source": e.source, "before": e.before, "after": e.after, "reason": e.reason}
            for e in rows[:limit]
        ],
        "next_cursor": rows[limit - 1].id if len(rows) > limit else None,
    }


# --- monitoring: ingestion (scope `ingest`) and metrics (scope `manage`) ----------------------------------


@router.post("/api/v1/executions", auth=INGEST, url_name="api-executions",
             summary=f"Ingest execution records, all or nothing, up to {monitoring.MAX_RECORDS:,} per batch "
                     "(scope ingest)",
             description="400: nothing was written; `errors` lists every bad record's index, field and reason.",
             **responses(schemas.Ingested))
def executions(request: HttpRequest, payload: schemas.ExecutionBatch) -> Any:
    try:
        result = monitoring.ingest(payload.records)
    except monitoring.BatchRejected as exc:
        fields: dict[str, list[str]] = {}
        for error in exc.errors:
            name = "records" if error.index < 0 else f"records[{error.index}].{error.field}"
            fields.setdefault(name, []).append(error.reason)
        return http_response(api_error(400, "validation_failed", str(exc), fields,
                                       errors=[error.as_dict() for error in exc.errors]))
    return {"received": result.received, "accepted": result.accepted, "duplicates": result.duplicates}


@router.get("/api/v1/flags/{key}/metrics", auth=MANAGE, url_name="api-metrics",
            summary="Metrics per mode over a window, from the rollups (scope manage)",
            description="summary per mode, token savings, success criteria", **responses(dict[str, Any], 404))
def metrics(request: HttpRequest, key: str,
            window: str | None = Query(None, description=f"one of {', '.join(monitoring_selectors.WINDOWS)}; "
                                                   f"default {monitoring_selectors.DEFAULT_WINDOW}"),
            series: str | None = Query(None, description="1 adds the chart series")) -> dict[str, Any]:
    window = window or monitoring_selectors.DEFAULT_WINDOW
    if window not in monitoring_selectors.WINDOWS:
        raise Invalid({"window": [f"must be one of {', '.join(monitoring_selectors.WINDOWS)}"]})
    flag = _get_flag(key)
    summary = monitoring_selectors.summary(flag, window)
    data: dict[str, Any] = {**summary}
    if series in ("1", "true"):
        data["series"] = monitoring_selectors.series(flag, window)
    data["success_criteria"] = monitoring_selectors.success_criteria(summary)
    return data


# --- the document ------------------------------------------------------------------------------------------


@router.get("/api/v1/openapi.json", auth=None, url_name="api-openapi", summary="This document",
            response={200: dict[str, Any]}, openapi_extra={"responses": {200: {"description": "OpenAPI 3.1"}}})
def openapi_document(request: HttpRequest) -> JsonResponse:
    return JsonResponse(document(), json_dumps_params={"indent": 2})


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document: generated by django-ninja from the operations and their schemas (once: they
    are fixed at import)."""
    return dict(api.get_openapi_schema(path_prefix=""))


api.add_router("", evaluation)
api.add_router("", router)


# --- URLs ----------------------------------------------------------------------------------------------------


def _json_405(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """ninja answers a method no operation takes with a plain-text 405; the API answers in its JSON."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        if not isinstance(response, HttpResponseNotAllowed):
            return response
        allowed = sorted((m.strip() for m in response["Allow"].split(",")), key=_METHOD_ORDER.index)
        resp = api_error(405, "method_not_allowed", f"use {', '.join(allowed)}")
        resp.headers.append(("Allow", ", ".join(allowed)))
        return http_response(resp)

    return wrapper


_METHOD_ORDER = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]


def url_patterns() -> list[URLPattern]:
    """One URL pattern per path of the management API (ninja gives one per operation), in the JSON 405.

    The evaluation operations are in the document only: their URLs come from api/routing.py's table."""
    seen: set[str] = set()
    patterns = []
    for pattern in api.urls[0]:
        if not isinstance(pattern, URLPattern) or pattern.name in routing.BY_NAME:
            continue
        route = str(pattern.pattern)
        if not route.startswith("api/") or route in seen:
            continue
        seen.add(route)
        patterns.append(path(route, _json_405(pattern.callback), name=pattern.name))
    return patterns

