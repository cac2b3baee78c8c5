"""Who may call what: app API keys (the query port)."""

from __future__ import annotations

import hashlib
import hmac


def api_key_matches(headers: list[tuple[bytes, bytes]], digests: list[str]) -> bool:
    """Whether the request's ``X-Api-Key`` hashes to one of the app's key digests."""
    offered = b""
    for name, value in headers:
        if name == b"x-api-key":
            offered = value
    digest = hashlib.sha256(offered).hexdigest().encode()
    # Compare against every key, in constant time each, without stopping early.
    return sum(hmac.compare_digest(digest, d.encode()) for d in digests) > 0
