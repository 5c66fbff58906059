"""The hello WAV an EchoKit board gets on a fresh connection.

The board stores the bytes it receives (the whole WAV file, header included,
as the real server sends them) and plays them as 16 kHz PCM16 mono when a chat
starts. A configured file in that format goes out verbatim; another rate or
channel count is converted. Without a file, `hello_text` is spoken once by the
bundled Piper voice (the synthesizer the CLI and tests share) and cached under
var/, so only the very first connection of a fresh checkout waits for it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import wave
from pathlib import Path

from parley.config import EchoKitSettings
from parley.wavio import read_wav, wav_bytes

log = logging.getLogger("parley.gateway.echokit")

SAMPLE_RATE = 16000
CACHE_DIR = Path("var")


def load_hello(settings: EchoKitSettings) -> bytes:
    """The WAV bytes to send; b"" (an empty hello) when none can be had.
    Blocking: run it in a thread."""
    try:
        if settings.hello_wav:
            return _device_wav(Path(settings.hello_wav))
        return _synthesized(settings.hello_text)
    except Exception as exc:  # a bad file or a missing voice must not refuse boards
        log.error("echokit hello unavailable, boards get an empty one: %s", exc)
        return b""


def _device_wav(path: Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        native = (w.getsampwidth(), w.getnchannels(), w.getframerate()) == (2, 1, SAMPLE_RATE)
    if native:
        return path.read_bytes()
    log.info("echokit hello %s converted to 16 kHz mono PCM16", path)
    return wav_bytes(read_wav(path, SAMPLE_RATE), SAMPLE_RATE)


def _synthesized(text: str) -> bytes:
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    cache = CACHE_DIR / f"echokit-hello-{digest}.wav"
    if cache.is_file():
        return cache.read_bytes()
    # Imported here: the gateway loads the Piper voice only when it must.
    from parley.speech import synthesize_speech

    pcm = synthesize_speech(text, SAMPLE_RATE, steady=True)
    if not pcm:
        raise ValueError(f"the voice produced no audio for {text!r}")
    data = wav_bytes(pcm, SAMPLE_RATE)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # Atomic, so two gateways starting together never read half a file.
    fd, tmp = tempfile.mkstemp(dir=CACHE_DIR, suffix=".wav.tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, cache)
    log.info("echokit hello synthesized to %s", cache)
    return data
