"""One loaded model serving edits one at a time and reporting each step: in the server's process or as a Ray replica.

A request's life is a stream of plain dicts (they cross Ray's process boundary as they are): "started" when the
model takes it, "progress" after every denoising step, then one "result" or "error". Errors are data, not
exceptions, so a bad input stays a 400 with its one-line message wherever the replica runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from ..cli import options as cli_options
from ..editor import Editor
from ..errors import IFEditError, InvalidInputError, NumericalError
from ..loading import LoadOptions
from ..options import EditSettings
from ..pipeline import refine_start_step
from ..presets import Preset
from ..redact import redact_data, register_secret, safe_text
from .form import EditRequest

logger = logging.getLogger("ifedit")

Event = dict[str, Any]
FINAL_EVENTS = ("result", "error")
HOST_STATE = ("free_host_gb", "free_gpu_gb")  # the serving machine's memory when the model loaded
# What the prompt stage reads from the command line (`cli_options.enhance`); a replica gets these and nothing else.
PROMPT_OPTIONS = (
    "prompt_enhancer",
    "input_kind",
    "vlm",
    "vlm_base_url",
    "vlm_api_model",
    "vlm_api_key",
    "vlm_timeout",
    "no_cache",
    "strict_prompt",
    "device",
    "model",  # the toy world, trained on the offline template's wording, gets the template unless a VLM is named
)


class Cancelled(Exception):
    """The request was given up on (cancelled, past its deadline, or its caller went away)."""


def error_event(status: int, code: str, message: str) -> Event:
    return {"event": "error", "status": status, "code": code, "message": safe_text(message)}


def prompt_options(args: argparse.Namespace) -> argparse.Namespace:
    """The prompt stage's options out of `ifedit serve`'s (not the server's own key, which replicas never need)."""
    return argparse.Namespace(**{name: getattr(args, name) for name in PROMPT_OPTIONS})


def edit_steps(settings: EditSettings) -> int:
    """Denoising steps one edit runs: the edit pass, and the part of the refinement pass its strength runs."""
    steps = settings.num_inference_steps
    if not settings.refine:
        return steps
    refine_steps = settings.refine_steps or steps
    return steps + refine_steps - refine_start_step(refine_steps, settings.refine_strength)


class EditReplica:
    """A model loaded once; `stream` runs a request's edits on its one worker thread and yields their events."""

    def __init__(
        self,
        preset: Preset,
        options: LoadOptions,
        prompt_options: argparse.Namespace,
        threads: int | None = None,
    ):
        if threads is not None:
            torch.set_num_threads(threads)
        cli_options.quiet_libraries()
        register_secret(prompt_options.vlm_api_key)  # a Ray replica is a process of its own
        self.editor = Editor(preset, options)
        self.editor.pipe.set_progress_bar_config(disable=True)
        self.prompt_options = prompt_options
        # One worker: the model runs one edit at a time, and a request given up on while waiting is skipped.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ifedit-edit")

    async def stream(self, request: EditRequest) -> AsyncIterator[Event]:
        """The events of `request`, ending with "result" or "error"; closing the stream early stops the edit."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        stop = threading.Event()

        def emit(event: Event) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed when the server stopped mid-edit
                loop.call_soon_threadsafe(events.put_nowait, event)

        loop.run_in_executor(self._executor, self._run, request, stop, emit)
        try:
            while True:
                event = await events.get()
                yield event
                if event["event"] in FINAL_EVENTS:
                    return
        finally:
            stop.set()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _run(self, request: EditRequest, stop: threading.Event, emit: Callable[[Event], None]) -> None:
        """The worker thread's whole job for one request: every outcome becomes an event."""
        try:
            if stop.is_set():
                raise Cancelled
            emit({"event": "started"})
            emit(self._edit(request, stop, emit))
        except Cancelled:
            emit(error_event(499, "cancelled", "the edit was cancelled"))
        except InvalidInputError as error:
            emit(error_event(400, "invalid_input", str(error)))
        except NumericalError as error:  # a retry would overflow alike
            emit(error_event(500, "numerical_error", str(error)))
        except IFEditError as error:
            emit(error_event(503, "setup_error", str(error)))
        except torch.OutOfMemoryError:
            emit(error_event(503, "out_of_memory", "out of memory: ask for a smaller size or fewer frames"))
        except Exception:
            logger.exception("an edit failed")
            emit(error_event(500, "internal_error", "the edit failed on the server; details are in its log"))

    def _edit(self, request: EditRequest, stop: threading.Event, emit: Callable[[Event], None]) -> Event:
        start = time.perf_counter()
        if request.video_prompt is not None:
            prompt, provenance = request.video_prompt, {"backend": "given"}
        else:
            options = argparse.Namespace(**{**vars(self.prompt_options), "input_kind": request.input_kind})
            enhanced = cli_options.enhance(options, request.image, request.instruction, device=_device(options))
            prompt, provenance = enhanced.prompt, enhanced.to_record()
        per_edit = edit_steps(request.settings)
        total = per_edit * len(request.seeds)
        done = 0

        def step(pipe, index: int, timestep, tensors: dict) -> dict:
            # Raising stops at once; the pipeline's interrupt flag would still decode and pick a frame first.
            if stop.is_set():
                raise Cancelled
            nonlocal done
            done += 1
            emit({"event": "progress", "step": done, "total": total, "stage": pipe.stage})
            return {}

        images = []
        for seed in request.seeds:
            edit = self.editor.edit(
                request.image,
                request.instruction,
                request.settings,
                prompt=prompt,
                prompt_provenance=provenance,
                seed=seed,
                callback=step,
                source=request.source,
            )
            png = io.BytesIO()
            edit.result.image.save(png, format="PNG")
            images.append({"png": png.getvalue(), "prompt": prompt, "record": served_record(edit.record)})
        return {"event": "result", "images": images, "seconds": time.perf_counter() - start}


def served_record(record: dict[str, Any]) -> dict[str, Any]:
    """An edit's record as a client may see it: keys masked, the server's model files (its folder, LoRA and
    expert files) named by their base names only, and the machine's free memory left out: clients learn how the
    edit was made, not how the server is laid out."""
    served = dict(record)
    if "model" in served:
        served["model"] = _base_names(served["model"])
    if isinstance(served.get("memory_plan"), dict):
        served["memory_plan"] = {key: value for key, value in served["memory_plan"].items() if key not in HOST_STATE}
    return redact_data(served)


def _base_names(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _base_names(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_base_names(item) for item in value]
    if isinstance(value, str) and os.path.isabs(os.path.expanduser(value)):
        return os.path.basename(value.rstrip(os.sep)) or value
    return value


def _device(options: argparse.Namespace) -> str | None:
    """Where a local VLM runs: the model's device when one was named, else its own choice."""
    return None if options.device == "auto" else options.device
