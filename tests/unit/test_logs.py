"""Bounded logging of bad input, and content kept out of INFO."""

from __future__ import annotations

import logging

import pytest

from parley import logs
from parley.errors import ProviderError
from parley.logs import BoundedLog, log_content


def test_a_flood_of_bad_input_is_logged_at_a_bounded_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test.bounded")
    bounded = BoundedLog(logger, per_s=1.0, burst=5)
    with caplog.at_level(logging.INFO, "test.bounded"):
        written = sum(bounded.info("client error bad_json: %d", i) for i in range(10_000))
    # The burst, and at most what a second (or so) of refill allows.
    assert 5 <= written <= 7
    assert len(caplog.records) == written
    bounded.tokens = 1  # a second later
    with caplog.at_level(logging.INFO, "test.bounded"):
        assert bounded.info("client error bad_json: last")
    assert "similar lines left out" in caplog.records[-1].getMessage()


def test_content_is_debug_unless_asked(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.content")
    try:
        # setup_logging replaces the root's handlers: caplog's goes back on.
        logs.setup_logging("test", "INFO")
        logging.getLogger().addHandler(caplog.handler)
        with caplog.at_level(logging.INFO, "test.content"):
            log_content(logger, "turn 1 words: %r", "my bank password is hunter2")
        assert not caplog.records
        logs.setup_logging("test", "INFO", content=True)
        logging.getLogger().addHandler(caplog.handler)
        with caplog.at_level(logging.INFO, "test.content"):
            log_content(logger, "turn 1 words: %r", "hello")
        assert [r.levelno for r in caplog.records] == [logging.INFO]
    finally:
        logs.setup_logging("test", "INFO")
        logging.getLogger().handlers[:] = []


def test_provider_errors_tell_clients_no_url_or_body() -> None:
    import asyncio

    import httpx

    from parley.httpclient import provider_errors

    async def fail() -> ProviderError:
        request = httpx.Request("POST", "https://internal.example:8443/v1/chat/completions")
        response = httpx.Response(500, request=request, text='{"error": "prompt was: ..."}')
        try:
            async with provider_errors("chat model", "https://internal.example:8443/v1"):
                response.raise_for_status()
        except ProviderError as exc:
            return exc
        raise AssertionError("no error")

    exc = asyncio.run(fail())
    assert "internal.example" in exc.message and "prompt was" in exc.message  # for the logs
    assert exc.public == "the chat model answered HTTP 500"
    assert ProviderError("provider_error", "xllamacpp: /models/x.gguf broke").public == (
        "the provider failed"
    )
