"""A stand-in for the paid OpenAI audio endpoints: a real aiohttp server on
loopback that records what the providers send and answers as OpenAI does
(JSON for transcriptions, a raw PCM body streamed in pieces for speech)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

from tests.support.loopback_server import LoopbackServer, error_response


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    # Transcriptions: the multipart text fields, and the uploaded file.
    form: dict[str, str] = field(default_factory=dict)
    file_name: str | None = None
    file_type: str | None = None
    file_bytes: bytes = b""
    # Speech: the JSON body.
    json: dict[str, Any] | None = None


@dataclass
class OpenAIAudioStub(LoopbackServer):
    transcription_text: str = "hello world"
    speech_pcm: bytes = bytes(9600)
    # Odd on purpose: a client must carry the odd byte over to keep samples whole.
    speech_chunk_bytes: int = 1001
    speech_chunk_delay_s: float = 0.0
    # When set, every request is answered with this status and a JSON error.
    fail_status: int | None = None
    # When set, requests wait (until the stub closes) so clients time out.
    hang: bool = False
    requests: list[RecordedRequest] = field(default_factory=list)
    speech_disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    speech_finished: asyncio.Event = field(default_factory=asyncio.Event)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/audio/transcriptions", self._transcriptions),
            web.post("/v1/audio/speech", self._speech),
        ]

    async def _failure(self) -> web.Response | None:
        if self.hang:
            await self.closing.wait()
        if self.fail_status is not None:
            return error_response(self.fail_status)
        return None

    async def _transcriptions(self, request: web.Request) -> web.Response:
        recorded = RecordedRequest(request.path, dict(request.headers))
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            assert isinstance(part, BodyPartReader)
            if part.filename is not None:
                recorded.file_name = part.filename
                recorded.file_type = part.headers.get("Content-Type")
                recorded.file_bytes = bytes(await part.read())
            elif part.name:
                recorded.form[part.name] = await part.text()
        self.requests.append(recorded)
        failure = await self._failure()
        if failure is not None:
            return failure
        return web.json_response({"text": self.transcription_text})

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            RecordedRequest(request.path, dict(request.headers), json=await request.json())
        )
        failure = await self._failure()
        if failure is not None:
            return failure
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        try:
            for i in range(0, len(self.speech_pcm), self.speech_chunk_bytes):
                await response.write(self.speech_pcm[i : i + self.speech_chunk_bytes])
                # Yield even without a delay so pieces go out as separate writes.
                await asyncio.sleep(self.speech_chunk_delay_s)
            await response.write_eof()
            self.speech_finished.set()
        except (ConnectionResetError, asyncio.CancelledError):
            self.speech_disconnected.set()
            raise
        return response
