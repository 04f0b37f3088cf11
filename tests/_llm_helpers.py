"""Fake chat models for the llm report backend: an OpenAI-compatible server on 127.0.0.1 and an in-process
transport. Both call ``answer(body)`` with the request body (``{"messages": [...]}``) and record what they got."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mimic_ils.report.llm import NO_LOCATION, LlmBackend

Answer = Callable[[dict], "str | tuple[int, str]"]


def mapping_text(entity: str, location: str | None) -> str:
    """The user message both location steps receive for one finding."""
    return LlmBackend.mapping_input(entity, location)


def parse_mapping_text(text: str) -> tuple[str, str | None]:
    """``(entity, location)`` back from a mapping user message (None for the no-location placeholder)."""
    entity_line, location_line = text.split("\n", 1)
    assert entity_line.startswith("Entity: ") and location_line.startswith("Location: "), text
    location = location_line.removeprefix("Location: ")
    return entity_line.removeprefix("Entity: "), None if location == NO_LOCATION else location


class FakeChatServer:
    """A tiny OpenAI-compatible ``/v1/chat/completions`` server in a thread; records every request body."""

    def __init__(self, answer: Answer) -> None:
        self.answer, self.requests = answer, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, **body})
                reply = server.answer(body)
                status, text = reply if isinstance(reply, tuple) else (200, reply)
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def systems(self) -> list[str]:
        return [request["messages"][0]["content"] for request in self.requests]

    def users(self) -> list[str]:
        return [request["messages"][1]["content"] for request in self.requests]


class ScriptedTransport:
    """A :class:`mimic_ils.report.llm.ChatTransport` in-process; ``received`` holds every message list sent."""

    def __init__(self, answer: Answer, model_id: str = "scripted") -> None:
        self.answer, self.model_id, self.received = answer, model_id, []

    def complete(self, messages: list[dict[str, str]]) -> str:
        self.received.append(messages)
        reply = self.answer({"messages": messages})
        return reply[1] if isinstance(reply, tuple) else reply

    def systems(self) -> list[str]:
        return [messages[0]["content"] for messages in self.received]

    def users(self) -> list[str]:
        return [messages[1]["content"] for messages in self.received]
