"""The report channel of :class:`~lightning_hpt.executors.ray.RayExecutor`: a Ray actor between trials and the driver.

A trial's reporter asks the actor; the driver takes the question from the actor, calls the search's
reporter and sends the decision back. No port has to be opened between the machines.
"""

from __future__ import annotations

import time
from typing import Any

from lightning_hpt.lightning.monitor import wire_value

__all__ = ["RayReporter", "broker_class"]


def broker_class() -> type:
    """The report broker, defined here so that Ray pickles it by value: its actor imports no torch or Lightning."""
    import asyncio
    import itertools

    class ReportBroker:
        """A Ray actor between trials and the driver: holds each report until the driver's decision comes."""

        def __init__(self) -> None:
            self._queue: asyncio.Queue = asyncio.Queue()
            self._waiting: dict[int, asyncio.Future] = {}
            self._ids = itertools.count()
            self._starts: dict[str, int] = {}

        async def start(self, key: str) -> int:
            """How many times the trial's task has started, this one included (more than 1: Ray reran it)."""
            self._starts[key] = self._starts.get(key, 0) + 1
            return self._starts[key]

        async def post(self, key: str, values: list[tuple[int, float]]) -> None:
            """Reports whose trial does not wait for a decision (no pruner: the answer is always "go on")."""
            for step, value in values:
                await self._queue.put((None, key, step, value))

        async def report(self, key: str, step: int, value: float) -> bool:
            rid = next(self._ids)
            self._waiting[rid] = asyncio.get_running_loop().create_future()
            await self._queue.put((rid, key, step, value))
            return await self._waiting[rid]

        async def take(self, timeout: float) -> list[tuple[int | None, str, int, float]]:
            """The reports waiting for a decision; waits up to ``timeout`` seconds for the first."""
            try:
                first = await asyncio.wait_for(self._queue.get(), timeout)
            except asyncio.TimeoutError:
                return []
            out = [first]
            while not self._queue.empty():
                out.append(self._queue.get_nowait())
            return out

        async def decide(self, rid: int, stop: bool) -> None:
            future = self._waiting.pop(rid, None)
            if future is not None and not future.done():
                future.set_result(stop)

    return ReportBroker


class RayReporter:
    """The trial's reporter inside a Ray task: asks the broker actor and waits for the driver's answer.

    When the driver's reporter never answers "stop" (``answers`` False: the search has no pruner),
    reports are posted without waiting, at most one message every ``every`` seconds: the trial does
    not stall on a round trip through the actor and the driver each epoch, and short epochs do not
    keep the actor busy (each message costs a few milliseconds of CPU that trials would lose).
    Values held back go with the next message, and the trial's outcome carries every value, so
    none is lost when the trial ends first.
    """

    def __init__(self, broker: Any, key: str, answers: bool = True, every: float = 1.0) -> None:
        self.broker, self.key, self.answers, self.every = broker, key, answers, every
        self._held: list[tuple[int, float]] = []
        self._posted = time.monotonic()

    def report(self, step: int, value: float | tuple[float, ...]) -> bool:
        if not self.answers:
            self._held.append((int(step), wire_value(value)))
            if time.monotonic() - self._posted >= self.every:
                self.broker.post.remote(self.key, self._held)
                self._held, self._posted = [], time.monotonic()
            return False
        import ray

        return bool(ray.get(self.broker.report.remote(self.key, int(step), wire_value(value))))
