from services.llm.conversation import Conversation
from services.llm.sentences import SentenceSplitter, clean_for_speech


def split(deltas: list[str]) -> list[str]:
    splitter = SentenceSplitter()
    out: list[str] = []
    for delta in deltas:
        out += splitter.push(delta)
    return out + splitter.flush()


def test_first_sentence_is_cut_eagerly_at_a_clause() -> None:
    splitter = SentenceSplitter()
    got = []
    for word in "Paris is the capital of France, and it is lovely in spring.".split(" "):
        got += splitter.push(word + " ")
        if got:
            break
    assert got == ["Paris is the capital of France,"]


def test_short_first_clause_waits_for_more_words() -> None:
    assert split(["Well, ", "that ", "is a good question. ", "Yes."]) == [
        "Well, that is a good question.",
        "Yes.",
    ]


def test_numbers_and_abbreviations_do_not_end_sentences() -> None:
    assert split(["It costs 3", ".5 dollars. Dr", ". Smith agrees, e.g. ", "today."]) == [
        "It costs 3.5 dollars.",
        "Dr. Smith agrees, e.g. today.",
    ]


def test_long_sentences_are_cut_at_a_space() -> None:
    pieces = split(["word " * 100])
    assert len(pieces) >= 2 and all(len(p) <= 200 for p in pieces)


def test_markdown_and_emoji_are_not_spoken() -> None:
    assert clean_for_speech("**Bold** and [a link](http://x) 🎉") == "Bold and a link"
    assert split(["***", "\n\n", "Hi!"]) == ["Hi!"]


def test_history_is_bounded_and_keeps_the_system_prompt() -> None:
    conv = Conversation("system", max_turns=2)
    for i in range(5):
        conv.add_user(f"q{i}")
        conv.add_assistant(f"a{i}")
    messages = conv.messages()
    assert messages[0] == {"role": "system", "content": "system"}
    assert [m["content"] for m in messages[1:]] == ["q3", "a3", "q4", "a4"]


def test_history_is_bounded_by_size_too() -> None:
    conv = Conversation("s", max_turns=100, max_chars=50)
    for i in range(10):
        conv.add_user("x" * 20 + str(i))
    assert sum(len(m["content"]) for m in conv.history) <= 50
    assert conv.history[-1]["content"].endswith("9")
