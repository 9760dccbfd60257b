"""Scripted tool calls from the local server, for the framework tests (handoffs, tools)."""

from __future__ import annotations

import json
from typing import Any

from apportion.testing.openai_server import _Handler

MODEL = "gpt-4o-mini"


def tool_calls(server: Any, script: list[tuple[str, str]]) -> None:
    """Make ``server`` answer its next chat calls with these tool calls (name, arguments)."""

    class Handler(_Handler):
        owner = server

        def do_POST(self) -> None:
            if not script:
                super().do_POST()
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            name, arguments = script.pop(0)
            server.requests.append(body)
            server.billed.append((10, 5))
            call = {"id": f"call_{len(script)}", "type": "function"}
            call["function"] = {"name": name, "arguments": arguments}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            choice = {"index": 0, "finish_reason": "tool_calls", "message": message}
            usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
            answer = {"id": "c", "object": "chat.completion", "created": 0, "model": MODEL}
            self._json(200, {**answer, "choices": [choice], "usage": usage})

    assert server._httpd is not None
    server._httpd.RequestHandlerClass = Handler
