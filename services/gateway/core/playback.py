"""Paces outgoing audio in real time, a little ahead of the listener, and
knows how much of each response the listener has heard."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

FRAME_MS = 40


@dataclass
class _Audio:
    response_id: str
    pcm: bytes


@dataclass
class _End:
    response_id: str


class Playback:
    """One per session. Audio is queued per response; flush() drops the rest."""

    def __init__(
        self,
        sample_rate: int,
        lead_ms: int,
        send_audio: Callable[[bytes], Awaitable[None]],
        on_first_frame: Callable[[str], Awaitable[None]],
        on_end: Callable[[str], Awaitable[None]],
    ) -> None:
        self.sample_rate = sample_rate
        self.lead_ms = lead_ms
        self._send_audio = send_audio
        self._on_first_frame = on_first_frame
        self._on_end = on_end
        self._queue: deque[_Audio | _End] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.response_id = ""  # the response being played
        self._started_at = 0.0  # monotonic time its first frame was sent
        self._sent_ms = 0.0
        self._ended = True
        self._paused_at = 0.0  # while deciding whether the user is interrupting
        self._resumed = asyncio.Event()
        self._resumed.set()
        # Called when a response's last frame has left, before the listener has
        # heard it: for protocols that announce the end of the stream itself.
        self.on_sent: Callable[[str], Awaitable[None]] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    @property
    def bytes_per_ms(self) -> float:
        return self.sample_rate * 2 / 1000

    def enqueue(self, response_id: str, pcm: bytes) -> None:
        if pcm:
            self._queue.append(_Audio(response_id, pcm))
            self._wake.set()

    def end(self, response_id: str) -> None:
        self._queue.append(_End(response_id))
        self._wake.set()

    def played_ms(self, response_id: str) -> float:
        """What the listener has heard of the response, by the pacing clock."""
        if response_id != self.response_id or not self._started_at:
            return 0.0
        now = self._paused_at or time.monotonic()
        return min(self._sent_ms, (now - self._started_at) * 1000)

    def playing(self) -> bool:
        """True while audio is queued or the listener's buffer still holds some."""
        if self._queue:
            return True
        if not self._started_at:
            return False
        return (time.monotonic() - self._started_at) * 1000 < self._sent_ms

    def pause(self) -> None:
        """Stop sending, keeping what is queued; the pacing clock stops too."""
        if not self._paused_at:
            self._paused_at = time.monotonic()
            self._resumed.clear()

    def resume(self) -> None:
        if self._paused_at:
            if self._started_at:
                self._started_at += time.monotonic() - self._paused_at
            self._paused_at = 0.0
            self._resumed.set()

    @property
    def paused(self) -> bool:
        return bool(self._paused_at)

    def flush(self) -> None:
        self.resume()
        self._queue.clear()
        self._started_at = 0.0
        self._sent_ms = 0.0
        self.response_id = ""

    async def _run(self) -> None:
        frame_bytes = int(FRAME_MS * self.bytes_per_ms)
        frame_bytes -= frame_bytes % 2
        while True:
            await self._resumed.wait()
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            item = self._queue[0]
            if isinstance(item, _End):
                self._queue.popleft()
                if self.on_sent is not None:
                    await self.on_sent(item.response_id)
                # The response has ended when the listener has heard it, not
                # when its last frame left: wait out the lead.
                if item.response_id == self.response_id and self._started_at:
                    left = self._sent_ms - (time.monotonic() - self._started_at) * 1000
                    if left > 0:
                        await asyncio.sleep(left / 1000)
                await self._on_end(item.response_id)
                continue
            if item.response_id != self.response_id:
                self.response_id = item.response_id
                self._started_at = 0.0
                self._sent_ms = 0.0
            if self._started_at:
                ahead = self._sent_ms - (time.monotonic() - self._started_at) * 1000
                if ahead > self.lead_ms:
                    await asyncio.sleep((ahead - self.lead_ms) / 1000)
                    continue
            frame, rest = item.pcm[:frame_bytes], item.pcm[frame_bytes:]
            if rest:
                item.pcm = rest
            else:
                self._queue.popleft()
            first = not self._started_at
            if first:
                self._started_at = time.monotonic()
            await self._send_audio(frame)
            self._sent_ms += len(frame) / self.bytes_per_ms
            if first:
                await self._on_first_frame(item.response_id)
