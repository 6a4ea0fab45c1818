"""The web interface (`ifedit ui`): a Gradio page over the same Editor and prompt stage as the command line.

`EditorApp` holds what the page needs on the server (one loaded model, the prompt stage, a folder for results)
and its methods are the page's handlers in plain Python: they raise InvalidInputError like the library does.
`build_page` wires them to Gradio components and turns every error into a message in the page.

Every handler is also an HTTP endpoint that anyone who reaches the page can call with any JSON: `Uploads` decides
which files a request may name, and prompt writing never holds the model's turn unless it runs on the same device.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import gradio as gr
import gradio.utils
import PIL.Image

from .editor import Editor, final_frame
from .errors import IFEditError, InvalidInputError
from .hosts import LoopbackOnly, is_loopback
from .io import MAX_UPLOAD_BYTES, load_image, save_image, save_json
from .options import MIN_FRAMES, EditSettings, check_seed
from .outputs import save_video
from .pipeline import refine_start_step
from .presets import edit_settings
from .prompting import PromptResult
from .redact import safe_text, strip_control
from .sizes import fit_size
from .toyworld.scenes import render_frame, sample_case

logger = logging.getLogger("ifedit")

Enhancer = Callable[[PIL.Image.Image, str], PromptResult]
Progress = Callable[[int, int, str], None]

KEPT_CLIPS = 8  # edits whose frames stay in memory for "Refine this frame"
QUEUE_SIZE = 20  # edits waiting beyond this are refused at once instead of after a long wait
# Gradio's copies of uploads and results: checked hourly, deleted a day after they were made and when the page stops.
DELETE_CACHE = (3600, 24 * 3600)
NO_SUCH_UPLOAD = "no such upload: upload the photo again"
MAX_NAME_CHARS = 120
# The folders of an absolute path (POSIX or Windows); a message keeps only the last name, never the server's layout.
SERVER_FOLDERS = re.compile(r"(?<![\w.:/\\])(?:[A-Za-z]:)?[/\\](?:[^\s/\\'\"]+[/\\])+")
ZERO_IS_AUTOMATIC = ("height", "width", "tld_threshold", "refine_steps", "refine_frames")
EXAMPLE_SEEDS = (1_000_003, 1_000_007, 1_000_012)  # held-out toy-world scenes (training never sees these seeds)
# Gradio's default theme fetches fonts from a CDN; system fonts keep the page private and work offline.
THEME_FONTS = {"font": ["ui-sans-serif", "system-ui", "sans-serif"], "font_mono": ["ui-monospace", "monospace"]}


@dataclass
class EditView:
    """Everything the page shows after an edit."""

    prompt: str
    prompt_record: dict[str, Any]
    image: PIL.Image.Image
    before_after: tuple[PIL.Image.Image, PIL.Image.Image]
    candidates: list[tuple[PIL.Image.Image, str]]
    chosen: int  # position in `candidates` of the frame that became the result
    clip: Path | None
    record: Path
    status: str
    clip_id: str | None = None  # names the clip's frames kept for "Refine this frame"
    clip_frames: int = 0
    selected_frame: int = 0


class Uploads:
    """The files a request may name: those Gradio's upload route wrote for this server, and the page's examples.

    Handlers take the client's JSON as sent (a path in it is only the client's word), so reading any other file
    would show strangers the server's disk; one message for every refusal keeps them from learning which paths exist.
    """

    def __init__(self, folder: str | os.PathLike, *known: Collection[str]):
        self.folder = Path(folder).resolve()
        # Live views: Gradio adds a path as its file arrives and drops it when it deletes the file.
        self.known = known

    def find(self, upload: Any) -> tuple[Path, str]:
        """The file behind an upload and the name the user knows it by; InvalidInputError for anything else."""
        raw = upload.get("path") if isinstance(upload, dict) else upload
        if not isinstance(raw, str) or not any(raw in files for files in self.known):
            raise InvalidInputError(NO_SUCH_UPLOAD)
        path = Path(raw)
        try:
            # After symlinks: a link planted among the uploads must not lead elsewhere.
            received = path.resolve(strict=True).is_relative_to(self.folder) and path.is_file()
        except (OSError, RuntimeError):
            received = False
        if not received:
            raise InvalidInputError(NO_SUCH_UPLOAD)
        given = upload.get("orig_name") if isinstance(upload, dict) else None
        name = strip_control(PurePath(given).name if isinstance(given, str) else "").strip()[:MAX_NAME_CHARS]
        return path, name or path.name


class EditorApp:
    """The page's server side: one model loaded once, the prompt stage, and a folder for results and examples.

    `prompt_on_device` says the prompt stage runs a model on the editor's device (a local VLM): then writing a
    prompt takes turns with edits; a VLM server or the offline template never holds up an edit.
    """

    def __init__(self, editor: Editor, enhance: Enhancer, *, prompt_on_device: bool):
        self.editor = editor
        self.enhance = enhance
        self.prompt_on_device = prompt_on_device
        self.workdir = Path(tempfile.mkdtemp(prefix="ifedit-ui-"))
        self.uploads = Uploads(self.workdir)  # none until a page tells which files Gradio received
        self._remove_workdir = weakref.finalize(self, shutil.rmtree, self.workdir, ignore_errors=True)
        # The decoded frames of the latest edits, for "Refine this frame"; older ones are let go.
        self.clips: collections.OrderedDict[str, list[PIL.Image.Image]] = collections.OrderedDict()
        self._clips_lock = threading.Lock()

    def close(self) -> None:
        """Delete every clip, record and example this app wrote."""
        self._remove_workdir()

    def read_upload(self, upload: dict[str, Any] | str | None) -> tuple[PIL.Image.Image, str]:
        """The uploaded image and the name the user knows it by, checked in origin, bytes, pixels and format."""
        if upload is None:
            raise InvalidInputError("no image: upload a photo or pick an example first")
        path, name = self.uploads.find(upload)
        return load_image(path, max_bytes=MAX_UPLOAD_BYTES, name=name), name

    def inspect(self, upload: dict[str, Any] | str | None) -> tuple[int, int]:
        """Check an image as soon as it arrives and propose the edit's (height, width); (0, 0), automatic, if none."""
        if upload is None:
            return 0, 0
        image, _ = self.read_upload(upload)
        return self.proposed_size(image.size)

    def proposed_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The preset's area at the photo's aspect, but never more pixels than the photo has (that costs time and
        adds no detail) nor more than the transformer has positions for (a small model cannot place them)."""
        pipe = self.editor.pipe
        area = min(self.editor.preset.recipe.max_area, image_size[0] * image_size[1])
        return fit_size(image_size, None, None, area, pipe.size_multiple, pipe.largest_side)

    def write_prompt(self, upload: dict[str, Any] | str | None, instruction: str) -> tuple[str, dict[str, Any]]:
        """The video prompt for this photo and instruction, with its provenance, for the user to read and edit."""
        image, _ = self.read_upload(upload)
        return self._written(image, _instruction(instruction))

    def prepare(
        self,
        upload: dict[str, Any] | str | None,
        instruction: str,
        prompt: str,
        prompt_record: dict[str, Any] | None,
        settings: dict[str, Any],
        seed: float | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Check the form and settle the prompt an edit will use, before the edit waits for the model: an empty one
        is written, one the user typed or changed is recorded as given."""
        image, _, instruction, _, _ = self._form(upload, instruction, settings, seed)
        prompt = (prompt or "").strip()
        return (prompt, _provenance(prompt, prompt_record)) if prompt else self._written(image, instruction)

    def run(
        self,
        upload: dict[str, Any] | str | None,
        instruction: str,
        prompt: str,
        prompt_record: dict[str, Any] | None,
        settings: dict[str, Any],
        seed: float | None = None,
        progress: Progress | None = None,
    ) -> EditView:
        """One edit as the form asks, with the prompt `prepare` settled; sizes left empty are the proposed ones."""
        image, name, instruction, settings, seed = self._form(upload, instruction, settings, seed)
        prompt = (prompt or "").strip()
        if not prompt:
            # Writing it here would hold the model's turn for as long as the prompt stage takes.
            raise InvalidInputError("video prompt must not be empty: write it first (Run does when the box is empty)")
        prompt_record = _provenance(prompt, prompt_record)
        edit = self.editor.edit(
            image,
            instruction,
            settings,
            prompt=prompt,
            prompt_provenance=prompt_record,
            seed=seed,
            return_frames=True,
            callback=_step_counter(settings, progress),
            source=name,
        )
        result = edit.result
        folder = Path(tempfile.mkdtemp(dir=self.workdir))
        clip, record = folder / "clip.mp4", folder / "edit.json"
        save_video(result.frames, clip, self.editor.preset.fps)
        save_json({**edit.record, "outputs": {"video": clip.name}}, record)
        candidates, chosen = _candidates(result)
        index, sharpness = final_frame(result)
        stage = "refinement" if result.refine_sharpness is not None else "edit"
        status = (
            f"Done in {result.timings['total']:.1f} s: seed {edit.record['seed']}, {result.width}x{result.height} px, "
            f"{result.num_frames} frames; the result is {stage} frame {index} (sharpness {sharpness:.1f})."
        )
        before = image.resize((result.width, result.height), PIL.Image.Resampling.LANCZOS)
        clip_id = self._keep_clip(list(result.frames))
        return EditView(
            prompt, prompt_record, result.image, (before, result.image), candidates, chosen, clip, record, status,
            clip_id, len(result.frames), result.selected_index,
        )  # fmt: skip

    def clip_frame(self, clip_id: str | None, index: float) -> PIL.Image.Image:
        """A frame of a recent edit's decoded clip (frame 0 is the source; the clip is the thinned one)."""
        frames = self._clip(clip_id)
        index = _whole(index)
        if not isinstance(index, int) or not 1 <= index < len(frames):
            raise InvalidInputError(f"frame must be a whole number from 1 to {len(frames) - 1}, got {index!r}")
        return frames[index]

    def refine_frame(
        self,
        clip_id: str | None,
        index: float,
        settings: dict[str, Any],
        seed: float | None = None,
        progress: Progress | None = None,
    ) -> EditView:
        """The refinement pass alone on a frame the user picked from the clip (the edit at that point of the clip)."""
        frame = self.clip_frame(clip_id, index)
        # The picked frame sets the size; the rest of the form is read as for an edit.
        settings = {key: value for key, value in _from_page(settings).items() if key not in ("height", "width")}
        settings = edit_settings(self.editor.preset, **settings)
        seed = None if seed is None or seed < 0 else _whole(seed)
        check_seed(seed)
        refine_steps = settings.refine_steps or settings.num_inference_steps
        counting = dataclasses.replace(settings, num_inference_steps=refine_steps, refine=False)
        edit = self.editor.refine(frame, settings, seed=seed, callback=_step_counter(counting, progress),
                                  source=f"frame {_whole(index)} of an edit's clip")  # fmt: skip
        result = edit.result
        folder = Path(tempfile.mkdtemp(dir=self.workdir))
        record = folder / "refine.json"
        save_json(edit.record, record)
        candidates = [
            (result.frames[i], f"refine frame {i}: sharpness {result.sharpness[i]:.1f}"
             + (" (chosen)" if i == result.selected_index else ""))
            for i in sorted(result.sharpness)
        ]  # fmt: skip
        chosen = sorted(result.sharpness).index(result.selected_index)
        index, sharpness = final_frame(result)
        status = (
            f"Refined the picked frame in {result.timings['total']:.1f} s: seed {edit.record['seed']}; the result is "
            f"refinement frame {index} (sharpness {sharpness:.1f})."
        )
        return EditView(edit.record["prompt"], edit.record["prompt_enhancement"], result.image,
                        (frame, result.image), candidates, chosen, None, record, status)  # fmt: skip

    def _keep_clip(self, frames: list[PIL.Image.Image]) -> str:
        clip_id = secrets.token_urlsafe(16)
        with self._clips_lock:
            self.clips[clip_id] = frames
            while len(self.clips) > KEPT_CLIPS:
                self.clips.popitem(last=False)
        return clip_id

    def _clip(self, clip_id: str | None) -> list[PIL.Image.Image]:
        with self._clips_lock:
            frames = self.clips.get(clip_id) if isinstance(clip_id, str) else None
        if frames is None:
            raise InvalidInputError("no clip to pick a frame from: run an edit first (only the latest are kept)")
        return frames

    def _form(
        self,
        upload: dict[str, Any] | str | None,
        instruction: str,
        settings: dict[str, Any],
        seed: float | None,
    ) -> tuple[PIL.Image.Image, str, str, EditSettings, int | None]:
        """The form checked as the edit will see it: image and its name, instruction, settings and seed."""
        image, name = self.read_upload(upload)
        instruction = _instruction(instruction)
        settings = _from_page(settings)
        if settings.get("height") is None and settings.get("width") is None:
            settings["height"], settings["width"] = self.proposed_size(image.size)
        settings = edit_settings(self.editor.preset, **settings)
        seed = None if seed is None or seed < 0 else _whole(seed)
        check_seed(seed)
        return image, name, instruction, settings, seed

    def _written(self, image: PIL.Image.Image, instruction: str) -> tuple[str, dict[str, Any]]:
        result = self.enhance(image, instruction)
        return result.prompt, result.to_record()

    def examples(self) -> list[list[str]]:
        """Toy-world scenes as (image path, instruction) pairs: pictures that need no download or licence."""
        folder = self.workdir / "examples"
        folder.mkdir(exist_ok=True)
        rows = []
        for seed in EXAMPLE_SEEDS:
            case = sample_case(seed)
            path = folder / f"scene_{seed}.png"
            save_image(PIL.Image.fromarray(render_frame(case, 0.0)), path)
            rows.append([str(path), case.instruction])
        return rows


def _instruction(text: str | None) -> str:
    text = (text or "").strip()
    if not text:
        raise InvalidInputError("instruction must not be empty: say what should happen, e.g. 'the ice cube melts'")
    return text


def _provenance(prompt: str, record: dict[str, Any] | None) -> dict[str, Any]:
    """A written prompt's record while the prompt is unchanged; a prompt the user typed or edited is their own."""
    if not record or record.get("prompt") != prompt:
        return {"backend": "given"}
    return record


def _from_page(settings: dict[str, Any]) -> dict[str, Any]:
    """The form's settings as the library takes them: the page's number boxes are never empty, so 0 stands for
    "automatic" there (and a negative seed, handled apart, for "draw one")."""
    return {key: None if key in ZERO_IS_AUTOMATIC and value == 0 else _whole(value) for key, value in settings.items()}


def _whole(value: Any) -> Any:
    """Numbers from the page arrive as floats; whole ones become ints so the checks see what the user meant."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _reporter(progress: gr.Progress) -> Progress:
    """Steps done of the total, shown in Gradio's progress bar with the pass's label."""

    def report(done: int, total: int, label: str) -> None:
        progress((done, total), desc=label)

    return report


def _step_counter(settings: EditSettings, progress: Progress | None):
    """A step callback that reports (done, total) over both passes; None when nobody listens."""
    if progress is None:
        return None
    steps = settings.num_inference_steps
    refine_steps = settings.refine_steps or steps
    # A refinement below full strength starts part-way through its schedule and skips the steps before.
    refine_run = refine_steps - refine_start_step(refine_steps, settings.refine_strength)
    total = steps + (refine_run if settings.refine else 0)
    done = 0

    def callback(pipe, step: int, timestep, tensors: dict) -> dict:
        nonlocal done
        done += 1
        progress(done, total, f"{pipe.stage} step {step + 1}")
        return {}

    return callback


def _candidates(result) -> tuple[list[tuple[PIL.Image.Image, str]], int]:
    """The late frames each pass chose from, captioned with their sharpness; the position of the final result."""
    passes = [("edit", result.frames, result.sharpness, result.selected_index)]
    if result.refine_sharpness is not None:
        passes.append(("refine", result.refine_frames, result.refine_sharpness, result.refine_selected_index))
    items, final = [], 0
    for stage, frames, scores, selected in passes:
        for index in sorted(scores):
            if index == selected:
                final = len(items)  # the last pass's choice is the result
            mark = " (chosen)" if index == selected else ""
            items.append((frames[index], f"{stage} frame {index}: sharpness {scores[index]:.1f}{mark}"))
    return items, final


def _shown_in_page(handler: Callable) -> Callable:
    """Turn errors into a one-line message in the page; the app stays usable, a traceback goes to the log only."""

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except IFEditError as error:
            raise gr.Error(_for_page(str(error)), print_exception=False) from None
        except Exception as error:
            logger.exception("the edit failed")
            message = _for_page(f"{type(error).__name__}: {error}")[:300]
            raise gr.Error(
                f"the edit failed ({message}); details are in the server log", print_exception=False
            ) from None

    return wrapper


def _for_page(message: str) -> str:
    """A message fit for whoever reaches the page: its first line, without secrets, control codes or folders."""
    first = next(iter(message.splitlines()), "")
    return SERVER_FOLDERS.sub("", safe_text(first))


def build_page(app: EditorApp) -> gr.Blocks:
    """The page: photo, instruction and editable prompt on the left; result, comparison, frames, clip on the right."""
    preset = app.editor.preset
    recipe = preset.recipe
    with gr.Blocks(title="IF-Edit", analytics_enabled=False, delete_cache=DELETE_CACHE) as page:
        prompt_record = gr.State(None)
        gr.Markdown(
            "## IF-Edit: image editing with an image-to-video model\n"
            "Drop in a photo and say what should happen. The model films the change as a short clip and the sharpest "
            f"late frame becomes the edit. Model: {preset.description}."
        )
        with gr.Row():
            with gr.Column():
                source = gr.Image(
                    label="Photo",
                    type="filepath",
                    sources=["upload", "clipboard"],
                    elem_id="source-image",
                    height=300,
                )
                instruction = gr.Textbox(
                    label="Instruction", placeholder="the ice cube melts", elem_id="instruction", max_lines=3
                )
                write = gr.Button("Write the video prompt", elem_id="write-prompt", size="sm")
                prompt = gr.Textbox(
                    label="Video prompt: read and edit it before running (left empty, Run writes it)",
                    lines=4,
                    elem_id="prompt",
                )
                with gr.Accordion("Advanced settings", open=False):
                    with gr.Row():
                        steps = gr.Slider(1, 50, recipe.num_inference_steps, step=1, label="Steps", elem_id="steps")
                        frames = gr.Slider(
                            MIN_FRAMES, 121, recipe.num_frames, step=4, label="Frames (4n+1)", elem_id="frames-count"
                        )
                    with gr.Row():
                        height = gr.Number(0, label="Height (px; 0: automatic)", precision=0, elem_id="height")
                        width = gr.Number(0, label="Width (px; 0: automatic)", precision=0, elem_id="width")
                        seed = gr.Number(-1, label="Seed (-1: random)", precision=0, elem_id="seed")
                    with gr.Row():
                        tld_stride = gr.Slider(
                            1, 8, recipe.tld_stride, step=1, label="Dropout stride K (1: off)", elem_id="tld-stride"
                        )
                        tld_threshold = gr.Number(
                            recipe.tld_threshold or 0,
                            label="Dropout threshold (0: at the expert switch)",
                            elem_id="tld-threshold",
                        )
                    refine = gr.Checkbox(
                        recipe.refine, label="Refine the chosen frame with a still video", elem_id="refine"
                    )
                    with gr.Row():
                        refine_steps = gr.Number(0, label="Refine steps (0: as Steps)", precision=0)
                        refine_frames = gr.Number(0, label="Refine frames (0: as Frames)", precision=0)
                        refine_strength = gr.Slider(0.05, 1.0, 1.0, step=0.05, label="Refine strength")
                run = gr.Button("Run", variant="primary", elem_id="run")
                status = gr.Markdown(elem_id="status")
                examples = gr.Examples(app.examples(), [source, instruction], label="Examples: toy-world scenes")
            with gr.Column():
                result = gr.Image(
                    label="Edited image",
                    type="pil",
                    format="png",
                    interactive=False,
                    height=300,
                    elem_id="result-image",
                )
                comparison = gr.ImageSlider(
                    label="Before / after", type="pil", interactive=False, elem_id="comparison"
                )
                candidates = gr.Gallery(
                    label="Candidate frames with their sharpness (the chosen one marked)",
                    columns=4,
                    height="auto",
                    format="png",
                    elem_id="frames",
                )
                with gr.Accordion("Less of the edit: refine an earlier frame of the clip", open=False):
                    clip_id = gr.State(None)
                    pick = gr.Slider(
                        1, 2, 1, step=1, label="Frame of the clip (after an edit; its end is the full edit)",
                        elem_id="frame-pick",
                    )  # fmt: skip
                    picked = gr.Image(label="Picked frame", type="pil", interactive=False, height=160,
                                      elem_id="picked-frame")  # fmt: skip
                    refine_pick = gr.Button("Refine this frame", elem_id="refine-frame", size="sm")
                clip = gr.Video(label="Generated clip", interactive=False, elem_id="clip")
                record = gr.File(label="How it was made (JSON)", interactive=False, elem_id="record")

        # Handlers read only what Gradio's upload route received for this server and the examples it copied.
        app.uploads = Uploads(gradio.utils.get_upload_folder(), page.upload_file_set, source.keep_in_cache)
        # A new photo is checked at once, its size proposed, and a prompt written for the old one cleared. The check
        # is cheap and must not wait behind a running edit, hence no concurrency limit.
        inspect = _shown_in_page(lambda upload: (*app.inspect(upload), ""))
        checked = dict(outputs=[height, width, prompt], concurrency_limit=None, show_progress="hidden")
        source.upload(inspect, source, preprocess=False, api_name="inspect", **checked).failure(
            lambda: None, None, source
        )
        source.clear(lambda: (0, 0, ""), None, **checked)
        examples.load_input_event.then(inspect, source, preprocess=False, api_visibility="private", **checked)
        # A prompt written for other words is stale: typing clears it, so Run never uses it by accident.
        instruction.input(None, None, prompt, js="() => ''")
        # A local VLM shares the device, so it takes turns with edits; a VLM server may stall for as long as its
        # timeout allows and must not hold up edits whose prompt is ready (it queues requests itself).
        prompt_turn = dict(concurrency_id="model") if app.prompt_on_device else dict(concurrency_limit=None)
        write.click(
            _shown_in_page(app.write_prompt),
            [source, instruction],
            [prompt, prompt_record],
            preprocess=False,
            api_name="write_prompt",
            **prompt_turn,
        )

        # The settings the form sends after the photo, instruction, prompt, its record and the seed, in this order.
        fields = dict(
            num_inference_steps=steps,
            num_frames=frames,
            height=height,
            width=width,
            tld_stride=tld_stride,
            tld_threshold=tld_threshold,
            refine=refine,
            refine_steps=refine_steps,
            refine_frames=refine_frames,
            refine_strength=refine_strength,
        )

        def settings_of(*values) -> dict[str, Any]:
            return dict(zip(fields, values, strict=True))

        def prepare_edit(upload, text, written, written_record, chosen_seed, *values):
            return app.prepare(upload, text, written, written_record, settings_of(*values), chosen_seed)

        # Gradio passes inputs by position and finds the progress tracker by its default value.
        def run_edit(
            upload, text, written, written_record, chosen_seed, num_inference_steps, num_frames, h, w, stride,
            threshold, refine_on, refine_num_steps, refine_num_frames, strength,
            progress=gr.Progress(),  # noqa: B008
        ):  # fmt: skip
            settings = settings_of(
                num_inference_steps, num_frames, h, w, stride, threshold, refine_on, refine_num_steps,
                refine_num_frames, strength,
            )  # fmt: skip

            view = app.run(upload, text, written, written_record, settings, chosen_seed, _reporter(progress))
            gallery = gr.Gallery(value=view.candidates, selected_index=view.chosen)
            files = str(view.clip), str(view.record)
            frame_pick = gr.Slider(minimum=1, maximum=view.clip_frames - 1, value=view.selected_frame, step=1)
            return (view.prompt, view.prompt_record, view.image, view.before_after, gallery, *files, view.status,
                    view.clip_id, frame_pick)  # fmt: skip

        form = [source, instruction, prompt, prompt_record, seed, *fields.values()]
        # Run settles the prompt first, in the prompt stage's turn, then waits for the model with a ready prompt.
        run.click(
            _shown_in_page(prepare_edit),
            form,
            [prompt, prompt_record],
            preprocess=False,
            api_name="prepare",
            **prompt_turn,
        ).success(
            _shown_in_page(run_edit),
            form,
            [prompt, prompt_record, result, comparison, candidates, clip, record, status, clip_id, pick],
            preprocess=False,
            api_name="edit",
            concurrency_id="model",
            show_progress_on=[result, status],
        )

        # Picking a frame shows it at once; refining it is the still-video pass alone, in the model's turn.
        pick.change(
            _shown_in_page(app.clip_frame), [clip_id, pick], picked, concurrency_limit=None, show_progress="hidden"
        )

        def refine_picked(
            chosen_clip, index, chosen_seed, num_inference_steps, num_frames, h, w, stride, threshold, refine_on,
            refine_num_steps, refine_num_frames, strength,
            progress=gr.Progress(),  # noqa: B008
        ):  # fmt: skip
            settings = settings_of(
                num_inference_steps, num_frames, h, w, stride, threshold, refine_on, refine_num_steps,
                refine_num_frames, strength,
            )  # fmt: skip

            view = app.refine_frame(chosen_clip, index, settings, chosen_seed, _reporter(progress))
            gallery = gr.Gallery(value=view.candidates, selected_index=view.chosen)
            return view.image, view.before_after, gallery, str(view.record), view.status

        refine_pick.click(
            _shown_in_page(refine_picked),
            [clip_id, pick, seed, *fields.values()],
            [result, comparison, candidates, record, status],
            api_name="refine_frame",
            concurrency_id="model",
            show_progress_on=[result, status],
        )
    return page


def serve(app: EditorApp, host: str, port: int, share: bool, allowed_hosts: tuple[str, ...] = ()) -> None:
    """Serve the page until interrupted: one edit at a time (one model, one device), the rest queued in view; then
    delete what the app wrote and Gradio's copies of this page's uploads and results. On loopback the page answers
    only this machine's names and pages, and `allowed_hosts` (a proxy's public name)."""
    from starlette.middleware import Middleware

    page = build_page(app)
    page.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    local = is_loopback(host) and not share
    if not local:
        logger.warning("the page is reachable from other machines: anyone who can reach it can run the model")
    logger.info("results are kept in %s until the page stops", app.workdir)
    try:
        # Gradio's launch returns on Ctrl-C, and on SIGTERM where the caller turns it into one (the command does).
        page.launch(
            server_name=host,
            server_port=port,
            share=share,
            max_file_size=MAX_UPLOAD_BYTES,
            theme=gr.themes.Default(**THEME_FONTS),
            show_error=False,
            quiet=True,
            # On this machine alone, the page answers only this machine's names and pages (`hosts.LoopbackOnly`).
            app_kwargs={"middleware": [Middleware(LoopbackOnly, respond=_refused_page, allowed=allowed_hosts)]}
            if local
            else None,
        )
    finally:
        app.close()


def _refused_page(reason: str):
    from starlette.responses import PlainTextResponse

    message = (
        f"this page answers only this machine's own pages and names; this request was {reason} (a proxy's name: "
        "ifedit ui --allow-host NAME)"
    )
    return PlainTextResponse(safe_text(message), status_code=403)
