import numpy as np
import pytest

from parley.cli.bench import percentile
from parley.cli.wavio import last_voiced_ms, read_wav, write_wav
from tests.support.speech import synthesize_speech, with_silence


def test_wav_round_trip_downmix_and_resample(tmp_path) -> None:
    mono = (np.sin(np.arange(44100) / 10) * 8000).astype("<i2")
    path = tmp_path / "a.wav"
    write_wav(path, mono.tobytes(), 44100)
    pcm = read_wav(path, 16000)
    assert len(pcm) // 2 == pytest.approx(16000, abs=2)

    import wave

    stereo = np.stack([mono, mono], axis=1).reshape(-1)
    with wave.open(str(tmp_path / "s.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(stereo.tobytes())
    assert read_wav(tmp_path / "s.wav") == mono[:].tobytes()


def test_true_end_of_speech_is_found_in_padded_speech() -> None:
    speech = synthesize_speech("Hello there, how are you?")
    speech_ms = len(speech) / 32
    padded = with_silence(speech, 16000, 500, 1500)
    end = last_voiced_ms(padded)
    assert 500 + speech_ms - 300 < end <= 500 + speech_ms + 10


def test_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == pytest.approx(50.5)
    assert percentile(values, 0.95) == pytest.approx(95.05)
