"""Barge-in decisions: whether the user's voice over the agent's answer cuts
it, pauses it, or lets it go on. Pure logic over a clock, so the rules can be
tested without NATS or sleeps (tests/unit/test_interruption.py).

- Voice onset (the VAD's first window of voice, before `min_speech_ms` makes
  it a turn): the answer's audio stops at once (a pause, nothing dropped).
  The turn's start hands over to the rules below; a voice that fades first
  (a click, a cough) lets the answer go on ONSET_RESUME_DELAY_S later unless
  more voice follows ("Wait, ... stop" is one interruption, not a cough).
- Speech start: cut at once, unless the session asks for a minimum interrupt
  duration or lists backchannel words. Then the answer stays paused, the llm
  is told to hold the turn, and the answer is cut only if the user is still
  speaking after `min_interrupt_ms`, or once the words heard are more than
  acknowledgements ("mm-hm", "yeah"); otherwise the turn is dismissed and
  the answer resumes where it stopped.
- Without barge-in (half duplex) a turn that starts while the agent speaks
  is dismissed: it is most likely the agent's own voice coming back."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

# After a voice onset that faded (a cough, or a word before a pause), how long
# the answer stays paused in case more voice follows.
ONSET_RESUME_DELAY_S = 0.25
# While the answer is paused on a possible acknowledgement: how long to wait
# for its words, and how much speech is too long to be one.
# (The transcript of a short clip takes ~0.2 s; seconds on a loaded machine.)
BACKCHANNEL_WAIT_S = 6.0
BACKCHANNEL_MAX_MS = 1200
_WORDS = re.compile(r"[a-z']+(?:-[a-z']+)*")


def parse_backchannels(words: list[str] | tuple[str, ...] | str) -> frozenset[str]:
    """Normalized phrases; a comma-separated string is accepted too."""
    items = words.split(",") if isinstance(words, str) else words
    return frozenset(" ".join(_WORDS.findall(w.lower())) for w in items if w.strip())


def is_backchannel(text: str, backchannels: frozenset[str]) -> bool:
    """Nothing but acknowledgements ("Mm-hmm.", "Yeah, okay."); no words at all
    (a cough Whisper hears as nothing) counts too."""
    words = _WORDS.findall(text.lower())
    if not words:
        return True
    if " ".join(words) in backchannels:
        return True
    return all(word in backchannels for word in words)


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


Callback = Callable[[], Awaitable[None] | None]


class Clock(Protocol):
    def call_later(self, delay_s: float, callback: Callback) -> TimerHandle: ...


class Actions(Protocol):
    """What the decisions do to the session."""

    def agent_active(self) -> bool:
        """An answer is being generated or is still being heard."""
        ...

    def pause_playback(self) -> None: ...

    def resume_playback(self) -> None: ...

    async def cut_answer(self, reason: str) -> None:
        """Cut the current answer (flush its audio, tell every stage)."""
        ...

    async def dismiss(self, turn_id: int, reason: str) -> None:
        """This user turn is not answered; the answer goes on."""
        ...

    async def hold_turn(self, turn_id: int, release: bool) -> None:
        """Tell the llm to wait for the verdict on this turn (or that it is in)."""
        ...


@dataclass(frozen=True, slots=True)
class BargeInPolicy:
    """The session settings the decisions read."""

    barge_in: bool = True
    min_speech_ms: int = 250
    min_interrupt_ms: int = 0
    backchannels: frozenset[str] = frozenset()


class _Judgement:
    """One sound over the answer, being judged."""

    def __init__(self, turn_id: int, start_ms: float, needed_ms: int, words: frozenset[str]):
        self.turn_id = turn_id
        self.start_ms = start_ms
        self.needed_ms = needed_ms
        self.backchannels = words
        self.waiting_words = False
        self.deadline: TimerHandle | None = None
        self.timed_out = False


class Interruption:
    def __init__(self, actions: Actions, clock: Clock) -> None:
        self.actions = actions
        self.clock = clock
        self.policy = BargeInPolicy()
        self.user_speaking = False
        self.speech_turn = 0
        self.offset_ms = 0.0  # how far the user's audio has reached
        self._holds = 0  # reasons to keep the answer paused
        self._onset_hold: TimerHandle | None = None
        self._judging: list[_Judgement] = []
        self._turn_text: dict[int, str] = {}  # the latest transcript of recent turns

    # --- what happens -----------------------------------------------------------
    def voice_onset(self) -> None:
        """A voice began while the agent talks: stop sending its audio now
        rather than when the voice has lasted min_speech_ms, so a real
        interruption silences it at once. The timer covers a lost event."""
        if not (self.actions.agent_active() and self.policy.barge_in):
            return
        if self._onset_hold is None:
            self._hold()
        else:
            self._onset_hold.cancel()
        limit = self.policy.min_speech_ms / 1000 + 1
        self._onset_hold = self.clock.call_later(limit, self._release_onset)

    def voice_dropped(self) -> None:
        """The voice faded before it was speech. It may be the first word
        before a pause: resume only if no voice follows soon."""
        if self._onset_hold is not None:
            self._onset_hold.cancel()
            self._onset_hold = self.clock.call_later(ONSET_RESUME_DELAY_S, self._release_onset)

    async def speech_started(self, turn_id: int, start_ms: float) -> None:
        self.user_speaking = True
        self.speech_turn = turn_id
        if self.actions.agent_active():
            if self.policy.barge_in:
                await self._judge(turn_id, start_ms)
            else:
                await self.actions.dismiss(turn_id, "agent speaking")
        # The turn's own judgement (cut, or pause until confirmed) takes over.
        self._release_onset()

    async def speech_paused(self) -> None:
        """Not the end of the turn, but enough to know a sound was short."""
        self.user_speaking = False
        await self._evaluate()

    async def speech_stopped(self) -> None:
        self.user_speaking = False
        await self._evaluate()

    async def audio(self, offset_ms: float) -> None:
        self.offset_ms = offset_ms
        if self._judging:
            await self._evaluate()

    async def transcript(self, turn_id: int, text: str) -> None:
        """The transcript at a pause, or the final one."""
        self._turn_text[turn_id] = text
        for old in sorted(self._turn_text)[:-4]:
            del self._turn_text[old]
        if self._judging:
            await self._evaluate()

    def close(self) -> None:
        for judgement in self._judging:
            if judgement.deadline is not None:
                judgement.deadline.cancel()
        self._judging.clear()
        if self._onset_hold is not None:
            self._onset_hold.cancel()
            self._onset_hold = None

    # --- holds ----------------------------------------------------------------------
    @property
    def holding(self) -> bool:
        return self._holds > 0

    def _hold(self) -> None:
        self._holds += 1
        self.actions.pause_playback()

    def _unhold(self) -> None:
        self._holds -= 1
        if not self._holds:
            self.actions.resume_playback()

    def _release_onset(self) -> None:
        if self._onset_hold is None:
            return
        self._onset_hold.cancel()
        self._onset_hold = None
        self._unhold()

    # --- judging a sound ----------------------------------------------------------------
    async def _judge(self, turn_id: int, start_ms: float) -> None:
        needed = self.policy.min_interrupt_ms
        words = self.policy.backchannels
        if needed <= 0 and not words:
            await self.actions.cut_answer("user speech")
            return
        # Each sound is judged on its own (an "mm-hm", then a cough); the
        # answer stays paused until every judgement is in.
        self._hold()
        # The llm waits for the verdict: a final transcript racing the
        # dismissal must not be answered.
        await self.actions.hold_turn(turn_id, release=False)
        self._judging.append(_Judgement(turn_id, start_ms, needed, words))
        await self._evaluate()

    async def _evaluate(self) -> None:
        for judgement in list(self._judging):
            verdict = self._verdict(judgement)
            if verdict is not None:
                await self._conclude(judgement, *verdict)

    def _verdict(self, j: _Judgement) -> tuple[bool, str] | None:
        """(cut, reason) once the sound is judged, None while it is not yet."""
        if not j.waiting_words:
            if self.user_speaking and self.offset_ms < j.start_ms + j.needed_ms:
                return None
            if not self.user_speaking and (j.needed_ms > 0 or not j.backchannels):
                return False, "too short"
            if not j.backchannels:
                return True, "user speech"
            j.waiting_words = True
            j.deadline = self.clock.call_later(BACKCHANNEL_WAIT_S, lambda: self._time_out(j))
        # What the user said, once they stop (the transcript at the pause or
        # the final one: a partial may be the "okay" of "okay, stop").
        if j.timed_out:
            return True, "user speech"
        if self.user_speaking and self.speech_turn == j.turn_id:
            if self.offset_ms - j.start_ms > BACKCHANNEL_MAX_MS:
                return True, "user speech"
            return None
        text = self._turn_text.get(j.turn_id)
        if text is None:
            return None
        if is_backchannel(text, j.backchannels):
            return False, f"backchannel {text!r}"
        return True, "user speech"

    async def _time_out(self, j: _Judgement) -> None:
        j.timed_out = True
        if j in self._judging:
            await self._conclude(j, True, "user speech")

    async def _conclude(self, j: _Judgement, cut: bool, reason: str) -> None:
        if j not in self._judging:
            return
        self._judging.remove(j)
        if j.deadline is not None:
            j.deadline.cancel()
        try:
            if cut:
                await self.actions.cut_answer(reason)
                await self.actions.hold_turn(j.turn_id, release=True)
            else:
                await self.actions.dismiss(j.turn_id, reason)
        finally:
            self._unhold()
