"""ONNX export of the shared tiny run: a valid graph, PyTorch's logits and top-1, self-describing metadata, int8."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from hf_animals import export, onnx_model, predict, preprocess
from hf_animals.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> export.ExportResult:
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"  # never inside the shared run folder
    return export.export_run(tiny_run, output=out, int8=True, force=True, min_time=0.02)


@pytest.fixture(scope="module")
def test_images(tiny_run) -> list[tuple[Path, str]]:
    return predict.run_split_images(tiny_run, "test")


def test_fp32_graph_is_valid_and_reproduces_pytorch(tiny_run, exported, test_images):
    path = Path(exported.onnx_path)
    onnx.checker.check_model(str(path), full_check=True)
    torch_pred = predict.load_predictor(tiny_run, device="cpu")
    x = export.normalized_images(torch_pred, [p for p, _ in test_images])
    with torch.no_grad():
        reference = torch_pred.model(x)
    session = onnx_model.ort_session(path)
    for batch in (x[:1], x[:7], x):  # the batch axis is dynamic
        got = torch.from_numpy(session.run(None, {onnx_model.INPUT_NAME: batch.numpy()})[0])
        want = reference[:len(batch)]
        assert (got - want).abs().max().item() <= export.MAX_LOGIT_DIFF
        assert torch.equal(got.argmax(1), want.argmax(1))
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert exported.fp32.num_images == len(test_images) == metrics["num_samples"]
    assert exported.fp32.reference_accuracy == pytest.approx(metrics["accuracy"], abs=1e-9)
    assert exported.fp32.top1_agreement == 1.0


def test_metadata_round_trip(tiny_run, exported):
    torch_pred = predict.load_predictor(tiny_run, device="cpu")
    meta = onnx_model.read_metadata(exported.onnx_path)
    assert meta["class_names"] == torch_pred.class_names
    assert meta["image_size"] == torch_pred.image_size
    assert tuple(meta["mean"]) == pytest.approx(torch_pred.mean) and tuple(meta["std"]) == pytest.approx(torch_pred.std)
    assert meta["interpolation"] == preprocess.INTERPOLATION and meta["precision"] == "fp32"
    onnx_pred = predict.load_predictor(exported.onnx_path)
    assert (onnx_pred.class_names, onnx_pred.image_size) == (torch_pred.class_names, torch_pred.image_size)
    assert onnx_model.read_metadata(exported.int8_path)["precision"] == "int8"


def test_int8_reports_agreement_latency_and_sizes(exported):
    assert exported.int8_path and Path(exported.int8_path).is_file()
    onnx.checker.check_model(exported.int8_path)
    assert Path(exported.int8_path).stat().st_size < Path(exported.onnx_path).stat().st_size
    assert 0.0 <= exported.int8.top1_agreement <= 1.0 and exported.int8.num_images == exported.fp32.num_images
    assert exported.int8.reference_accuracy == pytest.approx(exported.fp32.accuracy)
    report = json.loads(Path(exported.report_path).read_text())
    cells = {(r["runtime"], r["batch"]) for r in report["latency"]}
    assert cells == {(rt, b) for rt in ("PyTorch fp32", "ORT fp32", "ORT int8") for b in export.LATENCY_BATCHES}
    assert all(r["ms_per_image"] > 0 and r["measurements"] >= 1 for r in report["latency"])
    assert set(report["file_bytes"]) == {"model.safetensors (PyTorch)", "tiny.onnx", "tiny.int8.onnx"}
    text = export.format_report(exported)
    assert "ORT int8" in text and "batch 32" in text and "top-1 agreement with fp32" in text


def test_int8_refused_when_it_loses_too_much(tiny_run, tmp_path):
    out = tmp_path / "m.onnx"
    result = export.export_run(tiny_run, output=out, int8=True, max_drop=-101, min_time=0.01)  # a bar none passes
    assert result.int8_refused and result.int8_path is None
    assert out.is_file() and not export.int8_output(out).exists()
    with pytest.raises(UserError, match="not written"):
        export.raise_if_refused(result)


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_predict_script_gives_the_same_csv_for_onnx(tiny_run, exported, test_images, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, (path, _) in enumerate(test_images, start=1):
        shutil.copy(path, folder / f"{i}{path.suffix}")
    outputs = {}
    for name, model in (("run", tiny_run), ("onnx", exported.onnx_path)):
        outputs[name] = tmp_path / f"{name}.csv"
        proc = subprocess.run([sys.executable, "scripts/predict.py", "--model", str(model), "--images", str(folder),
                               "--output", str(outputs[name]), "--device", "cpu",
                               "--mixed-precision", "no"], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    assert read_rows(outputs["onnx"]) == read_rows(outputs["run"])
    assert len(read_rows(outputs["onnx"])) == len(test_images) + 1
    probs = {name: predict.predict_folder(predict.load_predictor(m, device="cpu", mixed_precision="no"), folder).probabilities
             for name, m in (("run", tiny_run), ("onnx", exported.onnx_path))}
    assert (probs["onnx"] - probs["run"]).abs().max().item() < 1e-5


def test_bad_inputs_are_one_line_errors(tiny_run, tmp_path):
    proc = subprocess.run([sys.executable, "scripts/export.py", str(tmp_path), "--onnx"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("error: ") and "not a run folder" in proc.stderr
    with pytest.raises(UserError, match="must end in .onnx"):
        export.export_run(tiny_run, output=tmp_path / "model.bin")
    with pytest.raises(UserError, match="not exported by hf_animals|cannot read"):
        (tmp_path / "x.onnx").write_bytes(b"not a model")
        predict.load_predictor(tmp_path / "x.onnx")
    with pytest.raises(UserError, match="CPU"):
        onnx_model.load_onnx_predictor(tmp_path / "x.onnx", device="cuda")
