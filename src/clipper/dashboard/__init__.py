"""The dashboard (placeholder until implemented)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..frontend.http import Receive, Scope, Send, send_json


class Dashboard:
    """ASGI app for ``/dashboard``."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 501, {"error": "the dashboard is not built yet"})
