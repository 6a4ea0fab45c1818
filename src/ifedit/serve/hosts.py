"""Which hosts are this machine's own: a server without an API key listens on them only, and answers only requests
addressed to them and sent from no other site's page."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_authority(authority: str) -> bool:
    """Whether a Host header (`name[:port]`, `[v6][:port]`) names this machine by a loopback name or address."""
    try:
        host = urlsplit(f"//{authority}").hostname
    except ValueError:  # a malformed bracket or port
        return False
    return host is not None and is_loopback(host)


def loopback_origin(origin: str) -> bool:
    """Whether an Origin header is a page served from this machine (`null`, a sandboxed page's, is not)."""
    try:
        parts = urlsplit(origin)
        host = parts.hostname
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and host is not None and is_loopback(host)
