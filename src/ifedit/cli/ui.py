"""`ifedit ui`: the model loaded once behind a web page for editing."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os

from ..errors import InvalidInputError, SetupError
from ..extras import install_command
from ..presets import resolve_model
from .options import (
    add_model_arguments,
    add_prompt_arguments,
    enhance,
    load_options,
    quiet_libraries,
    with_lora_options,
)

logger = logging.getLogger("ifedit")


def register(commands) -> None:
    ui = commands.add_parser(
        "ui",
        help="edit in a web page: upload a photo, type the instruction, see the result and its frames",
        description="Load the model once and serve a web page (Gradio) for editing: the video prompt can be read "
        "and changed before running, and the result comes with a before/after view, the candidate frames with "
        "their sharpness, the clip and the JSON record. Edits run one at a time; others wait in a visible queue.",
        epilog="example: ifedit ui --model toyworld  (then open http://127.0.0.1:7860)",
    )
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine)")
    ui.add_argument("--port", type=int, default=7860, help="port to listen on (default: %(default)s)")
    ui.add_argument("--share", action="store_true", help="also publish the page through a temporary gradio.live link")
    ui.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name the page also answers under, and whose pages may use it, besides localhost: the public "
        "name of a proxy on this machine that forwards to it (JupyterHub's, code-server's); repeatable",
    )
    add_model_arguments(ui)
    add_prompt_arguments(ui)
    ui.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("gradio") is None or importlib.util.find_spec("imageio_ffmpeg") is None:
        raise SetupError(f"ifedit ui needs the ui extra: {install_command('ui')}")
    if not 0 < args.port < 65536:
        raise InvalidInputError(f"--port must be between 1 and 65535, got {args.port}")
    preset = with_lora_options(resolve_model(args.model), args)
    quiet_libraries()
    # An editor of private photos reports no usage statistics unless the user asks Gradio to.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from ..editor import Editor
    from ..loading import check_placement
    from ..ui import EditorApp, serve

    options = load_options(args)
    check_placement(preset, options)
    editor = Editor(preset, options)
    device = None if args.device == "auto" else args.device
    from ..prompting.chain import _plan as prompt_plan

    # Only a local VLM, here or as the fallback after a server, runs on the editor's device.
    on_device = "local" in prompt_plan(args.prompt_enhancer, args.vlm, args.vlm_base_url).vlms
    app = EditorApp(editor, lambda image, text: enhance(args, image, text, device=device), prompt_on_device=on_device)
    logger.info("model loaded in %.1f s; serving on http://%s:%d", editor.load_seconds, args.host, args.port)
    try:
        serve(app, args.host, args.port, args.share, allowed_hosts=tuple(args.allow_host))
    except OSError as error:
        raise SetupError(f"cannot serve on {args.host}:{args.port}: {error}") from None
    return 0
