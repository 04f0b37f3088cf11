"""The ROSALIA web app (Gradio): upload a chest X-ray, give instructions, look at the masks and the answers.

    rosalia serve --model DIR                  # http://127.0.0.1:7860, this machine only

One image, one or more instructions (one per line; the Table 2 forms are the examples): every instruction runs on
the image in one batch, so SAM's image encoder (ViT-H, the costly one) encodes the image once for all of them
(CLIP too with "segment only"; text generation still runs CLIP in each row's prefill, as LLaVA's ``generate``).
Out come an overlay per instruction (the mask over the image, the instruction, the answer, R/L markers), a table
of the answers with the empty-target verdict (the paper's N-Acc criterion: no positive pixel), and one line per
input that could not run.

Private by default, as MIMIC images must be: it binds to 127.0.0.1, sends no analytics, loads no web fonts, and
keeps uploads in a temporary folder of its own (mode 0700) that is removed when the server stops.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

from rosalia_hf.errors import RosaliaError

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
UPLOAD_SUFFIXES = [".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"]
EXAMPLES = [
    "Segment the pneumonia in the right lung.",
    "Segment the pleural effusion.",
    "Segment the opacity in the left lung base and predict its type.",
    "Segment the cardiomegaly.",
    "Segment the atelectasis in the right lung base.",
    "Segment the edema.",
]
TABLE_HEADERS = ["instruction", "answer", "verdict", "mask pixels"]


def _private_environment() -> Path:
    """Gradio settings that keep images on this machine; set before gradio is imported. Returns the upload
    folder."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("GRADIO_SERVER_NAME", "127.0.0.1")
    uploads = Path(tempfile.mkdtemp(prefix="rosalia_app_"))  # mode 0700
    os.environ["GRADIO_TEMP_DIR"] = str(uploads)
    atexit.register(shutil.rmtree, uploads, True)
    return uploads


class Segmenter:
    """The app's one handler, testable without a browser: a file path and instruction lines in; overlays, table
    rows and problem lines out."""

    def __init__(self, predictor, *, model_name: str = "ROSALIA", max_new_tokens: int = 512) -> None:
        self.predictor = predictor
        self.model_name = model_name
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()  # one forward pass at a time: the model is not re-entrant

    def __call__(self, path: str | None, instructions: str, segment_only: bool = False):
        from rosalia_hf.images import read_image
        from rosalia_hf.overlay import describe_mask, printable, render_overlay

        if not path:
            return [], [], "Upload a DICOM or an image first."
        try:
            image = read_image(path)
        except RosaliaError as error:
            return [], [], f"Cannot read the upload: {_without_folder(str(error), path)}"
        lines = [line for line in (instructions or "").splitlines() if line.strip()]
        if not lines:
            return [], [], "Type an instruction (one per line), or pick an example."
        checked, problems = self.predictor.check_instructions(lines, segment_only)
        runnable = [text for _, text in checked]
        gallery, rows = [], []
        if runnable:
            with self._lock:
                results = self.predictor.predict([image], runnable, image_index=[0] * len(runnable),
                                                 segment_only=segment_only, max_new_tokens=self.max_new_tokens)
            name = Path(path).name
            for line, result in zip(runnable, results, strict=True):
                verdict = "empty target" if result["empty"] else "lesion segmented"
                footer = f"{self.model_name} · {name} · {describe_mask(result['mask'])}"
                picture = render_overlay(image, result["mask"], instruction=line, answer=result["text"],
                                         footer=footer)
                gallery.append((picture, f"{line} → {verdict}"))
                rows.append([line, printable(result["text"]), verdict, int(result["mask"].sum())])
        status = "\n".join(f"- {line}" for line in problems) if problems else \
            f"{len(rows)} instruction(s) on a {image.shape[1]}x{image.shape[0]} image."
        return gallery, rows, status


def _without_folder(line: str, path: str) -> str:
    """The upload's temporary folder is noise to the user: show its name only."""
    return line.replace(str(path), Path(path).name)


def display_name(model: str | Path) -> str:
    """A model folder as the page and the overlays name it: its last part, with its parent for a training run's
    ``merged``/``adapters`` folder (``rosalia_tiny/merged``)."""
    parts = Path(model).resolve().parts
    return "/".join(parts[-2:]) if parts and parts[-1] in ("merged", "adapters", "final") else parts[-1]


def build_app(predictor, *, model_name: str = "ROSALIA", max_new_tokens: int = 512):
    """The ``gradio.Blocks`` app around ``predictor`` (a :class:`rosalia_hf.predictor.RosaliaPredictor`).
    Its one API endpoint is ``/segment(file, instructions, segment_only) -> (gallery, table, status)``."""
    _private_environment()
    import gradio as gr

    segmenter = Segmenter(predictor, model_name=model_name, max_new_tokens=max_new_tokens)
    with gr.Blocks(title=f"ROSALIA · {model_name}", analytics_enabled=False) as app:
        gr.Markdown(f"## ROSALIA: instruction-guided lesion segmentation on chest X-rays\n"
                    f"Model: `{model_name}`. Upload a DICOM or an image, give one instruction per line. "
                    "Research use only; not for diagnosis.")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Chest X-ray (DICOM, PNG, JPEG, TIFF)", file_types=UPLOAD_SUFFIXES,
                                 type="filepath", elem_id="upload")
                instructions = gr.Textbox(label="Instructions (one per line)", lines=3, elem_id="instructions",
                                          placeholder=EXAMPLES[0])
                segment_only = gr.Checkbox(label="Segment only (teacher-force [SEG], no generated text)",
                                           value=False)
                button = gr.Button("Segment", variant="primary", elem_id="segment")
                gr.Examples(examples=[[text] for text in EXAMPLES], inputs=[instructions],
                            label="Table 2 instruction forms")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Overlays", columns=2, height=480, elem_id="overlays",
                                     object_fit="contain")
                table = gr.Dataframe(headers=TABLE_HEADERS, label="Answers", elem_id="answers", interactive=False)
                status = gr.Markdown(elem_id="status")
        button.click(segmenter, inputs=[upload, instructions, segment_only], outputs=[gallery, table, status],
                     api_name="segment")
        instructions.submit(segmenter, inputs=[upload, instructions, segment_only],
                            outputs=[gallery, table, status], api_name=False)
    return app


def launch(app, *, host: str = "127.0.0.1", port: int | None = 7860, block: bool = True):
    """Start ``app`` on ``host:port`` (``block=False`` returns at once, for tests); refuses nothing but warns
    when ``host`` is not loopback (the model and uploaded images are then reachable from the network)."""
    import gradio as gr

    if host not in LOOPBACK:
        log.warning("serving on %s: anyone who can reach this address can upload images and see the results", host)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # system fonts: no Google Fonts request
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block, quiet=not block,
               show_error=True, ssr_mode=False, theme=theme, footer_links=[])
    return app


def serve(model: str, *, processor: str | None = None, host: str = "127.0.0.1", port: int | None = 7860,
          device: str | None = None, dtype: str = "float32", max_new_tokens: int = 512, block: bool = True):
    """``rosalia serve``: load the model from a local folder and serve the app."""
    from rosalia_hf.predictor import RosaliaPredictor

    predictor = RosaliaPredictor.from_pretrained(model, processor, device=device, dtype=dtype)
    app = build_app(predictor, model_name=display_name(model), max_new_tokens=max_new_tokens)
    print(f"ROSALIA app for {model} on http://{host}:{port}/ (Ctrl+C stops it)", flush=True)
    return launch(app, host=host, port=port, block=block)


__all__ = ["build_app", "launch", "serve", "Segmenter", "EXAMPLES"]
