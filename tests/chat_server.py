"""A chat-completions server on 127.0.0.1 for tests: records each request, plays scripted replies."""

from __future__ import annotations

import http
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
# A trickling reply stops by itself after this long, so no test leaves a thread writing.
MAX_TRICKLE_S = 20.0


@dataclass
class Reply:
    """One scripted answer: an HTTP status, a body, extra headers and a delay before answering.

    `length=False` leaves out Content-Length (the body ends when the connection closes); `trickle` > 0 sends the
    reply one byte per `trickle` seconds, from its status line or, with `trickle_from="body"`, after the headers."""

    status: int = 200
    body: bytes | str | dict | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    length: bool = True
    trickle: float = 0.0
    trickle_from: str = "status"

    def encoded(self) -> tuple[bytes, bytes]:
        """The status line with headers, and the body, as they go on the wire."""
        payload = self.body if self.body is not None else completion(GOOD_ANSWER)
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        if isinstance(payload, str):
            payload = payload.encode()
        try:
            phrase = http.HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Whatever"
        lines = [f"HTTP/1.0 {self.status} {phrase}", "Content-Type: application/json", "Connection: close"]
        lines += [f"Content-Length: {len(payload)}"] if self.length else []
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode(), payload


def completion(content: object) -> dict:
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
                head, payload = reply.encoded()
                wire = head + payload
                at_once = len(wire) if not reply.trickle else len(head) if reply.trickle_from == "body" else 0
                give_up = time.monotonic() + MAX_TRICKLE_S
                try:
                    self.wfile.write(wire[:at_once])
                    for index in range(at_once, len(wire)):
                        if time.monotonic() > give_up:
                            break
                        time.sleep(reply.trickle)
                        self.wfile.write(wire[index : index + 1])
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on a deliberately slow or large reply

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def payload(self, index: int = -1) -> dict:
        return json.loads(self.requests[index]["body"])

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
