"""The Gradio app, served for real on 127.0.0.1: gradio_client gets predict.py's numbers, Chromium renders the page."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hf_animals import app, export, predict

ROOT = Path(__file__).resolve().parents[1]
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(url: str, proc: subprocess.Popen | None = None, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"app exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"app at {url} did not answer within {timeout} s")


@pytest.fixture(scope="module")
def served_run(tiny_run):
    """scripts/app.py RUN in a subprocess on a free port; yields its URL."""
    url = f"http://127.0.0.1:{free_port()}/"
    port = url.rsplit(":", 1)[1].strip("/")
    proc = subprocess.Popen([sys.executable, "scripts/app.py", str(tiny_run), "--port", port], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        wait_until_serving(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def test_images(tiny_run) -> list[Path]:
    """A few real test-split files of different formats (the sample data mixes JPEG/PNG and image modes)."""
    paths = [p for p, _ in predict.run_split_images(tiny_run, "test")]
    by_suffix = {}
    for p in paths:
        by_suffix.setdefault(p.suffix.lower(), []).append(p)
    return [p for group in by_suffix.values() for p in group[:2]]


def client_probabilities(url: str, path: Path) -> tuple[str, dict[str, float]]:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, analytics_enabled=False)
    out = client.predict(handle_file(str(path)), api_name="/predict")
    return out["label"], {c["label"]: c["confidence"] for c in out["confidences"]}


def assert_same_as_predictor(url: str, predictor: predict.Predictor, paths: list[Path]) -> None:
    for path in paths:
        top1, shown = client_probabilities(url, path)
        probs = predictor.predict_paths([path])[0]
        assert top1 == predictor.class_names[int(probs.argmax())], path
        assert len(shown) == min(app.DEFAULT_TOP_K, len(probs))
        for name, p in shown.items():
            assert p == pytest.approx(float(probs[predictor.class_names.index(name)]), abs=1e-4), (path, name)


def test_client_gets_the_numbers_of_predict(served_run, tiny_run, test_images):
    assert len({p.suffix.lower() for p in test_images}) >= 2
    assert_same_as_predictor(served_run, predict.load_predictor(tiny_run, device="cpu"), test_images)


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    reason = "headless Chromium not installed (apt-get install -y chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must run this test")
    pytest.skip(reason)


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--hide-scrollbars", "--virtual-time-budget=20000", *args],
                          capture_output=True, text=True, timeout=180)


def rendered_text_and_images(dom: str) -> tuple[str, list[str]]:
    """The page as the browser built it: visible text and <img> sources, without scripts (which hold the config)."""
    body = re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S)
    images = re.findall(r"<img[^>]*\ssrc=\"([^\"]+)\"", body)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))
    return text, images


def test_chromium_renders_title_summary_and_examples(served_run, tiny_run, tmp_path):
    find_chromium()
    proc = chromium("--dump-dom", served_run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text, images = rendered_text_and_images(proc.stdout)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    run = json.loads((tiny_run / "run.json").read_text())
    assert f"# {app.TITLE}" not in text and app.TITLE in text  # Markdown rendered to a heading, not shown raw
    assert f"Test accuracy {100 * metrics['accuracy']:.1f}%" in text
    assert f"regime {run['unfreeze']}" in text and "Prediction" in text
    assert "Examples from the test split" in text
    n_test = len(predict.run_split_images(tiny_run, "test"))
    examples = [src for src in images if "/gradio_api/file=" in src]
    assert len(examples) == min(app.MAX_EXAMPLES, n_test)

    shot = tmp_path / "app.png"
    proc = chromium(f"--screenshot={shot}", "--window-size=1200,900", served_run)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (900, 1200) and pixels.std() > 5  # a drawn page, not a blank one
    if os.environ.get("HF_ANIMALS_SCREENSHOT"):  # keep a copy to look at (e.g. for the README)
        shutil.copy(shot, os.environ["HF_ANIMALS_SCREENSHOT"])


def test_onnx_model_served_in_process(tiny_run, test_images, tmp_path):
    onnx_file = export.export_run(tiny_run, output=tmp_path / "m.onnx", min_time=0.01).onnx_path
    demo, url = app.launch(onnx_file, port=free_port(), block=False, quiet=True)
    try:
        wait_until_serving(url)
        onnx_predictor = predict.load_predictor(onnx_file)
        assert_same_as_predictor(url, onnx_predictor, test_images[:2])
        torch_top1 = predict.load_predictor(tiny_run, device="cpu").predict_paths(test_images).argmax(1)
        assert onnx_predictor.predict_paths(test_images).argmax(1).tolist() == torch_top1.tolist()
    finally:
        demo.close()
    summary = app.summary_markdown(onnx_predictor, app.model_record(onnx_file))
    assert "ONNX fp32" in summary and "Test accuracy" in summary  # export.json led back to the run's metrics
    assert app.example_images(app.model_record(onnx_file))


def test_tta_averages_the_image_and_its_mirror(tiny_run, test_images):
    plain = predict.load_predictor(tiny_run, device="cpu")
    tta = predict.load_predictor(tiny_run, device="cpu", tta=True)
    pixels = plain.load_pixels(test_images[0])[None]
    expected = (plain.predict_pixels(pixels) + plain.predict_pixels(pixels.flip(3))) / 2
    assert np.allclose(tta.predict_pixels(pixels).numpy(), expected.numpy(), atol=1e-6)
    assert "mirror" in app.summary_markdown(tta, app.model_record(tiny_run))
