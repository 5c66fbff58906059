"""Tasks that never fail silently: a failure is logged and counted
(parley_errors_total{code="task_failed"}), and a long-lived loop that fails
is started again rather than left dead."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from parley.metrics import ERRORS

log = logging.getLogger("parley.tasks")

# A loop that fails at once again and again must not spin: it waits this long
# before each restart.
RESTART_DELAY_S = 1.0


def _report(task: asyncio.Task[Any], what: str, service: str) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        ERRORS.labels(service, "task_failed").inc()
        log.error("%s failed", what, exc_info=exc)


class TaskSet:
    """Short tasks of one kind, kept referenced until done, cancelled together."""

    def __init__(self, what: str, service: str = "gateway") -> None:
        self.what = what
        self.service = service
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda t: _report(t, self.what, self.service))
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait(self, timeout_s: float) -> None:
        """Let the tasks under way finish for up to timeout_s, then cancel the rest."""
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in late:
            task.cancel()

    def cancel_all(self) -> None:
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()


def supervise(
    what: str, loop_fn: Callable[[], Awaitable[None]], service: str = "gateway"
) -> asyncio.Task[None]:
    """Runs loop_fn for ever: when it raises, the failure is logged and
    counted and the loop starts again."""

    async def run() -> None:
        while True:
            try:
                await loop_fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                ERRORS.labels(service, "task_failed").inc()
                log.exception("%s failed; restarting it", what)
                await asyncio.sleep(RESTART_DELAY_S)

    return asyncio.create_task(run())
