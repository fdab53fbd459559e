"""Export a run's model to ONNX, prove it computes what PyTorch computes, optionally quantise it to int8, time both.

Exporter: `torch.onnx.export(..., dynamo=True)`, torch.export-based. It is torch 2.14's default and the maintained
path; the TorchScript ("legacy") exporter still works but warns that it is deprecated and will be removed. The
dynamo exporter needs `onnxscript`, and `dynamic_shapes` (a named batch dimension) replaces `dynamic_axes`. The
graph is saved as one self-contained file (no external .data), because the file is what users copy around.

Checks, all on the run's own test images, each decoded/resized/normalised by `predict.Predictor`'s code: the fp32
file must give max |Δlogit| <= 1e-3 against PyTorch and the same top-1 on every image, else nothing is written.
int8: onnxruntime static quantisation (QDQ, per-channel weights) calibrated on training-split images through a
`CalibrationDataReader`; dynamic quantisation if static fails. An int8 model that loses more than `max_drop`
points of test accuracy against fp32 is refused unless `force`.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median, quantiles
from typing import Callable

import torch

from . import onnx_model
from .errors import UserError
from .predict import Predictor, load_predictor, run_split_images

MAX_LOGIT_DIFF = 1e-3
DEFAULT_MAX_DROP = 1.0  # accuracy points an int8 model may lose against fp32 before it is refused
CALIBRATION_IMAGES = 64
LATENCY_BATCHES = (1, 32)
MIN_TIME_S = 0.2
REPORT_NAME = "export.json"


# ----------------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------------
def export_fp32(predictor: Predictor, path: Path, metadata: dict[str, str]) -> Path:
    """Write the model as ONNX (dynamic batch, fixed image size) with `metadata` in its metadata_props."""
    import onnx

    size = predictor.image_size
    example = torch.zeros(2, 3, size, size)  # batch 2: a batch of 1 would let export specialise the dimension
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(predictor.model, (example,), None, dynamo=True, dynamic_shapes=({0: batch},),
                                    input_names=[onnx_model.INPUT_NAME], output_names=[onnx_model.OUTPUT_NAME],
                                    verbose=False)
    except Exception as err:  # torch.export's errors name the unsupported construct; keep that message
        raise UserError(f"torch.onnx.export failed for {predictor.source}: {type(err).__name__}: "
                        f"{(str(err).splitlines() or [''])[0]}") from None
    proto = program.model_proto
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    onnx.checker.check_model(str(path), full_check=True)  # raises onnx.checker.ValidationError on a bad graph
    return path


def export_metadata(predictor: Predictor, run_dir: Path, precision: str) -> dict[str, str]:
    return onnx_model.preprocessing_metadata(
        predictor.class_names, predictor.preprocessing, label_folders=predictor.label_folders, precision=precision,
        architecture=predictor.model.pretrained_cfg.get("architecture"), source_run=run_dir.name)


# ----------------------------------------------------------------------------------------------------------------
# Checking against PyTorch
# ----------------------------------------------------------------------------------------------------------------
def normalized_images(predictor: Predictor, paths) -> torch.Tensor:
    """float32 (N, 3, S, S): the images as every Predictor feeds them to a model."""
    pixels = torch.stack([predictor.load_pixels(p) for p in paths])
    return predictor.preprocessing.normalize(pixels)


@torch.no_grad()
def batched_logits(model: Callable, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])


@dataclass
class Agreement:
    max_abs_logit_diff: float
    top1_agreement: float  # fraction of images with the same top-1 as the reference
    accuracy: float  # on the labels
    reference_accuracy: float
    num_images: int


def compare(logits: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor) -> Agreement:
    top1, ref_top1 = logits.argmax(1), reference.argmax(1)
    return Agreement(float((logits - reference).abs().max()), float((top1 == ref_top1).double().mean()),
                     float((top1 == labels).double().mean()), float((ref_top1 == labels).double().mean()), len(labels))


# ----------------------------------------------------------------------------------------------------------------
# int8
# ----------------------------------------------------------------------------------------------------------------
def calibration_reader(x: torch.Tensor, batch_size: int = 16):
    """A CalibrationDataReader over normalised training images (what static quantisation measures ranges on)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{onnx_model.INPUT_NAME: x[i:i + batch_size].numpy()}
                                 for i in range(0, len(x), batch_size)])

        def get_next(self):
            return next(self.batches, None)

    return Reader()


def quantize_int8(fp32_path: Path, out_path: Path, calibration: torch.Tensor, metadata: dict[str, str]) -> str:
    """Write the int8 model (with `metadata`); returns the method used, static or dynamic, in words."""
    method = _quantize(fp32_path, out_path, calibration)
    import onnx

    model = onnx.load(str(out_path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save_model(model, str(out_path))
    onnx.checker.check_model(str(out_path))
    return method


def _quantize(fp32_path: Path, out_path: Path, calibration: torch.Tensor) -> str:
    from onnxruntime import quantization as q

    with tempfile.TemporaryDirectory(prefix="hf_animals_quant_") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:  # shape inference + graph optimisation, as onnxruntime recommends before quantising
            q.quant_pre_process(str(fp32_path), str(prepared))
        except Exception:  # an exotic graph it cannot optimise: quantise the original graph
            shutil.copy2(fp32_path, prepared)
        try:
            q.quantize_static(str(prepared), str(out_path), calibration_reader(calibration),
                              quant_format=q.QuantFormat.QDQ, per_channel=True, weight_type=q.QuantType.QInt8,
                              activation_type=q.QuantType.QUInt8)
            return "static (QDQ, per-channel int8 weights, uint8 activations, MinMax calibration)"
        except Exception as err:
            static_error = f"{type(err).__name__}: {err}"
        q.quantize_dynamic(str(prepared), str(out_path), weight_type=q.QuantType.QInt8)
        return f"dynamic (int8 weights; static failed: {static_error[:200]})"


# ----------------------------------------------------------------------------------------------------------------
# Latency
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Latency:
    runtime: str
    batch: int
    ms_per_image: float  # median
    iqr_ms_per_image: float  # interquartile range over the measurements (blocks of calls for PyTorch)
    measurements: int
    calls: int  # model calls timed in all


def torch_latency(model: torch.nn.Module, x: torch.Tensor, threads: int = 1, min_time: float = MIN_TIME_S) -> Latency:
    from torch.utils.benchmark import Timer

    with torch.no_grad():
        for _ in range(3):  # warm-up: the first calls create oneDNN kernels and are 10-100x slower
            model(x)
        m = Timer("model(x)", globals={"model": model, "x": x},
                  num_threads=threads).blocked_autorange(min_run_time=min_time)
    n = len(x)
    return Latency("PyTorch fp32", n, 1e3 * m.median / n, 1e3 * m.iqr / n, len(m.times),
                   len(m.times) * m.number_per_run)


def ort_latency(session, x: torch.Tensor, runtime: str, min_time: float = MIN_TIME_S) -> Latency:
    """The same adaptive repeat as blocked_autorange: warm up, then time single calls until `min_time` is spent."""
    feed = {session.get_inputs()[0].name: x.numpy()}
    for _ in range(3):  # warm-up, as for PyTorch
        session.run(None, feed)
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or len(times) < 5:
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    q1, _, q3 = quantiles(times, n=4)
    n = len(x)
    return Latency(runtime, n, 1e3 * median(times) / n, 1e3 * (q3 - q1) / n, len(times), len(times))


def latency_table(model: torch.nn.Module, onnx_files: dict[str, Path], images: torch.Tensor, threads: int = 1,
                  min_time: float = MIN_TIME_S) -> list[Latency]:
    """Batch 1 and 32 (test images, repeated if fewer), model only (preprocessing excluded), `threads` threads.

    Both runtimes get the same thread count. The default of 1 keeps numbers stable on a shared CPU: with 2
    threads on 2 busy cores PyTorch's OpenMP barriers made it 5-10x slower than on 1 thread, ORT much less so.
    """
    sessions = {name: onnx_model.ort_session(path, threads) for name, path in onnx_files.items()}
    rows = []
    for batch in LATENCY_BATCHES:
        x = images.repeat((batch + len(images) - 1) // len(images), 1, 1, 1)[:batch].contiguous()
        rows.append(torch_latency(model, x, threads, min_time))
        rows += [ort_latency(session, x, name, min_time) for name, session in sessions.items()]
    return rows


# ----------------------------------------------------------------------------------------------------------------
# The whole of scripts/export.py
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ExportResult:
    run: str
    onnx_path: str
    exporter: str
    opset: int
    fp32: Agreement
    int8_path: str | None = None
    int8_method: str | None = None
    int8: Agreement | None = None  # reference = the fp32 ONNX model
    int8_refused: str | None = None
    threads: int = 1
    latency: list[Latency] = field(default_factory=list)
    file_bytes: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    report_path: str | None = None


def default_output(run_dir: Path) -> Path:
    return run_dir / "model.onnx"


def int8_output(fp32_path: Path) -> Path:
    return fp32_path.with_name(fp32_path.stem + ".int8.onnx")


def check_fp32(agreement: Agreement, run_dir: Path) -> None:
    if agreement.max_abs_logit_diff > MAX_LOGIT_DIFF or agreement.top1_agreement < 1.0:
        raise UserError(f"the ONNX export of {run_dir} does not reproduce PyTorch on its {agreement.num_images} test "
                        f"images (max |Δlogit| {agreement.max_abs_logit_diff:.2e}, limit {MAX_LOGIT_DIFF:.0e}; top-1 "
                        f"agreement {100 * agreement.top1_agreement:.1f}%); nothing was written")


def int8_refusal(agreement: Agreement, max_drop: float) -> str | None:
    """Why an int8 model must not be written (accuracy points lost beyond `max_drop`), or None."""
    drop = 100 * (agreement.reference_accuracy - agreement.accuracy)
    if drop <= max_drop:
        return None
    return (f"int8 test accuracy {100 * agreement.accuracy:.1f}% is {drop:.1f} points below fp32 "
            f"{100 * agreement.reference_accuracy:.1f}% (allowed: {max_drop:g})")


def export_run(run_dir: str | os.PathLike, *, output: str | os.PathLike | None = None, int8: bool = False,
               force: bool = False, max_drop: float = DEFAULT_MAX_DROP, data_dir: str | os.PathLike | None = None,
               threads: int = 1, min_time: float = MIN_TIME_S) -> ExportResult:
    """Export, verify, [quantise], time, and record it all in export.json beside the .onnx (see the module doc).

    Files appear only when their checks pass (written in a temporary folder, then moved): a failed fp32 check
    writes nothing; a refused int8 model is not written (result.int8_refused says why) unless `force`.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file() or not (run_dir / "model.safetensors").is_file():
        raise UserError(f"{run_dir} is not a run folder (needs run.json and model.safetensors from train.py)")
    out = Path(output) if output else default_output(run_dir)
    if out.suffix.lower() != ".onnx":
        raise UserError(f"--output {out} must end in .onnx")
    predictor = load_predictor(run_dir, device="cpu")
    test = run_split_images(run_dir, "test", data_dir)
    if not test:
        raise UserError(f"{run_dir}'s splits.csv has no test images to check the export on")
    index = {name: i for i, name in enumerate(predictor.class_names)}
    labels = torch.tensor([index[label] for _, label in test])
    x_test = normalized_images(predictor, [p for p, _ in test])
    torch_logits = batched_logits(predictor.model, x_test)

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export_", dir=out.parent) as tmp:
        tmp_fp32 = export_fp32(predictor, Path(tmp) / out.name, export_metadata(predictor, run_dir, "fp32"))
        sessions = {"ORT fp32": onnx_model.ort_session(tmp_fp32)}
        result = new_result(run_dir, out, tmp_fp32,
                            compare(session_logits(sessions["ORT fp32"], x_test), torch_logits, labels))
        check_fp32(result.fp32, run_dir)
        tmp_int8 = int8_output(Path(tmp) / out.name)
        if int8:
            train = run_split_images(run_dir, "train", data_dir)
            step = max(1, len(train) // CALIBRATION_IMAGES)  # spread over classes: the manifest is grouped by class
            calibration = normalized_images(predictor, [p for p, _ in train[::step][:CALIBRATION_IMAGES]])
            result.int8_method = quantize_int8(tmp_fp32, tmp_int8, calibration,
                                               export_metadata(predictor, run_dir, "int8"))
            sessions["ORT int8"] = onnx_model.ort_session(tmp_int8)
            result.int8 = compare(session_logits(sessions["ORT int8"], x_test),
                                  session_logits(sessions["ORT fp32"], x_test), labels)
            result.int8_refused = int8_refusal(result.int8, max_drop)
        result.threads = threads
        result.latency = latency_table(predictor.model, {"ORT fp32": tmp_fp32, "ORT int8": tmp_int8} if int8
                                       else {"ORT fp32": tmp_fp32}, x_test, threads, min_time)
        written = [(tmp_fp32, out)] + ([(tmp_int8, int8_output(out))]
                                       if int8 and (force or not result.int8_refused) else [])
        result.file_bytes = {"model.safetensors (PyTorch)": (run_dir / "model.safetensors").stat().st_size}
        for src, dst in written:
            os.replace(src, dst)
            result.file_bytes[dst.name] = dst.stat().st_size
        result.int8_path = str(int8_output(out)) if len(written) == 2 else None
        if int8 and result.int8_path is None and int8_output(out).exists():
            int8_output(out).unlink()  # an earlier export's int8 file must not pass for this model's
    return write_report(result, out.parent / REPORT_NAME)


def session_logits(session, x: torch.Tensor) -> torch.Tensor:
    return batched_logits(lambda b: torch.from_numpy(session.run(None, {onnx_model.INPUT_NAME: b.numpy()})[0]), x)


def new_result(run_dir: Path, out: Path, onnx_path: Path, fp32: Agreement) -> ExportResult:
    import onnx
    import onnxruntime

    return ExportResult(str(run_dir), str(out), "torch.onnx.export(dynamo=True)",
                        onnx.load(str(onnx_path), load_external_data=False).opset_import[0].version, fp32,
                        versions={"torch": torch.__version__, "onnx": onnx.__version__,
                                  "onnxruntime": onnxruntime.__version__, "python": platform.python_version()})


def raise_if_refused(result: ExportResult) -> None:
    """The int8 refusal as a UserError (exit 2), after the fp32 model and the report were written."""
    if result.int8_refused and not result.int8_path:
        raise UserError(f"{result.int8_refused}: the int8 model was not written (--force writes it anyway); "
                        f"the fp32 model {result.onnx_path} and {result.report_path} were")


def write_report(result: ExportResult, path: Path) -> ExportResult:
    result.report_path = str(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(result), indent=2))
    os.replace(tmp, path)
    return result


def format_report(result: ExportResult) -> str:
    """The text scripts/export.py prints: checks, the latency table (ms per image), file sizes."""
    f = result.fp32
    lines = [f"exported {result.run} -> {result.onnx_path} ({result.exporter}, opset {result.opset})",
             f"fp32 check on {f.num_images} test images: max |Δlogit| {f.max_abs_logit_diff:.2e} "
             f"(limit {MAX_LOGIT_DIFF:.0e}), top-1 agreement {100 * f.top1_agreement:.1f}%, test accuracy "
             f"PyTorch {100 * f.reference_accuracy:.1f}% / ONNX {100 * f.accuracy:.1f}%"]
    if result.int8 is not None:
        i = result.int8
        lines.append(f"int8 ({result.int8_method}): top-1 agreement with fp32 {100 * i.top1_agreement:.1f}%, "
                     f"test accuracy {100 * i.accuracy:.1f}% vs fp32 {100 * i.reference_accuracy:.1f}%")
        if result.int8_refused:
            lines.append(f"int8 {'written anyway (--force)' if result.int8_path else 'NOT written'}: "
                         f"{result.int8_refused}")
    lines += ["", f"latency, ms per image: median (IQR, measurements), {result.threads} CPU thread(s), model only "
                  f"(preprocessing excluded):",
              f"{'runtime':<14}" + "".join(f"{'batch ' + str(b):>28}" for b in LATENCY_BATCHES)]
    for runtime in dict.fromkeys(r.runtime for r in result.latency):
        cells = {r.batch: f"{r.ms_per_image:.3f} ({r.iqr_ms_per_image:.3f}, n={r.measurements})"
                 for r in result.latency if r.runtime == runtime}
        lines.append(f"{runtime:<14}" + "".join(f"{cells.get(b, '-'):>28}" for b in LATENCY_BATCHES))
    lines += ["", "files:"] + [f"  {name:<32} {size / 2**20:8.2f} MiB" for name, size in result.file_bytes.items()]
    lines.append(f"report: {result.report_path}")
    return "\n".join(lines)
