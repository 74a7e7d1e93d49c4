"""Resource update notices as a client receives them, in either protocol era.

Handshake era (2025-11-25): `resources/subscribe`, and the notices arrive through the client's
message handler (`ResourceNotices.handler`). 2026-07-28: a `subscriptions/listen` stream
(`Client.listen`), read by `ResourceNotices.drain`. Either way the test awaits `next(uri)`.
"""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

from mcp import Client
from mcp.client.subscriptions import Subscription
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.shared.subscriptions import ResourceUpdated


class ResourceNotices:
    """The uris of `notifications/resources/updated` a client received, in order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()

    async def handler(self, message: Any) -> None:
        """A `Client(message_handler=...)` for the handshake era."""
        notice = getattr(message, "root", message)
        if getattr(notice, "method", None) == "notifications/resources/updated":
            self.queue.put_nowait(notice.params.uri)

    async def drain(self, subscription: Subscription) -> None:
        """Read a listen stream (2026-07-28) until it ends; run it as a task."""
        async for event in subscription:
            if isinstance(event, ResourceUpdated):
                self.queue.put_nowait(event.uri)

    async def next(self, within: float = 10.0) -> str:
        return await asyncio.wait_for(self.queue.get(), within)


async def subscribe(client: Client, uri: str) -> None:
    """`resources/subscribe` (handshake era): the SDK marks it deprecated for the 2026 era only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await client.subscribe_resource(uri)


async def unsubscribe(client: Client, uri: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await client.unsubscribe_resource(uri)
