"""Who may call what: tokens, dashboard sessions, app API keys, the Host/Origin guard.

Pure functions and small classes over request headers; the frontends decide
which applies where (docs/security.md has the whole model).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable

from .server import Request


def api_key_matches(headers: list[tuple[bytes, bytes]], digests: list[str]) -> bool:
    """Whether the request's ``X-Api-Key`` hashes to one of the app's key digests."""
    offered = b""
    for name, value in headers:
        if name == b"x-api-key":
            offered = value
    digest = hashlib.sha256(offered).hexdigest().encode()
    # Compare against every key, in constant time each, without stopping early.
    return sum(hmac.compare_digest(digest, d.encode()) for d in digests) > 0


def offered_token(authorization: bytes | None) -> bytes | None:
    """The secret in an ``Authorization`` header: ``Bearer T``, or HTTP Basic with T as
    the password (any user name: what clients that take ``user:T@host`` URLs send)."""
    if not authorization:
        return None
    scheme, _, rest = authorization.strip().partition(b" ")
    scheme = scheme.lower()
    if scheme == b"bearer":
        return rest.strip()
    if scheme == b"basic":
        try:
            decoded = base64.b64decode(rest.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        return decoded.partition(b":")[2]
    return None


def token_matches(authorization: bytes | None, token: bytes) -> bool:
    """Whether the header carries ``token``, compared in constant time."""
    offered = offered_token(authorization)
    return offered is not None and hmac.compare_digest(offered, token)


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def split_host(value: str) -> tuple[str, str]:
    """``host[:port]`` (IPv6 in brackets) -> (host without brackets, lower case; port)."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest.removeprefix(":")
    host, _, port = value.partition(":")
    return host, port


class HostOriginGuard:
    """Refuses requests a web page could have sent behind the operator's back.

    - ``Host``: on a loopback bind (or whenever ``allowed_hosts`` is set) it must
      name an allowed host: the loopback names, the bound address and
      ``allowed_hosts``. A DNS-rebinding page reaches 127.0.0.1 under its own
      name, which is refused.
    - ``Origin`` (browsers send it on cross-site requests, and on same-site
      ones that change state): the request's own origin (scheme and ``Host``,
      once ``Host`` passed) or one of ``allowed_origins``; ``null`` (a sandboxed
      frame, a file) never.

    Requests without these headers (curl, SDKs, Prometheus) pass. Verdicts are
    cached per (Host, Origin) pair, a bounded table: the query port's hot path
    pays one dict lookup.
    """

    def __init__(
        self,
        *,
        bind_host: str,
        loopback: bool,
        scheme: str,
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
    ) -> None:
        self.scheme = scheme
        extra = {h.strip().lower().strip("[]") for h in allowed_hosts if h.strip()}
        self.check_host = loopback or bool(extra)
        self.hosts = frozenset(
            extra
            | LOOPBACK_NAMES
            | ({bind_host.lower()} if bind_host not in ("", "0.0.0.0", "::") else set())
        )
        self.origins = frozenset(
            o.strip().rstrip("/").lower() for o in allowed_origins if o.strip()
        )
        self._verdicts: dict[tuple[bytes | None, bytes | None], tuple[int, str] | None] = {}

    def __call__(self, request: Request) -> tuple[int, str] | None:
        key = (request.host, request.origin)
        try:
            return self._verdicts[key]
        except KeyError:
            pass
        verdict = self.judge(request.host, request.origin)
        if len(self._verdicts) >= 1024:
            self._verdicts.clear()
        self._verdicts[key] = verdict
        return verdict

    def judge(self, host: bytes | None, origin: bytes | None) -> tuple[int, str] | None:
        host_text = host.decode("latin-1") if host is not None else None
        if host_text is not None and self.check_host:
            name, _ = split_host(host_text)
            if name not in self.hosts:
                return 403, (
                    f"Host {host_text!r} is not an allowed name for this server "
                    "(add it to the allowed_hosts setting)"
                )
        if origin is None:
            return None
        origin_text = origin.decode("latin-1").strip().rstrip("/").lower()
        if origin_text in self.origins:
            return None
        if host_text is not None and origin_text == f"{self.scheme}://{host_text.strip().lower()}":
            return None
        return 403, (
            f"cross-origin request from {origin_text!r} refused "
            "(add it to the allowed_origins setting to allow it)"
        )


class Sessions:
    """Dashboard sessions: random ids handed out as cookies, never the token itself."""

    COOKIE = "clipper_session"

    def __init__(
        self,
        lifetime_s: float = 12 * 3600,
        max_sessions: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lifetime_s = lifetime_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._expiry: dict[bytes, float] = {}

    def create(self) -> str:
        now = self.clock()
        if len(self._expiry) >= self.max_sessions:
            self._expiry = {k: t for k, t in self._expiry.items() if t > now}
            while len(self._expiry) >= self.max_sessions:  # the oldest go first
                del self._expiry[next(iter(self._expiry))]
        sid = secrets.token_urlsafe(32)
        self._expiry[sid.encode()] = now + self.lifetime_s
        return sid

    def valid(self, cookie_header: bytes | None) -> bool:
        if not cookie_header:
            return False
        for part in cookie_header.split(b";"):
            name, _, value = part.strip().partition(b"=")
            if name == self.COOKIE.encode():
                expiry = self._expiry.get(value)
                if expiry is not None and expiry > self.clock():
                    return True
        return False

    def set_cookie(self, sid: str, secure: bool) -> bytes:
        flags = "; Path=/dashboard; HttpOnly; SameSite=Strict"
        return f"{self.COOKIE}={sid}{flags}{'; Secure' if secure else ''}".encode()
