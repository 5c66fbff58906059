"""Barge-in rules on a fake clock: no NATS, no sleeps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from services.gateway.core.interruption import (
    BACKCHANNEL_MAX_MS,
    BACKCHANNEL_WAIT_S,
    ONSET_RESUME_DELAY_S,
    BargeInPolicy,
    Interruption,
    is_backchannel,
    parse_backchannels,
)


@dataclass
class _Timer:
    at: float
    callback: Callable[[], Awaitable[None] | None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[_Timer] = []

    def call_later(self, delay_s: float, callback: Callable[[], Awaitable[None] | None]) -> _Timer:
        timer = _Timer(self.now + delay_s, callback)
        self.timers.append(timer)
        return timer

    async def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            due = [t for t in self.timers if not t.cancelled and t.at <= end]
            if not due:
                break
            timer = min(due, key=lambda t: t.at)
            self.timers.remove(timer)
            self.now = timer.at
            result = timer.callback()
            if result is not None:
                await result
        self.now = end


@dataclass
class FakeSession:
    """Records what the rules did; the agent talks until cut."""

    active: bool = True
    paused: bool = False
    log: list[str] = field(default_factory=list)

    def agent_active(self) -> bool:
        return self.active

    def pause_playback(self) -> None:
        if not self.paused:
            self.log.append("pause")
        self.paused = True

    def resume_playback(self) -> None:
        if self.paused:
            self.log.append("resume")
        self.paused = False

    async def cut_answer(self, reason: str) -> None:
        self.active = False
        self.paused = False
        self.log.append(f"cut:{reason}")

    async def dismiss(self, turn_id: int, reason: str) -> None:
        self.log.append(f"dismiss:{turn_id}:{reason}")

    async def hold_turn(self, turn_id: int, release: bool) -> None:
        self.log.append(f"{'release' if release else 'hold'}:{turn_id}")


def make(policy: BargeInPolicy) -> tuple[Interruption, FakeSession, FakeClock]:
    session, clock = FakeSession(), FakeClock()
    rules = Interruption(session, clock)
    rules.policy = policy
    return rules, session, clock


async def speak(rules: Interruption, start_ms: float, ms: float) -> None:
    """The user's audio reaching start_ms + ms, 20 ms at a time."""
    at = start_ms
    while at < start_ms + ms:
        at += 20
        await rules.audio(at)


async def test_speech_over_the_answer_cuts_it_at_once() -> None:
    rules, session, _ = make(BargeInPolicy())
    await rules.speech_started(1, 1000.0)
    assert session.log == ["cut:user speech"]


async def test_onset_holds_the_answer_and_speech_start_hands_over() -> None:
    rules, session, _ = make(BargeInPolicy())
    rules.voice_onset()
    assert session.log == ["pause"] and rules.holding
    await rules.speech_started(1, 1000.0)
    assert session.log == ["pause", "cut:user speech"]
    assert not rules.holding


async def test_a_faded_onset_resumes_after_the_delay() -> None:
    rules, session, clock = make(BargeInPolicy())
    rules.voice_onset()
    rules.voice_dropped()
    await clock.advance(ONSET_RESUME_DELAY_S - 0.01)
    assert session.paused
    await clock.advance(0.02)
    assert session.log == ["pause", "resume"]


async def test_voice_again_within_the_delay_keeps_the_hold() -> None:
    """ "Wait, ... stop": the word before a pause does not let the answer go on."""
    rules, session, clock = make(BargeInPolicy(min_speech_ms=250))
    rules.voice_onset()
    rules.voice_dropped()
    await clock.advance(ONSET_RESUME_DELAY_S / 2)
    rules.voice_onset()
    await clock.advance(ONSET_RESUME_DELAY_S)
    assert session.paused and session.log == ["pause"]
    await rules.speech_started(1, 2000.0)
    assert session.log == ["pause", "cut:user speech"]


async def test_a_lost_speech_start_releases_the_onset_hold() -> None:
    rules, session, clock = make(BargeInPolicy(min_speech_ms=250))
    rules.voice_onset()
    await clock.advance(0.25 + 1 + 0.01)
    assert session.log == ["pause", "resume"]


async def test_no_onset_hold_while_the_agent_is_silent_or_barge_in_is_off() -> None:
    rules, session, _ = make(BargeInPolicy())
    session.active = False
    rules.voice_onset()
    rules2, session2, _ = make(BargeInPolicy(barge_in=False))
    rules2.voice_onset()
    assert session.log == [] and session2.log == []


async def test_half_duplex_dismisses_speech_over_the_answer() -> None:
    rules, session, _ = make(BargeInPolicy(barge_in=False))
    await rules.speech_started(3, 500.0)
    assert session.log == ["dismiss:3:agent speaking"]


async def test_min_interrupt_short_sound_is_dismissed_and_the_answer_resumes() -> None:
    rules, session, _ = make(BargeInPolicy(min_interrupt_ms=600))
    await rules.speech_started(2, 1000.0)
    assert session.log == ["pause", "hold:2"]
    await speak(rules, 1000.0, 300)
    await rules.speech_paused()
    assert session.log == ["pause", "hold:2", "dismiss:2:too short", "resume"]


async def test_min_interrupt_long_speech_cuts() -> None:
    rules, session, _ = make(BargeInPolicy(min_interrupt_ms=600))
    await rules.speech_started(2, 1000.0)
    await speak(rules, 1000.0, 580)
    assert "cut:user speech" not in session.log
    await speak(rules, 1580.0, 40)
    assert session.log == ["pause", "hold:2", "cut:user speech", "release:2"]


async def test_a_backchannel_is_dismissed_once_its_words_are_known() -> None:
    rules, session, _ = make(BargeInPolicy(backchannels=parse_backchannels("mm-hmm, yeah")))
    await rules.speech_started(4, 0.0)
    await speak(rules, 0.0, 400)
    await rules.speech_paused()
    assert session.log == ["pause", "hold:4"]  # waiting for the words
    await rules.transcript(4, "Mm-hmm.")
    assert session.log == ["pause", "hold:4", "dismiss:4:backchannel 'Mm-hmm.'", "resume"]


async def test_other_words_cut_the_answer() -> None:
    rules, session, _ = make(BargeInPolicy(backchannels=parse_backchannels("mm-hmm, yeah")))
    await rules.speech_started(4, 0.0)
    await rules.speech_stopped()
    await rules.transcript(4, "Yeah, stop please.")
    assert session.log == ["pause", "hold:4", "cut:user speech", "release:4"]


async def test_speech_too_long_for_an_acknowledgement_cuts() -> None:
    rules, session, _ = make(BargeInPolicy(backchannels=parse_backchannels("okay")))
    await rules.speech_started(5, 0.0)
    await speak(rules, 0.0, BACKCHANNEL_MAX_MS + 40)
    assert session.log == ["pause", "hold:5", "cut:user speech", "release:5"]


async def test_words_that_never_come_cut_after_the_wait() -> None:
    rules, session, clock = make(BargeInPolicy(backchannels=parse_backchannels("okay")))
    await rules.speech_started(6, 0.0)
    await rules.speech_stopped()
    await clock.advance(BACKCHANNEL_WAIT_S - 0.1)
    assert session.paused
    await clock.advance(0.2)
    assert session.log == ["pause", "hold:6", "cut:user speech", "release:6"]


async def test_two_sounds_keep_the_answer_paused_until_both_are_judged() -> None:
    rules, session, _ = make(BargeInPolicy(backchannels=parse_backchannels("mm-hmm")))
    await rules.speech_started(7, 0.0)
    await rules.speech_stopped()
    await rules.speech_started(8, 900.0)
    await rules.speech_stopped()
    await rules.transcript(7, "Mm-hmm.")
    assert session.paused  # the second sound is still being judged
    await rules.transcript(8, "")  # a cough: no words
    assert not session.paused
    assert session.log.count("resume") == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Mm-hmm.", True), ("Yeah, okay.", True), ("", True), ("Okay, stop.", False)],
)
def test_is_backchannel(text: str, expected: bool) -> None:
    assert is_backchannel(text, parse_backchannels("mm-hmm, yeah, okay")) is expected


def test_backchannels_parse_from_a_list_or_a_string() -> None:
    assert parse_backchannels(["Mm-hmm", " Yeah "]) == parse_backchannels("mm-hmm, yeah")
