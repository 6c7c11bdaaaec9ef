"""Throttling of failed API-key attempts, per client address.

One rule for the Django views and the lean WSGI path alike (both authenticate through
api.core.authenticate): a client address that sends more than API_AUTH_FAILURE_LIMIT different unknown or
revoked keys within API_AUTH_FAILURE_WINDOW seconds is answered 429 with `Retry-After` for
API_AUTH_BLOCK_SECONDS on every further unknown key.

Different keys: guessing means trying new keys, while a service left with a stale (revoked, mistyped) key
repeats the same one; that one is counted once per window and keeps getting its plain 401, which tells
its operator what is wrong, instead of escalating to 429 while it retries.

Only failures touch the counter: a request with a valid key never reads or writes it, so the evaluation
hot path costs nothing more, and a valid key is never throttled, whoever failed from whichever address
(the same address included: guessing a 32-byte secret is hopeless, the throttle is there to make probing
slow and visible, not to lock out a service that holds a good key).

The counters live in Django's cache: Redis when REDIS_URL is set (shared by every process), otherwise the
process's local memory (each gunicorn worker then counts on its own). When the cache fails, throttling is
skipped for a few seconds (fail open, logged): a Redis outage must not turn into an API outage.

The client address is REMOTE_ADDR. Behind a reverse proxy REMOTE_ADDR is the proxy's: set
TRUSTED_PROXY_COUNT to the number of proxies in front of the app that append to X-Forwarded-For; the
client is then the address the outermost of them saw. With it unset, X-Forwarded-For is ignored (a client
could write anything there).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger("rolloutadmin.api")

_COUNT_KEY = "api-auth-fail:{}"
_BLOCK_KEY = "api-auth-block:{}"
_SEEN_KEY = "api-auth-seen:{}:{}"
CACHE_RETRY_SECONDS = 5.0
_cache_retry_at = 0.0


def client_address(remote_addr: str, forwarded_for: str = "") -> str:
    """The client's address: REMOTE_ADDR, or with TRUSTED_PROXY_COUNT = n > 0 the n-th address from the
    right of X-Forwarded-For (each trusted proxy appends the address it saw), if that is an IP address."""
    proxies = int(getattr(settings, "TRUSTED_PROXY_COUNT", 0) or 0)
    if proxies > 0 and forwarded_for:
        forwarded = [part.strip() for part in forwarded_for.split(",") if part.strip()]
        if len(forwarded) >= proxies:
            try:
                return str(ipaddress.ip_address(forwarded[-proxies]))
            except ValueError:
                pass
    return remote_addr


def axes_client_ip(request: Any) -> str | None:
    """AXES_CLIENT_IP_CALLABLE: django-axes records the same address as the API throttle."""
    return client_address(request.META.get("REMOTE_ADDR") or "", request.META.get("HTTP_X_FORWARDED_FOR") or "") or None


def _limits() -> tuple[int, int, int]:
    return (int(getattr(settings, "API_AUTH_FAILURE_LIMIT", 20)),
            int(getattr(settings, "API_AUTH_FAILURE_WINDOW", 60)),
            int(getattr(settings, "API_AUTH_BLOCK_SECONDS", 60)))


def record_failure(client: str, digest: str) -> int | None:
    """Count a failed key (its SHA-256 digest) from this client, once per window for each different key;
    the seconds to wait (for Retry-After) when the client is blocked.

    Called only after a key was found unknown or revoked. A blocked client costs one cache read; a key
    seen in this window, two (read the block, mark the key); a new one, a few more (create the counter
    with its time to live, increment it).
    """
    global _cache_retry_at
    limit, window, block = _limits()
    if limit <= 0 or not client:
        return None
    now = time.time()
    if now < _cache_retry_at:
        return None
    try:
        until = cache.get(_BLOCK_KEY.format(client))
        if until is not None:
            return max(1, math.ceil(float(until) - now))
        if not cache.add(_SEEN_KEY.format(client, digest[:32]), 1, timeout=window):
            return None  # the same wrong key again: already counted in this window
        count_key = _COUNT_KEY.format(client)
        cache.add(count_key, 0, timeout=window)  # the window starts at the first failure
        try:
            count = cache.incr(count_key)  # atomic: INCR on Redis, under a lock in local memory
        except ValueError:  # the counter expired between add() and incr()
            cache.add(count_key, 1, timeout=window)
            count = 1
        if count <= limit:
            return None
        # Over the limit: block for `block` seconds from now. add() keeps the first of racing writers.
        cache.add(_BLOCK_KEY.format(client), now + block, timeout=block)
        cache.delete(count_key)  # after the block, a fresh window
        logger.warning("api auth: %s different failed API keys from %s within %ss: refusing its unknown keys "
                       "for %ss",
                       count, client, window, block)
        return block
    except Exception:  # any cache failure: skip throttling for a while rather than fail the request
        _cache_retry_at = now + CACHE_RETRY_SECONDS
        logger.warning("api auth: the cache is unavailable, API-key throttling is off for %ss",
                       CACHE_RETRY_SECONDS, exc_info=True)
        return None


def reset(client: str) -> None:
    """Forget a client's failures and lift its block (tests; an operator unblocking an address)."""
    cache.delete_many([_COUNT_KEY.format(client), _BLOCK_KEY.format(client)])


# --- per-key rate limit ----------------------------------------------------------------------------------


class KeyRateLimit:
    """A token bucket per API key, in this process: API_KEY_RATE_LIMIT requests a second (0: no limit), with
    bursts of up to API_KEY_RATE_BURST (default: two seconds' worth). Over it, the caller gets 429 with
    the whole seconds until its next token in Retry-After (OFREP providers pause that long).

    Per process, on purpose: a count shared through Redis would cost a round trip on every evaluation,
    more than the evaluation itself. A node with W web processes therefore lets a key through at up to
    W times the rate (the kernel spreads a client's connections over the processes); set the rate as the
    node's limit divided by GUNICORN_WORKERS (deploy/README.md).
    """

    def __init__(self) -> None:
        self._buckets: dict[int, tuple[float, float]] = {}  # key id -> (tokens, monotonic time)
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._buckets.clear()

    def take(self, key_id: int, now: float | None = None) -> int | None:
        """None if the request may go, else the integer seconds to wait."""
        rate = float(getattr(settings, "API_KEY_RATE_LIMIT", 0) or 0)
        if rate <= 0:
            return None
        burst = float(getattr(settings, "API_KEY_RATE_BURST", 0) or 0) or max(1.0, 2 * rate)
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(key_id, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            if tokens >= 1:
                self._buckets[key_id] = (tokens - 1, now)
                return None
            self._buckets[key_id] = (tokens, now)
            return max(1, math.ceil((1 - tokens) / rate))


key_rate = KeyRateLimit()
