"""Group commit for Redis scripts: the calls made while one is in flight go out together.

Under load this turns N requests' Redis calls into one round trip carrying N items, which is
what keeps metering cheap on the hot path; alone, a call goes out at the next loop turn.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")


class Batcher(Generic[Item]):
    def __init__(self, send: Callable[[list[Item]], Awaitable[Any]], *, max_items: int = 512):
        self._send = send
        self._max_items = max_items
        self._pending: list[tuple[Item, asyncio.Future[Any]]] = []
        self._flushing: asyncio.Task[None] | None = None

    def submit(self, item: Item) -> "asyncio.Future[Any]":
        """Queue an item; the future resolves with the script's reply for its whole batch."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush())
        return future

    async def idle(self) -> None:
        """Wait until everything submitted so far has been sent."""
        while self._flushing is not None:
            await asyncio.shield(self._flushing)

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
