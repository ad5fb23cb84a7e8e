"""The in-process pub/sub bus: sources publish readings, the store, things, rules and exporters subscribe.

Policy: publishing never waits. Each subscriber has its own bounded queue; when a subscriber falls behind and
its queue is full, the *oldest* queued item is dropped to make room and counted in
`roost_bus_dropped_total{subscriber=...}`. Sources are never stalled by a slow consumer. A subscriber that must
not lose anything (the store) gets a queue large enough for its worst stall and is watched through that counter.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class Subscription(Generic[T]):
    name: str
    queue: asyncio.Queue[T]
    dropped: int = 0
    dropped_reported: int = 0  # what the self-metric has counted so far
    delivered: int = 0

    async def get(self) -> T:
        return await self.queue.get()

    def get_nowait_many(self, limit: int) -> list[T]:
        """Up to `limit` queued items without waiting (for batching consumers)."""
        items = []
        while len(items) < limit:
            try:
                items.append(self.queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return items

    async def __aiter__(self) -> AsyncIterator[T]:
        while True:
            yield await self.queue.get()


@dataclass
class Bus(Generic[T]):
    """Fan-out of published items to every subscriber's bounded queue."""

    subscribers: list[Subscription[T]] = field(default_factory=list)
    published: int = 0

    def subscribe(self, name: str, maxsize: int = 10_000) -> Subscription[T]:
        sub: Subscription[T] = Subscription(name, asyncio.Queue(maxsize))
        self.subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription[T]) -> None:
        self.subscribers.remove(sub)

    def publish(self, item: T) -> None:
        self.published += 1
        for sub in self.subscribers:
            q = sub.queue
            if q.full():
                q.get_nowait()
                sub.dropped += 1
            q.put_nowait(item)
            sub.delivered += 1

    def publish_many(self, items: list[T]) -> None:
        for item in items:
            self.publish(item)
