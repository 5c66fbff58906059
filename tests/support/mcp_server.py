"""A real MCP server built with the `mcp` SDK, for the tests: a question bank,
a light switch with state, a tool that hangs, and one that adds a tool (so the
server announces that its tool list changed). Run it over stdio, SSE or
streamable HTTP:

    python -m tests.support.mcp_server --transport streamable-http --port 8123
"""

from __future__ import annotations

import argparse
import asyncio
import json

from mcp.server.mcpserver import Context, MCPServer

QUESTIONS = {
    "physics": "What is the unit of electrical resistance? (Answer: the ohm)",
    "history": "In which year did the Berlin Wall fall? (Answer: 1989)",
}


def build(name: str) -> MCPServer:
    server = MCPServer(name)
    lights: dict[str, bool] = {}

    @server.tool()
    def get_exam_question(subject: str) -> str:
        """Fetch an exam question from the question bank by subject."""
        return QUESTIONS.get(subject.lower(), f"No question for {subject}.")

    @server.tool()
    def set_light(room: str, on: bool) -> str:
        """Switch the light of a room on or off."""
        lights[room] = on
        return f"The {room} light is now {'on' if on else 'off'}."

    @server.tool()
    def light_status() -> str:
        """The state of every light, as JSON."""
        return json.dumps(lights)

    @server.tool()
    async def slow_lookup(query: str) -> str:
        """A lookup that takes a very long time."""
        await asyncio.sleep(60)
        return "too late"

    @server.tool()
    async def add_weather_tool(ctx: Context) -> str:
        """Adds a weather tool and tells clients the tool list changed."""

        def get_weather(city: str) -> str:
            """Today's weather in a city."""
            return f"It is sunny in {city}."

        server.add_tool(get_weather)
        await ctx.session.send_tool_list_changed()
        return "added"

    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transport", default="stdio", choices=["stdio", "sse", "streamable-http"])
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--name", default="school")
    args = parser.parse_args()
    server = build(args.name)
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run(args.transport, host="127.0.0.1", port=args.port)  # type: ignore[call-overload]


if __name__ == "__main__":
    main()
