"""Cutting streamed model text into speakable sentences."""

from __future__ import annotations

import re

import pytest

from services.llm.sentences import MAX_SENTENCE_CHARS, SentenceSplitter, clean_for_speech


def split(deltas: list[str]) -> list[str]:
    splitter = SentenceSplitter()
    out: list[str] = []
    for delta in deltas:
        out += splitter.push(delta)
    return out + splitter.flush()


def tokens(text: str) -> list[str]:
    """Roughly how a model streams: a word with its leading space per delta."""
    return re.findall(r"\s*\S+|\s+$", text)


def when_cut(deltas: list[str]) -> list[tuple[int, str]]:
    """(index of the delta whose push returned it, sentence); flush is len(deltas)."""
    splitter = SentenceSplitter()
    out = [(i, s) for i, delta in enumerate(deltas) for s in splitter.push(delta)]
    return out + [(len(deltas), s) for s in splitter.flush()]


# --- the first sentence, eagerly ----------------------------------------------------


def test_first_sentence_is_cut_at_a_clause_as_soon_as_it_shows() -> None:
    deltas = tokens("Paris is the capital of France, and it is lovely in spring. It is big.")
    got = when_cut(deltas)
    # Returned by the push of " and": the first moment the comma is known to
    # end a clause (not "1,000").
    assert got[0] == (deltas.index(" and"), "Paris is the capital of France,")
    assert [s for _, s in got[1:]] == ["and it is lovely in spring.", "It is big."]


def test_only_the_first_sentence_is_cut_at_clauses() -> None:
    assert split(tokens("Yes. The capital of France, as you know, is Paris.")) == [
        "Yes.",
        "The capital of France, as you know, is Paris.",
    ]


def test_a_short_first_clause_waits_for_more_words() -> None:
    assert split(tokens("Well, that is a good question, I think. Yes.")) == [
        "Well, that is a good question,",
        "I think.",
        "Yes.",
    ]
    assert split(tokens("Well, sure.")) == ["Well, sure."]


@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("The answer is simple; we go home now.", "The answer is simple;"),
        ("Here is the plan: we go home now.", "Here is the plan:"),
        ("The weather today is fine — sunny and warm.", "The weather today is fine,"),
        ("The weather today is fine—sunny and warm.", "The weather today is fine,"),
        ("今天天气很好，我们去公园吧。", "今天天气很好，"),
    ],
)
def test_clause_boundaries(text: str, first: str) -> None:
    assert split(tokens(text))[0] == first


def test_the_first_cut_does_not_depend_on_how_the_text_was_streamed() -> None:
    text = (
        "Dr. Smith, who lives at No. 5, said it costs 3.5 dollars, e.g. at 10:30 a.m. "
        "on Main St. in the U.S. today! Is that so? Yes... I think so. Fine."
    )
    expected = split([text])
    assert split(list(text)) == expected
    assert split(tokens(text)) == expected
    assert split([text[:7], text[7:40], text[40:]]) == expected
    assert expected == [
        "Dr. Smith, who lives at No. 5,",
        "said it costs 3.5 dollars, e.g. at 10:30 a.m. on Main St. in the U.S. today!",
        "Is that so?",
        "Yes...",
        "I think so.",
        "Fine.",
    ]


# --- later sentences, at sentence ends ----------------------------------------------


def test_sentences_come_out_as_soon_as_they_are_complete() -> None:
    got = when_cut(["Hi", " there!", " How", " are", " you?", " I", " am", " fine."])
    # "!" and "?" end a sentence as soon as a space follows them.
    assert got == [(2, "Hi there!"), (5, "How are you?"), (8, "I am fine.")]


def test_a_full_stop_waits_for_the_next_word() -> None:
    # Only the next word tells "Paris. It" from "approx. five".
    got = when_cut(["It", " is", " in", " Paris", ".", " It", " is", " big", "."])
    assert got == [(5, "It is in Paris."), (9, "It is big.")]


@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        (["It costs 3", ".5 dollars. It is cheap."], ["It costs 3.5 dollars.", "It is cheap."]),
        (["Pi is about 3.14159 or so. Yes."], ["Pi is about 3.14159 or so.", "Yes."]),
        (["There are 1,000 people here. Wow."], ["There are 1,000 people here.", "Wow."]),
        (["It opens at 10:30 sharp. Come."], ["It opens at 10:30 sharp.", "Come."]),
        (["Version 2.0.1 is out. Update."], ["Version 2.0.1 is out.", "Update."]),
    ],
)
def test_numbers_do_not_end_sentences(deltas: list[str], expected: list[str]) -> None:
    assert split(deltas) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Yes. Dr. Smith and Mr. Jones agree with Mrs. Brown here.",
        "Yes. Bring fruit, e.g. apples, i.e. something sweet.",
        "Yes. It opens at 9 a.m. every day on weekdays.",
        "Yes. The U.S. Army is large and well funded.",
        "Yes. The books by J. K. Rowling are popular.",
        "Yes. It weighs approx. five kilos in total.",
        "Yes. Cats vs. dogs is an old debate.",
    ],
)
def test_abbreviations_do_not_end_sentences(text: str) -> None:
    assert split(tokens(text)) == ["Yes.", text[5:]]


def test_an_ellipsis_mid_sentence_does_not_end_it() -> None:
    assert split(tokens("Yes. I was thinking... maybe we could go. Or not.")) == [
        "Yes.",
        "I was thinking... maybe we could go.",
        "Or not.",
    ]
    assert split(tokens("Yes. Wait… What was that?")) == ["Yes.", "Wait…", "What was that?"]


def test_quotes_and_brackets_stay_with_their_sentence() -> None:
    assert split(tokens('Yes. He said "go home." Then he left.')) == [
        "Yes.",
        'He said "go home."',
        "Then he left.",
    ]
    assert split(tokens("Yes. It is big (very big.) Really.")) == [
        "Yes.",
        "It is big (very big.)",
        "Really.",
    ]


def test_newlines_end_sentences_and_list_markers_are_not_spoken() -> None:
    text = "Here are two:\n1. Apples are red\n2. Bananas are yellow\n\n- Cherries too"
    assert split(tokens(text)) == [
        "Here are two:",
        "Apples are red",
        "Bananas are yellow",
        "Cherries too",
    ]


def test_unicode_and_cjk_sentence_ends() -> None:
    assert split(["你好。今天天气很好！我们去公园吧？好的"]) == [
        "你好。",
        "今天天气很好！",
        "我们去公园吧？",
        "好的",
    ]
    assert split(["Hola! ¿Qué tal? Bien."]) == ["Hola!", "¿Qué tal?", "Bien."]


def test_long_sentences_are_cut_at_the_last_space() -> None:
    words = [f" Word{i}" for i in range(80)]
    pieces = split(["Yes.", *words, "."])
    assert pieces[0] == "Yes."
    assert len(pieces) >= 3
    assert all(len(p) <= MAX_SENTENCE_CHARS for p in pieces)
    # Nothing lost, no word cut in two.
    assert " ".join(pieces[1:]) == " ".join(w.strip() for w in words) + "."


def test_a_long_first_sentence_without_clauses_is_cut_too() -> None:
    pieces = split(["a" * 150 + " " + "b" * 100])
    assert pieces == ["a" * 150, "b" * 100]


# --- what is not spoken -------------------------------------------------------------


def test_pieces_without_letters_or_digits_are_dropped() -> None:
    assert split(["***", "\n\n", "Hi!", " 🎉🎉", "\n---\n", " ...", " Bye."]) == ["Hi!", "Bye."]
    assert split(["!!!"]) == []
    assert split(["42."]) == ["42."]


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("**Bold** and _italic_ and `code`", "Bold and italic and code"),
        ("## A heading", "A heading"),
        ("See [the docs](http://x.org/a) now", "See the docs now"),
        ("Look ![a cat](cat.png) here", "Look a cat here"),
        ("Go to https://example.com/page. Now", "Go to. Now"),
        ("Great job 🎉👍🏽 team ❤️", "Great job team"),
        ("Flags 🇫🇷 and stars ⭐ go", "Flags and stars go"),
        ("A <b>bold</b> move", "A bold move"),
        ("> quoted text", "quoted text"),
        ("| a | b |", "a b"),
    ],
)
def test_markdown_emoji_and_links_are_not_spoken(raw: str, spoken: str) -> None:
    assert clean_for_speech(raw) == spoken


def test_markdown_split_across_deltas_is_still_removed() -> None:
    assert split(["The ", "*", "*capital", "**", " of France is ", "**Paris**", "."]) == [
        "The capital of France is Paris."
    ]
