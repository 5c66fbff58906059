"""The one settings schema: what clients may send, and the settings in force."""

from __future__ import annotations

import pytest

from parley import session_settings as schema
from parley.config import ParleySettings, SessionDefaults
from parley.session import merge_settings
from parley.v1 import common_pb2


def test_defaults_come_from_the_configuration() -> None:
    config = ParleySettings.model_construct(
        session=SessionDefaults(barge_in=False, backchannels=["okay"], turn_detector="transcript")
    )
    s = schema.resolve(common_pb2.Settings(), config)
    assert s.barge_in is False and s.backchannels == ("okay",)
    assert s.turn_detector is schema.TurnDetector.TRANSCRIPT
    assert s.silence_ms == config.vad.silence_ms


def test_a_client_setting_wins_and_everything_is_echoed() -> None:
    sent = schema.from_json({"silence_ms": 700, "backchannels": ["mm-hmm", "yeah"]})
    s = schema.resolve(sent, ParleySettings.model_construct())
    assert s.silence_ms == 700 and s.backchannels == ("mm-hmm", "yeah")
    echoed = schema.to_json(schema.to_proto(s))
    assert set(echoed) == set(schema.KEYS)
    assert echoed["backchannels"] == ["mm-hmm", "yeah"] and echoed["turn_detector"] == "silence"


def test_backchannels_as_a_comma_separated_string_and_cleared_by_an_empty_list() -> None:
    base = schema.from_json({"backchannels": "mm-hmm, yeah"})
    assert list(base.backchannels.words) == ["mm-hmm", "yeah"]
    merge_settings(base, schema.from_json({"backchannels": []}))
    assert base.HasField("backchannels") and not base.backchannels.words


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"silence_ms": 10}, "silence_ms"),
        ({"barge_in": 1}, "barge_in"),
        ({"vad_threshold": True}, "vad_threshold"),
        ({"turn_detector": "psychic"}, "turn_detector"),
        ({"backchannels": [1, 2]}, "backchannels"),
        ({"backchannels": ["x" * 41]}, "backchannels"),
        ({"system_prompt": "x" * 8001}, "system_prompt"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_settings_are_named(raw: dict[str, object], named: str) -> None:
    with pytest.raises(schema.SettingsError, match=named):
        schema.from_json(raw)


def test_proto_settings_are_checked_the_same_way() -> None:
    with pytest.raises(schema.SettingsError, match="silence_ms"):
        schema.check(common_pb2.Settings(silence_ms=10))
    assert schema.check(common_pb2.Settings(silence_ms=600)).silence_ms == 600
