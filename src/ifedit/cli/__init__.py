"""The `ifedit` command: a thin caller of the library that turns user mistakes into one clear line.

One module per command registers its options and its handler; `options` holds what several commands share.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence

from .. import __version__
from ..errors import IFEditError, InvalidInputError
from ..redact import redact, register_secret, safe_text, strip_control
from . import bench, edit, info, plan, prompt, serve, toyworld, ui
from .options import EXIT_CASES_FAILED, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_SETUP, Parser

__all__ = [
    "EXIT_CASES_FAILED",
    "EXIT_INPUT",
    "EXIT_INTERRUPTED",
    "EXIT_SETUP",
    "build_parser",
    "main",
    "recorded_argv",
]

logger = logging.getLogger("ifedit")

# Every option whose value is a secret; their values are masked in records and output.
SECRET_OPTIONS = ("--vlm-api-key", "--judge-api-key", "--api-key")
# Words that make an unknown option's value a secret too (a misspelt key option is quoted in the parser's error).
SECRET_WORDS = ("key", "token", "secret", "passw")
# Environment variables that may hold a key; masked wherever their values show up.
SECRET_VARIABLES = ("IFEDIT_VLM_API_KEY", "OPENAI_API_KEY", "IFEDIT_JUDGE_API_KEY", "IFEDIT_SERVE_API_KEY")


def build_parser() -> argparse.ArgumentParser:
    """The `ifedit` parser: each command's module registers its options and its handler (`args.func`)."""
    parser = Parser(
        prog="ifedit",
        description="Edit images with image-to-video diffusion models (IF-Edit, arXiv 2511.19435): the edit is "
        "generated as a short video that starts at your photo, and the result is read off its end.",
        epilog=f"exit status: 0 done; {EXIT_INPUT} bad input (an option, a path, an image), said in one line before "
        f"any work; {EXIT_SETUP} a setup problem (a missing extra, weights or GPU, a failed write or server); "
        f"{EXIT_CASES_FAILED} `bench run` finished with failed cases; {EXIT_INTERRUPTED} interrupted (Ctrl-C; "
        "128 + the signal's number for others), with no output half-written.",
    )
    parser.add_argument("--version", action="version", version=f"ifedit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for command in (edit, prompt, toyworld, bench, ui, plan, serve, info):
        command.register(commands)
    return parser


def _check_common_options(args: argparse.Namespace) -> None:
    """Options shared by several commands whose bad values would only show after a model loaded or a server was
    called (or never: a timeout is used only when a server is)."""
    from ..prompting.api import MAX_TIMEOUT_S

    timeout = getattr(args, "vlm_timeout", None)
    if timeout is not None and not 0 < timeout <= MAX_TIMEOUT_S:
        raise InvalidInputError(f"--vlm-timeout must be more than 0 and at most {MAX_TIMEOUT_S:g} s, got {timeout:g}")
    model = getattr(args, "vlm_api_model", None)
    if model is not None and (not model.strip() or strip_control(model) != model):
        raise InvalidInputError("--vlm-api-model must be a model name without control characters")
    threshold = getattr(args, "first_block_cache", None)
    if threshold is not None and threshold <= 0:
        raise InvalidInputError(f"--first-block-cache must be a threshold above 0 (e.g. 0.05), got {threshold:g}")
    lora_scale = getattr(args, "lora_scale", None)
    if lora_scale is not None and abs(lora_scale) > 100:
        raise InvalidInputError(f"--lora-scale must be between -100 and 100, got {lora_scale:g}")


def _is_secret_option(arg: str) -> bool:
    """An option that holds a key, however it is spelled: the real ones, abbreviations and misspellings (refused by
    the parser, whose message quotes them) such as `--vlm-api-k`, `--VLM-API-KEY`, `--vlm-token=`, `-api_key`."""
    name = re.split("[=:]", arg, maxsplit=1)[0].lower().replace("_", "-")
    return name.startswith("-") and (
        any(word in name for word in SECRET_WORDS)
        or any(option.startswith(name) and name.startswith(option[: -len("ey")]) for option in SECRET_OPTIONS)
        or bool(difflib.get_close_matches(name, SECRET_OPTIONS, n=1, cutoff=0.85))  # --vlm-api-kye, --api-kee
    )


def recorded_argv(argv: Sequence[str]) -> list[str]:
    """The command line as records keep it: the value of every key option replaced by `***`."""
    recorded: list[str] = []
    value_is_secret = False
    for arg in argv:
        if value_is_secret:
            recorded.append("***")
            value_is_secret = False
        elif _is_secret_option(arg):
            inline = re.search("[=:]", arg)
            recorded.append(arg[: inline.end()] + "***" if inline else arg)
            value_is_secret = not inline
        else:
            recorded.append(arg)
    return recorded


def _register_secrets(argv: Sequence[str]) -> None:
    """Every key this run knows of, registered before parsing so that no message or record shows it: argparse
    quotes bad arguments, and a server may echo a key in an error."""
    for arg, recorded in zip(argv, recorded_argv(argv), strict=True):
        if recorded == "***":  # the value after a key option
            register_secret(arg)
        elif recorded != arg:  # `--option=KEY`: what the mask replaced
            register_secret(arg[len(recorded) - len("***") :])
    for variable in SECRET_VARIABLES:
        register_secret(os.environ.get(variable))


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a service manager, `kill`, a closed terminal's shell) stops a run the way Ctrl-C does, so temporary
    outputs are removed on the way out instead of left behind."""
    received: list[int] = []  # the signal, for the exit status (128 + its number, as a shell reports it)
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def interrupt(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _register_secrets(argv)
    # Paths that are not valid UTF-8 and text from servers must not crash a print after a finished edit.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    args.argv = recorded_argv(argv)
    _configure_logging(quiet=getattr(args, "quiet", False))
    received: list[int] = []
    try:
        _check_common_options(args)
        with _terminate_as_interrupt() as received:
            return args.func(args)
    except InvalidInputError as error:
        print(f"ifedit: error: {safe_text(error)}", file=sys.stderr)
        return EXIT_INPUT
    except IFEditError as error:
        print(f"ifedit: error: {safe_text(error)}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        print("ifedit: interrupted; outputs of the unfinished work were not written", file=sys.stderr)
        return 128 + received[0] if received else EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of the output went away (`ifedit plan --json | head`): stop quietly, as other tools do, with
        # the status a shell reports for SIGPIPE; stdout goes nowhere so Python's flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _configure_logging(quiet: bool) -> None:
    """Our notes and warnings as `ifedit: ...` lines; the libraries' own chatter only when it is an error."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SafeFormatter("ifedit: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


class _SafeFormatter(logging.Formatter):
    """Log lines with secrets masked and control codes removed (messages may quote a server's answer)."""

    def format(self, record: logging.LogRecord) -> str:
        return strip_control(redact(super().format(record)), keep_newlines=True)
