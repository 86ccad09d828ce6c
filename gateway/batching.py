"""Group commit for Redis scripts: the calls made while one is in flight go out together.

Under load this turns N requests' Redis calls into one round trip carrying N items, which is
what keeps metering cheap on the hot path. An urgent item goes out at the next loop turn; a
lingering one waits up to `linger` seconds for an urgent one to ride along with.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")


class Batcher(Generic[Item]):
    def __init__(
        self,
        send: Callable[[list[Item]], Awaitable[Any]],
        *,
        linger: float,
        max_items: int = 512,
    ) -> None:
        self._send = send
        self._linger = linger
        self._max_items = max_items
        self._pending: list[tuple[Item, asyncio.Future[Any]]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def submit(self, item: Item, *, linger: bool = False) -> "asyncio.Future[Any]":
        """Queue an item; the future resolves with the script's reply for its whole batch."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((item, future))
        if not linger:
            self._start()
        elif self._flushing is None and self._timer is None:
            self._timer = loop.call_later(self._linger, self._start)
        return future

    async def idle(self) -> None:
        """Send everything submitted so far and wait until it is sent."""
        self._start()
        while self._flushing is not None:
            await asyncio.shield(self._flushing)

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flushing is None and self._pending:
            self._flushing = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_items]
                del self._pending[: self._max_items]
                try:
                    reply = await self._send([item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(reply)
        finally:
            self._flushing = None
