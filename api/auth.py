"""API keys for django-ninja: api.core.authenticate (scopes, throttling, the key's rate) as ninja's auth."""

from __future__ import annotations

from django.http import HttpRequest
from ninja.security.base import AuthBase

from .core import authenticate, request_from_django
from .snapshot import KeyInfo


class PayloadTooLarge(Exception):
    """The body is over API_MAX_BODY_BYTES; told only after the key checks out, like every other refusal."""


class ApiKey(AuthBase):
    """`Authorization: Bearer <secret>` (or OFREP's `X-API-Key: <secret>`) of a key with one of the scopes.

    A refusal is raised (api.core.AuthFailure) and answered by the API's one exception handler
    (api.management_api.problem), as 401 with WWW-Authenticate, 403 or 429 with Retry-After."""

    openapi_type = "http"
    openapi_scheme = "bearer"

    def __init__(self, *scopes: str) -> None:
        self.scopes = scopes
        super().__init__()

    def __call__(self, request: HttpRequest) -> KeyInfo:
        req = request_from_django(request)
        key = authenticate(req, self.scopes)
        if req.too_large:
            raise PayloadTooLarge
        return key
