"""`ifedit serve`: OpenAI's image-edit API over HTTP, in this process or on Ray Serve replicas."""

from __future__ import annotations

import argparse

from .options import add_model_and_sampling_arguments, add_prompt_arguments, finite_float


def register(commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve edits over HTTP: OpenAI's image-edit API, in this process or on Ray Serve replicas",
        description="Load the model and answer OpenAI's POST /v1/images/edits (OpenAI's clients edit with it as "
        "they are), jobs for long edits (POST /v1/edits, then GET or DELETE /v1/edits/ID), GET /v1/models, /health "
        "and /metrics. The edit options below are the defaults of every request; a request changes the per-edit "
        "ones with form fields of the same name (steps, tld_stride, refine, fast, ...).",
        epilog="example: ifedit serve --model toyworld  (then POST to http://127.0.0.1:8000/v1/images/edits)",
    )
    server = serve.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, loopback)")
    server.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    server.add_argument(
        "--api-key",
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' (prefer $IFEDIT_SERVE_API_KEY); needed for any --host but loopback",
    )
    server.add_argument(
        "--queue-size",
        type=int,
        default=4,
        help="requests waiting per replica beyond the one it edits; more get 429 (default: %(default)s)",
    )
    server.add_argument(
        "--timeout",
        type=finite_float,
        default=600.0,
        help="seconds per request, waiting included (default: %(default)s)",
    )
    server.add_argument(
        "--url-ttl",
        type=finite_float,
        default=3600.0,
        help="seconds result URLs and finished jobs are kept (default: %(default)s)",
    )
    server.add_argument("--public-url", metavar="URL", help="the server's address as clients reach it through a proxy")
    ray = serve.add_argument_group("replicas on Ray Serve (without these, one model in this process)")
    ray.add_argument("--replicas", type=int, help="model replicas: one per GPU, or CPU replicas where there is none")
    ray.add_argument("--min-replicas", type=int, help="autoscale with the queue down to this many")
    ray.add_argument("--max-replicas", type=int, help="autoscale with the queue up to this many")
    ray.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="alone, a Ray cluster on this machine (the default); with ADDRESS (auto, ray://head:10001), join it",
    )
    add_model_and_sampling_arguments(serve, seed_help="seed of every edit that names none (default: a new one)")
    prompt = add_prompt_arguments(serve)
    prompt.add_argument("--negative-prompt", help="what to avoid (only used when guidance is above 1)")
    serve.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..serve.command import serve

    return serve(args)
