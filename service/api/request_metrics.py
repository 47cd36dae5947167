"""The ASGI middleware feeding the request metrics of ``service/metrics.py``."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import METRICS


class MetricsMiddleware:
    """Times every HTTP request and counts it by method, route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            # A route may file a request under another name (a long poll, apart from the
            # polls answered at once) in request.state.metrics_route.
            route = scope.get("route")
            template = (
                scope.get("state", {}).get("metrics_route")
                or getattr(route, "path", None)
                or "unmatched"
            )
            METRICS.observe_request(
                scope["method"], template, status, time.perf_counter() - started
            )
