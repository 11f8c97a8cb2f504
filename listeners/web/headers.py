"""Response headers every page of ours carries (a pure ASGI middleware, so streaming responses keep streaming)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


class DefaultHeaders:
    """Adds ``headers`` to every HTTP response that does not set them itself; logs each request at DEBUG (the
    path may hold a Study UID, never a name)."""

    def __init__(self, app: ASGIApp, headers: Mapping[str, str], *, name: str) -> None:
        self.app = app
        self.headers = dict(headers)
        self.name = name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    if name not in headers:
                        headers[name] = value
                client = scope.get("client") or ("-", 0)
                log.debug("%s %s %s %s %d", self.name, client[0], scope["method"], scope["path"], message["status"])
            await send(message)

        await self.app(scope, receive, send_with_headers)
