"""The pure parts of access control: tokens, the Host/Origin guard, dashboard sessions."""

from __future__ import annotations

import base64
from collections.abc import Iterable

import pytest

from clipper.http.auth import HostOriginGuard, Sessions, offered_token, split_host, token_matches
from clipper.http.server import Request


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (b"Bearer abc", b"abc"),
        (b"bearer   abc ", b"abc"),
        (basic("clipper", "abc"), b"abc"),
        (basic("", "abc"), b"abc"),
        (basic("anyone", "a:b:c"), b"a:b:c"),  # the password is all after the first colon
        (b"Basic !!!not-base64", None),
        (b"Digest abc", None),
        (b"", None),
        (None, None),
    ],
)
def test_offered_token(header: bytes | None, token: bytes | None) -> None:
    assert offered_token(header) == token


def test_token_matches_only_the_whole_token() -> None:
    assert token_matches(b"Bearer s3cret", b"s3cret")
    assert token_matches(basic("x", "s3cret"), b"s3cret")
    for wrong in (b"Bearer s3cre", b"Bearer s3cret2", b"Bearer ", None, basic("s3cret", "")):
        assert not token_matches(wrong, b"s3cret")


@pytest.mark.parametrize(
    ("value", "split"),
    [
        ("localhost:1338", ("localhost", "1338")),
        ("LOCALHOST", ("localhost", "")),
        ("[::1]:1337", ("::1", "1337")),
        ("127.0.0.1", ("127.0.0.1", "")),
    ],
)
def test_split_host(value: str, split: tuple[str, str]) -> None:
    assert split_host(value) == split


def request(host: str | None = None, origin: str | None = None) -> Request:
    return Request(
        "POST",
        "/admin/add_app",
        b"",
        [],
        host=host.encode() if host is not None else None,
        origin=origin.encode() if origin is not None else None,
    )


def loopback_guard(
    allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = ()
) -> HostOriginGuard:
    return HostOriginGuard(
        bind_host="127.0.0.1",
        loopback=True,
        scheme="http",
        allowed_hosts=allowed_hosts,
        allowed_origins=allowed_origins,
    )


def test_on_loopback_only_loopback_names_and_the_allowed_hosts_pass() -> None:
    guard = loopback_guard(allowed_hosts=["clipper.internal", ""])
    for host in ("localhost:1338", "127.0.0.1:1338", "[::1]:1338", "clipper.internal:80", None):
        assert guard(request(host)) is None, host
    for host in ("evil.test:1338", "127.0.0.2", "localhost.evil.test", "[::2]:1338"):
        refused = guard(request(host))
        assert refused is not None and refused[0] == 403 and "allowed_hosts" in refused[1]


def test_beyond_loopback_the_host_is_checked_only_when_names_are_set() -> None:
    open_ = HostOriginGuard(bind_host="0.0.0.0", loopback=False, scheme="http")
    assert open_(request("anything.example:1338")) is None
    named = HostOriginGuard(
        bind_host="0.0.0.0", loopback=False, scheme="http", allowed_hosts=["api.example"]
    )
    assert named(request("api.example:1338")) is None
    assert named(request("localhost:1338")) is None
    assert named(request("evil.test:1338")) is not None


def test_origins_pass_when_same_origin_or_allowed() -> None:
    guard = loopback_guard(allowed_origins=["https://app.example/", "http://localhost:3000"])
    assert guard(request("127.0.0.1:1338", "http://127.0.0.1:1338")) is None  # same origin
    assert guard(request("localhost:1338", "http://localhost:1338")) is None
    assert guard(request("localhost:1338", "https://app.example")) is None
    assert guard(request("localhost:1338", "http://localhost:3000")) is None
    for origin in ("http://evil.test", "null", "http://localhost:1339", "https://localhost:1338"):
        refused = guard(request("localhost:1338", origin))
        assert refused is not None and "allowed_origins" in refused[1], origin
    # An Origin naming the rebinding page's own name does not make it same-origin.
    assert guard(request("evil.test:1338", "http://evil.test:1338")) is not None


def test_verdicts_are_cached_and_the_cache_is_bounded() -> None:
    guard = loopback_guard()
    for n in range(3000):
        guard(request(f"host{n}.test"))
    assert len(guard._verdicts) <= 1024


def test_sessions_are_random_expire_and_are_bounded() -> None:
    now = [0.0]
    sessions = Sessions(lifetime_s=100, max_sessions=3, clock=lambda: now[0])
    sid = sessions.create()
    cookie = f"other=1; {Sessions.COOKIE}={sid}".encode()
    assert sessions.valid(cookie)
    assert not sessions.valid(f"{Sessions.COOKIE}=guess".encode())
    assert not sessions.valid(None)
    header = sessions.set_cookie(sid, secure=False).decode()
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Path=/dashboard" in header
    assert "Secure" in sessions.set_cookie(sid, secure=True).decode()
    now[0] = 101
    assert not sessions.valid(cookie)  # expired
    ids = [sessions.create() for _ in range(5)]
    assert len(sessions._expiry) <= 3
    assert sessions.valid(f"{Sessions.COOKIE}={ids[-1]}".encode())
    assert not sessions.valid(f"{Sessions.COOKIE}={ids[0]}".encode())  # the oldest went first
