"""What the fuzzing of tests/fuzz found, kept fixed without a stack."""

from __future__ import annotations

import math

import pytest

from parley.placement import PlacementServer
from parley.v1 import placement_pb2
from services.asr.service import AudioRing
from services.gateway.protocols.realtime.config import RealtimeConfig
from services.gateway.protocols.realtime.events import RealtimeClientError
from services.tts.service import MAX_PIECE_CHARS, pieces


@pytest.mark.parametrize("start, end", [(math.inf, math.inf), (math.nan, 10.0), (0.0, -math.inf)])
def test_audio_ring_slice_between_non_times_is_empty(start: float, end: float) -> None:
    # A VadEvent off the bus with an infinite start_ms raised OverflowError.
    ring = AudioRing(1000)
    ring.append(0.0, bytes(3200))
    assert ring.slice(start, end) == b""
    assert len(ring.slice(0.0, 50.0)) == 1600


@pytest.mark.parametrize("session_id", ["", "a b", "a.b", "a*", ">", "x" * 129, "\u00e9"])
async def test_placement_refuses_a_session_id_that_is_no_subject_token(session_id: str) -> None:
    # A forged PlaceRequest with one made every stage log BadSubjectError.
    def factory(*_args: object) -> None:
        raise AssertionError("no session may be opened")

    server = PlacementServer(None, "vad", "vad-1", factory, 1.0, 60.0)  # type: ignore[arg-type]
    reply = await server._on_place(placement_pb2.PlaceRequest(session_id=session_id))
    assert not reply.ok
    assert reply.error == "bad session id"


def test_tts_speaks_a_sentence_of_any_length_in_bounded_pieces() -> None:
    # A forged 100,000-character sentence took the tts process to the OOM killer.
    assert pieces("Hello there.") == ["Hello there."]
    assert pieces("") == [""]
    unbroken = pieces("x" * 100_000)
    assert "".join(unbroken) == "x" * 100_000
    words = "word " * 20_000
    cut = pieces(words)
    assert " ".join(cut).strip() == words.strip()
    assert all(len(p) <= MAX_PIECE_CHARS for p in unbroken + cut)


@pytest.mark.parametrize("modalities", [[["audio"]], [{"a": 1}], ["audio", None]])
def test_realtime_modalities_of_anything_but_strings_are_invalid(modalities: list) -> None:
    # A list inside modalities raised TypeError (unhashable) and closed the connection.
    with pytest.raises(RealtimeClientError):
        RealtimeConfig().updated({"modalities": modalities})


def test_a_malformed_http_request_is_one_bounded_line_not_a_traceback() -> None:
    # aiohttp logged each unparsable OTA request as an ERROR with a traceback.
    import logging

    from aiohttp.http_exceptions import BadHttpMessage

    from services.gateway.protocols.xiaozhi.ota import _MalformedRequests

    try:
        raise BadHttpMessage("Invalid character in chunk size")
    except BadHttpMessage:
        import sys

        record = logging.LogRecord(
            "x", logging.ERROR, "", 0, "Error handling request", (), sys.exc_info()
        )
    quiet = _MalformedRequests()
    assert quiet.filter(record) is False
    other = logging.LogRecord("x", logging.ERROR, "", 0, "something else", (), None)
    assert quiet.filter(other) is True
