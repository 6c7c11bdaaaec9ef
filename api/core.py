"""Framework-free request handling shared by the Django views and the lean WSGI path.

A handler takes a Req and returns a Resp. The same handler runs under Django's test client, runserver
and gunicorn, so authentication, the error format and logging are identical on both paths.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from .keys import hash_secret
from .snapshot import KeyInfo, store
from .throttle import client_address, key_rate, record_failure

logger = logging.getLogger("rolloutadmin.api")

JSON_TYPE = "application/json"


@dataclass(slots=True)
class Req:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes = b""
    too_large: bool = False  # the body was over the limit and was not read
    remote_addr: str = ""  # REMOTE_ADDR; api.throttle.client_address() tells the client's address from it

    def header(self, name: str) -> str:
        return self.headers.get(name, "")

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass(slots=True)
class Resp:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> Resp:
        return cls(status, dumps(payload), [("Content-Type", JSON_TYPE), *(headers or [])])


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def max_body_bytes() -> int:
    return int(getattr(settings, "API_MAX_BODY_BYTES", 4 * 1024 * 1024))


_READ_CHUNK = 64 * 1024
EMPTY_BODY = "the request body is empty; send a JSON object"


def content_length(raw: object) -> int | None:
    """A Content-Length header's value, or None when there is none (or it is no number)."""
    text = str(raw or "").strip()
    try:
        return int(text) if text else None
    except ValueError:
        return None


def read_at_most(stream: Any, limit: int) -> tuple[bytes, bool]:
    """Read a stream to its end, but never more than limit + 1 bytes: (body, over the limit).

    Over the limit, the body is dropped (b"") and the rest of the stream is left unread, so a client
    cannot make the process buffer more than the limit whatever it sends.
    """
    parts: list[bytes] = []
    total = 0
    while total <= limit:
        data = stream.read(min(_READ_CHUNK, limit + 1 - total))
        if not data:
            break
        parts.append(data)
        total += len(data)
    if total > limit:
        return b"", True
    return b"".join(parts), False


def read_body(stream: Any, length: int | None, limit: int, *, to_the_end: bool) -> tuple[bytes, bool]:
    """The request body and whether it is over the limit (then not read at all): the one reader of the
    API, for the lean WSGI path and the Django views alike.

    With a Content-Length, exactly that many bytes (refused unread when over the limit). Without one, a
    chunked body (Transfer-Encoding: chunked, which the server de-chunks) is read until the end of the
    stream, up to limit + 1 bytes, when the server says the stream ends with the body (`to_the_end`:
    `wsgi.input_terminated`, as gunicorn sets it); a server that does not say so gets no body read, since
    reading could wait for bytes that never come.
    """
    if length is not None and length > limit:
        return b"", True
    if stream is None:
        return b"", False
    if length is not None:
        body = stream.read(length) if length > 0 else b""
        return (b"", True) if len(body) > limit else (body, False)
    if to_the_end:
        return read_at_most(stream, limit)
    return b"", False


def body_from_environ(environ: dict[str, Any], limit: int) -> tuple[bytes, bool]:
    """The body of a WSGI environ (the lean path), by read_body."""
    return read_body(environ.get("wsgi.input"), content_length(environ.get("CONTENT_LENGTH")), limit,
                     to_the_end=bool(environ.get("wsgi.input_terminated")))


def body_from_request(request: HttpRequest) -> tuple[bytes, bool]:
    """The body of a Django request, by read_body, read once and kept as Django keeps it (request.body).

    Django bounds its stream by CONTENT_LENGTH; a chunked body reaches it buffered with its length
    (api.fastpath.buffer_chunked_body)."""
    cached: tuple[bytes, bool] | None = getattr(request, "_api_body", None)
    if cached is None:
        cached = read_body(request, content_length(request.META.get("CONTENT_LENGTH")), max_body_bytes(),
                           to_the_end=False)
        if not cached[1]:
            # Django's own cache of request.body, so that what reads request.body later (django-ninja's body
            # parameters) gets these bytes instead of RawPostDataException.
            request._body = cached[0]
        request._api_body = cached  # type: ignore[attr-defined]  # read once per request
    return cached


def request_from_django(request: HttpRequest) -> Req:
    """A Django request as a Req, for the handlers of api/hot.py and the management API's authentication."""
    body, too_large = body_from_request(request)
    headers = {k.lower(): v for k, v in request.headers.items()}
    query = {k: request.GET.getlist(k) for k in request.GET}
    return Req(request.method or "GET", request.path_info, query, headers, body, too_large,
               request.META.get("REMOTE_ADDR") or "")


def http_response(resp: Resp) -> HttpResponse:
    """A Resp as Django's HttpResponse, headers as they are (JSON unless the Resp says otherwise)."""
    response = HttpResponse(resp.body, status=resp.status, content_type=None)
    if not any(name.lower() == "content-type" for name, _ in resp.headers) and resp.status != 304:
        response["Content-Type"] = JSON_TYPE
    for name, value in resp.headers:
        response[name] = value
    return response


class BadJson(Exception):
    pass


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def parse_json(body: bytes) -> Any:
    """JSON from a UTF-8 body; lone surrogates (which no UTF-8 text can hold) are refused like bad JSON."""
    if not body.strip():
        raise BadJson(EMPTY_BODY)
    try:
        text = body.decode("utf-8")  # strict: json.loads(bytes) would let encoded surrogates through
        data = json.loads(text)
    except UnicodeDecodeError:
        raise BadJson("the request body is not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise BadJson(f"the request body is not valid JSON: {str(exc)[:200]}") from None
    # Escaped surrogates are fine in pairs (an emoji); a lone one would fail later on encoding. Only
    # bodies that contain such an escape at all are walked.
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(data):
        raise BadJson("the request body holds a lone UTF-16 surrogate (\\ud800-\\udfff) in a string")
    return data


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


# --- authentication ---------------------------------------------------------------------------------


class AuthFailure(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after  # 429: integer seconds for the Retry-After header

    @property
    def error(self) -> str:
        return {401: "unauthenticated", 403: "forbidden", 429: "too_many_requests"}.get(self.status, "forbidden")

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after))] if self.retry_after is not None else []


def authenticate(req: Req, scope: str | tuple[str, ...]) -> KeyInfo:
    """The key named by `Authorization: Bearer <secret>` (or OFREP's `X-API-Key: <secret>`), from the
    snapshot (no query per request).

    401 when the header is missing or the key is unknown or revoked, 403 when it lacks the scope, 429
    (with retry_after) when the client's address sent too many unknown keys (api.throttle: only failures
    are counted, a valid key never waits for someone else's), or when the key itself is over
    API_KEY_RATE_LIMIT. The secret never appears in a message or a log line; at most
    the key's name does.
    """
    header = req.header("authorization")
    scheme, _, secret = header.partition(" ")
    secret = secret.strip() if scheme.lower() == "bearer" else ""
    if not secret:  # OFREP's other way to send a key: the X-API-Key header
        secret = req.header("x-api-key").strip()
    if not secret:
        raise AuthFailure(401, "missing API key: send the header 'Authorization: Bearer <secret>' "
                               "(or 'X-API-Key: <secret>')")
    digest = hash_secret(secret)
    snapshot = store.get()
    key = snapshot.keys.get(digest)
    # The dict lookup finds the candidate by hash; compare_digest makes the final equality check
    # constant-time, so response timing does not reveal how much of a hash matched.
    if key is None or not hmac.compare_digest(digest, key.secret_hash):
        client = client_address(req.remote_addr, req.header("x-forwarded-for"))
        retry_after = record_failure(client, digest)
        if retry_after is not None:
            logger.warning("api auth refused: too many unknown keys from %s (path %s)", client, req.path)
            raise AuthFailure(429, f"too many unknown or revoked API keys from this address; retry in {retry_after} "
                                   "seconds", retry_after)
        logger.warning("api auth failed: unknown or revoked key from %s (path %s)", client, req.path)
        raise AuthFailure(401, "unknown or revoked API key")
    wanted = (scope,) if isinstance(scope, str) else scope  # any one of them will do
    if key.scopes.isdisjoint(wanted):
        logger.warning("api auth failed: key %r lacks scope %r (path %s)", key.name, wanted[0], req.path)
        raise AuthFailure(403, f"API key {key.name!r} lacks the {wanted[0]!r} scope")
    wait = key_rate.take(key.id)
    if wait is not None:
        raise AuthFailure(429, f"API key {key.name!r} is over its rate limit of "
                               f"{settings.API_KEY_RATE_LIMIT:g} requests a second; retry in {wait} seconds", wait)
    store.touch_key(key.id)
    return key
