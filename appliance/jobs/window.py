"""The stop signal of a scan that runs in an engagement: the appliance's shutdown, or the end of
the engagement's window, whichever comes first. The runner sees one event either way and stops the
process group as for a shutdown; the job then keeps what it found, as `partial` with the reason
`engagement_ended`.

Not covered: a scan of no engagement (it watches the shutdown event alone, as before).
"""

from __future__ import annotations

import asyncio


class WindowStop:
    """One scan's stop event; `window_ended` says the window, not the shutdown, set it."""

    def __init__(self, shutdown: asyncio.Event, end_in_seconds: float) -> None:
        self.event = asyncio.Event()
        self.window_ended = False
        self._shutdown = shutdown
        loop = asyncio.get_running_loop()
        self._relay = loop.create_task(self._follow())
        self._timer = loop.call_later(max(end_in_seconds, 0.0), self._end)

    async def _follow(self) -> None:
        await self._shutdown.wait()
        self.event.set()

    def _end(self) -> None:
        if not self._shutdown.is_set():
            self.window_ended = True
        self.event.set()

    def close(self) -> None:
        self._timer.cancel()
        self._relay.cancel()
