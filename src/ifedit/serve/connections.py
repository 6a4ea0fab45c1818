"""The server's connections: uvicorn's h11 protocol with limits a server reachable from a network needs.

uvicorn's default HTTP parser (httptools) reads a request's headers without a size limit, and neither parser has a
deadline for them: one client sending an endless header grows the server's memory by megabytes a second, and a
few thousand sending half a request line keep every socket open until the server cannot accept any more. Here
each request's line and headers must fit in HEAD_BYTES and arrive within HEAD_SECONDS (of the connection opening,
or of the previous answer on a kept-alive one), and no client address holds more than MAX_CONNECTIONS_PER_CLIENT
connections at once, or twice the server's places where it has more (a proxy in front is one address, with a
connection for each request it passes on): the ones beyond are closed unread. The body has its own deadline
(`app.READ_SECONDS`).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_BYTES = 64 * 2**10  # a request line and headers; browsers send a few KiB (cookies included)
HEAD_SECONDS = 10
MAX_CONNECTIONS_PER_CLIENT = 64


class GuardedConnection(H11Protocol):
    """One client connection. uvicorn's `http` takes `functools.partial(GuardedConnection, places=N)`, N the
    requests the server holds at once, with `h11_max_incomplete_event_size=HEAD_BYTES`."""

    head_deadline: asyncio.TimerHandle | None = None

    def __init__(self, *args, places: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.places = places

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        address = self.client[0] if self.client else None
        same_client = sum(1 for other in self.connections if other.client and other.client[0] == address)
        if address is not None and same_client > max(MAX_CONNECTIONS_PER_CLIENT, 2 * self.places):
            transport.close()
            return
        self._await_head()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a request's head has arrived: from here its body's deadline applies
            self._cancel_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._await_head()  # kept alive, with no pipelined request already under way

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._cancel_head_deadline()
        self.head_deadline = self.loop.call_later(HEAD_SECONDS, self._head_too_slow)

    def _cancel_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _head_too_slow(self) -> None:
        self.head_deadline = None
        if not self.transport.is_closing():
            self.transport.close()
