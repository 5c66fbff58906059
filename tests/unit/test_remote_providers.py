"""The OpenAI-compatible chat provider against a real HTTP stand-in server."""

from __future__ import annotations

import asyncio
import socket

import pytest

from parley.errors import ProviderError
from services.llm.providers import make_chat_model
from tests.support.openai_stub import OpenAIStub

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def test_chat_streams_deltas_in_order() -> None:
    async with OpenAIStub(chat_script=["The sky", " is", " blue."]) as stub:
        model = make_chat_model("openai", base_url=stub.base_url, model="m", api_key="k")
        pieces = [d async for d in model.stream(MESSAGES, max_tokens=20, temperature=0.1)]
        await model.aclose()
    assert pieces == ["The sky", " is", " blue."]
    request = stub.requests[0]["json"]
    assert request["stream"] is True and request["messages"] == MESSAGES
    assert request["max_tokens"] == 20
    assert stub.requests[0]["auth"] == "Bearer k"


async def test_closing_the_chat_stream_closes_the_http_stream() -> None:
    async with OpenAIStub(chat_script=[f"word{i} " for i in range(200)], chat_delay_s=0.02) as stub:
        model = make_chat_model("openai", base_url=stub.base_url, model="m")
        stream = model.stream(MESSAGES, max_tokens=500, temperature=0.1)
        got = [await anext(stream) for _ in range(3)]
        await stream.aclose()
        await asyncio.wait_for(stub.chat_disconnected.wait(), 5)
        assert not stub.chat_finished.is_set()
        await model.aclose()
    assert got == ["word0 ", "word1 ", "word2 "]


@pytest.mark.parametrize("status", [500, 429])
async def test_chat_http_errors_are_provider_errors(status: int) -> None:
    async with OpenAIStub(fail_status=status) as stub:
        model = make_chat_model("openai", base_url=stub.base_url, model="m")
        with pytest.raises(ProviderError) as err:
            async for _ in model.stream(MESSAGES, max_tokens=5, temperature=0):
                pass
        await model.aclose()
    assert err.value.code == "provider_error"
    assert str(status) in err.value.message


async def test_unreachable_chat_model_says_so() -> None:
    url = closed_port_url()
    model = make_chat_model("openai", base_url=url, model="m")
    with pytest.raises(ProviderError) as err:
        async for _ in model.stream(MESSAGES, max_tokens=5, temperature=0):
            pass
    assert err.value.code == "provider_unavailable"


async def test_hung_provider_times_out() -> None:
    async with OpenAIStub(hang=True) as stub:
        model = make_chat_model("openai", base_url=stub.base_url, model="m", timeout_s=0.5)
        with pytest.raises(ProviderError) as err:
            async for _ in model.stream(MESSAGES, max_tokens=5, temperature=0):
                pass
        await model.aclose()
    assert err.value.code == "timeout"


async def test_streamed_tool_call_deltas_are_assembled() -> None:
    from services.llm.providers.base import ToolCall
    from tests.support.openai_stub import tool_call_deltas

    script = [
        "Let me check. ",
        *tool_call_deltas(
            [
                ("call_a", "get_current_time", '{"timezone": "Asia/Tokyo"}'),
                ("call_b", "get_current_time", '{"timezone": "Europe/Paris"}'),
            ]
        ),
    ]
    tools = [{"type": "function", "function": {"name": "get_current_time", "parameters": {}}}]
    async with OpenAIStub(chat_script=script) as stub:
        model = make_chat_model("openai", base_url=stub.base_url, model="m")
        items = [i async for i in model.stream(MESSAGES, max_tokens=50, temperature=0, tools=tools)]
        await model.aclose()
    assert items[0] == "Let me check. "
    assert items[1:] == [
        ToolCall("call_a", "get_current_time", '{"timezone": "Asia/Tokyo"}'),
        ToolCall("call_b", "get_current_time", '{"timezone": "Europe/Paris"}'),
    ]
    assert stub.requests[0]["json"]["tools"] == tools
