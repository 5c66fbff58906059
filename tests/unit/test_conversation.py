"""A session's conversation: bounded history, and what was heard of an answer."""

from __future__ import annotations

from services.llm.conversation import Conversation
from services.llm.providers.base import ToolCall

# --- history ------------------------------------------------------------------------


def test_messages_are_the_system_prompt_then_the_history() -> None:
    conv = Conversation("Be brief.")
    conv.add_user("Hi")
    conv.add_assistant("Hello!")
    conv.add_user("How are you?")
    assert conv.messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
    ]


def test_messages_are_copies() -> None:
    conv = Conversation("s")
    conv.add_user("q")
    conv.messages()[1]["content"] = "changed"
    conv.messages().append({"role": "user", "content": "extra"})
    assert conv.messages() == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
    ]


def test_a_changed_system_prompt_is_used_from_then_on() -> None:
    conv = Conversation("old")
    conv.add_user("q")
    conv.system_prompt = "new"
    assert conv.messages()[0] == {"role": "system", "content": "new"}


def test_history_is_bounded_by_turns_oldest_first() -> None:
    conv = Conversation("system", max_turns=2)
    for i in range(5):
        conv.add_user(f"q{i}")
        conv.add_assistant(f"a{i}")
    messages = conv.messages()
    assert messages[0] == {"role": "system", "content": "system"}
    assert [m["content"] for m in messages[1:]] == ["q3", "a3", "q4", "a4"]


def test_history_is_bounded_by_size_and_never_starts_with_an_answer() -> None:
    conv = Conversation("s" * 500, max_turns=100, max_chars=100)
    for i in range(10):
        conv.add_user("x" * 20 + str(i))
        conv.add_assistant("y" * 20 + str(i))
    assert sum(len(m["content"]) for m in conv.history) <= 100
    assert conv.history[0]["role"] == "user"
    assert conv.history[-1]["content"].endswith("9")
    # The system prompt does not count against the history and always stays.
    assert conv.messages()[0]["content"] == "s" * 500


def test_the_latest_question_stays_even_when_it_alone_is_too_big() -> None:
    conv = Conversation("s", max_chars=10)
    conv.add_user("short")
    conv.add_assistant("answer")
    conv.add_user("a very long question indeed")
    assert conv.history == [{"role": "user", "content": "a very long question indeed"}]


def test_a_tool_round_is_dropped_with_its_exchange() -> None:
    conv = Conversation("s", max_turns=1)
    conv.add_user("What time is it in Tokyo?")
    call = ToolCall("call_1", "get_time", '{"tz": "Asia/Tokyo"}')
    conv.add_tool_round([call], ["21:00"], "Let me check.")
    conv.add_assistant("It is nine in the evening.")
    assert [m["role"] for m in conv.history] == ["user", "assistant", "tool", "assistant"]
    assert conv.history[1]["tool_calls"][0]["function"]["name"] == "get_time"
    assert conv.history[2] == {"role": "tool", "tool_call_id": "call_1", "content": "21:00"}
    conv.add_user("Thanks!")
    assert conv.history == [{"role": "user", "content": "Thanks!"}]


def test_tool_call_arguments_count_against_the_size() -> None:
    conv = Conversation("s", max_chars=200)
    conv.add_user("q1")
    conv.add_tool_round([ToolCall("c", "f", "x" * 300)], ["ok"])
    conv.add_user("q2")
    assert conv.history == [{"role": "user", "content": "q2"}]


# --- an interrupted answer ----------------------------------------------------------


def test_truncate_last_assistant_keeps_what_was_heard() -> None:
    conv = Conversation("s")
    conv.add_user("Tell me about Paris.")
    conv.add_assistant("Paris is the capital of France. It has many museums.")
    assert conv.truncate_last_assistant("Paris is the capital of France. It has")
    assert conv.history[-1] == {
        "role": "assistant",
        "content": "Paris is the capital of France. It has",
    }


def test_truncate_last_assistant_with_nothing_heard_removes_it() -> None:
    conv = Conversation("s")
    conv.add_user("q")
    conv.add_assistant("a long answer")
    assert conv.truncate_last_assistant("  ")
    assert conv.history == [{"role": "user", "content": "q"}]


def test_truncate_last_assistant_only_touches_the_latest_answer() -> None:
    conv = Conversation("s")
    conv.add_user("q1")
    conv.add_assistant("a1")
    conv.add_user("q2")
    # No answer to q2 yet: a1 was heard in full long ago.
    assert not conv.truncate_last_assistant("a")
    assert conv.history[1]["content"] == "a1"
    assert not Conversation("s").truncate_last_assistant("x")


def test_truncate_after_a_tool_round_cuts_the_final_answer() -> None:
    conv = Conversation("s")
    conv.add_user("time?")
    conv.add_tool_round([ToolCall("c", "get_time", "{}")], ["21:00"])
    conv.add_assistant("It is nine in the evening in Tokyo.")
    assert conv.truncate_last_assistant("It is nine")
    assert conv.history[-1]["content"] == "It is nine"
    assert [m["role"] for m in conv.history] == ["user", "assistant", "tool", "assistant"]


# --- the stored form ----------------------------------------------------------------


def test_a_history_survives_encoding_whole() -> None:
    conv = Conversation("Be brief.")
    conv.add_user("What time is it?")
    conv.add_tool_round([ToolCall("c1", "get_time", '{"tz": "UTC"}')], ["12:00"], "")
    conv.add_assistant("It is noon.")
    conv.add_user("Thanks, and the date?")
    conv.add_assistant("Monday the first, and then")
    conv.truncate_last_assistant("Monday the first")
    again = Conversation("ignored")
    assert again.restore(conv.encode())
    assert again.messages() == conv.messages()
    assert again.system_prompt == "Be brief."


def test_a_restored_history_is_bounded_by_the_new_owner() -> None:
    conv = Conversation("s", max_turns=10)
    for i in range(6):
        conv.add_user(f"q{i}")
        conv.add_assistant(f"a{i}")
    smaller = Conversation("s", max_turns=2)
    assert smaller.restore(conv.encode())
    assert [m["content"] for m in smaller.history] == ["q4", "a4", "q5", "a5"]


def test_an_unreadable_stored_history_is_refused_and_changes_nothing() -> None:
    conv = Conversation("s")
    conv.add_user("kept")
    assert not conv.restore(b"\xff\xff not a history")
    assert conv.history == [{"role": "user", "content": "kept"}]


def test_every_change_is_announced() -> None:
    conv = Conversation("s")
    changes: list[int] = []
    conv.on_change = lambda: changes.append(len(conv.history))
    conv.add_user("q")
    conv.add_assistant("a long answer")
    conv.truncate_last_assistant("a long")
    conv.add_tool_round([ToolCall("c", "t", "{}")], ["r"])
    assert changes == [1, 2, 2, 4]
