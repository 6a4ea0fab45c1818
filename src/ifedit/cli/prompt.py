"""`ifedit prompt`: the video prompt `ifedit edit` would use, and which backend wrote it, without editing."""

from __future__ import annotations

import argparse
import json
import sys

from ..io import load_image
from ..redact import redact, safe_text
from .options import add_prompt_arguments, enhance


def register(commands) -> None:
    prompt = commands.add_parser(
        "prompt",
        help="write the video prompt for an image and instruction, without editing",
        description="Print the time-ordered video prompt that `ifedit edit` would use for IMAGE and TEXT, and "
        "which backend wrote it.",
    )
    prompt.add_argument("image", help="source image")
    prompt.add_argument("text", help="the instruction (or, with --input-kind target, a caption of the result)")
    add_prompt_arguments(prompt)
    prompt.add_argument("--json", action="store_true", help="print the full record as JSON")
    prompt.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = enhance(args, load_image(args.image), args.text)
    if args.json:
        print(redact(json.dumps(result.to_record(), indent=2, ensure_ascii=False)))
        return 0
    # Everything printed here may come from a server: masked and without control codes, like every record.
    print(safe_text(result.prompt))
    source = result.backend + (f" ({result.model})" if result.model else "")
    cached = ", from cache" if result.cached else ""
    # The backends passed over were said as warnings when it happened; --json keeps them in the record.
    print(safe_text(f"# written by {source} in {result.elapsed_s:.1f} s{cached}"), file=sys.stderr)
    return 0
