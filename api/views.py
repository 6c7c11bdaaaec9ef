"""Django views of the API: the hot endpoints (adapters over api/hot.py) and the management endpoints."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.core.exceptions import RequestDataTooBig, ValidationError
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.dateparse import parse_datetime
from django.utils.timezone import is_naive, make_aware
from django.views.decorators.csrf import csrf_exempt

from flags import selectors, services
from flags.actors import Actor
from flags.models import AuditEntry, Flag, OverrideKind, Source, UserOverride

from . import openapi
from .core import AuthFailure, BadJson, Req, Resp, authenticate, max_body_bytes, parse_json
from .hot import api_error, auth_error, validation_error
from .routing import dispatch
from .snapshot import ConfigUnavailable

logger = logging.getLogger("rolloutadmin.api")
# str.isdigit() accepts '²' and other digits int() refuses: only ASCII digits are numbers here.
_ASCII_DIGITS = re.compile(r"[0-9]+")


def _req(request: HttpRequest) -> Req:
    too_large = False
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body = b""
    if length > max_body_bytes():
        too_large = True
    else:
        try:
            body = request.body
        except RequestDataTooBig:
            too_large = True
    headers = {k.lower(): v for k, v in request.headers.items()}
    query = {k: request.GET.getlist(k) for k in request.GET}
    return Req(request.method or "GET", request.path_info, query, headers, body, too_large,
               request.META.get("REMOTE_ADDR") or "")


def _http(resp: Resp) -> HttpResponse:
    response = HttpResponse(resp.body, status=resp.status, content_type=None)
    if not any(name.lower() == "content-type" for name, _ in resp.headers) and resp.status != 304:
        response["Content-Type"] = "application/json"
    for name, value in resp.headers:
        response[name] = value
    return response


@csrf_exempt
def hot_view(request: HttpRequest, **_kwargs: str) -> HttpResponse:
    """The evaluation endpoints under Django (tests, runserver without the WSGI wrapper)."""
    resp = dispatch(_req(request))
    if resp is None:  # pragma: no cover - urls.py only routes matching paths here
        resp = api_error(404, "not_found", "no such endpoint")
    return _http(resp)


def openapi_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse(openapi.schema(), json_dumps_params={"indent": 2})


# --- management endpoints (scope `manage`) -------------------------------------------------------------


class ApiProblem(Exception):
    def __init__(self, resp: Resp) -> None:
        self.resp = resp


def api_view(scope: str, methods: tuple[str, ...]) -> Callable[..., Callable[..., HttpResponse]]:
    """Authenticate with the scope, turn every failure into the JSON error format, never a 500 page."""

    def decorate(view: Callable[..., Resp]) -> Callable[..., HttpResponse]:
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: HttpRequest, **kwargs: Any) -> HttpResponse:
            req = _req(request)
            if request.method not in methods:
                resp = api_error(405, "method_not_allowed", f"use {', '.join(methods)}")
                resp.headers.append(("Allow", ", ".join(methods)))
                return _http(resp)
            try:
                key = authenticate(req, scope)
                if req.too_large:
                    raise ApiProblem(api_error(413, "payload_too_large", f"request body over {max_body_bytes()} "
                                                                         "bytes"))
                return _http(view(req, Actor.for_api_key(key.name), **kwargs))
            except AuthFailure as exc:
                return _http(auth_error(exc))
            except ConfigUnavailable:
                return _http(api_error(503, "unavailable", "configuration unavailable (database unreachable)"))
            except ApiProblem as exc:
                return _http(exc.resp)
            except services.FlagNotFound as exc:
                return _http(api_error(404, "not_found", str(exc)))
            except services.VersionConflict as exc:
                return _http(api_error(409, "conflict", str(exc), current=exc.current_state()))
            except ValidationError as exc:
                return _http(validation_error(_fields(exc)))

        return wrapper

    return decorate


def _fields(exc: ValidationError) -> dict[str, list[str]]:
    if hasattr(exc, "error_dict"):
        return {name if name != "__all__" else "body": msgs for name, msgs in exc.message_dict.items()}
    return {"body": exc.messages}


def _json_object(req: Req, allowed: set[str]) -> dict[str, Any]:
    try:
        data = parse_json(req.body)
    except BadJson as exc:
        raise ApiProblem(api_error(400, "invalid_json", str(exc))) from None
    if not isinstance(data, dict):
        raise ApiProblem(validation_error({"body": ["must be a JSON object"]}))
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiProblem(validation_error({name: ["unknown field"] for name in unknown}))
    return data


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
    }


def _get_flag(key: str) -> Flag:
    flag = selectors.flag_get(key)
    if flag is None:
        raise services.FlagNotFound(key)
    return flag


@api_view("manage", ("GET",))
def flags_list(req: Req, actor: Actor) -> Resp:
    flags = list(Flag.objects.all())
    counts = selectors.override_counts_by_flag(flags)
    return Resp.json(200, {"results": [_flag_json(flag, counts[flag.pk]) for flag in flags]})


@api_view("manage", ("GET", "PATCH"))
def flag_detail(req: Req, actor: Actor, key: str) -> Resp:
    if req.method == "GET":
        flag = _get_flag(key)
        return Resp.json(200, _flag_json(flag), [("ETag", f'"{flag.version}"')])
    data = _json_object(req, {"enabled", "rollout_percentage", "client_side", "reason", "expected_version"})
    fields: dict[str, list[str]] = {}
    reason = data.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        fields["reason"] = ["is required: say why, it goes into the audit log"]
    changes = {name: data[name] for name in ("enabled", "rollout_percentage", "client_side") if name in data}
    if not changes:
        fields["body"] = ["give enabled, rollout_percentage and/or client_side"]
    expected = _expected_version(req, data, fields)
    if fields:
        return validation_error(fields)
    flag = services.flag_update(flag=key, actor=actor, source=Source.API, reason=reason.strip(),  # type: ignore[union-attr]
                                expected_version=expected, **changes)
    return Resp.json(200, _flag_json(flag), [("ETag", f'"{flag.version}"')])


def _expected_version(req: Req, data: dict[str, Any], fields: dict[str, list[str]]) -> int | None:
    header = req.header("if-match").strip()
    value: Any = data.get("expected_version")
    if header:
        raw = header.removeprefix("W/").strip('"')
        if not _ASCII_DIGITS.fullmatch(raw) or len(raw) > 18:
            fields["If-Match"] = ["must be the flag's version number, e.g. If-Match: \"7\""]
            return None
        if value is not None and value != int(raw):
            fields["expected_version"] = ["disagrees with the If-Match header"]
        return int(raw)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        fields["expected_version"] = ["must be a positive integer"]
        return None
    return value


def _page(req: Req, fields: dict[str, list[str]], default: int = 100, maximum: int = 1000) -> tuple[int, int | None]:
    limit, cursor = default, None
    raw_limit, raw_cursor = req.param("limit"), req.param("cursor")
    if raw_limit is not None:
        if not _ASCII_DIGITS.fullmatch(raw_limit) or len(raw_limit) > 6 or not 1 <= int(raw_limit) <= maximum:
            fields["limit"] = [f"must be an integer from 1 to {maximum}"]
        else:
            limit = int(raw_limit)
    if raw_cursor is not None:
        if not _ASCII_DIGITS.fullmatch(raw_cursor) or len(raw_cursor) > 18:
            fields["cursor"] = ["must be the next_cursor of a previous page"]
        else:
            cursor = int(raw_cursor)
    return limit, cursor


@api_view("manage", ("GET", "POST", "DELETE"))
def overrides(req: Req, actor: Actor, key: str) -> Resp:
    flag = _get_flag(key)
    if req.method == "GET":
        fields: dict[str, list[str]] = {}
        limit, cursor = _page(req, fields)
        kind = req.param("kind")
        if kind is not None and kind not in OverrideKind.values:
            fields["kind"] = ["must be allow or deny"]
        if fields:
            return validation_error(fields)
        qs = UserOverride.objects.filter(flag=flag).order_by("-id")
        if kind:
            qs = qs.filter(kind=kind)
        if cursor is not None:
            qs = qs.filter(id__lt=cursor)
        rows = list(qs[: limit + 1])
        return Resp.json(200, {
            "results": [{"user_id": o.user_id, "kind": o.kind, "note": o.note, "added_by": o.added_by,
                         "created_at": o.created_at.isoformat()} for o in rows[:limit]],
            "next_cursor": rows[limit - 1].id if len(rows) > limit else None,
        })
    allowed = {"kind", "user_ids", "note", "reason"} if req.method == "POST" else {"kind", "user_ids", "reason"}
    data = _json_object(req, allowed)
    fields = {}
    user_ids = data.get("user_ids")
    if not isinstance(user_ids, list) or not user_ids:
        fields["user_ids"] = ["must be a non-empty list of user ids"]
    kind = data.get("kind")
    if req.method == "POST" and kind not in OverrideKind.values:
        fields["kind"] = ["must be allow or deny"]
    if req.method == "DELETE" and kind is not None and kind not in OverrideKind.values:
        fields["kind"] = ["must be allow or deny, or left out for either list"]
    for name in ("note", "reason"):
        if name in data and not isinstance(data[name], str):
            fields[name] = ["must be a string"]
    if isinstance(data.get("note"), str) and len(data["note"]) > 500:
        fields["note"] = ["must be at most 500 characters"]
    if fields:
        return validation_error(fields)
    if req.method == "POST":
        report = services.overrides_import(flag=flag.key, kind=kind, user_ids=user_ids, note=data.get("note", ""),
                                           actor=actor, source=Source.API, reason=data.get("reason", ""))
    else:
        report = services.overrides_bulk_remove(flag=flag.key, kind=kind, user_ids=user_ids, actor=actor,
                                                source=Source.API, reason=data.get("reason", ""))
    if report.invalid:
        return validation_error({f"user_ids[{position - 1}]": [message]
                                 for position, _value, message in report.invalid})
    changed_name = "added" if req.method == "POST" else "removed"
    unchanged_name = "already_listed" if req.method == "POST" else "not_listed"
    return Resp.json(200, {
        changed_name: report.changed,
        unchanged_name: report.unchanged,
        "duplicates": report.duplicates,
        "conflicts": [{"user_id": user_id, "list": other} for _pos, user_id, other in report.conflicts],
        "version": report.flag.version if report.flag else flag.version,
    })


def _when(req: Req, name: str, fields: dict[str, list[str]]) -> datetime | None:
    raw = req.param(name)
    if raw is None or raw == "":
        return None
    try:
        value = parse_datetime(raw)
    except ValueError:
        value = None
    if value is None:
        fields[name] = ["must be an ISO 8601 date-time, e.g. 2026-11-26T10:00:00Z"]
        return None
    try:
        value = make_aware(value) if is_naive(value) else value
        value.astimezone(UTC)  # the calendar's edges overflow once shifted to UTC
    except (OverflowError, ValueError):
        fields[name] = ["is outside the range of dates this API handles"]
        return None
    return value


@api_view("manage", ("GET",))
def audit(req: Req, actor: Actor) -> Resp:
    fields: dict[str, list[str]] = {}
    limit, cursor = _page(req, fields)
    since, until = _when(req, "since", fields), _when(req, "until", fields)
    if since and until and since > until:
        fields["since"] = ["must not be after until"]
    if fields:
        return validation_error(fields)
    qs = AuditEntry.objects.order_by("-id")
    flag_key = req.param("flag")
    if flag_key:
        qs = qs.filter(flag=_get_flag(flag_key))
    if since:
        qs = qs.filter(created_at__gte=since)
    if until:
        qs = qs.filter(Q(created_at__lte=until))
    if cursor is not None:
        qs = qs.filter(id__lt=cursor)
    rows = list(qs[: limit + 1])
    return Resp.json(200, {
        "results": [
            {"id": e.id, "created_at": e.created_at.isoformat(), "flag": e.flag_key, "flag_version": e.flag_version,
             "action": e.action, "actor": e.actor, "actor_kind": e.actor_kind, "source": e.source,
             "before": e.before, "after": e.after, "reason": e.reason}
            for e in rows[:limit]
        ],
        "next_cursor": rows[limit - 1].id if len(rows) > limit else None,
    })


# --- monitoring: ingestion (scope `ingest`) and metrics (scope `manage`) ----------------------------------


@api_view("ingest", ("POST",))
def executions(req: Req, actor: Actor) -> Resp:
    from monitoring import services as monitoring

    data = _json_object(req, {"records"})
    try:
        result = monitoring.ingest(data.get("records"))
    except monitoring.BatchRejected as exc:
        fields: dict[str, list[str]] = {}
        for error in exc.errors:
            name = "records" if error.index < 0 else f"records[{error.index}].{error.field}"
            fields.setdefault(name, []).append(error.reason)
        return api_error(400, "validation_failed", str(exc), fields,
                         errors=[error.as_dict() for error in exc.errors])
    return Resp.json(200, {"received": result.received, "accepted": result.accepted,
                           "duplicates": result.duplicates})


@api_view("manage", ("GET",))
def metrics(req: Req, actor: Actor, key: str) -> Resp:
    from monitoring import selectors as monitoring

    window = req.param("window") or monitoring.DEFAULT_WINDOW
    if window not in monitoring.WINDOWS:
        return validation_error({"window": [f"must be one of {', '.join(monitoring.WINDOWS)}"]})
    flag = _get_flag(key)
    data = monitoring.summary(flag, window)
    if req.param("series") in ("1", "true"):
        data["series"] = monitoring.series(flag, window)
    data["success_criteria"] = monitoring.success_criteria(data)
    return Resp.json(200, data)
