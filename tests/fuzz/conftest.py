"""One scripted stack for every door's fuzzing (starting one per module would
cost more than the fuzzing itself), and the speech of the turn each module
checks the stack still answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.e2e.harness import Stack, start_scripted_stack
from tests.support.speech import synthesize_speech

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="session")
async def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    # Connections the fuzzing drops without session_end leave their sessions
    # waiting to be resumed; a short grace lets them go before each module's
    # task count is compared (30 s and 60 s by default).
    env = {"PARLEY_GATEWAY__RESUME_GRACE_S": "1", "PARLEY_GATEWAY__ECHOKIT__RECONNECT_GRACE_S": "1"}
    async with start_scripted_stack(tmp_path_factory.mktemp("fuzz"), env=env) as (stack, _stub):
        yield stack


@pytest.fixture(scope="session")
async def question() -> bytes:
    return await asyncio.to_thread(synthesize_speech, QUESTION)
