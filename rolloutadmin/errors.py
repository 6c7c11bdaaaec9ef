"""Error pages that say what to do next. dashboard.js shows their `data-error-message` text next to the
control whose request failed, so these words are also what a refused htmx request says."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

CSRF_MESSAGE = ("The page's security token is out of date (you logged in or out elsewhere, or the page is "
                "old): reload the page, then retry. Nothing was changed.")


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """settings.CSRF_FAILURE_VIEW: Django's own page would be swapped in as a bare, unstyled message."""
    return render(request, "403_csrf.html", {"message": CSRF_MESSAGE}, status=403)
