"""The evaluation endpoints: OFREP (single and bulk) and the internal JSON evaluation API.

These are the hot path (thousands of requests a second), so they read only the in-memory snapshot.
The mapping onto OFREP follows shared/reference/ofrep.md.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from flags import rules
from flags.evaluation import Decision, FlagConfig, Reason, evaluate
from flags.rules import user_id_problem
from rolloutadmin import metrics
from rolloutadmin.outage import RETRY_AFTER_SECONDS

from .core import AuthFailure, BadJson, Req, Resp, authenticate, max_body_bytes, parse_json
from .snapshot import ConfigUnavailable, Snapshot, store

logger = logging.getLogger("rolloutadmin.api")

OFREP_REASON = {
    Reason.DISABLED: "DISABLED",
    Reason.ALLOW_LIST: "TARGETING_MATCH",
    Reason.DENY_LIST: "TARGETING_MATCH",
    Reason.IN_ROLLOUT: "SPLIT",
    Reason.OUT_OF_ROLLOUT: "SPLIT",
    Reason.RULE_MATCH: "TARGETING_MATCH",
}
MAX_DECISIONS = 10_000


# --- OFREP --------------------------------------------------------------------------------------------


def _ofrep_error(status: int, key: str | None, code: str, details: str) -> Resp:
    body: dict[str, Any] = {"errorCode": code, "errorDetails": details}
    if key is not None:
        body = {"key": key, **body}
    if status >= 500:
        logger.error("ofrep %s %s: %s", status, key, details)
    elif status != 404:
        logger.info("ofrep %s %s %s: %s", status, key, code, details)
    return Resp.json(status, body)


def _ofrep_context(req: Req, key: str | None) -> dict[str, Any] | Resp:
    if req.too_large:
        return _ofrep_error(413, key, "GENERAL", f"request body over {max_body_bytes()} bytes")
    if not req.body.strip():
        return {}  # no body at all: an empty context
    try:
        data = parse_json(req.body)
    except BadJson as exc:
        return _ofrep_error(400, key, "PARSE_ERROR", str(exc))
    if not isinstance(data, dict):
        return _ofrep_error(400, key, "INVALID_CONTEXT", "the request body must be a JSON object")
    context = data.get("context", {})
    if context is None:
        context = {}
    if not isinstance(context, dict):
        return _ofrep_error(400, key, "INVALID_CONTEXT", "'context' must be a JSON object")
    return context


# OFREP's wording of each problem (errorDetails), kept as the API has always answered.
_TARGETING_KEY_DETAILS = {
    rules.NOT_A_STRING: "targetingKey must be a string",
    rules.TOO_LONG: f"targetingKey must be at most {rules.USER_ID_MAX_LENGTH} characters, no NUL",
    rules.HAS_NUL: f"targetingKey must be at most {rules.USER_ID_MAX_LENGTH} characters, no NUL",
    rules.LONE_SURROGATE: f"targetingKey {rules.LONE_SURROGATE}",  # parse_json refuses such a body first
}


def _targeting_key(context: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(user id, error code, details): the context's targetingKey, validated like a user id."""
    value = context.get("targetingKey")
    problem = rules.BLANK if value is None else user_id_problem(value)
    if problem is None:
        return value, None, None
    if problem == rules.BLANK:
        return None, "TARGETING_KEY_MISSING", "the context has no targetingKey (the user id)"
    return None, "INVALID_CONTEXT", _TARGETING_KEY_DETAILS[problem]


def _ofrep_item(flag: FlagConfig, decision: Decision, public: bool = False) -> dict[str, Any]:
    """One OFREP answer. `public` (a client key's): the value, variant and OFREP reason only, none of our
    metadata (bucket, rollout percentage, version, our reason), which a page's visitors could read."""
    if public:
        return {"key": flag.key, "value": decision.enabled, "reason": OFREP_REASON[decision.reason],
                "variant": "on" if decision.enabled else "off"}
    metadata: dict[str, Any] = {
        "reason": decision.reason.value,
        "rolloutPercentage": flag.rollout_basis_points / 100,
        "version": flag.version,  # this flag's own: a change elsewhere leaves this item as it was
        "stale": store.stale,
    }
    if decision.bucket is not None:
        metadata["bucket"] = decision.bucket
    if decision.rule is not None:
        metadata["ruleId"] = decision.rule
    return {
        "key": flag.key,
        "value": decision.enabled,
        "reason": OFREP_REASON[decision.reason],
        "variant": "on" if decision.enabled else "off",
        "metadata": metadata,
    }


def _decide(flag: FlagConfig, context: dict[str, Any]) -> Decision | tuple[str, str]:
    user_id, code, details = _targeting_key(context)
    if user_id is None:
        if not flag.enabled and code == "TARGETING_KEY_MISSING":
            return Decision(False, Reason.DISABLED, None)  # off for everyone: no user needed
        return code, details  # type: ignore[return-value]
    return evaluate(flag, user_id, context)  # every attribute of the context, for the flag's targeting rules


def ofrep_auth_error(exc: AuthFailure, key: str | None) -> Resp:
    """401, 403 or 429 (with Retry-After) in OFREP's error format; auth_error below is the JSON API's."""
    resp = _ofrep_error(exc.status, key, "GENERAL", exc.message)
    resp.headers.extend(exc.headers)  # 429: Retry-After
    if exc.status == 401:
        resp.headers.append(("WWW-Authenticate", 'Bearer realm="rolloutadmin"'))
    return resp


def _ofrep_prelude(req: Req, key: str | None) -> tuple[dict[str, Any], Snapshot, bool] | Resp:
    """Authenticate, read the context and the snapshot, or answer with the OFREP error. The bool: the key
    is a client key (scope `client` without `evaluate`), which sees client-side flags only."""
    try:
        api_key = authenticate(req, ("evaluate", "client"))
        context = _ofrep_context(req, key)
        if isinstance(context, Resp):
            return context
        return context, store.get(), "evaluate" not in api_key.scopes
    except AuthFailure as exc:
        return ofrep_auth_error(exc, key)
    except ConfigUnavailable:  # 503 + Retry-After, like every API path in an outage (rolloutadmin/outage.py)
        resp = _ofrep_error(503, key, "GENERAL", "flag configuration is unavailable (database unreachable)")
        resp.headers.append(("Retry-After", str(RETRY_AFTER_SECONDS)))
        return resp


def ofrep_single(req: Req, key: str) -> Resp:
    prelude = _ofrep_prelude(req, key)
    if isinstance(prelude, Resp):
        return prelude
    context, snapshot, public = prelude
    flag = snapshot.flags.get(key)
    if flag is None or (public and not flag.client_side):  # a client key cannot tell the two apart
        metrics.evaluation(metrics.UNKNOWN_FLAG, "FLAG_NOT_FOUND")
        return _ofrep_error(404, key, "FLAG_NOT_FOUND", f"flag {key!r} does not exist")
    decision = _decide(flag, context)
    if not isinstance(decision, Decision):
        metrics.evaluation(key, decision[0])
        return _ofrep_error(400, key, decision[0], decision[1])
    metrics.evaluation(key, decision.reason.value)
    return Resp.json(200, _ofrep_item(flag, decision, public))


def _etag(body: bytes) -> str:
    """Of what the response holds, nothing else: a change to another flag's config, an API key or anything
    else in the snapshot leaves it as it was, and a poller gets 304 (the web provider's flagsChanged then
    lists exactly the flags whose items changed)."""
    return f'W/"{hashlib.sha256(body).hexdigest()[:32]}"'

def _matches(if_none_match: str, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = [tag.strip() for tag in if_none_match.split(",")]
    bare = etag.removeprefix("W/")
    return "*" in candidates or any(c.removeprefix("W/") == bare for c in candidates)


def ofrep_bulk(req: Req) -> Resp:
    prelude = _ofrep_prelude(req, None)
    if isinstance(prelude, Resp):
        return prelude
    context, snapshot, public = prelude
    items = []
    for key in sorted(snapshot.flags):
        flag = snapshot.flags[key]
        if public and not flag.client_side:
            continue
        decision = _decide(flag, context)
        if not isinstance(decision, Decision):
            metrics.evaluation(key, decision[0])
            items.append({"key": key, "errorCode": decision[0], "errorDetails": decision[1]})
        else:
            metrics.evaluation(key, decision.reason.value)
            items.append(_ofrep_item(flag, decision, public))
    resp = Resp.json(200, {"flags": items})
    etag = _etag(resp.body)
    if _matches(req.header("if-none-match"), etag):
        return Resp(304, b"", [("ETag", etag)])
    resp.headers.append(("ETag", etag))
    return resp


# --- internal JSON API ----------------------------------------------------------------------------------


def api_error(status: int, error: str, message: str, fields: dict[str, list[str]] | None = None,
              **extra: Any) -> Resp:
    body: dict[str, Any] = {"error": error, "message": message}
    if fields:
        body["fields"] = fields
    body.update(extra)
    headers = [("WWW-Authenticate", 'Bearer realm="rolloutadmin"')] if status == 401 else []
    if status >= 500:
        logger.error("api %s %s: %s", status, error, message)
    elif status not in (404,):
        logger.info("api %s %s: %s", status, error, message)
    return Resp.json(status, body, headers)


def auth_error(exc: AuthFailure) -> Resp:
    """401, 403 or 429 (with Retry-After) in the API's error format (every JSON endpoint, the management API's
    included); ofrep_auth_error above is OFREP's."""
    resp = api_error(exc.status, exc.error, exc.message)
    resp.headers.extend(exc.headers)
    return resp


def validation_error(fields: dict[str, list[str]]) -> Resp:
    names = ", ".join(sorted(fields))
    return api_error(400, "validation_failed", f"invalid input in: {names}", fields)


def _users(data: dict[str, Any], fields: dict[str, list[str]]) -> list[tuple[str, dict[str, Any]]]:
    """`users` of a bulk evaluation: [{"user_id": ..., "attributes": {...}}], each with a context of its own."""
    if "user_ids" in data or "attributes" in data:
        fields["users"] = ["give users alone, or user_ids with one attributes object for them all"]
    items = data["users"]
    if not isinstance(items, list) or not items:
        fields["users"] = ["must be a non-empty list of {\"user_id\": ..., \"attributes\": {...}}"]
        return []
    users: list[tuple[str, dict[str, Any]]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            fields[f"users[{index}]"] = ["must be an object with user_id and attributes"]
            continue
        for name in sorted(set(item) - {"user_id", "attributes"}):
            fields[f"users[{index}].{name}"] = ["unknown field"]
        user_id: Any = item.get("user_id")
        problem = "is required" if user_id is None else user_id_problem(user_id)
        if problem:
            fields[f"users[{index}].user_id"] = [problem]
            continue
        found: dict[str, list[str]] = {}
        attributes = _attributes(item.get("attributes"), found)
        if found:
            fields[f"users[{index}].attributes"] = found["attributes"]
        users.append((user_id, attributes))
    return users


def _decision_json(flag_key: str, user_id: str, decision: Decision) -> dict[str, Any]:
    body = {
        "flag": flag_key,
        "user_id": user_id,
        "enabled": decision.enabled,
        "reason": decision.reason.value,
        "bucket": decision.bucket,
    }
    if decision.rule is not None:
        body["rule"] = decision.rule
    return body


def _attributes(value: object, fields: dict[str, list[str]]) -> dict[str, Any]:
    """The `attributes` of a JSON evaluation request (the context's, for targeting rules): an object, or
    left out. A problem goes into `fields`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        fields["attributes"] = ["must be a JSON object of attribute names and values"]
        return {}
    return value


def _auth_or_error(req: Req, scope: str) -> Resp | None:
    try:
        authenticate(req, scope)
    except AuthFailure as exc:
        return auth_error(exc)
    except ConfigUnavailable:
        resp = api_error(503, "unavailable", "flag configuration is unavailable (database unreachable)")
        resp.headers.append(("Retry-After", str(RETRY_AFTER_SECONDS)))
        return resp
    return None


def evaluate_one(req: Req, key: str) -> Resp:
    """GET /api/v1/flags/{key}/evaluate?user_id=..."""
    denied = _auth_or_error(req, "evaluate")
    if denied is not None:
        return denied
    user_id = req.param("user_id")
    problem = "is required" if user_id is None else user_id_problem(user_id)
    fields: dict[str, list[str]] = {"user_id": [problem]} if problem else {}
    attributes: dict[str, Any] = {}
    raw = req.param("attributes")
    if raw is not None:  # a JSON object in the query string: ?attributes={"plan":"pro"} (URL-encoded)
        try:
            attributes = _attributes(parse_json(raw.encode()), fields)
        except BadJson as exc:
            fields["attributes"] = [f"must be a JSON object: {exc}"]
    if fields:
        return validation_error(fields)
    snapshot = store.get()
    flag = snapshot.flags.get(key)
    if flag is None:
        metrics.evaluation(metrics.UNKNOWN_FLAG, "FLAG_NOT_FOUND")
        return api_error(404, "not_found", f"flag {key!r} does not exist")
    decision = evaluate(flag, user_id, attributes)  # type: ignore[arg-type]
    metrics.evaluation(key, decision.reason.value)
    body = _decision_json(key, user_id, decision)  # type: ignore[arg-type]
    body["rollout_percentage"] = flag.rollout_basis_points / 100
    body["version"] = flag.version
    body["stale"] = store.stale
    return Resp.json(200, body)


def evaluate_many(req: Req) -> Resp:
    """POST /api/v1/evaluate {"user_ids": [...], "attributes": {...}, "flags": [...] (default: every flag)}, or
    "users": [{"user_id": ..., "attributes": {...}}, ...] instead of user_ids when each user has a context of
    their own."""
    denied = _auth_or_error(req, "evaluate")
    if denied is not None:
        return denied
    if req.too_large:
        return api_error(413, "payload_too_large", f"request body over {max_body_bytes()} bytes")
    try:
        data = parse_json(req.body)
    except BadJson as exc:
        return api_error(400, "invalid_json", str(exc))
    if not isinstance(data, dict):
        return validation_error({"body": ["must be a JSON object"]})
    fields: dict[str, list[str]] = {}
    unknown = sorted(set(data) - {"user_ids", "users", "flags", "attributes"})
    for name in unknown:
        fields[name] = ["unknown field"]
    shared = _attributes(data.get("attributes"), fields)  # the same for every user of user_ids
    if "users" in data:
        users = _users(data, fields)
    else:
        user_ids = data.get("user_ids")
        if not isinstance(user_ids, list) or not user_ids:
            fields["user_ids"] = ["must be a non-empty list of user ids"]
            user_ids = []
        else:
            for index, value in enumerate(user_ids):
                problem = user_id_problem(value)
                if problem:
                    fields[f"user_ids[{index}]"] = [problem]
        users = [(user_id, shared) for user_id in user_ids]
    user_ids = [user_id for user_id, _ in users]
    snapshot = store.get()
    flag_keys = data.get("flags")
    if flag_keys is None:
        flag_keys = sorted(snapshot.flags)
    elif not isinstance(flag_keys, list) or not flag_keys or not all(isinstance(k, str) for k in flag_keys):
        fields["flags"] = ["must be a non-empty list of flag keys (or left out for every flag)"]
        flag_keys = []
    if user_ids and flag_keys and len(user_ids) * len(flag_keys) > MAX_DECISIONS:
        fields["users" if "users" in data else "user_ids"] = [
            f"at most {MAX_DECISIONS} decisions per request (flags x user ids); "
            f"this asks for {len(user_ids) * len(flag_keys)}"]
    if fields:
        return validation_error(fields)
    results: list[dict[str, Any]] = []
    append = results.append
    for key in flag_keys:
        flag = snapshot.flags.get(key)
        reasons: dict[str, int] = {}
        for user_id, attributes in users:
            decision = evaluate(flag, user_id, attributes)
            reason = decision.reason.value
            reasons[reason] = reasons.get(reason, 0) + 1
            item = {"flag": key, "user_id": user_id, "enabled": decision.enabled, "reason": reason,
                    "bucket": decision.bucket}
            if decision.rule is not None:
                item["rule"] = decision.rule
            append(item)
        for reason, count in reasons.items():  # one increment per flag and reason, not one per decision
            metrics.evaluation(key if flag is not None else metrics.UNKNOWN_FLAG, reason, count)
    return Resp.json(200, {"config_version": snapshot.stamp, "stale": store.stale, "results": results})
