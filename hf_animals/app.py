"""The Gradio app: upload or paste an image, get the model's top-k classes (`gr.Label`).

It serves any model `predict.load_predictor` takes (run folder, `local-dir:DIR`, `hf-hub:USER/NAME`, an exported
`.onnx`), and classifies the uploaded file with `Predictor.predict_paths`: the same decode, resize and normalisation,
hence the same probabilities, as `scripts/predict.py`. The upload reaches the model as the original file
(`gr.Image(type="filepath", image_mode=None)` hands over the uploaded path untouched; any other setting makes gradio
re-encode it first). The summary (test accuracy, regime, weights) is read from the run's own run.json/metrics.json,
and the examples are the run's test-split images when their folder is still there.

Offline by construction: analytics off, no share link, no server-side rendering (a node process), system fonts
instead of the default theme's Google font.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from . import catalogue, onnx_model
from .errors import UserError
from .predict import Predictor, load_predictor, run_split_images

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read by gradio at import time

TITLE = "hf_animals image classifier"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_TOP_K = 5
MAX_EXAMPLES = 10


# ----------------------------------------------------------------------------------------------------------------
# What the page says about the model
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ModelRecord:
    """The run files found for a model source (any may be missing: a bare saved model has neither)."""

    run: dict | None = None
    metrics: dict | None = None
    run_dir: Path | None = None  # a local run folder, for the test-split examples
    export: dict | None = None  # export.json of an .onnx file


def _json_or_none(path: Path | str | None) -> dict | None:
    try:
        return json.loads(Path(path).read_text()) if path else None
    except (OSError, json.JSONDecodeError):
        return None


def _hub_json(repo_id: str, filename: str) -> dict | None:
    """A JSON file of a pushed model repo (push_to_hub uploads run.json and metrics.json), if it can be had."""
    from huggingface_hub import hf_hub_download

    repo_id, _, revision = repo_id.partition("@")
    try:
        return _json_or_none(hf_hub_download(repo_id, filename, revision=revision or None))
    except Exception:  # offline, missing file, no access: the page simply says less
        return None


def model_record(source: str | os.PathLike) -> ModelRecord:
    text = str(source)
    prefix, sep, rest = text.partition(":")
    if sep and prefix in ("hf-hub", "hf_hub"):
        return ModelRecord(_hub_json(rest, "run.json"), _hub_json(rest, "metrics.json"))
    if onnx_model.is_onnx_file(text):
        export = _json_or_none(Path(text).with_name("export.json"))
        if not export or Path(text).resolve() not in {Path(p).resolve() for p in (export.get("onnx_path"),
                                                                                  export.get("int8_path")) if p}:
            return ModelRecord()  # no export.json that describes this very file
        run_dir = Path(export["run"])
        record = model_record(run_dir) if run_dir.is_dir() else ModelRecord()
        record.export = export
        return record
    folder = Path(rest if sep and prefix == "local-dir" else text)
    run = _json_or_none(folder / "run.json")
    return ModelRecord(run, _json_or_none(folder / "metrics.json"), folder if run else None)


def summary_markdown(predictor: Predictor, record: ModelRecord) -> str:
    """A few lines: what the model is, how it was trained, how well it did on its held-out test split."""
    lines = []
    run, metrics = record.run or {}, record.metrics or {}
    architecture = run.get("model") or predictor.model.pretrained_cfg.get("architecture", "model")
    if run:
        lines.append(f"**{architecture}**, regime `{run.get('unfreeze')}`, weights: "
                     f"{catalogue.weight_source(run.get('pretrained_source', ''), run.get('model', '')).label}.")
    else:
        lines.append(f"**{architecture}**.")
    if metrics.get("accuracy") is not None:
        lines.append(f"Test accuracy **{100 * metrics['accuracy']:.1f}%** (macro F1 {100 * metrics['f1_macro']:.1f}%)"
                     f" on {metrics.get('num_samples', '?')} held-out test images.")
    if record.export:
        for precision in ("fp32", "int8"):
            check = record.export.get(precision)
            path = record.export.get("onnx_path" if precision == "fp32" else "int8_path")
            if check and path and Path(path).name == Path(predictor.source).name:
                lines.append(f"Served as ONNX {precision} (onnxruntime): test accuracy {100 * check['accuracy']:.1f}%"
                             f" in export.json.")
    lines.append(f"{len(predictor.class_names)} classes ({', '.join(predictor.class_names)}); input "
                 f"{predictor.image_size} × {predictor.image_size} px." +
                 (" Test-time augmentation: the mean of the image's and its mirror image's probabilities."
                  if predictor.tta else ""))
    lines.append(f"Model: `{predictor.source}`")
    return "\n\n".join(lines)


def example_images(record: ModelRecord, limit: int = MAX_EXAMPLES) -> list[Path]:
    """Test-split images of the run, one per class first (manifest order), at most `limit`; [] if unavailable."""
    if record.run_dir is None:
        return []
    try:
        test = run_split_images(record.run_dir, "test")
    except UserError:  # data folder moved or changed: no examples rather than no app
        return []
    firsts, rest, seen = [], [], set()
    for path, label in test:
        (rest if label in seen else firsts).append(path)
        seen.add(label)
    return (firsts + rest)[:limit]


# ----------------------------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------------------------
def classify(predictor: Predictor, image_path: str | None) -> dict[str, float] | None:
    """{class: probability} of one image file, for gr.Label (which shows the top k)."""
    import gradio as gr

    if not image_path:
        return None
    try:
        probs = predictor.predict_paths([image_path])[0]
    except UserError as err:
        raise gr.Error(str(err)) from None
    return {name: float(p) for name, p in zip(predictor.class_names, probs)}


def build_app(predictor: Predictor, record: ModelRecord, *, top_k: int = DEFAULT_TOP_K):
    """The gr.Blocks page; its one event is also the API endpoint `/predict` (what gradio_client calls)."""
    import gradio as gr

    examples = example_images(record)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}")
        gr.Markdown(summary_markdown(predictor, record), elem_id="model-summary")
        with gr.Row():
            image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], label="Image")
            label = gr.Label(num_top_classes=min(top_k, len(predictor.class_names)), label="Prediction")
        image.change(lambda path: classify(predictor, path), inputs=image, outputs=label, api_name="predict")
        if examples:
            gr.Examples(examples=[[str(p)] for p in examples], inputs=image, label="Examples from the test split",
                        cache_examples=False)
    demo.allowed_example_dirs = sorted({str(p.parent) for p in examples})
    return demo


def offline_theme():
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def launch(source: str | os.PathLike, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, tta: bool = False,
           top_k: int = DEFAULT_TOP_K, block: bool = True, quiet: bool = False):
    """Load the model, build the page and serve it; with block=False return (demo, url) with the server running."""
    predictor = load_predictor(source, tta=tta)
    demo = build_app(predictor, model_record(source), top_k=top_k)
    try:
        _, url, _ = demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, ssr_mode=False,
                                prevent_thread_lock=not block, allowed_paths=demo.allowed_example_dirs,
                                theme=offline_theme(), quiet=quiet, footer_links=["api"])
    except OSError as err:  # port in use, cannot bind the host
        raise UserError(f"cannot serve on {host}:{port}: {err}") from None
    return demo, url
