"""The errors a buffer user can cause or meet, each naming the thing at fault and the fix."""
from __future__ import annotations


class ShardUnavailableError(ConnectionError):
    """A Redis shard stayed unreachable for the whole retry window; the message names the shard."""


class ForeignValueError(ValueError):
    """A value under the buffer's keys is not an Arrow payload this buffer wrote; it was refused, never decoded."""


class TooFewEpisodes(ValueError):
    """A draw of n whole episodes (or prompts) from a buffer that holds fewer now: wait for the writers and draw again."""


class RateLimitTimeout(TimeoutError):
    """The rate limiter kept a sample or an insert blocked for longer than its timeout."""


class BufferSpecError(ValueError):
    """A buffer config or spec cannot describe a working buffer (wrong backend, missing URLs, ...)."""
