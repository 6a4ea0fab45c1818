"""A chat-completions server on 127.0.0.1 for tests: records each request, plays scripted replies."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GOOD_ANSWER = (
    "A fixed shot of the red square on its plain background. The square slowly tilts and folds along its "
    "middle until it becomes a neat triangle. The background, the light and the colour stay the same, and the "
    "camera does not move. In the final frame a red triangle sits where the square was."
)
KEY = "sk-test-123"


@dataclass
class Reply:
    """One scripted answer: an HTTP status, a body, extra headers and a delay before answering."""

    status: int = 200
    body: bytes | str | dict | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def completion(content: str) -> dict:
    return {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
    }


class ChatServer:
    """A chat-completions server that records each request and plays scripted replies, then good answers."""

    def __init__(self):
        self.requests: list[dict] = []
        self.replies: list[Reply] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with server.lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    reply = server.replies.pop(0) if server.replies else Reply()
                time.sleep(reply.delay)
                payload = reply.body if reply.body is not None else completion(GOOD_ANSWER)
                if isinstance(payload, dict):
                    payload = json.dumps(payload)
                if isinstance(payload, str):
                    payload = payload.encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on a deliberately slow reply

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def payload(self, index: int = -1) -> dict:
        return json.loads(self.requests[index]["body"])
