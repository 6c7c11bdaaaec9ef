"""The OpenAPI 3.1 description of /api/v1 and /ofrep/v1, served at /api/v1/openapi.json."""

from __future__ import annotations

from typing import Any

from flags.rules import USER_ID_MAX_LENGTH

from .hot import MAX_DECISIONS


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": _json(_ref("Error"), "Invalid input: `fields` names each bad field. Nothing was written."),
    "401": _json(_ref("Error"), "Missing, unknown or revoked API key."),
    "403": _json(_ref("Error"), "The key lacks the scope this endpoint needs."),
    "413": _json(_ref("Error"), "The request body is over the size limit."),
    "429": {**_json(_ref("Error"), "Too many unknown or revoked API keys from this client address: wait for "
                                   "`Retry-After` seconds. Requests with a valid key are never refused so."),
            "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
    "503": {**_json(_ref("Error"), "The database is unreachable or busy (`error`: `unavailable`): retry "
                                   "after `Retry-After` seconds. Nothing was written."),
            "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
}
OFREP_ERRORS = {
    "400": _json(_ref("OfrepError"), "PARSE_ERROR, TARGETING_KEY_MISSING or INVALID_CONTEXT."),
    "401": _json(_ref("OfrepError"), "Missing, unknown or revoked API key."),
    "403": _json(_ref("OfrepError"), "The key lacks the `evaluate` scope."),
    "413": _json(_ref("OfrepError"), "The request body is over the size limit."),
    "429": {**_json(_ref("OfrepError"), "Too many unknown or revoked API keys from this client address: wait "
                                        "for `Retry-After` seconds."),
            "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
    "503": {**_json(_ref("OfrepError"), "This process has no flag configuration yet and the database "
                                        "is unreachable: retry after `Retry-After` seconds."),
            "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
}
KEY_PARAM = {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}
PAGE_PARAMS = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
    {"name": "cursor", "in": "query", "schema": {"type": "integer"}, "description": "next_cursor of the last page"},
]


def schema() -> dict[str, Any]:
    decision = {
        "type": "object",
        "required": ["flag", "user_id", "enabled", "reason", "bucket"],
        "properties": {
            "flag": {"type": "string"},
            "user_id": {"type": "string"},
            "enabled": {"type": "boolean"},
            "reason": {"enum": ["DISABLED", "ALLOW_LIST", "DENY_LIST", "IN_ROLLOUT", "OUT_OF_ROLLOUT",
                                "FLAG_NOT_FOUND"]},
            "bucket": {"type": ["integer", "null"], "description": "0..9999 (murmur3) or the cohort 0..99 (legacy)"},
        },
    }
    flag = {
        "type": "object",
        "properties": {
            "key": {"type": "string"}, "name": {"type": "string"}, "description": {"type": "string"},
            "enabled": {"type": "boolean"}, "rollout_percentage": {"type": "number", "minimum": 0, "maximum": 100},
            "bucketing": {"enum": ["murmur3", "legacy"]}, "salt": {"type": "string"},
            "treatment_mode": {"type": "string"}, "baseline_mode": {"type": "string"},
            "client_side": {"type": "boolean", "description": "evaluable with a client key (scope client)"},
            "version": {"type": "integer"}, "allow_count": {"type": "integer"}, "deny_count": {"type": "integer"},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
        },
    }
    ofrep_context = {
        "type": "object",
        "properties": {"context": {"type": "object", "properties": {"targetingKey": {"type": "string"}},
                                   "additionalProperties": True}},
    }
    ofrep_success = {
        "type": "object",
        "required": ["key", "value", "reason", "variant", "metadata"],
        "properties": {
            "key": {"type": "string"}, "value": {"type": "boolean"},
            "reason": {"enum": ["STATIC", "TARGETING_MATCH", "SPLIT", "DISABLED", "UNKNOWN"]},
            "variant": {"enum": ["on", "off"]},
            "metadata": {"type": "object", "description": "reason (ours), bucket, rolloutPercentage, version "
                                                          "(the flag's), stale"},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rolloutadmin API",
            "version": "1",
            "description": "Evaluate flags (OFREP and JSON), change rollouts, keep allow/deny lists, read the "
                           "audit log. Authenticate with `Authorization: Bearer <secret>`.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                                   "fields": {"type": "object", "additionalProperties": {
                                       "type": "array", "items": {"type": "string"}}}},
                },
                "OfrepError": {
                    "type": "object",
                    "required": ["errorCode", "errorDetails"],
                    "properties": {"key": {"type": "string"}, "errorCode": {"enum": [
                        "PARSE_ERROR", "TARGETING_KEY_MISSING", "INVALID_CONTEXT", "GENERAL", "FLAG_NOT_FOUND"]},
                        "errorDetails": {"type": "string"}},
                },
                "Decision": decision,
                "Flag": flag,
                "OfrepSuccess": ofrep_success,
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/ofrep/v1/evaluate/flags/{key}": {"post": {
                "summary": "OFREP: evaluate one flag (scope evaluate; a client key: client-side flags only, "
                           "no metadata)",
                "parameters": [KEY_PARAM],
                "requestBody": {"content": {"application/json": {"schema": ofrep_context}}},
                "responses": {"200": _json(_ref("OfrepSuccess"), "The decision."),
                              "404": _json(_ref("OfrepError"), "FLAG_NOT_FOUND"), **OFREP_ERRORS},
            }},
            "/ofrep/v1/evaluate/flags": {"post": {
                "summary": "OFREP: evaluate every flag (scope evaluate; a client key: client-side flags only); "
                           "ETag and If-None-Match give 304",
                "parameters": [{"name": "If-None-Match", "in": "header", "schema": {"type": "string"}}],
                "requestBody": {"content": {"application/json": {"schema": ofrep_context}}},
                "responses": {"200": _json({"type": "object", "properties": {"flags": {"type": "array"}}},
                                           "Every flag's decision or error."),
                              "304": {"description": "Unchanged since the ETag given."}, **OFREP_ERRORS},
            }},
            "/api/v1/flags/{key}/evaluate": {"get": {
                "summary": "Evaluate one flag for one user (scope evaluate)",
                "parameters": [KEY_PARAM, {"name": "user_id", "in": "query", "required": True,
                                           "schema": {"type": "string", "minLength": 1,
                                                      "maxLength": USER_ID_MAX_LENGTH}}],
                "responses": {"200": _json({"allOf": [decision, {"type": "object", "properties": {
                    "rollout_percentage": {"type": "number"}, "version": {"type": "integer"},
                    "stale": {"type": "boolean"}}}]}, "The decision."),
                    "404": _json(_ref("Error"), "Unknown flag."), **ERRORS},
            }},
            "/api/v1/evaluate": {"post": {
                "summary": f"Evaluate many users against one or more flags, up to {MAX_DECISIONS} decisions "
                           "(scope evaluate)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["user_ids"],
                    "properties": {"user_ids": {"type": "array", "items": {"type": "string"}},
                                   "flags": {"type": "array", "items": {"type": "string"},
                                             "description": "default: every flag"}}}}}},
                "responses": {"200": _json({"type": "object", "properties": {
                    "config_version": {"type": "integer"}, "stale": {"type": "boolean"},
                    "results": {"type": "array", "items": _ref("Decision")}}}, "One result per flag and user."),
                    **ERRORS},
            }},
            "/api/v1/flags": {"get": {
                "summary": "Every flag (scope manage)",
                "responses": {"200": _json({"type": "object", "properties": {
                    "results": {"type": "array", "items": _ref("Flag")}}}, "The flags."), **ERRORS},
            }},
            "/api/v1/flags/{key}": {
                "get": {"summary": "One flag (scope manage); ETag is its version", "parameters": [KEY_PARAM],
                        "responses": {"200": _json(_ref("Flag"), "The flag."),
                                      "404": _json(_ref("Error"), "Unknown flag."), **ERRORS}},
                "patch": {
                    "summary": "Change enabled, rollout_percentage and/or client_side (scope manage; audited, "
                               "source api)",
                    "parameters": [KEY_PARAM, {"name": "If-Match", "in": "header", "schema": {"type": "string"},
                                               "description": "the version the change is based on"}],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["reason"],
                        "properties": {"enabled": {"type": "boolean"}, "client_side": {"type": "boolean"},
                                       "rollout_percentage": {"type": "number", "minimum": 0, "maximum": 100},
                                       "reason": {"type": "string", "minLength": 1},
                                       "expected_version": {"type": "integer"}}}}}},
                    "responses": {"200": _json(_ref("Flag"), "The changed flag."),
                                  "404": _json(_ref("Error"), "Unknown flag."),
                                  "409": _json(_ref("Error"), "The flag changed since that version; `current` "
                                                              "holds its state."), **ERRORS},
                },
            },
            "/api/v1/flags/{key}/overrides": {
                "get": {"summary": "Allow/deny entries, newest first (scope manage)",
                        "parameters": [KEY_PARAM, {"name": "kind", "in": "query", "schema": {
                            "enum": ["allow", "deny"]}}, *PAGE_PARAMS],
                        "responses": {"200": {"description": "A page of entries and next_cursor."}, **ERRORS}},
                "post": {"summary": "Add users to a list, all or nothing on invalid ids (scope manage)",
                         "parameters": [KEY_PARAM],
                         "requestBody": {"required": True, "content": {"application/json": {"schema": {
                             "type": "object", "required": ["kind", "user_ids"], "properties": {
                                 "kind": {"enum": ["allow", "deny"]},
                                 "user_ids": {"type": "array", "items": {"type": "string"}},
                                 "note": {"type": "string"}, "reason": {"type": "string"}}}}}},
                         "responses": {"200": {"description": "added, already_listed, duplicates, conflicts (users "
                                                              "on the other list, left there)"}, **ERRORS}},
                "delete": {"summary": "Remove users from a list (or either) (scope manage)",
                           "parameters": [KEY_PARAM],
                           "requestBody": {"required": True, "content": {"application/json": {"schema": {
                               "type": "object", "required": ["user_ids"], "properties": {
                                   "kind": {"enum": ["allow", "deny"]},
                                   "user_ids": {"type": "array", "items": {"type": "string"}},
                                   "reason": {"type": "string"}}}}}},
                           "responses": {"200": {"description": "removed, not_listed, conflicts"}, **ERRORS}},
            },
            "/api/v1/audit": {"get": {
                "summary": "Audit entries, newest first (scope manage)",
                "parameters": [{"name": "flag", "in": "query", "schema": {"type": "string"}},
                               {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                               {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                               *PAGE_PARAMS],
                "responses": {"200": {"description": "A page of entries and next_cursor."}, **ERRORS},
            }},
            "/api/v1/executions": {"post": {
                "summary": "Ingest execution records, all or nothing, up to 5,000 per batch (scope ingest)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["records"], "properties": {"records": {
                        "type": "array", "maxItems": 5000, "items": {
                            "type": "object", "required": ["user_id", "mode", "latency_ms", "tokens_used", "success"],
                            "properties": {
                                "id": {"type": "string", "maxLength": 100,
                                       "description": "makes a retried record count once"},
                                "user_id": {"type": "string", "minLength": 1, "maxLength": USER_ID_MAX_LENGTH},
                                "mode": {"type": "string", "description": "a slug: patch, single, ..."},
                                "flag": {"type": "string"},
                                "latency_ms": {"type": "number", "minimum": 0},
                                "tokens_used": {"type": "integer", "minimum": 0},
                                "success": {"type": "boolean"},
                                "patch_count": {"type": "integer", "minimum": 0, "default": 0},
                                "failed_patches": {"type": "integer", "minimum": 0, "default": 0},
                                "occurred_at": {"type": "string", "format": "date-time",
                                                "description": "default now; at most 5 minutes ahead"}}}}}}}}},
                "responses": {"200": {"description": "received, accepted, duplicates"},
                              **ERRORS, "400": _json(_ref("Error"), "Nothing was written: `errors` lists every bad "
                                                                    "record's index, field and reason.")},
            }},
            "/api/v1/flags/{key}/metrics": {"get": {
                "summary": "Metrics per mode over a window, from the rollups (scope manage)",
                "parameters": [KEY_PARAM,
                               {"name": "window", "in": "query", "schema": {"enum": ["15m", "1h", "24h", "7d"],
                                                                            "default": "1h"}},
                               {"name": "series", "in": "query", "schema": {"enum": ["0", "1"]},
                                "description": "1 adds the chart series"}],
                "responses": {"200": {"description": "summary per mode, token savings, success criteria"},
                              "404": _json(_ref("Error"), "Unknown flag."), **ERRORS},
            }},
            "/api/v1/openapi.json": {"get": {"summary": "This document", "security": [],
                                              "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        },
    }
