"""Redis's own failures, told apart from relay's: they become ``StorageUnavailable`` (503).

A request that needs the cluster's Redis (admission, a throttle, a console flash) and
finds it unreachable, timed out or out of pool connections is refused as "retry shortly";
any other exception is a bug and keeps its own type.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from relay.errors import StorageUnavailable

__all__ = ["redis_answers"]


@contextmanager
def redis_answers() -> Iterator[None]:
    """Run a Redis call; a ``RedisError`` leaves as ``StorageUnavailable``."""
    try:
        yield
    except Exception as exc:  # named below: only Redis's own failures become a 503
        from redis.exceptions import RedisError  # the 'cluster' extra, present here

        if not isinstance(exc, RedisError):
            raise
        raise StorageUnavailable(
            f"the cluster's Redis did not answer ({type(exc).__name__}); retry shortly"
        ) from None
