"""The devices' speech: the bundled Piper voice and espeak-ng's voices, so the
recognizer and the VAD hear more than one speaker (espeak's formant speech
is harder on both than Piper's, which is what the test suite speaks)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from parley.speech import synthesize_speech
from parley.wavio import WavError, last_voiced_ms, read_wav

RATE = 16000
PIPER = "piper"
ESPEAK_PREFIX = "espeak:"
DEFAULT_VOICES = ("piper", "espeak:en-us", "espeak:en-gb")
# espeak-ng's default 175 words a minute sounds hurried next to Piper.
ESPEAK_WPM = "160"


class VoiceError(RuntimeError):
    """A voice that cannot speak here; the message says how to get it."""


@dataclass(frozen=True)
class Clip:
    """One question spoken by one voice: PCM16 mono at 16 kHz and where its
    speech truly ends (the end of the last voiced 10 ms)."""

    voice: str
    text: str
    pcm: bytes
    true_end_ms: float


def check_voice(voice: str) -> None:
    if voice == PIPER:
        return
    if not voice.startswith(ESPEAK_PREFIX) or not voice[len(ESPEAK_PREFIX) :]:
        raise VoiceError(f"unknown voice {voice!r}: use 'piper' or 'espeak:<voice>' (en-us...)")
    if shutil.which("espeak-ng") is None:
        raise VoiceError(
            f"voice {voice!r} needs espeak-ng: `make espeak` (or apt-get install espeak-ng)"
        )


def espeak_speech(text: str, voice: str, rate: int = RATE) -> bytes:
    """PCM16 mono at `rate` of espeak-ng speaking `text` with `voice`
    (en-us, en-gb, en-us+f3...). Blocking: run it before the load starts."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise VoiceError("espeak-ng is not installed: `make espeak` (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory(prefix="parley-espeak-") as folder:
        path = Path(folder) / "speech.wav"
        done = subprocess.run(
            [binary, "-v", voice, "-s", ESPEAK_WPM, "-w", str(path), text],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0 or not path.exists():
            raise VoiceError(
                f"espeak-ng -v {voice} failed: {done.stderr.strip() or done.returncode}"
            )
        try:
            return read_wav(path, rate)
        except WavError as exc:
            raise VoiceError(f"espeak-ng -v {voice} wrote no usable WAV: {exc}") from None


def speak(voice: str, text: str) -> Clip:
    check_voice(voice)
    if voice == PIPER:
        pcm = synthesize_speech(text, RATE)
    else:
        pcm = espeak_speech(text, voice[len(ESPEAK_PREFIX) :])
    end = last_voiced_ms(pcm, RATE)
    if end <= 0:
        raise VoiceError(f"{voice} produced no audible speech for {text!r}")
    return Clip(voice, text, pcm, end)


def prepare(pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Clip]:
    """Every (voice, text) spoken once, before any device starts: synthesis
    is CPU work the stack would otherwise compete with. Blocking."""
    return {pair: speak(*pair) for pair in sorted(set(pairs))}
