"""`ifedit serve`: check the options, choose where edits run, and serve HTTP until interrupted."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os

from ..cli import options as cli_options
from ..errors import InvalidInputError, SetupError
from ..extras import install_command
from ..hosts import is_loopback
from ..loading import check_placement
from ..presets import resolve_model
from ..redact import register_secret
from .backends import LocalBackend, RayBackend, RayPlan
from .replica import EditReplica, prompt_options

logger = logging.getLogger("ifedit")

KEY_VARIABLE = "IFEDIT_SERVE_API_KEY"
MIN_KEY_CHARS = 16
SERVE_MODULES = ("fastapi", "uvicorn", "multipart", "prometheus_client")


def serve(args: argparse.Namespace) -> int:
    """Run the server as `args` (the parsed `ifedit serve` command line) ask, until interrupted."""
    service = build_service(args)
    from .app import bind, uvicorn_server

    listening = bind(args.host, args.port)
    where = f"{replica_counts(args)[1]} Ray Serve replicas" if _uses_ray(args) else "this process"
    logger.info(
        "serving %s on http://%s:%d with the model in %s; /health answers 503 until it has loaded",
        service.config.model,
        args.host,
        args.port,
        where,
    )
    server = uvicorn_server(service)
    try:
        server.run(sockets=[listening])
    except KeyboardInterrupt:
        # uvicorn shuts down cleanly on SIGTERM or Ctrl-C, then raises the signal again: that is a normal stop.
        if not server.stopped:
            raise
    if service.failure:
        raise SetupError(service.failure)
    logger.info("the server has stopped")
    return 0


def build_service(args: argparse.Namespace):
    """The Service for `args`, every option checked before anything loads."""
    missing = [name for name in SERVE_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise SetupError(f"ifedit serve needs the serve extra (missing {missing[0]}): {install_command('serve')}")
    key = api_key(args)
    _check_server_options(args)
    preset = cli_options.with_lora_options(resolve_model(args.model), args)
    cli_options.edit_settings_of(preset, args)  # the defaults of every request, checked once up front
    cli_options.quiet_libraries()
    options = cli_options.load_options(args)
    replica_args = (preset, options, prompt_options(args))
    if _uses_ray(args):
        low, initial, high = replica_counts(args)
        plan = RayPlan(args.ray or None, initial, low, high, args.queue_size, replica_args)
        backend = RayBackend(plan)
    else:
        check_placement(preset, options)  # Ray replicas check on the machines they land on
        backend = LocalBackend(lambda: EditReplica(*replica_args))
    from .app import ServeConfig, Service

    defaults = argparse.Namespace(**{name: value for name, value in vars(args).items() if name != "api_key"})
    config = ServeConfig(
        preset=preset,
        defaults=defaults,
        api_key=key,
        queue_size=args.queue_size,
        timeout=args.timeout,
        url_ttl=args.url_ttl,
        public_url=args.public_url,
    )
    return Service(backend, config)


def api_key(args: argparse.Namespace) -> str | None:
    """The key from --api-key or $IFEDIT_SERVE_API_KEY, masked in all output from now on; required off loopback."""
    key = args.api_key or os.environ.get(KEY_VARIABLE) or None
    if key is not None:
        key = key.strip()
        register_secret(key)
        if not all("!" <= char <= "~" for char in key):
            # HTTP headers carry bytes that servers read as Latin-1: a key with other characters could never match.
            raise InvalidInputError(
                "the API key must be printable ASCII without spaces (letters, digits, punctuation), e.g. from "
                "python -c 'import secrets; print(secrets.token_urlsafe())'"
            )
        if len(key) < MIN_KEY_CHARS:
            raise InvalidInputError(
                f"the API key must be at least {MIN_KEY_CHARS} characters, e.g. from "
                "python -c 'import secrets; print(secrets.token_urlsafe())'"
            )
    elif not is_loopback(args.host):
        raise InvalidInputError(
            f"--host {args.host} lets other machines reach the server: set an API key with ${KEY_VARIABLE} "
            "(or --api-key)"
        )
    return key


def _uses_ray(args: argparse.Namespace) -> bool:
    return any(value is not None for value in (args.replicas, args.min_replicas, args.max_replicas, args.ray))


def _check_server_options(args: argparse.Namespace) -> None:
    if not 0 < args.port < 65536:
        raise InvalidInputError(f"--port must be between 1 and 65535, got {args.port}")
    if args.queue_size < 0:
        raise InvalidInputError(f"--queue-size must be 0 or more, got {args.queue_size}")
    for name in ("timeout", "url_ttl"):
        if not getattr(args, name) > 0:
            raise InvalidInputError(
                f"--{name.replace('_', '-')} must be more than 0 seconds, got {getattr(args, name)}"
            )
    if args.public_url is not None and not args.public_url.startswith(("http://", "https://")):
        raise InvalidInputError(f"--public-url must start with http:// or https://, got {args.public_url!r}")


def replica_counts(args: argparse.Namespace) -> tuple[int, int, int]:
    """(fewest, initial, most) replicas: --replicas alone fixes the count; --min/--max-replicas autoscale."""
    for name in ("replicas", "min_replicas", "max_replicas"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InvalidInputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    low = args.min_replicas or (1 if args.max_replicas else args.replicas or 1)
    initial = args.replicas or low
    high = args.max_replicas or max(low, initial)
    if not low <= initial <= high:
        raise InvalidInputError(
            f"replicas must satisfy --min-replicas <= --replicas <= --max-replicas, got {low}, {initial}, {high}"
        )
    return low, initial, high
