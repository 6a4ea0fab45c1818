"""Which hosts are this machine's own, and a guard for servers that listen on them without a key (the API server
without a key, the web page): they answer only requests addressed to a loopback name and sent from no other site.

Listening on 127.0.0.1 keeps other machines out, not other sites: a page the user opens can post a form to any
local port without asking, and a page whose name its owner rebinds to 127.0.0.1 (DNS rebinding) is, to the
browser, the same site as the local server, so it can read the answers too. Both show in the headers the browser
sends: the Host is the attacker's name, or the Origin another site.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from urllib.parse import urlsplit


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_authority(authority: str, allowed: tuple[str, ...] = ()) -> bool:
    """Whether a Host header (`name[:port]`, `[v6][:port]`) names this machine by a loopback name or address, or
    by one of the `allowed` names."""
    try:
        host = urlsplit(f"//{authority}").hostname
    except ValueError:  # a malformed bracket or port
        return False
    return host is not None and (is_loopback(host) or host in _lower(allowed))


def loopback_origin(origin: str, allowed: tuple[str, ...] = ()) -> bool:
    """Whether an Origin header is a page served from this machine (`null`, a sandboxed page's, is not), or from
    one of the `allowed` names."""
    try:
        parts = urlsplit(origin)
        host = parts.hostname
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and host is not None and (is_loopback(host) or host in _lower(allowed))


def _lower(names: tuple[str, ...]) -> set[str]:
    return {name.lower() for name in names}


def refusal(headers: list[tuple[bytes, bytes]], allowed: tuple[str, ...] = ()) -> str | None:
    """Why a request with these headers is not one of this machine's own (its Host, or its Origin), or None;
    `allowed` names count as this machine's (a proxy on it that forwards to the server under its public name)."""
    named = dict(headers)
    host = named.get(b"host", b"").decode("latin-1")
    origin = named.get(b"origin")
    if not loopback_authority(host, allowed):
        return f"addressed to {host[:100]!r}"
    if origin is not None and not loopback_origin(origin.decode("latin-1"), allowed):
        return f"sent by a page of {origin.decode('latin-1')[:100]!r}"
    return None


class LoopbackOnly:
    """ASGI middleware: requests that `refusal` finds are answered by `respond(reason)` (an ASGI response) and never
    reach the app; a refused WebSocket is closed."""

    def __init__(self, app, respond: Callable[[str], Callable], allowed: tuple[str, ...] = ()):
        self.app, self.respond, self.allowed = app, respond, allowed

    async def __call__(self, scope, receive, send):
        reason = refusal(scope["headers"], self.allowed) if scope["type"] in ("http", "websocket") else None
        if reason is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        await self.respond(reason)(scope, receive, send)
