"""Whether the Hugging Face Hub can be reached, found out once per process with one short connection attempt.

Without a network the Hub's client retries every file it asks about for about half a minute before it gives up or
falls back to its cache, so loading a model by Hub id on a machine that is offline took minutes to fail (or to use
the copy it had all along). With the answer known, weights come from the download cache alone, and a model that is
not there fails at once, saying why.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.request
from urllib.parse import urlsplit

from huggingface_hub import constants, try_to_load_from_cache

logger = logging.getLogger("ifedit")

PROBE_SECONDS = 3.0  # for the whole probe, the name's lookup included
_probed: dict[str, str | None] = {}  # endpoint -> why it cannot be reached, or None


def unreachable() -> str | None:
    """Why the Hub cannot be reached now (its name does not resolve, or nothing answers on its port within
    PROBE_SECONDS), or None when it answers or when a proxy is set; asked once per endpoint and process."""
    endpoint = constants.ENDPOINT
    if endpoint not in _probed:
        _probed[endpoint] = None if _proxied(endpoint) else _probe(endpoint)
        if _probed[endpoint]:
            logger.info(
                "the Hugging Face Hub cannot be reached (%s): using downloaded weights only", _probed[endpoint]
            )
    return _probed[endpoint]


def known_unreachable() -> str | None:
    """The reason `unreachable` found, if it was asked; never asks itself."""
    return _probed.get(constants.ENDPOINT)


def cache_only(model_id: str, local_files_only: bool = False) -> bool:
    """Whether a model named by Hub id must come from the download cache alone: when asked to (--offline,
    HF_HUB_OFFLINE), or when the Hub cannot be reached. A local folder never needs the Hub."""
    if local_files_only or constants.HF_HUB_OFFLINE:
        return True
    if is_folder(model_id):
        return False
    return unreachable() is not None


def is_folder(model_id: str) -> bool:
    return os.path.isdir(os.path.expanduser(model_id))


def is_downloaded(model_id: str, file: str = "config.json") -> bool:
    """Whether the download cache holds `file` of the model `model_id` (its main revision)."""
    try:
        return isinstance(try_to_load_from_cache(model_id, file), str)
    except ValueError:  # not a repository id
        return False


def _proxied(endpoint: str) -> bool:
    """Whether requests to `endpoint` go through a proxy (which a direct connection attempt cannot judge): one set
    in the environment or the system's settings (macOS, Windows), as the Hub's HTTP client finds them, and not
    bypassed for its host. `no_proxy` alone names no proxy."""
    host = urlsplit(endpoint).hostname or ""
    proxies = [scheme for scheme in urllib.request.getproxies() if scheme != "no"]
    return bool(proxies) and not (host and urllib.request.proxy_bypass(host))


def _probe(endpoint: str) -> str | None:
    """One connection attempt to the endpoint's host and port, the lookup of its name included, given
    PROBE_SECONDS in all (a firewall that drops packets, or a lookup that hangs, answers nothing)."""
    parts = urlsplit(endpoint)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return None
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=PROBE_SECONDS):
                outcome.append(None)
        except OSError as error:
            outcome.append(f"{host}: {error.strerror or error or type(error).__name__}")

    # A daemon thread: a lookup still hanging when the answer is due must not keep the process from exiting.
    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(PROBE_SECONDS)
    return outcome[0] if outcome else f"{host}: no answer within {PROBE_SECONDS:g} s"
