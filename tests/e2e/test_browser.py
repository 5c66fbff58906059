"""The browser page the gateway serves at /: its files over plain HTTP, then a
real headless Chromium that opens it, speaks into its (fake) microphone with
Piper speech and watches the transcript, the answer and the latency chart
appear on the page."""

from __future__ import annotations

import asyncio
import json
import re
import statistics
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import BrowserContext, ConsoleMessage, Page, async_playwright
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from services.gateway.protocols.browser import page as web_page
from tests.e2e.harness import REPO, Stack, start_stack
from tests.support.speech import synthesize_speech, with_silence, write_wav

CHROMIUM = "/usr/bin/chromium"
TOKEN = "page-secret"
QUESTION = "What is the capital of France?"
WAV_RATE = 48000
# Chromium loops the capture file: each loop is one turn. The silence after
# the question leaves room for the answer to be heard before the question
# comes again (it would barge in otherwise).
LEAD_MS, TAIL_MS = 600, 11000
TURNS = 5
ARTIFACTS = REPO / "var" / "artifacts"
LATENCY_REPORT = REPO / "var" / "browser-latency.json"


# --- the files, over HTTP (no models) -------------------------------------------
async def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """A GET with the path sent exactly as given (clients normalize '..')."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


@pytest.fixture(scope="module")
async def page_server() -> AsyncIterator[int]:
    """The page's request hook alone, on a websockets server like the gateway's."""

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        page = web_page.respond(connection, urlsplit(request.path).path)
        return page or connection.respond(404, "not the page's\n")

    async def handler(ws: ServerConnection) -> None:
        await ws.close()

    async with serve(handler, "127.0.0.1", 0, process_request=process_request) as server:
        yield int(server.sockets[0].getsockname()[1])


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/", "text/html", b"/static/app.js"),
        ("/index.html", "text/html", b"/static/style.css"),
        ("/static/app.js", "text/javascript", b"/v1/ws"),
        ("/static/mic-worklet.js", "text/javascript", b"registerProcessor"),
        ("/static/style.css", "text/css", b".transcript"),
    ],
)
async def test_page_files_are_served(
    page_server: int, path: str, content_type: str, marker: bytes
) -> None:
    status, headers, body = await http_get(page_server, path)
    assert status == 200
    assert headers["content-type"].startswith(content_type)
    assert int(headers["content-length"]) == len(body)
    assert headers["x-content-type-options"] == "nosniff"
    assert marker in body


@pytest.mark.parametrize(
    "path",
    [
        "/static/../web_page.py",
        "/static/%2e%2e/web_page.py",
        "/static/..%2fweb_page.py",
        "/static//etc/passwd",
        "/static/",
        "/static/nope.js",
        "/static/.hidden.js",
        "/static/web_page.py",
    ],
)
async def test_page_serves_nothing_else(page_server: int, path: str) -> None:
    status, _, body = await http_get(page_server, path)
    assert status == 404
    assert b"import" not in body and b"root:" not in body


async def test_other_paths_are_left_to_the_gateway(page_server: int) -> None:
    status, _, body = await http_get(page_server, "/v1/ws")
    assert (status, body) == (404, b"not the page's\n")


def test_page_files_ship_as_package_data() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'"services\.gateway\.protocols\.browser"\s*=\s*\[[^\]]*static/\*\.js', text)
    names = {p.name for p in web_page.STATIC_DIR.iterdir()}
    assert {"index.html", "app.js", "mic-worklet.js", "style.css"} <= names


# --- the page in Chromium, against a real stack ------------------------------------
@pytest.fixture(scope="module")
async def page_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """The default stack, with a token so the page must pass ?token= on."""
    async with start_stack(
        tmp_path_factory.mktemp("browser"), env={"PARLEY_GATEWAY__AUTH_TOKEN": TOKEN}
    ) as running:
        yield running


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("speech") / "question.wav"
    speech = synthesize_speech(QUESTION, WAV_RATE)
    write_wav(path, with_silence(speech, WAV_RATE, LEAD_MS, TAIL_MS), WAV_RATE)
    return path


@pytest.fixture
async def browser(speech_wav: Path, tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """Debian's Chromium (never a downloaded one) with a fresh profile and the
    question as its microphone."""
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={speech_wav}",
        "--autoplay-policy=no-user-gesture-required",
    ]
    async with async_playwright() as pw:
        # A persistent context is how Playwright takes --user-data-dir: a
        # fresh folder per test.
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=args,
            viewport={"width": 1280, "height": 900},
            # The page forbids eval; Playwright's wait_for_function needs it.
            bypass_csp=True,
        )
        try:
            yield context
        finally:
            await context.close()


async def open_page(browser: BrowserContext, url: str) -> tuple[Page, list[str]]:
    page = await browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            problems.append(f"console: {msg.text}")

    page.on("console", on_console)
    await page.goto(url)
    return page, problems


async def page_turns(page: Page) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = await page.evaluate("window.parleyTurns")
    return turns


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_page_holds_a_spoken_conversation(page_stack: Stack, browser: BrowserContext) -> None:
    url = f"http://127.0.0.1:{page_stack.gateway_port}/?token={TOKEN}"
    page, problems = await open_page(browser, url)
    assert await page.title() == "Parley"
    await page.click("#start")
    await page.wait_for_selector("#connection[data-connection='open']", timeout=30_000)

    # The first turn, end to end, as the page shows it.
    await page.wait_for_selector(".msg.user.final", timeout=120_000)
    heard = (await page.inner_text(".msg.user.final .text")).lower()
    assert "capital" in heard or "france" in heard, heard
    await page.wait_for_selector(".msg.agent .spoken:not(:empty)", timeout=120_000)
    await page.wait_for_function(
        "window.parleyTurns.length >= 1 && window.parleyTurns[0].hops.page_playing !== undefined",
        timeout=120_000,
    )
    chart = page.locator("svg.latency").first
    assert await chart.get_attribute("data-turn-id") == "1"
    hops = await chart.locator("rect.hop").evaluate_all("rs => rs.map(r => r.dataset.hop)")
    for hop in ("final_transcript", "first_token", "first_audio_sent", "page_first_audio"):
        assert hop in hops, hops
    answer = await page.inner_text(".msg.agent .spoken")
    assert answer.strip(), "no agent sentence on the page"

    # Meters and settings: the page asked for vad_stats and draws them.
    in_force = json.loads(await page.get_attribute("#in-force", "data-settings") or "{}")
    assert in_force.get("vad_stats") is True, in_force
    await page.wait_for_function(
        "document.getElementById('vad-prob').textContent !== '–'", timeout=10_000
    )
    assert await page.get_attribute("#state", "data-state") in {
        "listening",
        "hearing",
        "thinking",
        "speaking",
    }

    # A setting changed in the form comes back as the one in force (one that
    # leaves the turn timings alone, so the figures below stay comparable).
    await page.fill("input[name='min_interrupt_ms']", "150")
    await page.click("#apply")
    await page.wait_for_function(
        "JSON.parse(document.getElementById('in-force').dataset.settings).min_interrupt_ms === 150",
        timeout=10_000,
    )

    # More turns: Chromium loops the question.
    loop_s = (LEAD_MS + TAIL_MS) / 1000 + 3
    await page.wait_for_function(
        f"window.parleyTurns.length >= {TURNS}", timeout=int((TURNS * loop_s + 60) * 1000)
    )
    await asyncio.sleep(1.0)  # the last turn's playback start
    turns = await page_turns(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "browser-turn.png"), full_page=True)

    charts = await page.locator("svg.latency").count()
    assert charts >= TURNS
    assert not problems, problems

    def hop_values(name: str) -> list[float]:
        return [float(t["hops"][name]) for t in turns if name in t["hops"]]

    page_first_audio = median(hop_values("page_first_audio"))
    report = {
        "turns": len(turns),
        "question": QUESTION,
        "what": "ms from the end of the user's speech (the moment the page sent that audio)",
        "median_page_first_audio_ms": page_first_audio,
        "median_page_playing_ms": median(hop_values("page_playing")),
        "median_gateway_first_audio_sent_ms": median(hop_values("first_audio_sent")),
        "per_turn": [{"turn_id": t["turn_id"], "hops": t["hops"]} for t in turns],
    }
    LATENCY_REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print("\nbrowser latency:", json.dumps(report, indent=2))
    assert page_first_audio is not None and page_first_audio > 0
    states = set(await page.evaluate("window.parley.states"))
    assert {"listening", "hearing", "thinking", "speaking"} <= states, states

    # A typed message is answered in its own block.
    await page.fill("#text", "Say hello.")
    await page.click("#send")
    await page.wait_for_selector(
        ".turn[data-turn-id='0'] .msg.user.typed + .msg.agent", state="attached", timeout=60_000
    )

    # An error event from the gateway is shown on the page.
    await page.evaluate("window.parley.send({type: 'settings_update', settings: {silence_ms: 50}})")
    shown = page.locator(".error", has_text="bad_field")
    await shown.wait_for(timeout=10_000)
    assert "silence_ms" in await shown.inner_text()

    await page.click("#stop")
    await page.wait_for_selector("#connection[data-connection='idle']", timeout=10_000)
    assert await page.get_attribute("#state", "data-state") == "idle"


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_page_without_the_token_says_so(page_stack: Stack, browser: BrowserContext) -> None:
    page, _ = await open_page(browser, f"http://127.0.0.1:{page_stack.gateway_port}/")
    await page.click("#start")
    error = page.locator(".error", has_text="Could not open a session")
    await error.wait_for(timeout=30_000)
    assert "token" in (await error.inner_text())
    await page.wait_for_selector("#connection[data-connection='idle']", timeout=10_000)
