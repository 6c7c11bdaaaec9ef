"""The one Content-Security-Policy of the project.

The dashboard runs no inline script or style, so it always sends this policy (dashboard.access's
decorators, through csp_override); the outage page sends it too (rolloutadmin.outage), and CSP_STRICT=1
makes it settings.SECURE_CSP, sent on every page, the admin included. Plain data: settings import it.
"""

STRICT_CSP: dict[str, list[str]] = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'none'"],
    "frame-ancestors": ["'none'"],
    "form-action": ["'self'"],
}
