"""Prometheus metrics (placeholder until implemented)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .frontend.http import Receive, Scope, Send, send_bytes
from .selection.processor import Prediction


class Metrics:
    """Observes requests; serves ``GET /metrics``."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def observe_predictions(
        self, app: str, latency_s: float, predictions: list[Prediction]
    ) -> None:
        pass

    def observe_overload(self, app: str) -> None:
        pass

    def observe_feedback(self, app: str, accepted: bool) -> None:
        pass

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, b"", [(b"content-type", b"text/plain")])
