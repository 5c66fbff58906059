import pytest

from parley.text import heard_text
from services.gateway.core.audio_check import check_pcm16
from services.gateway.core.errors import ClientError
from services.gateway.core.settings import settings_from_json
from services.gateway.core.timeline import ArrivalClock


def test_heard_text_whole_sentences_then_a_share() -> None:
    sentences = ["Hello there.", "The sky is blue today."]
    assert heard_text(sentences, [1000, 2000], 0) == ""
    assert heard_text(sentences, [1000, 2000], 1000) == "Hello there."
    assert heard_text(sentences, [1000, 2000], 2000) == "Hello there. The sky"
    assert heard_text(sentences, [1000, 2000], 5000) == "Hello there. The sky is blue today."


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x01\x02\x03", "bad_audio"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "bad_audio"),
        (b'{"type": "ping"}', "bad_audio"),
        (b"", "bad_audio"),
        (bytes(70000), "frame_too_large"),
    ],
)
def test_non_pcm_frames_are_refused(frame: bytes, code: str) -> None:
    with pytest.raises(ClientError) as err:
        check_pcm16(frame, 64000)
    assert err.value.code == code


def test_pcm_frames_pass() -> None:
    check_pcm16(bytes(640), 64000)


def test_settings_are_validated_by_key() -> None:
    s = settings_from_json({"silence_ms": 700, "barge_in": False, "vad_threshold": 0.6})
    assert s.silence_ms == 700 and s.barge_in is False and s.vad_threshold == pytest.approx(0.6)
    with pytest.raises(ClientError, match="settings.silence_ms"):
        settings_from_json({"silence_ms": 50})
    with pytest.raises(ClientError, match="unknown setting: colour"):
        settings_from_json({"colour": "red"})
    with pytest.raises(ClientError, match="settings.barge_in"):
        settings_from_json({"barge_in": "yes"})


def test_arrival_clock_maps_offsets_to_arrival() -> None:
    clock = ArrivalClock()
    for i in range(1, 11):
        clock.record(i * 20.0, at=100.0 + i * 0.02)
    assert clock.time_of(55.0) == pytest.approx(100.06)
    assert clock.time_of(1000.0) == pytest.approx(100.2)
