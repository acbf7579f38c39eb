"""Reaching one Redis server: a client with no hidden retries, and our bounded retry with backoff for writers."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tokenalign.buffers.errors import ShardUnavailableError

T = TypeVar("T")
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
"""Errors that a restarted or briefly unreachable server causes, worth retrying."""


PASSWORD_ENV = "TOKENALIGN_REDIS_PASSWORD"


def redis_password() -> str | None:
    """The password for external servers whose URL carries none: URLs are written to the run directory (with
    any password removed), the environment is not."""
    return os.environ.get(PASSWORD_ENV) or None


def public_url(url: str) -> str:
    """`url` with any password removed, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def connect(url: str, *, password: str | None) -> redis.Redis:
    """A client for `url` (a password in the URL wins over `password`) that fails fast, so our retry decides."""
    return redis.Redis.from_url(
        url,
        password=urlsplit(url).password or password,
        socket_timeout=30,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )


def with_retry(action: Callable[[], T], *, shard: str, timeout_s: float, what: str) -> T:
    """Run `action`, retrying transient errors with exponential backoff; after timeout_s raise naming the shard."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            return action()
        except TRANSIENT as err:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ShardUnavailableError(
                    f"{shard} stayed unreachable for {timeout_s:g} s while {what} ({err}); "
                    "check that the server is running (a restarted embedded shard reloads its data) "
                    "or fix buffer.redis_urls"
                ) from err
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 2.0)
