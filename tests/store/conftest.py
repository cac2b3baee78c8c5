"""Fixtures of the store tests: one redis-server for the session, emptied per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_server import redis_server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a redis-server started for this test session (only if a test asks)."""
    with redis_server() as url:
        yield url


@pytest.fixture
def clean_redis_url(redis_url: str) -> str:
    """``redis_url``, with every key of the previous test flushed away first."""
    import redis  # here, so the other store tests run without redis-py installed

    client = redis.Redis.from_url(redis_url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_url
